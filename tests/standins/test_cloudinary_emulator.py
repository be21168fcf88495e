"""The emulator against Cloudinary's documented behaviour, driven by the real SDK: if these
pass, code that works here talks to Cloudinary the way Cloudinary expects."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cloudinary
import cloudinary.uploader
import pytest
from cloudinary.exceptions import AuthorizationRequired, Error

from tests.standins.cloudinary import CloudinaryProcess, ControlError, string_to_sign
from tests.standins.cloudinary_fixtures import sdk_pointed_at
from tests.standins.services import free_port, python_main
from tests.standins.tls import make_test_certs


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 2 s 640x360 H.264/AAC clip (made once per module; ffmpeg's test sources)."""
    out = tmp_path_factory.mktemp("media") / "clip.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=640x360:rate=25:duration=2", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=2", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(out)], check=True)
    return out


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def ffprobe_dims(data: bytes, tmp_path: Path) -> tuple[int, int]:
    p = tmp_path / "probe.mp4"
    p.write_bytes(data)
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=width,height", "-of", "json", str(p)], capture_output=True, check=True)
    s = json.loads(out.stdout)["streams"][0]
    return s["width"], s["height"]


def test_config_comes_from_cloudinary_url(cloudinary_env):
    cfg = cloudinary.config()
    assert cfg.upload_prefix == cloudinary_env.base_url
    assert (cfg.cloud_name, cfg.api_key) == (cloudinary_env.cloud_name, cloudinary_env.api_key)


def test_signed_upload(cloudinary_env, clip, tmp_path):
    res = cloudinary.uploader.upload(str(clip), resource_type="video", public_id="lectures/a")
    assert res["public_id"] == "lectures/a" and res["resource_type"] == "video"
    assert (res["width"], res["height"], res["format"]) == (640, 360, "mp4")
    assert res["bytes"] == clip.stat().st_size and 1.9 < res["duration"] < 2.2
    assert res["secure_url"].startswith(cloudinary_env.base_url + "/democloud/video/upload/v")
    assert res["secure_url"] == cloudinary_env.secure_url_for("lectures/a")
    status, _, body = get(res["secure_url"])
    assert status == 200 and body == clip.read_bytes()
    assert cloudinary_env.uploads[0]["params"]["public_id"] == "lectures/a"


def test_signature_string_matches_the_sdk():
    from cloudinary.utils import api_string_to_sign
    params = {"public_id": "a&b", "timestamp": "1", "tags": ["x", "y"], "overwrite": "1",
              "file": "f", "api_key": "k", "resource_type": "video", "cloud_name": "c"}
    signable = {k: v for k, v in params.items() if k not in ("file", "api_key", "resource_type", "cloud_name")}
    assert string_to_sign(params) == api_string_to_sign(signable)


def test_wrong_secret_is_rejected(cloudinary_env, clip):
    with pytest.raises(AuthorizationRequired, match="Invalid Signature"):
        cloudinary.uploader.upload(str(clip), resource_type="video", api_secret="wrong")
    with pytest.raises(AuthorizationRequired):
        cloudinary.uploader.upload(str(clip), resource_type="video", api_key="999")
    assert not cloudinary_env.assets


def test_sha256_signatures_are_accepted(cloudinary_env, clip):
    res = cloudinary.uploader.upload(str(clip), resource_type="video", signature_algorithm="sha256")
    assert len(res["public_id"]) == 20


def test_upload_large_reassembles_byte_identical(cloudinary_env, clip):
    res = cloudinary.uploader.upload_large(str(clip), resource_type="video", public_id="big",
                                           chunk_size=7_000)
    data = clip.read_bytes()
    assert res["bytes"] == len(data) and res["width"] == 640
    assert cloudinary_env.asset("big").path.read_bytes() == data
    assert cloudinary_env.uploads[-1]["parts"] == -(-len(data) // 7_000)
    # without a public_id the one assigned at the first chunk sticks
    res2 = cloudinary.uploader.upload_large(str(clip), resource_type="video", chunk_size=50_000)
    assert cloudinary_env.asset(res2["public_id"]).path.read_bytes() == data


def test_video_upload_of_garbage_is_refused(cloudinary_env, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 1000)
    with pytest.raises(Error, match="Unsupported video format"):
        cloudinary.uploader.upload(str(junk), resource_type="video")
    res = cloudinary.uploader.upload(str(junk), resource_type="raw", public_id="junk.bin")
    assert res["public_id"] == "junk.bin" and res["resource_type"] == "raw"


def test_overwrite_semantics(cloudinary_env, clip, tmp_path):
    first = cloudinary.uploader.upload(str(clip), resource_type="video", public_id="p")
    small = tmp_path / "small.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(clip), "-t", "1", "-c", "copy",
                    str(small)], check=True)
    kept = cloudinary.uploader.upload(str(small), resource_type="video", public_id="p", overwrite=False)
    assert kept["existing"] is True and kept["version"] == first["version"]
    assert cloudinary_env.asset("p").bytes == clip.stat().st_size
    new = cloudinary.uploader.upload(str(small), resource_type="video", public_id="p")
    assert new["overwritten"] is True and new["version"] > first["version"]
    assert cloudinary_env.asset("p").bytes == small.stat().st_size


