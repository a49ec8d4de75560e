"""The Arrow schemas of vl2prep's rows (samples, rejects, shards): explicit, versioned, documented."""
