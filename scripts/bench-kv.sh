#!/usr/bin/env bash
# Side-by-side KV benchmark: a 3-node DockLock cluster and a 3-member etcd
# (Debian's etcd-server, default durability) on loopback, driven by the same
# load generator (node/bench) in one run. Then the memory check: RSS of each
# DockLock node after 100,000 keys of 256 bytes.
#
#   scripts/bench-kv.sh [SECONDS_PER_LEVEL]     (default 5)
#
# Prints a markdown table (paste into BENCHMARKS.md) and writes
# bench-results/kv.json. Stops everything it started, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}

source scripts/bench-common.sh
nodes_on_one_thread
ensure_packages etcd:etcd-server protoc:protobuf-compiler

build_release

process_workspace

members=1=127.0.0.1:17001,2=127.0.0.1:17002,3=127.0.0.1:17003
for id in 1 2 3; do
    "$docklock" agent --id $id --listen 127.0.0.1:1700$id --data-dir "$work/dl$id" \
        --initial-cluster $members 2>"$work/dl$id.log" &
    pids+=($!)
done
docklock_pids=("${pids[@]}")

etcd_cluster=e1=http://127.0.0.1:12380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:32380
for n in 1 2 3; do
    etcd --name e$n --data-dir "$work/etcd$n" \
        --listen-client-urls http://127.0.0.1:${n}2379 --advertise-client-urls http://127.0.0.1:${n}2379 \
        --listen-peer-urls http://127.0.0.1:${n}2380 --initial-advertise-peer-urls http://127.0.0.1:${n}2380 \
        --initial-cluster $etcd_cluster --initial-cluster-state new --initial-cluster-token docklock-bench \
        --logger zap --log-level warn 2>"$work/etcd$n.log" &
    pids+=($!)
done

# Wait (bounded) until both clusters have a leader.
for _ in $(seq 1 100); do
    if "$docklock" cluster status --endpoints 127.0.0.1:17001 --output json 2>/dev/null | grep -q '"leader_id": [0-9]' &&
        curl -fsS http://127.0.0.1:12379/health 2>/dev/null | grep -q '"health":"true"'; then
        break
    fi
    sleep 0.2
done

mkdir -p bench-results
"$bench" kv --docklock 127.0.0.1:17001,127.0.0.1:17002,127.0.0.1:17003 \
    --etcd http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379 \
    --seconds "$seconds" --json bench-results/kv.json

# Memory on a fresh DockLock cluster (the throughput run above leaves
# hundreds of thousands of keys behind).
for pid in "${docklock_pids[@]}"; do kill "$pid"; done
wait "${docklock_pids[@]}" 2>/dev/null || true
rm -rf "$work"/dl?
fresh_pids=()
for id in 1 2 3; do
    "$docklock" agent --id $id --listen 127.0.0.1:1700$id --data-dir "$work/dl$id" \
        --initial-cluster $members 2>>"$work/dl$id.log" &
    pids+=($!); fresh_pids+=($!)
done
for _ in $(seq 1 100); do
    "$docklock" cluster status --endpoints 127.0.0.1:17001 --output json 2>/dev/null | grep -q '"leader_id": [0-9]' && break
    sleep 0.2
done
echo
echo "Memory: RSS of each DockLock node of a fresh cluster after writing 100,000 keys of 256 bytes"
"$bench" fill --docklock 127.0.0.1:17001 --keys 100000 --value-bytes 256
for pid in "${fresh_pids[@]}"; do
    echo "  pid $pid: $(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' /proc/$pid/status)"
done
