"""The ladder played for real: `lectern-transcode ... --hls cloudinary:<folder>` uploads the set
to the Cloudinary emulator (https, a throw-away CA), and headless Chromium (Debian's `chromium`)
plays the master playlist's secure URL with hls.js from npm (tests/node). The player loads the
master playlist, plays past the first two segments, and when the test throttles the page's
bandwidth with Chrome DevTools' network emulation it switches down a rung and keeps playing.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: fd 3 in,
fd 4 out, NUL-terminated JSON), so nothing beyond the standard library is needed here. The page
(about:blank, an opaque origin, as a player on another domain than the CDN) trusts only the
emulator's certificate (`--ignore-certificate-errors-spki-list` with its key's hash), not every
certificate."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from lectern_transcoder import sample
from tests.standins.cloudinary import CloudinaryEmulator
from tests.standins.services import spawn
from tests.standins.tls import make_test_certs

from .conftest import CLI

ROOT = Path(__file__).resolve().parents[2]
HLS_JS = ROOT / "tests" / "node" / "node_modules" / "hls.js" / "dist" / "hls.min.js"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--remote-debugging-pipe"]


def _chromium() -> str:
    """Debian's chromium; `make sysdeps` installs it when missing (as make test does)."""
    found = shutil.which("chromium")
    if not found:
        subprocess.run(["make", "-C", str(ROOT), "sysdeps"], check=False, timeout=900)
        found = shutil.which("chromium")
    if not found:
        pytest.fail("chromium is not installed (make sysdeps installs Debian's chromium package)")
    return found


class Chromium:
    """A headless Chromium and one page, over the DevTools protocol on a pipe."""

    def __init__(self, binary: str, user_data_dir: Path, extra_flags: list[str]) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # in the child: the pipes become fd 3 (commands) and fd 4 (answers)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome_r, from_chrome_w)]
            os.dup2(high[0], 3)  # dup2's copies are inheritable: they survive the exec
            os.dup2(high[1], 4)

        self.proc = spawn([binary, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", *extra_flags,
                           "about:blank"], preexec_fn=fds, close_fds=False,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=open(user_data_dir / "chromium.log", "wb"))
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._id = 0
        self._buf = b""
        self._answers: dict[int, dict] = {}
        self._lock = threading.Lock()
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, session: bool = True, timeout: float = 60) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while self._id not in self._answers:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"no answer to {method} from chromium")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                m = json.loads(raw)
                if "id" in m:
                    self._answers[m["id"]] = m
        answer = self._answers.pop(self._id)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def open_page(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.send("Runtime.enable")
        self.send("Network.enable")

    def evaluate(self, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"page error: {r['exceptionDetails']}")
        return r["result"].get("value")

    def throttle(self, bytes_per_second: int | None) -> None:
        self.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0 if bytes_per_second is None else 50,
            "downloadThroughput": -1 if bytes_per_second is None else bytes_per_second,
            "uploadThroughput": -1 if bytes_per_second is None else bytes_per_second})

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=5)
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass


