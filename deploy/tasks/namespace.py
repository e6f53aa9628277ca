"""The invoke namespace of stageflow's tasks: what `inv` and `stageflow` run in any project."""

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
