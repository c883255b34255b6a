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
nodes_on_one_thread
ensure_packages protoc:protobuf-compiler gcc:build-essential

build_release

process_workspace

printf 'int main(void) { return 0; }\n' > "$work/true.c"
gcc -static -O2 -o "$work/true" "$work/true.c"
start_admin_cluster 1730
for _ in $(seq 1 100); do
    ready=$("$docklock" node list --output json --endpoints $endpoints 2>/dev/null | grep -c '"status": "ready"' || true)
    [ "$ready" -ge 3 ] && break
    sleep 0.2
done
echo "## End to end (k = 3, trivial static program)"
"$bench" e2e --docklock $endpoints --key "$work/admin.key" --program "$work/true" \
    --sequential "$sequential" --concurrency "$concurrency" --seconds "$seconds"
