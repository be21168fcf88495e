"""The source analysis (analyse.py) on real generated media: slides are static, a noisy camera
is noisy, a moving scene is motion; and the class reaches the encoder's command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lectern_transcoder import analyse, encode, profile
from lectern_transcoder.probe import probe

pytestmark = pytest.mark.slow  # real decodes of generated media

SOURCES = {
    # slides with text; nothing moves between slide changes
    "static": "color=c=0xF4F1E8:s=640x360:r=15,drawbox=x=40:y=40:w=300:h=20:color=0x333333:t=fill,"
              "drawbox=x=40:y=90:w=220:h=20:color=0x333333:t=fill",
    # a still scene under temporal sensor noise (a laptop camera)
    "noisy": "color=c=0x606A74:s=640x360:r=15,drawbox=x=200:y=80:w=200:h=260:color=0xC08A68:t=fill,"
             "noise=alls=12:allf=t",
    # everything moves, no grain: a pan over a test pattern
    "motion": "testsrc2=s=1280x720:r=15,crop=640:360:x='mod(t*160\\,600)':y='mod(t*90\\,300)'",
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyse")
    out = {}
    for name, graph in SOURCES.items():
        path = root / f"{name}.mp4"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-filter_complex", f"{graph}[v]", "-map", "[v]",
                        "-t", "8", "-c:v", "libx264", "-preset", "veryfast", "-crf", "16", "-pix_fmt", "yuv420p",
                        str(path)], check=True)
        out[name] = path
    return out


@pytest.mark.parametrize("name", list(SOURCES))
def test_classes(sources, name):
    src = sources[name]
    a = analyse.analyse(probe(src), src)
    assert a.frames > 10
    assert a.content == name, a


def test_noise_is_told_from_motion(sources):
    noisy = analyse.analyse(probe(sources["noisy"]), sources["noisy"])
    moving = analyse.analyse(probe(sources["motion"]), sources["motion"])
    # noise: fine change far above the change of the downscaled copy; motion: both alike
    assert noisy.fine > analyse.NOISY_MIN_RATIO * noisy.motion
    assert moving.fine < analyse.NOISY_MIN_RATIO * moving.motion


def test_windows_cover_a_long_input_cheaply():
    starts = analyse.window_starts(3600)
    assert len(starts) == analyse.WINDOWS and starts == sorted(starts) and 0 < starts[0] and starts[-1] < 3600
    assert analyse.window_starts(4) == [0.0]


def test_class_settings_reach_the_command_line(sources):
    p = probe(sources["noisy"])
    for content, settings in profile.CONTENT_SETTINGS.items():
        pl = encode.plan(p, threads=2, content=content)
        argv = encode.argv_main(pl, p, Path(sources["noisy"]), Path("out.mp4"))
        vf = argv[argv.index("-vf") + 1]
        assert argv[argv.index("-crf") + 1] == str(settings["crf"])
        assert argv[argv.index("-g") + 1] == str(round(15 * settings["gop_seconds"]))
        for f in settings["filters"]:
            assert f in vf


def test_unreadable_windows_fall_back_to_the_general_settings(tmp_path, sources):
    """A file whose frames cannot be decoded is analysed as `motion` (the defaults), not an error:
    the encode itself reports the broken input."""
    broken = tmp_path / "broken.mp4"
    data = bytearray(sources["static"].read_bytes())
    mdat = data.find(b"mdat")
    size = int.from_bytes(data[mdat - 4:mdat], "big")
    data[mdat + 4:mdat - 4 + size] = bytes(size - 8)  # zero every frame, keep the index (moov)
    broken.write_bytes(bytes(data))
    a = analyse.analyse(probe(broken), broken)
    assert a.content == "motion"
