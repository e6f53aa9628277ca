"""Runtimes: native (embedded Postgres, Redis, gunicorn) and compose."""
