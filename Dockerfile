# The reference service's image for the compose runtime; its tag is the release id.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/stageflow

# The lock first: a code-only change reuses the dependency layer.
COPY app/requirements.lock app/requirements.lock
RUN python -m pip install -r app/requirements.lock

COPY app/ app/
# The migration engine and its entry point: a release migrates the schema with the files it ships,
# inside the project network (`docker compose run --rm app python -m deploy.compose_migrate up`).
COPY deploy/__init__.py deploy/errors.py deploy/secrets.py deploy/migrations.py \
     deploy/compose_migrate.py deploy/

# Servers run unprivileged (the same rule as the native runtime).
RUN useradd --system --uid 10001 --home-dir /srv/stageflow --shell /usr/sbin/nologin stageflow
USER stageflow

EXPOSE 8000
# WEB_CONCURRENCY (read by gunicorn) sets the worker count; logs go to the container's stdout.
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--access-logfile", "-", "--error-logfile", "-", "app.wsgi:application"]
