"""The node agent's parts that need no cluster, each against the real thing it wraps: the
kernel's mount namespaces and cgroups, real processes, the repo's Dockerfiles."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from hack.nodeagent import containerconfig as cc
from hack.nodeagent import runtime, status
from hack.nodeagent.cgroups import Cgroups, quota_for, shares_for
from hack.nodeagent.images import images_from_dockerfiles, parse_dockerfile, repository_of
from hack.nodeagent.logs import tail

ROOT = Path(__file__).resolve().parents[2]
SYS_PY = "/usr/bin/python3"        # readable by uid 65532 (the venv's interpreter lives under /root)
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespaces, cgroups, setuid)")


def test_dockerfiles_give_the_chart_images_with_venv_executables():
    venv_bin = ROOT / ".venv" / "bin"
    images = images_from_dockerfiles(ROOT, venv_bin)
    assert set(images) == {"ghcr.io/lectern/operator", "ghcr.io/lectern/transcoder"}
    t = images["ghcr.io/lectern/transcoder"]
    assert t["entrypoint"] == [str(venv_bin / "lectern-transcode")] and t["cmd"] == []
    assert t["env"]["TMPDIR"] == "/scratch" and t["env"]["PATH"].startswith(f"{venv_bin}:/usr/local/sbin")
    assert t["workingDir"] == "/scratch" and t["user"] == "65532:65532"
    assert images["ghcr.io/lectern/operator"]["cmd"] == [str(venv_bin / "lectern-operator")]


def test_dockerfile_parsing_rules():
    config = parse_dockerfile('FROM a AS b\nENV X=1\nFROM c\nENV A=1 \\\n    B="two words"\nENV C $A/x\n'
                              'WORKDIR /w\nWORKDIR sub\nCMD ["x"]\nENTRYPOINT ["e", "-f"]\nUSER 1000\n')
    assert "X" not in config["env"] and config["env"]["B"] == "two words" and config["env"]["C"] == "1/x"
    assert config["workingDir"] == "/w/sub" and config["entrypoint"] == ["e", "-f"] and config["cmd"] == []
    assert parse_dockerfile("FROM a\nCMD echo hi\n")["cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert repository_of("ghcr.io/lectern/transcoder:0.1.0@sha256:00") == "ghcr.io/lectern/transcoder"
    assert repository_of("localhost:5000/x") == "localhost:5000/x"


def test_argv_follows_docker_and_kubernetes_rules():
    image = {"entrypoint": ["ep"], "cmd": ["c1"]}
    env = {"X": "1"}
    assert cc.argv_of({}, image, env) == ["ep", "c1"]
    assert cc.argv_of({"args": ["a", "$(X)"]}, image, env) == ["ep", "a", "1"]
    assert cc.argv_of({"command": ["cmd", "$(X)"]}, image, env) == ["cmd", "1"]
    assert cc.argv_of({"command": ["cmd"], "args": ["$$(X)", "$(Y)"]}, image, env) == ["cmd", "$(X)", "$(Y)"]
    with pytest.raises(cc.ConfigError):
        cc.argv_of({}, {"entrypoint": [], "cmd": []}, env)


async def test_env_from_every_source_in_kubelet_order():
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "a"}},
           "spec": {"nodeName": "n", "serviceAccountName": "sa", "containers": []}, "status": {}}
    objects = {("secrets", "s"): {"data": {"k": "c2VjcmV0", "bad key": "eA=="}}, ("configmaps", "c"): {"data": {"K": "v"}}}

    async def fetch(kind, name):
        return objects.get((kind, name))
    container = {"resources": {"limits": {"memory": "64Mi"}},
                 "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "CM_"}, {"secretRef": {"name": "s"}}],
                 "env": [{"name": "A", "value": "x-$(CM_K)-$(NOPE)"},
                         {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                         {"name": "O", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": True}}},
                         {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                         {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                         {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                         {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                         {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]}
    env = await cc.kube_env(pod, container, fetch, cc.service_env("127.0.0.1", 6443), {"cpu": "2"})
    assert env["A"] == "x-v-$(NOPE)" and env["S"] == "secret" and env["k"] == "secret" and "bad key" not in env
    assert "O" not in env and env["POD"] == "p" and env["APP"] == "a" and env["IP"] == "127.0.0.1"
    assert env["MEM"] == "64" and env["CPU"] == "2" and env["KUBERNETES_SERVICE_PORT"] == "6443"
    with pytest.raises(cc.ConfigError, match='secret "gone" not found'):
        await cc.kube_env(pod, {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]},
                          fetch, {}, {})
    final = cc.process_env({"env": {"PATH": "/img", "HOME": "/scratch"}}, {"PATH": "/pod"}, "p", "/")
    assert final["PATH"] == "/pod" and final["HOME"] == "/scratch" and final["HOSTNAME"] == "p"


def test_identity_and_run_as_non_root():
    pod = {"spec": {"securityContext": {"runAsUser": 65532, "fsGroup": 65532}}}
    ident = cc.identity(pod, {}, {"user": "0"})
    assert (ident.uid, ident.gid, ident.groups) == (65532, 0, [65532])
    assert cc.identity({"spec": {}}, {}, {"user": "10:20"}).gid == 20
    with pytest.raises(cc.ConfigError, match="runAsNonRoot"):
        cc.identity({"spec": {}}, {"securityContext": {"runAsNonRoot": True}}, {"user": ""})


def test_log_tail_and_termination_message(tmp_path):
    log = tmp_path / "0.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(100_000)))
    assert tail(log, 2) == b"line 99998\nline 99999\n"
    assert tail(log, 2, 5) == b"line "
    assert tail(log, 0) == b"" and tail(tmp_path / "none", 3) == b""
    assert status.termination_message(b"done", "File", 1, b"log") == "done"
    assert status.termination_message(b"", "FallbackToLogsOnError", 0, b"log") == ""
    logs = b"".join(b"%d\n" % i for i in range(100))
    fallback = status.termination_message(b"", "FallbackToLogsOnError", 2, logs)
    assert fallback.startswith("20\n") and fallback.endswith("99\n")
    assert len(status.termination_message(b"x" * 10_000, "File", 0, b"")) == 4096


def test_phase_like_the_kubelet():
    done = status.ContainerRecord("c", "i", state={"terminated": {"exitCode": 0}})
    failed = status.ContainerRecord("c", "i", state={"terminated": {"exitCode": 1}})
    backoff = status.ContainerRecord("c", "i", state={"waiting": {"reason": "CrashLoopBackOff"}},
                                     last_state={"terminated": {"exitCode": 1}})
    assert status.phase([status.ContainerRecord("c", "i")], "Always", False) == "Pending"
    assert status.phase([done], "Never", False) == "Succeeded"
    assert status.phase([failed], "Never", False) == "Failed"
    assert status.phase([backoff], "Always", False) == "Running"
    assert status.phase([failed], "Always", True) == "Failed" and status.phase([done], "Always", True) == "Succeeded"
    assert shares_for(500) == 512 and shares_for(None) == 2 and quota_for(500) == 50_000 and quota_for(None) == -1


@root_only
async def test_container_sees_only_its_volumes_read_only_root_and_drops_root(tmp_path):
    scratch, secret, term, out = tmp_path / "scratch", tmp_path / "secret", tmp_path / "term", tmp_path / "out.log"
    scratch.mkdir(mode=0o777)
    os.chmod(scratch, 0o777)
    secret.mkdir()
    (secret / "token").write_text("t0k3n")
    term.write_text("")
    os.chown(term, 65532, 65532)
    code = ("import os\n"
            "open('/lectern-scratch/a', 'w').write('x')\n"
            "print('uid', os.getuid(), os.getgid(), sorted(os.getgroups()))\n"
            "print('token', open('/var/run/lectern-test/token').read())\n"
            "for p in ('/lectern-scratch/../tmp/x', '/var/run/lectern-test/y', '/work/x'):\n"
            "    try:\n"
            "        open(p, 'w'); print('wrote', p)\n"
            "    except OSError as e:\n"
            "        print('denied', p, e.errno)\n"
            "open('/dev/termination-log', 'w').write('bye')\n"
            "print('cwd', os.getcwd())\n")
    spec = {"argv": ["python3", "-c", code], "env": {"PATH": "/usr/bin:/bin"}, "uid": 65532, "gid": 65532,
            "groups": [65533], "workingDir": "/lectern-scratch", "readOnlyRoot": True, "noNewPrivs": True,
            "mounts": [{"source": str(scratch), "target": "/lectern-scratch"},
                       {"source": str(secret), "target": "/var/run/lectern-test", "readOnly": True},
                       {"source": str(term), "target": "/dev/termination-log"}], "cgroups": []}
    try:
        proc = await runtime.spawn(spec, out)
        assert await proc.wait() == 0, out.read_text()
    finally:
        for p in ("/lectern-scratch", "/var/run/lectern-test"):
            if os.path.isdir(p) and not os.listdir(p):
                os.rmdir(p)
    text = out.read_text()
    assert "uid 65532 65532 [65533]" in text and "token t0k3n" in text, text
    assert "denied /lectern-scratch/../tmp/x 30" in text and "denied /var/run/lectern-test/y 30" in text
    assert "denied /work/x 30" in text and "cwd /lectern-scratch" in text, text
    assert (scratch / "a").read_text() == "x" and term.read_text() == "bye"
    assert not os.path.exists("/lectern-scratch/a")       # the host never saw the bind mount


@root_only
async def test_exec_failure_is_a_start_error(tmp_path):
    spec = {"argv": ["no-such-program"], "env": {"PATH": "/nonexistent"}, "uid": 0, "gid": 0, "groups": []}
    with pytest.raises(runtime.StartError, match=r"executable file not found in \$PATH"):
        await runtime.spawn(spec, tmp_path / "log")


@root_only
async def test_cpu_quota_holds_a_busy_loop_to_half_a_cpu(tmp_path):
    groups = Cgroups("lectern-unit-test")
    assert groups.check(), "cgroups v1 not usable here: the node could not enforce pod limits"
    group = groups.create("busy", 500, 500, 256 * 2**20)
    try:
        spec = {"argv": [SYS_PY, "-c", "import time\nt=time.time()\nwhile time.time()-t < 1.5: pass\n"
                         "import resource; r = resource.getrusage(resource.RUSAGE_SELF); print(r.ru_utime + r.ru_stime)"],
                "env": {}, "uid": 65532, "gid": 65532, "groups": [], "cgroups": group.procs_files}
        start = time.monotonic()
        proc = await runtime.spawn(spec, tmp_path / "log")
        assert await proc.wait() == 0
        wall = time.monotonic() - start
        cpu = float((tmp_path / "log").read_text().split()[-1])
        # The quota caps it at half a CPU; a loaded machine may give it less (no lower bound
        # beyond "it ran": timing targets belong in benchmarks).
        assert 0.05 < cpu / 1.5 < 0.62, (cpu, wall)
    finally:
        groups.remove(group)
        os.rmdir(groups.cpu_base)
        os.rmdir(groups.memory_base)


@root_only
async def test_memory_limit_oom_kills_inside_the_group(tmp_path):
    groups = Cgroups("lectern-unit-test")
    assert groups.check(), "cgroups v1 not usable here: the node could not enforce pod limits"
    group = groups.create("oom", None, None, 32 * 2**20)
    try:
        spec = {"argv": [SYS_PY, "-c", "b = []\nwhile True: b.append(bytearray(4 * 2**20))"],
                "env": {}, "uid": 65532, "gid": 65532, "groups": [], "cgroups": group.procs_files}
        proc = await runtime.spawn(spec, tmp_path / "log")
        rc = await asyncio.wait_for(proc.wait(), 20)
        assert runtime.exit_code(rc) == 137 and group.oom_kills() >= 1
    finally:
        groups.remove(group)
        os.rmdir(groups.cpu_base)
        os.rmdir(groups.memory_base)
