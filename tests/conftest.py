"""Session-wide real services. Scenario-specific stand-ins (Kubernetes, Cloudinary) have
their own fixtures next to the tests that use them."""

from __future__ import annotations

import os

import pytest

from tests.standins.services import MongoServer, RedisServer


@pytest.fixture(scope="session")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def mongo_server():
    if os.environ.get("MONGO_URL"):
        # A real MongoDB given by the environment replaces the stand-in.
        class _External:
            url = os.environ["MONGO_URL"]
        yield _External()
        return
    with MongoServer() as server:
        yield server

# Fixtures of the stand-ins for a Kubernetes API server (+ a local kubelet/job controller) and
# for Cloudinary live beside them.
pytest_plugins = ["tests.standins.kube_fixtures", "tests.standins.cloudinary_fixtures"]
