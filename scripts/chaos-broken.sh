#!/usr/bin/env bash
# Proves the harness can fail: builds a deliberately broken node (feature
# `broken-stale-reads`: linearizable reads answered from local state) in its
# own target directory and runs the register test against it. Succeeds only
# if every run is judged invalid. Takes a few minutes (a separate build).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --bin docklock-jepsen
cargo build --features docklock-node/broken-stale-reads --bin docklock --target-dir target/broken
caught=0
for seed in 1 2 3; do
    set +e
    ./target/debug/docklock-jepsen test --nemesis pause-leader,kill-leader --time-limit 20 \
        --nemesis-interval 4 --seed "$seed" --docklock-bin target/broken/debug/docklock \
        --out "jepsen-results/broken-$seed" >/dev/null 2>&1
    code=$?
    set -e
    if [ "$code" -eq 1 ]; then echo "seed $seed: caught (invalid)"; caught=$((caught + 1));
    else echo "seed $seed: NOT caught (exit $code)"; fi
done
[ "$caught" -eq 3 ]
