#!/usr/bin/env bash
# End to end: a trivial static program (exits 0) signed, placed on k = 3
# nodes, run in each cage, committed, revealed and verified, on a 3-node
# loopback cluster (release build). Latency one agreement at a time (p50,
# p99) and throughput with concurrent submitters.
#
#   scripts/bench-e2e.sh [SEQUENTIAL] [CONCURRENCY] [SECONDS]   (defaults 100 32 20)
#
# Prints a markdown table (paste into BENCHMARKS.md). Stops everything it
# started, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
sequential=${1:-100}
concurrency=${2:-32}
seconds=${3:-20}

source scripts/bench-common.sh
ensure_packages protoc:protobuf-compiler gcc:build-essential

build_release

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

printf 'int main(void) { return 0; }\n' > "$work/true.c"
gcc -static -O2 -o "$work/true" "$work/true.c"
"$docklock" key generate --out "$work/admin.key" >/dev/null
members=1=127.0.0.1:17301,2=127.0.0.1:17302,3=127.0.0.1:17303
for id in 1 2 3; do
    "$docklock" agent --id $id --listen 127.0.0.1:1730$id --data-dir "$work/dl$id" \
        --initial-cluster $members --admin-key "$work/admin.key.pub" 2>"$work/dl$id.log" &
    pids+=($!)
done
endpoints=127.0.0.1:17301,127.0.0.1:17302,127.0.0.1:17303
for _ in $(seq 1 100); do
    ready=$("$docklock" node list --output json --endpoints $endpoints 2>/dev/null | grep -c '"status": "ready"' || true)
    [ "$ready" -ge 3 ] && break
    sleep 0.2
done
echo "## End to end (k = 3, trivial static program)"
"$bench" e2e --docklock $endpoints --key "$work/admin.key" --program "$work/true" \
    --sequential "$sequential" --concurrency "$concurrency" --seconds "$seconds"
