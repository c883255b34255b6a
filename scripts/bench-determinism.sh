#!/usr/bin/env bash
# The determinism layer's cost, native vs caged, side by side in one run
# (the workloads Hermit publishes slowdowns for, plus the cost of one
# trapped system call):
#   1. a static `true`;  2. `ls -la /usr/bin`;  3. bzip2 of a 10 MB file;
#   4. 200 shell spawns (`sh -c` loop);  5. a compute-bound loop;
#   6. 100,000 `getrandom` calls (each one trapped and answered);
#   7. two threads passing a turn back and forth 20,000 times each through
#      a mutex and a condition variable (threads are serialised in the
#      cage: every handoff is a futex wait and wake the supervisor answers);
#   8. 100,000 one-byte reads of a file by a process with a second thread
#      (a threaded process's reads stop at the supervisor, which runs one
#      only if it would not block);
#   9. 100,000 one-byte writes to stdout by such a process (each stops the
#      same way: the supervisor looks at the descriptor's room first).
#
#   scripts/bench-determinism.sh [RUNS]     (default 10)
#
# Installs hyperfine and bzip2 if absent; needs gcc. Prints a markdown
# table of means and slowdowns (paste into BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}

source scripts/bench-common.sh
ensure_packages hyperfine:hyperfine bzip2:bzip2 protoc:protobuf-compiler
build_release

program_dirs docklock-bench-determinism
printf 'int main(void){return 0;}\n' > "$work/true.c"
cat > "$work/spin.c" <<'C'
#include <stdio.h>
int main(void) { unsigned long x = 1; for (unsigned long i = 0; i < 400000000UL; i++) x = x * 6364136223846793005UL + i; printf("%lu\n", x); return 0; }
C
cat > "$work/trap.c" <<'C'
#include <stdio.h>
#include <sys/random.h>
int main(void) { unsigned char b[8]; unsigned long s = 0; for (int i = 0; i < 100000; i++) { getrandom(b, 8, 0); s += b[0]; } printf("%lu\n", s); return 0; }
C
cat > "$work/pingpong.c" <<'C'
#include <pthread.h>
#include <stdio.h>
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t c = PTHREAD_COND_INITIALIZER;
static int turn;
static void *player(void *arg) {
    int me = (int)(long)arg;
    for (int i = 0; i < 20000; i++) {
        pthread_mutex_lock(&m);
        while (turn != me) pthread_cond_wait(&c, &m);
        turn = !me;
        pthread_cond_signal(&c);
        pthread_mutex_unlock(&m);
    }
    return 0;
}
int main(void) { pthread_t a, b; pthread_create(&a, 0, player, (void *)0L); pthread_create(&b, 0, player, (void *)1L); pthread_join(a, 0); pthread_join(b, 0); printf("%d\n", turn); return 0; }
C
cat > "$work/reads.c" <<'C'
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t c = PTHREAD_COND_INITIALIZER;
static int done;
static void *idle(void *arg) { pthread_mutex_lock(&m); while (!done) pthread_cond_wait(&c, &m); pthread_mutex_unlock(&m); return arg; }
int main(int argc, char **argv) {
    pthread_t t; pthread_create(&t, 0, idle, 0);
    char b = 'x'; long n = 0;
    if (argc > 2) { /* reads FILE -w: write it one byte at a time to stdout instead */
        while (n < 100000 && write(1, &b, 1) == 1) n++;
    } else {
        int fd = open(argv[1], O_RDONLY);
        while (read(fd, &b, 1) == 1) n++;
    }
    pthread_mutex_lock(&m); done = 1; pthread_cond_signal(&c); pthread_mutex_unlock(&m); pthread_join(t, 0);
    printf("%ld\n", n); return 0;
}
C
build_static true spin trap pingpong reads
head -c 100000 /dev/urandom > "$work/small"
head -c 10000000 /dev/urandom > "$work/data"
export DOCKLOCK_CACHE_DIR=$work/cache
cage="$docklock cage run --no-cgroups --witness $work/w.log --limit events=300000 --limit wall-ms=600000"

declare -a names natives caged
add() { names+=("$1"); natives+=("$2"); caged+=("$3"); }
add "static true" "$bin_dir/true" "$cage -- $bin_dir/true"
add "ls -la /usr/bin" "/usr/bin/ls -la /usr/bin" "$cage -- /usr/bin/ls -la /usr/bin"
add "bzip2 10 MB" "/usr/bin/bzip2 -c $work/data" "$cage --in data=$work/data -- /usr/bin/bzip2 -c /in/data"
add "200 sh spawns" "/bin/sh -c 'for i in \$(seq 200); do /bin/sh -c :; done'" "$cage -- /bin/sh -c 'for i in \$(seq 200); do /bin/sh -c :; done'"
add "compute loop" "$bin_dir/spin" "$cage -- $bin_dir/spin"
add "thread ping-pong 40,000" "$bin_dir/pingpong" "$cage -- $bin_dir/pingpong"
add "100,000 reads, threaded" "$bin_dir/reads $work/small" "$cage --in small=$work/small -- $bin_dir/reads /in/small"
add "100,000 writes, threaded" "$bin_dir/reads $work/small -w" "$cage --in small=$work/small -- $bin_dir/reads /in/small -w"
add "100,000 getrandom" "$bin_dir/trap" "$cage -- $bin_dir/trap"

echo "| workload | native ms | caged ms | slowdown |"
echo "|---|---:|---:|---:|"
for i in "${!names[@]}"; do
    # Deleting the last run's witness log is not part of a run (ext4 with
    # online discard here: 1-4 ms to free a file's blocks).
    hyperfine --runs "$runs" --warmup 1 --output=null --prepare "rm -f $work/w.log" --export-json "$work/r.json" \
        -n native "${natives[$i]}" -n caged "${caged[$i]}" >/dev/null 2>&1
    python3 - "$work/r.json" "${names[$i]}" <<'PY'
import json, sys
results = {r["command"]: r["mean"] * 1000 for r in json.load(open(sys.argv[1]))["results"]}
native, caged = results["native"], results["caged"]
print(f"| {sys.argv[2]} | {native:.1f} | {caged:.1f} | {caged / native:.1f}x |")
PY
done
# Per trapped call: the getrandom loop's extra time over 100,000 calls.
python3 - "$work/r.json" <<'PY'
import json, sys
results = {r["command"]: r["mean"] for r in json.load(open(sys.argv[1]))["results"]}
print(f"\nper trapped call: {(results['caged'] - results['native']) / 100000 * 1e6:.1f} µs")
PY
