"""Activation caches: the shard format (`shards`) and the Ray Data job that writes it."""
