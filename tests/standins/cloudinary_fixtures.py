"""Fixtures for the Cloudinary emulator (`tests/standins/cloudinary.py`).

    def test_upload(cloudinary_env, tmp_path):           # SDK configured, CLOUDINARY_URL set
        emu = cloudinary_env                              # the same object as cloudinary_emulator
        emu.put_asset(raw_mp4, "raw/lecture1")            # "the API already uploaded it"
        url = emu.delivery_url("raw/lecture1", "w_1280,h_720,c_limit")
        emu.drop_connection_after(100_000)                # next delivery response is cut
        ...  run lectern-transcode url cloudinary:out/lecture1 (it inherits CLOUDINARY_URL)
        assert emu.asset("out/lecture1").probe ...

One server per session (starting ffmpeg-backed derivations is what costs, and the cache of
derived renditions is shared); every test gets it freshly `reset()`: no assets, no faults,
zeroed counters.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from tests.standins.cloudinary import CloudinaryEmulator


@pytest.fixture(scope="session")
def cloudinary_emulator_session(tmp_path_factory):
    """The running server; use `cloudinary_emulator` in tests (it resets between tests)."""
    with CloudinaryEmulator(root=tmp_path_factory.mktemp("cloudinary")) as emu:
        yield emu


@pytest.fixture
def cloudinary_emulator(cloudinary_emulator_session):
    """The session's emulator, reset before and after the test."""
    cloudinary_emulator_session.reset()
    yield cloudinary_emulator_session
    cloudinary_emulator_session.reset()


@contextlib.contextmanager
def sdk_pointed_at(cloudinary_url: str) -> Iterator[None]:
    """Sets CLOUDINARY_URL (inherited by subprocesses such as `lectern-transcode`) and reloads
    the in-process SDK config from it; both are restored on exit."""
    import cloudinary

    saved = {k: os.environ.get(k) for k in ("CLOUDINARY_URL", "CLOUDINARY_CLOUD_NAME")}
    os.environ["CLOUDINARY_URL"] = cloudinary_url
    os.environ.pop("CLOUDINARY_CLOUD_NAME", None)  # it would win over the URL
    cloudinary.reset_config()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        cloudinary.reset_config()


@pytest.fixture
def cloudinary_env(cloudinary_emulator):
    """The emulator, with the SDK and CLOUDINARY_URL pointed at it (see `sdk_pointed_at`)."""
    with sdk_pointed_at(cloudinary_emulator.cloudinary_url):
        yield cloudinary_emulator
