"""invoke task modules, one per namespace; tasks parse flags and call the engine."""
