# Shared by the scripts/bench-*.sh scripts (sourced, not run).

# Install the Debian packages named "command:package" whose command is missing.
ensure_packages() {
    local missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        local sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
        $sudo_cmd apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q "${missing[@]}"
    fi
}

# Build docklock and the load generator in release mode, into the shared
# target directory (CARGO_TARGET_DIR if set); sets $docklock and $bench.
# DOCKLOCK_BIN=PATH uses that docklock binary instead of building one (to
# measure two builds of the code one after the other, e.g. before and
# after a change: copy each build's target/release/docklock aside).
build_release() {
    local target=${CARGO_TARGET_DIR:-$PWD/target}
    if [ -n "${DOCKLOCK_BIN:-}" ]; then
        docklock=$DOCKLOCK_BIN
    else
        cargo build --release --bin docklock
        docklock=$target/release/docklock
    fi
    (cd node/bench && cargo build --release --target-dir "$target")
    bench=$target/release/docklock-bench
}

# Three nodes and the load generator share two cores: each node serves on
# one thread (agent --threads 1; ARCHITECTURE.md, "Threads"). etcd keeps its
# default GOMAXPROCS, which measured no slower for it than GOMAXPROCS=1.
# DOCKLOCK_THREADS= (empty) leaves the agent's default, one per core.
nodes_on_one_thread() {
    local threads=${DOCKLOCK_THREADS-1}
    if [ -n "$threads" ]; then export DOCKLOCK_THREADS=$threads; else unset DOCKLOCK_THREADS; fi
}

# A temporary work directory ($work) and a directory for static programs
# under /usr/local/libexec ($bin_dir, named $1), where the cage's host
# rootfs shows them read-only so no run copies or hashes them as inputs;
# both removed on exit.
program_dirs() {
    work=$(mktemp -d)
    bin_dir=/usr/local/libexec/$1
    trap 'rm -rf "$work" "$bin_dir"' EXIT INT TERM
    mkdir -p "$bin_dir"
}

# Compile each $work/NAME.c statically into $bin_dir/NAME.
build_static() {
    for name in "$@"; do gcc -static -O2 -pthread -o "$bin_dir/$name" "$work/$name.c"; done
}

# A temporary work directory ($work) and the processes started for a bench
# ($pids, append to it): all stopped and the directory removed on exit,
# also on failure or interruption.
process_workspace() {
    work=$(mktemp -d)
    pids=()
    trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' \
        EXIT INT TERM
    # Agents authenticate their Raft messages as a real cluster's do
    # (README, "A 3-node cluster by hand"), so the figures include the tag.
    (umask 077; head -c 32 /dev/urandom > "$work/peer.secret")
    export DOCKLOCK_PEER_SECRET_FILE="$work/peer.secret"
}

# Start a 3-node cluster on 127.0.0.1 ports ${PREFIX}1 to ${PREFIX}3 whose
# first admin key is $work/admin.key; further arguments are agent flags.
# Sets $endpoints and $pid_list (ID=PID for each node).
start_admin_cluster() {
    local prefix=$1
    shift
    "$docklock" key generate --out "$work/admin.key" >/dev/null
    local members=1=127.0.0.1:${prefix}1,2=127.0.0.1:${prefix}2,3=127.0.0.1:${prefix}3
    pid_list=()
    for id in 1 2 3; do
        "$docklock" agent --id $id --listen 127.0.0.1:$prefix$id --data-dir "$work/dl$id" \
            --initial-cluster $members --admin-key "$work/admin.key.pub" "$@" 2>"$work/dl$id.log" &
        pids+=($!)
        pid_list+=("$id=$!")
    done
    endpoints=127.0.0.1:${prefix}1,127.0.0.1:${prefix}2,127.0.0.1:${prefix}3
}
