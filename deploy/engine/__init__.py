"""The engine: plans as step lists, hosts as a group, one deploy pipeline and one rollback pipeline."""
