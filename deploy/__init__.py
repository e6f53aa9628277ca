"""stageflow: carries one Postgres + Redis web service from dev to staging to prod."""

__version__ = "0.1.0"
