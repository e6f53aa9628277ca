"""Wiring only: the invoke namespace of stageflow (dev, staging, prod, release, docs, status, demo)."""

from invoke import Collection

from deploy.tasks import docs, overview, release
from deploy.tasks.env import env_collection

ns = Collection(
    env_collection("dev"),
    env_collection("staging"),
    env_collection("prod"),
    release.ns,
    docs.ns,
    overview.status,
    overview.demo,
)
