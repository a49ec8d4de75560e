"""The `vl2prep` command and the Ray jobs that wire `pipeline` functions together.

Importing this package turns off Ray's usage statistics (a value already in the environment wins).
Everything else Ray needs depends on whether the job runs an embedded Ray or joins a cluster, which
only the job's config says: `jobs.ray_runtime.start_ray` sets it before it imports `ray`.
"""

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
