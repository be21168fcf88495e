import pymongo
import pytest
import redis

from tests.standins.services import ExternalMongo, MongoServer


def test_redis_is_real(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    assert r.ping()
    assert r.info("server")["redis_version"]


def test_mongo_speaks_the_wire_protocol(mongo_server):
    client = pymongo.MongoClient(mongo_server.url, serverSelectionTimeoutMS=5000)
    col = client["lectern_test"]["lectures"]
    col.insert_one({"_id": "l1", "status": "AWAITING_MEDIA"})
    res = col.update_one({"_id": "l1", "status": {"$in": ["AWAITING_MEDIA"]}}, {"$set": {"status": "PROCESSING"}})
    assert res.modified_count == 1
    assert col.find_one({"_id": "l1"})["status"] == "PROCESSING"


def test_mongo_is_ferretdb_on_sqlite_and_keeps_data_across_a_restart(tmp_path):
    server = MongoServer(workdir=tmp_path)
    with server:
        client = pymongo.MongoClient(server.url, serverSelectionTimeoutMS=5000)
        info = client.admin.command("buildInfo")
        assert info["ferretdbVersion"] == "v1.24.2" and info["version"].startswith("7.0.")
        client["lectern_restart"]["lectures"].insert_one({"_id": "kept", "status": "READY"})
        assert (server.data_dir / "lectern_restart.sqlite").is_file()
        client.close()  # else FerretDB waits 3 s for the idle connection on SIGTERM
        port = server.port
        server.restart()  # same port, same files
        assert server.port == port
        client = pymongo.MongoClient(server.url, serverSelectionTimeoutMS=5000)
        assert client["lectern_restart"]["lectures"].find_one({"_id": "kept"}) == {"_id": "kept", "status": "READY"}
        client.close()


def test_a_stopped_mongo_server_is_the_local_one_even_with_mongo_url(tmp_path, monkeypatch):
    # Issue 13: a test that stops its MongoDB must not then talk to another one.
    monkeypatch.setenv("MONGO_URL", "mongodb://mongo.example.invalid:27017/")
    server = MongoServer(workdir=tmp_path)
    assert server.url == f"mongodb://127.0.0.1:{server.port}/?directConnection=true"
    with pytest.raises(RuntimeError):
        ExternalMongo("mongodb://mongo.example.invalid:27017/").stop()