def spki_hash(cert: Path) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of a PEM certificate, what Chromium's
    --ignore-certificate-errors-spki-list takes."""
    pub = subprocess.run(["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"], capture_output=True,
                         check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub, capture_output=True,
                         check=True).stdout
    import hashlib

    return base64.b64encode(hashlib.sha256(der).digest()).decode()


PLAYER = """
(() => {
  const video = document.createElement('video');
  video.muted = true; video.autoplay = true; video.width = 1280; video.height = 720;
  document.body.appendChild(video);
  const s = window.__s = {levels: [], switched: [], frags: [], errors: [], manifest: false};
  const hls = window.__hls = new Hls({maxBufferLength: 4, maxMaxBufferLength: 8, backBufferLength: 0,
                                       capLevelToPlayerSize: false, startLevel: 0, abrEwmaDefaultEstimate: 5e6});
  hls.on(Hls.Events.MANIFEST_PARSED, (e, d) => { s.manifest = true;
    s.levels = d.levels.map(l => ({width: l.width, height: l.height, bitrate: l.bitrate, codecs: l.codecSet,
                                    url: l.url[0]})); });
  hls.on(Hls.Events.LEVEL_SWITCHED, (e, d) => s.switched.push({level: d.level, at: video.currentTime,
                                                                 now: performance.now()}));
  hls.on(Hls.Events.FRAG_BUFFERED, (e, d) => s.frags.push({type: d.frag.type, level: d.frag.level, sn: d.frag.sn,
                                                            now: performance.now()}));
  hls.on(Hls.Events.ERROR, (e, d) => s.errors.push({type: d.type, details: d.details, fatal: d.fatal}));
  hls.loadSource(%s);
  hls.attachMedia(video);
  video.play().catch(e => s.errors.push({type: 'play', details: String(e), fatal: true}));
  return Hls.version;
})()
"""

STATE = """JSON.stringify({...window.__s, time: document.querySelector('video').currentTime,
  paused: document.querySelector('video').paused, level: window.__hls.currentLevel,
  estimate: window.__hls.bandwidthEstimate, mse: MediaSource.isTypeSupported('video/mp4; codecs="avc1.64001f"')})"""


@pytest.fixture(scope="module")
def tls_emulator(tmp_path_factory):
    d = tmp_path_factory.mktemp("cdn")
    certs = make_test_certs(d / "certs")
    with CloudinaryEmulator(root=d / "store", tls=(certs.cert, certs.key)) as emu:
        yield emu, certs


def test_hls_plays_in_chromium_and_switches_down_when_throttled(tls_emulator, tmp_path):
    if not HLS_JS.is_file():
        pytest.fail("tests/node/node_modules/hls.js missing (make test runs npm ci in tests/node)")
    chromium = _chromium()
    emu, certs = tls_emulator
    # 40 s of 720p lecture at 15 fps: 720p + 480p rungs, 7 segments
    src = sample.generate(tmp_path / "lecture.mp4", 40, "1280x720", fps=15, preset="ultrafast")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "CLOUDINARY_URL": emu.cloudinary_url}
    env.pop("CLOUDINARY_CLOUD_NAME", None)
    done = subprocess.run([CLI, str(src), "cloudinary:lectures/play/abc", "--hls", "cloudinary:lectures/play/abc-hls",
                           "--progress", "json"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert list(scratch.iterdir()) == []
    result = json.loads(done.stdout.splitlines()[-1])
    hls_url = result["hlsUrl"]
    assert hls_url.startswith(emu.https_base_url + "/") and hls_url.endswith("/lectures/play/abc-hls/master.m3u8")
    rungs = {r["name"]: r for r in result["hls"]["rungs"]}
    assert set(rungs) == {"720p", "480p"}

    profile_dir = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
    browser = Chromium(chromium, profile_dir, [f"--ignore-certificate-errors-spki-list={spki_hash(certs.cert)}"])
    try:
        browser.open_page()
        browser.evaluate(HLS_JS.read_text())
        version = browser.evaluate(PLAYER % json.dumps(hls_url))
        state = {}

        def poll(until, timeout: float, what: str) -> dict:
            nonlocal state
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                state = json.loads(browser.evaluate(STATE))
                if any(e["fatal"] for e in state["errors"]):
                    pytest.fail(f"hls.js {version} fatal error: {state['errors']}")
                if until(state):
                    return state
                time.sleep(0.25)
            pytest.fail(f"timed out waiting for {what}: {json.dumps(state)[:2000]}")

        state = poll(lambda s: s["manifest"], 30, "the master playlist")
        assert state["mse"], "this chromium cannot play H.264 in MSE"
        levels = state["levels"]
        assert sorted((lv["width"], lv["height"]) for lv in levels) == [(854, 480), (1280, 720)]
        top = max(range(len(levels)), key=lambda i: levels[i]["height"])
        low = min(range(len(levels)), key=lambda i: levels[i]["height"])
        # plays past the first two segments (12 s), at the top rung while bandwidth is plentiful
        state = poll(lambda s: s["time"] > 2 * 6 + 0.5, 60, "playback past two segments")
        assert not state["paused"]
        played_top = [f for f in state["frags"] if f["type"] == "main" and f["level"] == top]
        assert len(played_top) >= 2, state["frags"]
        assert any(f["type"] == "audio" for f in state["frags"])
        # throttle the page to ~half the 720p rung's peak rate: hls.js must switch down and keep playing
        throttled_at = time.monotonic()
        cap = int(rungs["720p"]["variantBandwidth"] / 8 * 0.5)
        assert cap * 8 > rungs["480p"]["variantAverageBandwidth"] * 0.3
        assert state["level"] == top and state["switched"][-1]["level"] == top, state["switched"]
        switches, frags = len(state["switched"]), len(state["frags"])
        browser.throttle(cap)
        t0 = state["time"]
        state = poll(lambda s: any(sw["level"] == low for sw in s["switched"][switches:])
                     and any(f["type"] == "main" and f["level"] == low for f in s["frags"][frags:]), 90,
                     "a switch down to the 480p rung")
        state = poll(lambda s: s["time"] > t0 + 1, 60, "playback to go on after the switch")
        assert [e for e in state["errors"] if e["fatal"]] == []
        print(f"hls.js {version}: levels {levels}; switched {state['switched']}; "
              f"switch down {time.monotonic() - throttled_at:.1f} s after throttling to {cap} B/s")
    finally:
        browser.close()
        shutil.rmtree(profile_dir, ignore_errors=True)
