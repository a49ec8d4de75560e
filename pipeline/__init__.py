"""Pure transforms of vl2prep: image tiling, visual-token layouts and (later) readers, sequences and
shards. Nothing here imports Ray; every function runs and tests on its own."""
