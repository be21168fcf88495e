import pymongo
import redis


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
