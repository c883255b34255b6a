#!/usr/bin/env bash
# The long chaos run (not part of the default tests): both workloads, every
# fault, several seeds, longer runs. Each run writes jepsen-results/<name>/ (history.jsonl,
# results.json, node logs). Exits non-zero if any run is invalid or unknown.
#
#   scripts/chaos.sh [SECONDS_PER_RUN] [SEEDS]     (defaults: 60, 5)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
seeds=${2:-5}
cargo build --release --bin docklock --bin docklock-jepsen
failed=0
for workload in register set; do
for nemesis in kill kill-leader pause pause-leader partition-leader partition-halves \
    kill,kill-leader,pause,pause-leader,partition-leader,partition-halves; do
    for seed in $(seq 1 "$seeds"); do
        out="jepsen-results/$workload-${nemesis//,/+}-$seed"
        rm -rf "$out"
        if ./target/release/docklock-jepsen test --workload "$workload" --nemesis "$nemesis" --time-limit "$seconds" \
            --seed "$seed" --out "$out" >/dev/null 2>&1; then
            status=valid
        else
            status="NOT VALID (exit $?)"; failed=1
        fi
        python3 - "$out/results.json" "$workload $nemesis" "$seed" "$status" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["counts"]
ops = sum(c.get(f, {}).get(k, 0) for f in ("read", "write", "cas", "add") for k in ("ok", "fail", "info"))
ok = sum(c.get(f, {}).get("ok", 0) for f in ("read", "write", "cas", "add"))
print(f"{sys.argv[2]:<40} seed {sys.argv[3]:<3} {sys.argv[4]:<10} ops {ops:>6} ok {ok:>6} check {r['check_seconds']:.2f}s")
PY
    done
done
done
exit $failed
