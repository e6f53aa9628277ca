"""The shop's web app, configured from the process environment (12-factor)."""

import os

import redis
from flask import Flask, jsonify, request
from sqlalchemy import create_engine, text


def database_url() -> str:
    return os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)


def create_app() -> Flask:
    app = Flask(__name__)
    engine = create_engine(database_url(), pool_pre_ping=True)
    cache = redis.Redis.from_url(os.environ["REDIS_URL"])

    @app.get("/")
    def index():
        return os.environ.get("SHOP_GREETING", "shop") + " ok"

    @app.get("/products")
    def products():
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, name FROM products ORDER BY id")).all()
        return jsonify([{"id": i, "name": n} for i, n in rows])

    @app.post("/products")
    def add_product():
        name = (request.get_json(silent=True) or {}).get("name", "")
        with engine.begin() as conn:
            new_id = conn.execute(
                text("INSERT INTO products (name) VALUES (:n) RETURNING id"), {"n": name}
            ).scalar()
        cache.incr("shop:created")
        return jsonify({"id": new_id}), 201

    @app.get("/worker")
    def worker():
        beat = cache.get("shop:worker:beat")
        return jsonify({"beat": beat.decode() if beat else None})

    return app
