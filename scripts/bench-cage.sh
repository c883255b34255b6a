#!/usr/bin/env bash
# The cage's start-up and recording costs, side by side in one run:
#   1. a static `true`: bare fork+exec, under `bwrap --unshare-all`, under
#      `docklock cage run` (with and without its per-run cgroup), and
#      `docklock_cage::run` called in a loop by a process that stays up;
#   2. a dynamically linked `ls -la /usr/bin`, the same three ways;
#   3. 200 MB written to stdout under the cage (witness hashing), against
#      this machine's single-core SHA3-256 throughput.
#
#   scripts/bench-cage.sh [RUNS]     (default 50)
#
# Installs Debian's bubblewrap and hyperfine if absent; needs gcc (for the
# static `true`). Prints markdown tables (paste into BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-50}

source scripts/bench-common.sh
ensure_packages bwrap:bubblewrap hyperfine:hyperfine protoc:protobuf-compiler

build_release

program_dirs docklock-bench
printf 'int main(void){return 0;}\n' > "$work/true.c"
build_static true
export DOCKLOCK_CACHE_DIR=$work/cache

bwrap_base="bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/bin /bin --tmpfs /tmp --dev /dev --proc /proc"
cage_base="$docklock cage run --witness $work/w.log"

echo "## Start to exit"
# Each cage run writes a new witness log; deleting the last one is not part
# of a run (on this machine's ext4, mounted with online discard, freeing a
# file's blocks takes 1-4 ms), so it happens before each timed run.
hyperfine --runs "$runs" --warmup 3 -N --prepare "rm -f $work/w.log" --export-markdown "$work/true.md" \
    -n bare "$bin_dir/true" \
    -n bwrap "$bwrap_base $bin_dir/true" \
    -n "docklock cage" "$cage_base -- $bin_dir/true" \
    -n "docklock cage --no-cgroups" "$cage_base --no-cgroups -- $bin_dir/true" >/dev/null
cat "$work/true.md"
echo
# The same from a process that stays up, as an agent runs the cage (no
# binary start per run): mean and min over the same number of runs.
read -r lib_mean lib_min < <("$bench" cage --program "$bin_dir/true" --runs "$runs")
read -r lib_cg_mean lib_cg_min < <("$bench" cage --program "$bin_dir/true" --runs "$runs" --cgroups)
echo "| in-process \`docklock_cage::run\` (no cgroup) | $lib_mean | $lib_min |"
echo "| in-process \`docklock_cage::run\` (with cgroup) | $lib_cg_mean | $lib_cg_min |"
echo
hyperfine --runs "$runs" --warmup 3 -N --output=null --prepare "rm -f $work/w.log" --export-markdown "$work/ls.md" \
    -n "bare ls" "/usr/bin/ls -la /usr/bin" \
    -n "bwrap ls" "$bwrap_base /usr/bin/ls -la /usr/bin" \
    -n "docklock cage ls" "$docklock cage run --witness $work/w.log -- /usr/bin/ls -la /usr/bin" >/dev/null
cat "$work/ls.md"
echo

echo "## Recording 200 MB of stdout"
sha3=$("$bench" sha3)
# Three runs, the median reported (one run moved by 20% with the machine's
# noise); the log is removed between runs, outside the timing.
rates=()
for _ in 1 2 3; do
    rm -f "$work/big.log"
    start=$(date +%s.%N)
    "$docklock" cage run --witness "$work/big.log" --limit output-bytes=300000000 -- /usr/bin/head -c 200000000 /dev/zero >/dev/null 2>&1
    end=$(date +%s.%N)
    rates+=("$(python3 -c "print(round(200/($end-$start)))")")
done
echo "(the three runs: ${rates[*]} MB/s)"
rate=$(printf '%s\n' "${rates[@]}" | sort -n | sed -n 2p)
echo "| measure | MB/s |"
echo "|---|---:|"
echo "| single-core SHA3-256 (sha3 crate) | $sha3 |"
echo "| cage recording 200 MB of stdout | $rate |"
python3 -c "print(f'| ratio | {$rate/$sha3:.2f}x |')"
