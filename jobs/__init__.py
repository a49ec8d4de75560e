"""The `vl2prep` command and the Ray jobs that wire `pipeline` functions together."""
