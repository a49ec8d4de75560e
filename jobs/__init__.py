"""The `vl2prep` command and the Ray jobs that wire `pipeline` functions together.

Importing this package sets the environment Ray reads when it is imported, before any job module
imports `ray`: no auth-token warning on every start, a local node bound to loopback only (without
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray binds the machine's network address even when told
127.0.0.1), no usage statistics. Values already in the environment win.
"""

import os

for _key, _value in {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}.items():
    os.environ.setdefault(_key, _value)
