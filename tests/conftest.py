"""Session-wide real services. Scenario-specific stand-ins (Kubernetes, Cloudinary) have
their own fixtures next to the tests that use them."""

from __future__ import annotations

import os

import pytest

from hack.build import ensure_binaries
from tests.standins.services import ExternalMongo, MongoServer, RedisServer, ferretdb_binary


def pytest_collection_finish(session):
    """Build the local cluster's binaries and FerretDB (hack/build.py, once per machine; cached
    after) before the first test, so a cold build does not count against a test's timeout. A
    failed build is reported here and again by each test that needs the binary."""
    if not session.items or session.config.option.collectonly:
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    try:
        with capture.global_and_fixture_disabled():  # hack/build says what it builds and for how long
            ferretdb_binary()
            ensure_binaries()
    except Exception as exc:  # BuildError, no Go: the tests that need it fail with it
        session.config.get_terminal_writer().line(f"the local cluster could not be built: {exc}", red=True)


@pytest.fixture(scope="session")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    """The session's MongoDB: a local FerretDB, or the real MongoDB given by `MONGO_URL`. Tests
    that stop a MongoDB start their own `MongoServer` (always local) instead of this one."""
    if os.environ.get("MONGO_URL"):
        yield ExternalMongo(os.environ["MONGO_URL"])
        return
    with MongoServer(tmp_path_factory.mktemp("mongo")) as server:
        yield server

# The real local cluster (hack/cluster.py) and the Cloudinary stand-in.
pytest_plugins = ["tests.cluster_fixtures", "tests.standins.cloudinary_fixtures"]
