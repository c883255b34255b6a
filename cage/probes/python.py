# Observes: CPython's nondeterminism -- str hash seed (PYTHONHASHSEED from getrandom), set iteration order, time.time(), os.urandom, uuid4, id() (addresses), unseeded random; with "threads", four threads sharing a list under a lock and a queue (the order they run in, the times they see). Cage: handled -- getrandom/urandom seeded, logical clock, ASLR off, threads serialised.
import os, random, sys, time, uuid

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
