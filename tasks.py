"""Wiring only: the invoke namespace of stageflow (dev, staging, prod, release, docs, status, demo).

`stageflow init` writes this same file into a service's repository; add a project's own tasks by
building a Collection around these ones here."""

from deploy.tasks.namespace import ns

__all__ = ["ns"]
