#!/usr/bin/env bash
# The audit ledger's benchmarks, in one run:
#   1. sign and verify cost per signature (ML-DSA-65, Dilithium3);
#   2. inclusion and consistency proof generation on a ledger of 1,000,000
#      events in a real sled store, written through the real state machine;
#   3. signed agreement admission at concurrency 64 on a 3-node loopback
#      cluster, beside plain variable puts at the same concurrency.
#
#   scripts/bench-ledger.sh [SECONDS] [EVENTS]     (defaults 10, 1000000)
#
# Prints markdown tables (paste into BENCHMARKS.md). Stops everything it
# started, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
events=${2:-1000000}

source scripts/bench-common.sh
ensure_packages protoc:protobuf-compiler

build_release

process_workspace

echo "## Signatures"
"$bench" crypto
echo
echo "## Proofs"
"$bench" proofs --events "$events"
echo

"$docklock" key generate --out "$work/submitter.key" >/dev/null
start_admin_cluster 1710
for _ in $(seq 1 100); do
    if "$docklock" identity add "$work/submitter.key.pub" --role submitter --key "$work/admin.key" \
        --endpoints $endpoints >/dev/null 2>&1; then
        break
    fi
    sleep 0.2
done
echo "## Admission"
"$bench" admit --docklock $endpoints --key "$work/submitter.key" --concurrency 64 --seconds "$seconds" \
    --envelopes $((seconds * 4000 + 8000))
