"""Mutation check for issue 13: each test added or sharpened for it must fail against a
deliberately broken copy of the code it guards.

    .venv/bin/python hack/mutations.py            # every mutation
    .venv/bin/python hack/mutations.py fetch-416  # some, by name

For each mutation: the file is edited in place (the `old` text must occur exactly once), the
named tests run, the file is put back byte for byte (also on Ctrl-C), and one line says whether
the tests failed ("caught", what is wanted) or passed ("SURVIVED"), with the first assertion
line pytest printed. Run it in a clean worktree: it refuses to start with uncommitted changes
to the files it edits. docs/mutation-checks.md records a run."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTEST = [str(Path(sys.executable).with_name("pytest")), "-p", "no:cacheprovider", "-q", "-x", "--tb=short"]


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


FF = "tests/transcoder/test_fetch_faults.py::"
EF = "tests/transcoder/test_encode_failures.py::"
AD = "tests/intake/test_adopt.py::"

MUTATIONS = [
    # --- transcoder/fetch.py ---------------------------------------------------------------------
    Mutation("fetch-redirect-unchecked", "transcoder/fetch.py",
             "target = check_url(urljoin(f\"{target.scheme}://{target.host_header}{target.path}\", location),\n"
             "                                       policy)",
             "_u = urlsplit(urljoin(f\"{target.scheme}://{target.host_header}{target.path}\", location))\n"
             "                    target = Target(_u.scheme, _u.hostname, _u.port or 80, _u.path, (_u.hostname,))",
             (FF + "test_redirect_is_checked_like_the_original_url",),
             "a redirect is followed without checking it against the policy"),
    Mutation("fetch-416-keeps-offset", "transcoder/fetch.py",
             "            _restart(out, state)\n            raise _Retry(\"server refused the resume range; starting over\")",
             "            raise _Retry(\"server refused the resume range; starting over\")",
             (FF + "test_416_on_resume_starts_over",), "a 416 on resume does not start over"),
    Mutation("fetch-content-range-trusted", "transcoder/fetch.py",
             "if cr is None or cr[0] != state.have:", "if cr is None:",
             (FF + "test_wrong_content_range_starts_over",), "a 206 from the wrong offset is appended"),
    Mutation("fetch-range-ignored-appended", "transcoder/fetch.py",
             "            if state.have:\n                _restart(out, state)  # Range ignored",
             "            if False:\n                _restart(out, state)  # Range ignored",
             (FF + "test_server_ignoring_range_is_not_appended",), "a 200 to a resumed request is appended"),
    Mutation("fetch-one-attempt-more", "transcoder/fetch.py",
             "if failures >= policy.attempts or", "if failures > policy.attempts or",
             (FF + "test_gives_up_after_the_attempts_as_transient",), "one attempt more than configured"),
    Mutation("fetch-eai-again-unusable", "transcoder/fetch.py",
             "if exc.errno == socket.EAI_AGAIN:", "if False:",
             (FF + "test_system_resolver_classifies_dns_answers",), "EAI_AGAIN classified as unusable input"),
    Mutation("fetch-first-address-only", "transcoder/fetch.py",
             "for address in target.addresses:", "for address in target.addresses[:1]:",
             (FF + "test_fallback_to_the_next_resolved_address",), "no fallback to the next resolved address"),
    # --- transcoder/encode.py, errors.py, cli.py ---------------------------------------------------
    Mutation("encode-audio-failure-ignored", "transcoder/encode.py",
             "wait_for(procs, procs.start(argv_measure(audio, p, src), log), log, src, \"ffmpeg (loudness)\")",
             "procs.wait(procs.start(argv_measure(audio, p, src), log))",
             (EF + "test_only_the_parallel_audio_process_fails",),
             "the audio job's first ffmpeg (the loudness measurement) is not checked"),
    Mutation("encode-enospc-not-transient", "transcoder/encode.py",
             "if \"No space left on device\" in text:", "if False:",
             (EF + "test_mux_onto_a_full_disk_is_transient",), "ENOSPC not recognised"),
    Mutation("encode-vanished-file-blames-input", "transcoder/encode.py",
             "if \"No such file or directory\" in text:", "if False:",
             (EF + "test_mux_whose_own_input_vanished_is_not_the_inputs_fault",),
             "a vanished file of our own blamed on the input (the behaviour before this branch)"),
    Mutation("encode-our-fault-forgotten", "transcoder/encode.py",
             "_OUR_FAULT = (\"Unrecognized option\", \"Option not found\", \"Error splitting the argument list\",",
             "_OUR_FAULT = (\"(none)\", \"(none)\", \"(none)\",",
             (EF + "test_rejected_command_line_is_a_bug",), "a rejected command line not recognised as ours"),
    Mutation("encode-signal-not-transient", "transcoder/encode.py",
             "    if returncode < 0:\n        return Transient", "    if returncode < -100:\n        return Transient",
             (EF + "test_ffmpeg_crashing_is_transient",), "a crash (SIGSEGV) not classified as transient"),
    Mutation("encode-input-error-transient", "transcoder/encode.py",
             "    return UnusableInput(f\"{what} could not process the input: {reason}\")",
             "    return Transient(f\"{what} could not process the input: {reason}\")",
             (EF + "test_unreadable_input_is_unusable",), "an unreadable input retried as transient"),
    Mutation("cli-usage-exit-2", "transcoder/cli.py", "        sys.exit(64)", "        sys.exit(2)",
             (EF + "test_bad_command_line_exits_64",), "argparse's own exit 2 for a bad command line"),
    Mutation("errors-transient-exit-70", "transcoder/errors.py",
             "    exit_code = EXIT_TRANSIENT\n", "    exit_code = EXIT_BUG\n",
             (EF + "test_cdn_down_every_time_exits_75",), "transient failures exit 70"),
    # --- operator/intake/worker.py ------------------------------------------------------------------
    Mutation("intake-adopts-anything", "operator/intake/worker.py",
             "if not res.belongs_to(existing, payload, job.id, self.queue):", "if False:",
             (AD + "test_refuses_to_adopt_a_cr_made_for_another_job_or_upload",), "no ownership check on adopt"),
    Mutation("intake-adopts-dying", "operator/intake/worker.py",
             "        if meta.get(\"deletionTimestamp\"):\n            self._raise_deleted(name, existing)",
             "        if False:\n            self._raise_deleted(name, existing)",
             (AD + "test_a_cr_being_deleted_is_not_adopted",), "a CR being deleted is adopted"),
    # --- tests/standins/services.py (child processes) -----------------------------------------------
    Mutation("spawn-from-calling-thread", "tests/standins/services.py",
             "return _spawner.submit(subprocess.Popen, argv, preexec_fn=preexec, **kwargs).result()",
             "return subprocess." "Popen(argv, preexec_fn=preexec, **kwargs)",  # split: a guard greps for it
             ("tests/test_child_processes.py::test_children_die_with_a_killed_runner",),
             "children started from the calling thread (die with a short-lived thread)"),
    Mutation("no-pdeathsig", "tests/standins/services.py",
             "    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)", "    pass",
             ("tests/test_child_processes.py::test_children_die_with_a_killed_runner",),
             "no PR_SET_PDEATHSIG"),
    # --- the lead's sharpened tests (31664ef) -----------------------------------------------------------
    Mutation("chart-intake-rule-by-name", "helm/lectern/templates/rbac.yaml",
             "    resources: [\"videotranscodes\"]\n    verbs: [\"get\", \"list\", \"watch\", \"create\", \"delete\", \"patch\"]",
             "    resources: [\"videotranscodes\"]\n    resourceNames: [\"only-this-one\"]\n"
             "    verbs: [\"get\", \"list\", \"watch\", \"create\", \"delete\", \"patch\"]",
             ("tests/helm/test_chart.py::test_rbac_exactly_what_each_component_needs",),
             "the intake's rule limited to one named object (the old grants() ignored resourceNames)"),
    Mutation("operator-cpu-plus-one", "operator/reconcile.py",
             "                cost[dst] = report[src]",
             "                cost[dst] = report[src] + 1.0 if dst == \"cpuSeconds\" else report[src]",
             ("tests/operator/test_operator_flow.py::test_cap_and_success_flow",), "cpuSeconds relayed + 1.0"),
    Mutation("operator-wall-zero", "operator/reconcile.py",
             "cost[\"wallSeconds\"] = round((t_now - started).total_seconds(), 3)", "cost[\"wallSeconds\"] = 0.0",
             ("tests/operator/test_operator_flow.py::test_cap_and_success_flow",), "wallSeconds always 0"),
    Mutation("operator-wall-tenfold", "operator/reconcile.py",
             "cost[\"wallSeconds\"] = round((t_now - started).total_seconds(), 3)",
             "cost[\"wallSeconds\"] = round(10 * (t_now - started).total_seconds(), 3)",
             ("tests/operator/test_operator_flow.py::test_cap_and_success_flow",), "wallSeconds ten times too large"),
    Mutation("fake-no-video-url", "tests/fake_transcoder.py",
             "        record[\"videoUrl\"] = video", "        pass",
             ("tests/transcoder/test_contract.py::test_success",),
             "the fake's termination message without videoUrl"),
    Mutation("fake-extra-field", "tests/fake_transcoder.py",
             "        report(stage=\"failed\")", "        report(stage=\"failed\", attempt=1)",
             ("tests/transcoder/test_contract.py::test_unusable_input",),
             "the fake reports a field the real CLI never sends"),
    Mutation("intake-lock-not-retracked", "operator/intake/worker.py",
             "            self._ensure_lock_tracked(entry)", "            pass",
             ("tests/intake/test_intake.py::test_long_transcodes_keep_their_lock_and_a_lost_lock_hands_over",),
             "the newer delivery's lock is not re-tracked after a handover"),
]


def first_error(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("E ") and line[1:].strip():
            return line[1:].strip()[:160]
    tail = [ln for ln in output.splitlines() if ln.strip()]
    return tail[-1][:160] if tail else ""


def run(m: Mutation) -> tuple[bool, str, float]:
    path = ROOT / m.file
    original = path.read_bytes()
    text = original.decode()
    if text.count(m.old) != 1:
        raise SystemExit(f"{m.name}: the text to mutate occurs {text.count(m.old)} times in {m.file}")
    started = time.monotonic()
    try:
        path.write_text(text.replace(m.old, m.new))
        done = subprocess.run([*PYTEST, *m.tests], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    finally:
        path.write_bytes(original)
    return done.returncode != 0, first_error(done.stdout + done.stderr), time.monotonic() - started


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    files = sorted({m.file for m in chosen})
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *files], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    if dirty:
        raise SystemExit(f"uncommitted changes in files to mutate:\n{dirty}")
    survived = 0
    for m in chosen:
        caught, why, seconds = run(m)
        survived += not caught
        print(f"{'caught  ' if caught else 'SURVIVED'} {m.name:<34} {seconds:6.1f}s  {m.what} | {why}", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
