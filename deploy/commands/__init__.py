"""argv builders: they return lists and never run anything."""