def test_folder_and_use_filename(cloudinary_env, clip):
    res = cloudinary.uploader.upload(str(clip), resource_type="video", folder="course/1",
                                     use_filename=True, unique_filename=False)
    assert res["public_id"] == "course/1/clip" and res["folder"] == "course/1"


def test_delivery_range(cloudinary_emulator, clip):
    cloudinary_emulator.put_asset(clip, "raw/r1")
    url = cloudinary_emulator.delivery_url("raw/r1")
    data = clip.read_bytes()
    status, headers, body = get(url, {"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert headers["Accept-Ranges"] == "bytes"
    assert get(url, {"Range": "bytes=1000-"})[2] == data[1000:]
    assert get(url, {"Range": "bytes=-10"})[2] == data[-10:]
    assert get(url, {"Range": f"bytes={len(data)}-"})[0] == 416
    assert get(url, {"Range": "bytes=0-9", "If-Range": '"stale"'})[0] == 200
    assert get(cloudinary_emulator.delivery_url("nope"))[0] == 404
    versioned = cloudinary_emulator.delivery_url("raw/r1", version=123)
    assert "/v123/raw/r1.mp4" in versioned and get(versioned)[2] == data


@pytest.mark.parametrize("transformation, dims", [
    ("w_320,h_320,c_limit", (320, 180)),
    ("w_1280,h_720,c_limit", (640, 360)),     # limit never upscales: the original is served
    ("h_180", (320, 180)),                     # c_scale keeps the aspect with one side given
    ("w_200,h_200,c_scale", (200, 200)),
])
def test_transformations(cloudinary_emulator, clip, tmp_path, transformation, dims):
    cloudinary_emulator.put_asset(clip, "t")
    status, headers, body = get(cloudinary_emulator.delivery_url("t", transformation))
    assert status == 200 and headers["Content-Type"] == "video/mp4"
    assert ffprobe_dims(body, tmp_path) == dims
    bad = get(cloudinary_emulator.delivery_url("t", "e_blur"))
    assert bad[0] == 400 and "Invalid transformation" in bad[1]["X-Cld-Error"]


def test_signed_delivery_urls(cloudinary_emulator, clip):
    cloudinary_emulator.put_asset(clip, "s/one")
    url = cloudinary_emulator.delivery_url("s/one", "w_320,c_limit", sign_url=True, version=5)
    assert "/s--" in url and get(url)[0] == 200
    forged = url.replace("w_320", "w_300")
    assert get(forged)[0] == 401


def test_drop_connection_after_n_bytes(cloudinary_emulator, clip):
    cloudinary_emulator.put_asset(clip, "d")
    url = cloudinary_emulator.delivery_url("d")
    cloudinary_emulator.drop_connection_after(5000, times=2)
    for _ in range(2):
        with pytest.raises(http.client.IncompleteRead) as exc:
            get(url)
        assert len(exc.value.partial) == 5000
    assert get(url)[2] == clip.read_bytes()
    assert cloudinary_emulator.bytes_served == 10000 + clip.stat().st_size
    assert cloudinary_emulator.request_count("delivery") == 3


def test_fail_next_and_latency(cloudinary_env, clip):
    emu = cloudinary_env
    emu.fail_next(2, status=503, route="upload")
    for _ in range(2):
        with pytest.raises(Error):
            cloudinary.uploader.upload(str(clip), resource_type="video")
    assert cloudinary.uploader.upload(str(clip), resource_type="video", public_id="ok")
    emu.fail_next(1, status=502, route="delivery", body="html")
    url = emu.delivery_url("ok")
    assert get(url)[0] == 502 and get(url)[0] == 200
    emu.set_latency(0.3, route="delivery")
    import time
    t0 = time.monotonic()
    get(url, {"Range": "bytes=0-0"})
    assert time.monotonic() - t0 >= 0.3
    assert [r["status"] for r in emu.requests if r["route"] == "upload"] == [503, 503, 200]
    assert emu.bytes_received > 2 * clip.stat().st_size


def test_destroy(cloudinary_env, clip):
    cloudinary.uploader.upload(str(clip), resource_type="video", public_id="gone")
    assert cloudinary.uploader.destroy("gone", resource_type="video")["result"] == "ok"
    assert get(cloudinary_env.delivery_url("gone"))[0] == 404


# -- the emulator as a process of its own, driven through its control API --------------------

@pytest.fixture(scope="module")
def cld_process(tmp_path_factory):
    """One emulator process for the module's process tests (faults cleared per test)."""
    with CloudinaryProcess(tmp_path_factory.mktemp("cldproc") / "root") as proc:
        yield proc


@pytest.fixture
def cld(cld_process):
    """The process, with the in-process SDK configured from its CLOUDINARY_URL."""
    cld_process.control.clear_faults()
    with sdk_pointed_at(cld_process.cloudinary_url):
        yield cld_process


def test_python_main_argv():
    argv = python_main("tests.standins.cloudinary", "--port", "0")
    assert argv[0] == sys.executable and argv[1] == "-c" and argv[-2:] == ["--port", "0"]
    assert "from tests.standins.cloudinary import main; main(sys.argv[1:])" in argv[2]
    assert repr(str(Path(__file__).resolve().parents[2])) in argv[2]
    with pytest.raises(ValueError):
        python_main("os; import evil")


def test_process_ready_file_upload_and_stats(cld, clip):
    info = json.loads(cld.ready_file.read_text())
    assert set(info) >= {"pid", "base_url", "https_base_url", "tls_port", "cloudinary_url"}
    assert info["pid"] == cld.proc.pid != os.getpid()
    assert info["https_base_url"] is None and info["tls_port"] is None
    assert cld.cloudinary_url.endswith(f"?upload_prefix={cld.base_url}")
    before = cld.control.stats()

    res = cloudinary.uploader.upload(str(clip), resource_type="video", public_id="p/one")
    assert res["public_id"] == "p/one" and (res["width"], res["height"]) == (640, 360)
    assert res["secure_url"].startswith(cld.base_url + "/democloud/video/upload/v")
    status, _, body = get(res["secure_url"])
    assert status == 200 and body == clip.read_bytes()
    assert get(cld.delivery_url("p/one"), {"Range": "bytes=0-9"})[2] == body[:10]

    stats = cld.control.stats()
    assert stats["requests"]["upload"] == before["requests"]["upload"] + 1
    assert stats["requests"]["delivery"] == before["requests"]["delivery"] + 2
    assert stats["bytes_served"] == before["bytes_served"] + len(body) + 10
    assert stats["bytes_received"] > before["bytes_received"] + len(body)
    assert stats["uploads_in_progress"] == 0 and stats["temp_files"] == []


def test_process_faults_through_the_control_api(cld, clip):
    ctl = cld.control
    res = cloudinary.uploader.upload(str(clip), resource_type="video", public_id="f")
    ctl.fail_next(1, status=503, route="upload")
    with pytest.raises(Error):
        cloudinary.uploader.upload(str(clip), resource_type="video")
    assert cloudinary.uploader.upload(str(clip), resource_type="video", public_id="f2")
    assert ctl.stats()["requests_by_status"]["upload"]["503"] >= 1

    url = res["secure_url"]
    ctl.drop_connection_after(3000, times=1)
    with pytest.raises(http.client.IncompleteRead) as exc:
        get(url)
    assert len(exc.value.partial) == 3000
    assert get(url)[2] == clip.read_bytes()

    ctl.fail_next(1, status=502, route="delivery", body="html")
    ctl.set_latency(0.2, route="delivery")
    t0 = time.monotonic()
    assert get(url)[0] == 502
    assert time.monotonic() - t0 >= 0.2
    ctl.throttle(100_000)
    faults = ctl.stats()["faults"]
    assert faults["throttle"] == 100_000 and faults["latency"] == {"delivery": 0.2}
    ctl.clear_faults()
    assert ctl.stats()["faults"] == {"drop_connection_after": {"nbytes": None, "times": 0},
                                     "fail_next": {}, "latency": {}, "throttle": None}
    assert get(url)[0] == 200
    # several faults in one body, all-or-nothing validation
    ctl.faults(fail_next={"times": 2}, latency={"seconds": 0})
    assert ctl.stats()["faults"]["fail_next"]["upload"]["times"] == 2
    with pytest.raises(ControlError, match="unknown fault"):
        ctl.faults(clear=True, bogus=1)
    assert ctl.stats()["faults"]["fail_next"]["upload"]["times"] == 2


def test_process_control_api_rejects_bad_requests(cld):
    def raw(method, path, body=None):
        req = urllib.request.Request(cld.base_url + path, data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    for body in (b"not json", b"[]", b'{"fail_next": {"times": -1}}',
                 b'{"throttle": {"bytes_per_second": "fast"}}', b'{"clear": false}'):
        status, answer = raw("POST", "/_emulator/faults", body)
        assert status == 400 and answer.count(b"\n") == 1, (body, answer)
        assert json.loads(answer)["error"]["message"]
    assert raw("GET", "/_emulator/nope")[0] == 404
    assert raw("POST", "/_emulator/stats", b"")[0] == 405
    assert raw("PUT", "/_emulator/assets/nonsense/x", b"abc")[0] == 400
    counted = cld.control.stats()["requests_total"]
    assert cld.control.stats()["requests_total"] == counted  # control calls are not counted


def test_process_put_asset_plants_unusable_bytes(cld, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(50_000))
    res = cld.control.put_asset(junk, "planted/not a video", resource_type="video")
    assert res["public_id"] == "planted/not a video" and res["bytes"] == 50_000
    assert res["resource_type"] == "video" and res["format"] == "mp4"
    assert "width" not in res
    status, headers, body = get(res["secure_url"])
    assert status == 200 and body == junk.read_bytes() and headers["Content-Type"] == "video/mp4"
    assert get(cld.delivery_url("planted/not a video"), {"Range": "bytes=-100"})[2] == body[-100:]
    assert cld.control.stats()["temp_files"] == []


def test_process_chunked_upload_state_and_leftovers(cld, clip):
    data = clip.read_bytes()
    half = len(data) // 2
    headers = {"Content-Range": f"bytes 0-{half - 1}/{len(data)}", "X-Unique-Upload-Id": "u-1"}
    part = cloudinary.uploader.upload_large_part(("clip.mp4", data[:half]), http_headers=headers,
                                                 resource_type="video", public_id="chunky")
    assert part["done"] is False
    stats = cld.control.stats()
    assert stats["uploads_in_progress"] == 1 and stats["chunked_uploads"]["u-1"]["bytes"] == half
    assert len(stats["temp_files"]) == 1 and stats["temp_files"][0].startswith("chunks/")
    headers["Content-Range"] = f"bytes {half}-{len(data) - 1}/{len(data)}"
    res = cloudinary.uploader.upload_large_part(("clip.mp4", data[half:]), http_headers=headers,
                                                resource_type="video", public_id="chunky")
    assert res["public_id"] == "chunky" and res["bytes"] == len(data)
    cloudinary.uploader.upload_large(str(clip), resource_type="video", chunk_size=60_000)
    stats = cld.control.stats()
    assert stats["uploads_in_progress"] == 0 and stats["temp_files"] == []


def test_process_with_tls_and_clean_sigterm(tmp_path, clip):
    certs = make_test_certs(tmp_path / "tls")
    proc = CloudinaryProcess(tmp_path / "cld", tls=(certs.cert, certs.key), quiet=True).start()
    try:
        assert proc.https_base_url == f"https://127.0.0.1:{proc.tls_port}"
        info = json.loads(proc.ready_file.read_text())
        assert info["tls_port"] == proc.tls_port and info["https_base_url"] == proc.https_base_url
        res = proc.control.put_asset(clip, "secure/clip")
        assert res["secure_url"].startswith(proc.https_base_url + "/democloud/video/upload/v")
        assert res["url"].startswith(proc.base_url)
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        with urllib.request.urlopen(res["secure_url"], context=ctx, timeout=10) as r:
            assert r.read() == clip.read_bytes()
        assert proc.delivery_url("secure/clip").startswith(proc.https_base_url)
        # the control API lives on the plain-http listener only
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(proc.https_base_url + "/_emulator/stats", context=ctx, timeout=10)
        assert exc.value.code == 404
        assert proc.control.stats()["requests"]["delivery"] == 1
    finally:
        pid, popen = proc.pid, proc.proc
        assert proc.stop() == 0
    assert popen.poll() == 0 and proc.proc is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not proc.ready_file.exists()
    assert "stopping" in proc.log_path.read_text()


def test_process_sigint_exits_zero(tmp_path):
    proc = CloudinaryProcess(tmp_path / "cld", port=free_port()).start()
    assert proc.base_url == f"http://127.0.0.1:{proc.port}"
    proc.proc.send_signal(signal.SIGINT)
    assert proc.proc.wait(10) == 0
    proc.stop()


def test_process_start_failure_shows_the_log(tmp_path):
    missing = tmp_path / "missing.pem"
    proc = CloudinaryProcess(tmp_path / "cld", tls=(missing, missing))
    with pytest.raises(RuntimeError, match="exited with 1 before it was ready") as exc:
        proc.start()
    assert "FileNotFoundError" in str(exc.value) or "No such file" in str(exc.value)
    assert proc.proc is None


# -- raw HLS sets (issue 15): content types by extension, Range on raw assets, CORS ------------

def test_raw_hls_set_content_types_range_and_cors(cloudinary_env, clip, tmp_path):
    """Raw resources uploaded with the SDK keep their extension in the public id and are
    served with the content type of that extension (not the host's mime.types), single-range
    Range on them, and the CORS headers a player on another origin needs; a preflight for a
    Range request is answered."""
    files = {"master.m3u8": b"#EXTM3U\n#EXT-X-VERSION:7\n", "seg_00001.m4s": os.urandom(5000),
             "720p.mp4": clip.read_bytes()}
    expected = {"master.m3u8": "application/vnd.apple.mpegurl", "seg_00001.m4s": "video/iso.segment",
                "720p.mp4": "video/mp4"}
    urls = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        res = cloudinary.uploader.upload(str(tmp_path / name), resource_type="raw", public_id=f"hls/l1/{name}",
                                         overwrite=True)
        assert res["public_id"] == f"hls/l1/{name}" and res["resource_type"] == "raw"
        urls[name] = res["secure_url"]
        assert urls[name].endswith(f"/raw/upload/v{res['version']}/hls/l1/{name}")
    for name, data in files.items():
        status, headers, body = get(urls[name])
        assert (status, headers["Content-Type"], body) == (200, expected[name], data)
        assert headers["Access-Control-Allow-Origin"] == "*"
        assert "Content-Range" in headers["Access-Control-Expose-Headers"]
    status, headers, body = get(urls["720p.mp4"], {"Range": "bytes=826-1825", "Origin": "null"})
    assert (status, body, headers["Content-Type"]) == (206, files["720p.mp4"][826:1826], "video/mp4")
    assert headers["Content-Range"] == f"bytes 826-1825/{len(files['720p.mp4'])}"
    # a sibling's relative URI resolves under any version segment (players resolve against the master's URL)
    sibling = urls["master.m3u8"].rsplit("/", 1)[0] + "/seg_00001.m4s"
    assert get(sibling)[2] == files["seg_00001.m4s"]
    preflight = urllib.request.Request(urls["720p.mp4"], method="OPTIONS", headers={
        "Origin": "https://platform.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "range"})
    with urllib.request.urlopen(preflight, timeout=30) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "Range" in r.headers["Access-Control-Allow-Headers"]
        assert "GET" in r.headers["Access-Control-Allow-Methods"]


def test_image_upload_of_a_jpeg_is_served_as_image_jpeg(cloudinary_env, clip, tmp_path):
    poster = tmp_path / "poster.jpg"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(clip), "-frames:v", "1", "-y", str(poster)],
                   check=True)
    res = cloudinary.uploader.upload(str(poster), resource_type="image", public_id="hls/l1/poster")
    assert res["secure_url"].endswith("/image/upload/v%d/hls/l1/poster.jpg" % res["version"])
    assert (res["width"], res["height"]) == (640, 360)
    status, headers, body = get(res["secure_url"])
    assert (status, headers["Content-Type"], body) == (200, "image/jpeg", poster.read_bytes())
