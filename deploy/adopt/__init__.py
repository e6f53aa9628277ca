"""Adoption: `stageflow init` reads a service's repository and writes what stageflow needs there."""
