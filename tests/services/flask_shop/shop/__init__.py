"""A small shop: products in PostgreSQL, counters in Redis, a background worker."""
