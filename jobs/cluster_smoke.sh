#!/usr/bin/env bash
# Cluster smoke test: a one-node Ray cluster of its own on loopback (its own temp dir, ports and token), the
# example pretokenize job submitted with `ray job submit`, its output checked, then the cluster's own
# processes stopped by their process ids (the ray CLI's stop command would stop every Ray of the machine).
# Needs the `cluster` extra:
#   .venv/bin/pip install -e ".[cluster]" && bash jobs/cluster_smoke.sh [GCS_PORT] [DASHBOARD_PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
OUT="out/cluster-smoke"
free_port() {
    "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
GCS_PORT="${1:-$(free_port)}"
DASHBOARD_PORT="${2:-$(free_port)}"

# The cluster's token and temp dir live in a private folder (mode 0700) that this script removes.
WORK="$(mktemp -d -t vl2prep-smoke-XXXXXXXX)"
(umask 077 && "$BIN/python" -c 'import secrets; print(secrets.token_hex(32))' >"$WORK/token")
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$WORK/token" RAY_USAGE_STATS_ENABLED=0
# One node on loopback: keep Ray from binding the machine's network address (never set when joining nodes).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
CONFIG="$(mktemp -p jobs/examples smoke-XXXX.yaml)"

descendants() {
    local pid
    for pid in "$@"; do
        echo "$pid"
        # shellcheck disable=SC2046
        descendants $(pgrep -P "$pid" || true)
    done
}
stop() {
    # This cluster's processes name its temp dir on their command line (GCS, raylet, agents); its workers
    # do not, so the whole process tree below them goes too.
    local pids
    # shellcheck disable=SC2046
    pids="$(descendants $(pgrep -f -- "$WORK/ray" || true))"
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        sleep 3
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi
    rm -rf "$WORK" "$CONFIG"
}
trap stop EXIT

# The example config, writing to an absolute folder: the job runs in a copy of the working dir.
sed "s#dir: ../../out/example#dir: $PWD/$OUT#" jobs/examples/pretokenize.yaml >"$CONFIG"
rm -rf "$OUT"

"$BIN/ray" start --head --node-ip-address=127.0.0.1 --port="$GCS_PORT" --temp-dir="$WORK/ray" \
    --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --ray-client-server-port="$(free_port)" --dashboard-agent-listen-port="$(free_port)" \
    --num-cpus=2 --disable-usage-stats
"$BIN/ray" job submit --address "http://127.0.0.1:$DASHBOARD_PORT" --working-dir . \
    --runtime-env-json '{"excludes": [".venv", "out", ".git", "tests", "bench"]}' \
    -- "$PWD/$BIN/python" -m jobs.cli pretokenize "$CONFIG"  # the uploaded copy's code, the venv's packages

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
