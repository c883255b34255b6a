#!/usr/bin/env bash
# Installs what building and testing DockLock needs on a fresh Debian machine
# that has Rust (rustup, stable): a C toolchain (some dependencies build C;
# the cage's tests build static C programs), python3, nodejs and golang-go
# (cage tests run them),
# and iproute2 and iptables (the chaos tests' namespaces and faults).
# Idempotent; later capabilities add their packages here.
set -euo pipefail

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# The cage's tests run Debian's python3 (a runtime with its own randomness).
[ -x /usr/bin/python3 ] || need_apt+=(python3)
# ... and Debian's Node.js (V8 and libuv: a JIT, a thread pool, timers).
[ -x /usr/bin/node ] || need_apt+=(nodejs)
# ... and Debian's Go, to build a probe of the Go runtime (goroutines on
# threads, its own preemption signals, map order from AT_RANDOM).
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
# The chaos tests put nodes in network namespaces (ip, from iproute2) and
# cut and delay packets with iptables (NFQUEUE); the Docker backend imports
# an image with tar.
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v tar >/dev/null 2>&1 || need_apt+=(tar)
# The determinism probes run the cage under another host time (faketime)
# and pinned to other CPUs and host names (taskset, unshare: util-linux).
command -v faketime >/dev/null 2>&1 || need_apt+=(faketime)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then apt-get update -q && apt-get install -y -q "${need_apt[@]}"
    else sudo apt-get update -q && sudo apt-get install -y -q "${need_apt[@]}"; fi
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install Rust with rustup first (https://rustup.rs)" >&2
    exit 1
fi
cargo --version
