# Observes: CPython's nondeterminism -- str hash seed (PYTHONHASHSEED from getrandom), set iteration order, time.time(), os.urandom, uuid4, id() (addresses), unseeded random; with "threads", four threads sharing a list under a lock and a queue (the order they run in, the times they see); with "processes", multiprocessing: three forked workers counting in shared memory under a process-shared lock (a POSIX semaphore in /dev/shm), reporting through a pipe and posting a semaphore the parent waits on while it has a second thread (a worker making threads would race the parent's forks for pid numbers, a known hole); with "waits", a thread blocked reading a pipe from a worker process while another thread sleeps (how long the worker takes); with "pool", a multiprocessing.Pool (its parent's result reader must not starve its task sender, nor a task sender blocked on a full pipe its result reader); with "feed", a thread feeding a subprocess's stdin while the main thread waits for it to end. Cage: handled -- getrandom/urandom seeded, logical clock, ASLR off, threads serialised, shared futexes waited on by trying, blocking reads, writes and waits for children in threaded processes tried, the logical clock held while other processes run.
import os, random, sys, time, uuid

if sys.argv[1:] == ["processes"]:
    import multiprocessing, threading

    context = multiprocessing.get_context("fork")
    total, lock = context.Value("i", 0, lock=False), context.Lock()
    finished, results = context.Semaphore(0), context.SimpleQueue()

    def count(i):
        for _ in range(200):
            with lock:
                total.value += 1
        results.put((i, os.getpid(), os.urandom(4).hex(), repr(time.time())))
        finished.release()

    # A second thread keeps the parent threaded while it waits for the
    # workers' posts: its waits are tried, not left in the kernel.
    stop = threading.Event()
    ticker = threading.Thread(target=stop.wait)
    ticker.start()
    workers = [context.Process(target=count, args=(i,)) for i in range(3)]
    for worker in workers:
        worker.start()
    for _ in workers:
        finished.acquire()
    reports = sorted(results.get() for _ in workers)
    for worker in workers:
        worker.join()
    # Nobody posts again: the wait ends at its (logical) deadline.
    timed = finished.acquire(timeout=0.05)
    stop.set()
    ticker.join()
    print("total", total.value)
    print("workers", reports)
    print("exits", [worker.exitcode for worker in workers])
    print("timed wait", timed, repr(time.time()))
    sys.exit(0)

if sys.argv[1:] == ["waits"]:
    import multiprocessing, threading

    # The parent's first thread blocks reading a pipe that a worker
    # process writes once it has computed for a while (tenths of a second
    # natively); a second thread sleeps in a loop meanwhile. Natively the
    # sleeper counts how long the worker took. In the cage the read is
    # tried, and the logical clock does not move on the sleeper's deadline
    # while another process of the run is running.
    context = multiprocessing.get_context("fork")
    reader, writer = os.pipe()

    def compute():
        total = 0
        for i in range(2_000_000):
            total += i
        os.write(writer, str(total).encode())

    ticks, stop = [], threading.Event()

    def tick():
        while not stop.is_set():
            time.sleep(0.01)
            ticks.append(1)

    ticker = threading.Thread(target=tick)
    ticker.start()
    worker = context.Process(target=compute)
    worker.start()
    result = os.read(reader, 64)
    stop.set()
    ticker.join()
    worker.join()
    print("result", result.decode(), "ticks", len(ticks), repr(time.time()))
    sys.exit(0)

if sys.argv[1:] == ["pool"]:
    import multiprocessing

    def square(x):
        return x * x

    # The pool's parent reads results in one thread while another sends
    # the tasks: a read that blocked holding the turn starved the sender.
    def padded(text):
        return "y" * 2000 + text

    with multiprocessing.get_context("fork").Pool(2) as pool:
        print("map", pool.map(square, range(10)))
        print("unordered", sorted(pool.imap_unordered(square, range(5))))
        # Tasks and results of 2 kB each, one at a time: the pipes fill,
        # and a write that blocked holding the turn starved the reader.
        results = pool.map(padded, ["x" * 2000] * 400, chunksize=1)
        print("padded", len(results), sum(map(len, results)))
    sys.exit(0)

if sys.argv[1:] == ["feed"]:
    import subprocess, threading

    # A thread feeds a child's input while the main thread waits for the
    # child to end: a wait that blocked holding the turn starved the feeder.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('child read', len(sys.stdin.buffer.read()), flush=True)"],
        stdin=subprocess.PIPE,
    )

    def feed():
        for _ in range(4):
            time.sleep(0.001)
            child.stdin.write(b"x" * 50_000)
        child.stdin.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    print("child exit", child.wait(), "at", time.monotonic() > 0, flush=True)
    feeder.join()
    sys.exit(0)

if sys.argv[1:] == ["threads"]:
    import queue, threading

    shared, done, lock = [], queue.Queue(), threading.Lock()

    def work(i):
        for j in range(300):
            with lock:
                shared.append(i)
            if j % 60 == 0:
                time.sleep(0.001)
        done.put((i, repr(time.time())))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("order", "".join(map(str, shared)))
    print("done", sorted(done.get() for _ in threads))
    sys.exit(0)

print("hash", hash("docklock"))
print("set", " ".join(s for s in {"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"}))
print("time", repr(time.time()))
print("monotonic", repr(time.monotonic()))
print("urandom", os.urandom(8).hex())
print("uuid4", uuid.uuid4())
print("id", hex(id(object())))
print("random", repr(random.random()))
print("pid", os.getpid())
print("version", sys.version.split()[0])
