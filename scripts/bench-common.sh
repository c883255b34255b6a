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
# target directory; sets $docklock and $bench.
build_release() {
    cargo build --release --bin docklock
    (cd node/bench && cargo build --release --target-dir ../../target)
    docklock=$PWD/target/release/docklock
    bench=$PWD/target/release/docklock-bench
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
    for name in "$@"; do gcc -static -O2 -o "$bin_dir/$name" "$work/$name.c"; done
}
