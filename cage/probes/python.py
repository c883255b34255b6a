# Observes: CPython's nondeterminism -- str hash seed (PYTHONHASHSEED from getrandom), set iteration order, time.time(), os.urandom, uuid4, id() (addresses), unseeded random. Cage: handled -- getrandom/urandom seeded, logical clock, ASLR off.
import os, random, sys, time, uuid

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
