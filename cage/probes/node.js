// Observes: Node.js (V8 and libuv) nondeterminism -- Math.random (V8 seeds it from the OS), crypto.randomBytes and randomUUID, Date.now, performance.now, process.hrtime, setTimeout order against a libuv thread-pool task (fs and crypto.pbkdf2 run on worker threads), os.hostname/cpus/uptime, process.pid. Cage: handled -- getrandom seeded, logical clock, threads serialised, capget allowed, pkey_alloc answered ENOSPC (no protection keys on the virtual CPU).
const crypto = require("crypto");
const fs = require("fs");
const os = require("os");

const line = (key, ...values) => console.log(key, ...values);
line("math_random", Math.random(), Math.random());
line("random_bytes", crypto.randomBytes(16).toString("hex"));
line("uuid", crypto.randomUUID());
line("date_now", Date.now());
line("performance_now", performance.now().toFixed(3));
line("hrtime", process.hrtime.bigint().toString());
line("host", os.hostname(), os.cpus().length, os.uptime(), os.totalmem());
line("pid", process.pid, process.ppid);
line("set_order", [...new Set(["b", "a", 3, 1])].join(","));

// Callbacks from the libuv thread pool and timers race natively.
const events = [];
const record = (what) => events.push(`${what}@${Math.round(performance.now())}`);
fs.readFile("/in/control", () => record("read"));
crypto.pbkdf2("secret", "salt", 2000, 32, "sha256", (_, key) => record(`pbkdf2:${key.toString("hex").slice(0, 8)}`));
setTimeout(() => record("timer1"), 1);
setTimeout(() => record("timer0"), 0);
setImmediate(() => record("immediate"));
setTimeout(() => line("events", events.join(" ")), 30);
