"""The raylet: one per node — worker pool, local scheduling, the object store."""
