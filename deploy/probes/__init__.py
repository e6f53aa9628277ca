"""Probes of the running service: smoke, the verify window, monitoring."""
