#!/usr/bin/env bash
# Cluster smoke test: start a one-node Ray cluster on loopback, submit the example pretokenize job with
# `ray job submit`, check its output, stop the cluster. Needs the `cluster` extra (ray[default]):
#   .venv/bin/pip install -e ".[cluster]" && bash jobs/cluster_smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
OUT="out/cluster-smoke"
export RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0

stop() { "$BIN/ray" stop --force >/dev/null 2>&1 || true; }
trap stop EXIT

# The example config, writing to an absolute folder: the job runs in a copy of the working dir.
CONFIG="$(mktemp -p jobs/examples smoke-XXXX.yaml)"
trap 'stop; rm -f "$CONFIG"' EXIT
sed "s#dir: ../../out/example#dir: $PWD/$OUT#" jobs/examples/pretokenize.yaml >"$CONFIG"
rm -rf "$OUT"

"$BIN/ray" start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --num-cpus=2 --disable-usage-stats
"$BIN/ray" job submit --address http://127.0.0.1:8265 --working-dir . \
    --runtime-env-json '{"excludes": [".venv", "out", ".git", "tests", "bench"]}' \
    -- "$PWD/$BIN/vl2prep" pretokenize "$CONFIG"

"$BIN/python" - "$OUT" <<'PY'
import hashlib, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
manifest = json.loads((out / "manifest.json").read_text())
for entry in manifest["shards"] + manifest["rejects"]:
    data = (out / entry["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
for name, counts in manifest["sources"].items():
    assert counts["read"] == counts["written"] + counts["rejected_total"], name
print(f"cluster smoke test OK: {len(manifest['shards'])} shards, sources {sorted(manifest['sources'])}")
PY
