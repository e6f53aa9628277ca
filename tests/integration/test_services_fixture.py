"""The shared fixtures reach real servers."""

import psycopg
import redis


def test_pg_dsn_is_a_fresh_database(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()[0]
        assert tables == 0
        assert conn.execute("SELECT current_user").fetchone()[0] == "postgres"


def test_redis_url_is_flushed(redis_url):
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0
    client.set("k", "v")
    assert client.get("k") == b"v"
