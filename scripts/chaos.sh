#!/usr/bin/env bash
# The long chaos run (not part of the default tests): every workload under
# every fault alone and all faults combined, several seeds, longer runs, on
# one backend. Each run writes jepsen-results/<name>/ (history.jsonl,
# results.json, index.html, node logs). Exits non-zero if any run is invalid
# or unknown. Needs root (namespaces, iptables, netfilter queues).
#
#   scripts/chaos.sh [SECONDS_PER_RUN] [SEEDS] [BACKEND] [NODES]
#   (defaults: 60, 3, netns, 3; BACKEND is netns, loopback or docker)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
seeds=${2:-3}
backend=${3:-netns}
nodes=${4:-3}
cargo build --release --bin docklock --bin docklock-jepsen
bin="${CARGO_TARGET_DIR:-target}/release"
"$bin/docklock-jepsen" clean
mkdir -p jepsen-results
failed=0
faults="kill kill-leader kill-majority pause pause-leader partition-leader partition-halves partition-bridge \
partition-ring netem member-replace member-grow all"
for workload in register set ledger; do
for nemesis in $faults; do
    for seed in $(seq 1 "$seeds"); do
        out="jepsen-results/$backend-$workload-$nemesis-$seed"
        rm -rf "$out"
        if "$bin/docklock-jepsen" test --backend "$backend" --nodes "$nodes" --workload "$workload" \
            --nemesis "$nemesis" --time-limit "$seconds" --nemesis-interval 4 --seed "$seed" --out "$out" \
            >"$out.log" 2>&1; then
            status=valid
        else
            status="NOT VALID (exit $?)"; failed=1
        fi
        python3 - "$out/results.json" "$workload $nemesis" "$seed" "$status" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except OSError:
    print(f"{sys.argv[2]:<30} seed {sys.argv[3]:<3} {sys.argv[4]:<10} (no results; see the .log)")
    sys.exit(0)
c = r["counts"]
ops = sum(c.get(f, {}).get(k, 0) for f in ("read", "write", "cas", "add") for k in ("ok", "fail", "info"))
ok = sum(c.get(f, {}).get("ok", 0) for f in ("read", "write", "cas", "add"))
faults = sum(v.get("info", 0) for f, v in c.items() if f not in ("read", "write", "cas", "add"))
print(f"{sys.argv[2]:<30} seed {sys.argv[3]:<3} {sys.argv[4]:<10} ops {ops:>6} ok {ok:>6} "
      f"nemesis events {faults:>3} check {r['check_seconds']:.2f}s")
PY
    done
done
done
exit $failed
