#!/usr/bin/env bash
# The scheduler at scale, in one run:
#   1. in process: the placement walk's rate, the registry's placement rate
#      inside apply, and the share of replicas moved when a node joins or
#      leaves, at 1,000 and 10,000 workers;
#   2. a real 3-voter cluster on loopback with simulated workers registered
#      and heartbeating through the public gRPC API: the leader's CPU, the
#      time to mark a silent worker down, and agreements placed and committed
#      per second when placement resumes after a pause.
#
#   scripts/bench-scheduler.sh [WORKERS] [AGREEMENTS] [SECONDS]
#       (defaults 1000,10000  20000  20)
#
# Prints markdown tables (paste into BENCHMARKS.md). Stops everything it
# started, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
workers=${1:-1000,10000}
agreements=${2:-20000}
seconds=${3:-20}

source scripts/bench-common.sh
ensure_packages protoc:protobuf-compiler

build_release

process_workspace

echo "## Placement in process"
"$bench" scheduler-ring --workers "$workers" --agreements 50000
echo

start_admin_cluster 1720 --no-worker
for _ in $(seq 1 100); do
    if "$docklock" identity list --endpoints $endpoints 2>/dev/null | grep -q admin; then break; fi
    sleep 0.2
done
echo "## Simulated workers on a 3-voter cluster"
"$bench" scheduler-cluster --docklock $endpoints --pids "$(IFS=,; echo "${pid_list[*]}")" \
    --admin-key "$work/admin.key" --workers "$workers" --agreements "$agreements" --seconds "$seconds"
