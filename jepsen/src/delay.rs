//! Packet delay and loss without `tc netem`: this machine's kernel is built
//! without `sch_netem` (CONFIG_NET_SCH_NETEM is not set, and no module can be
//! loaded), but it has netfilter queues. An iptables `NFQUEUE` rule sends the
//! cluster's packets to a thread of the harness, which drops a share of them
//! and lets each other one go after a random delay. The rule carries
//! `--queue-bypass`, so if the harness dies the packets flow again.
//!
//! The thread enters the namespace whose rule feeds it (the hub's bridge for
//! the netns backend, the host's for Docker), since a netfilter queue belongs
//! to one network namespace.

use std::collections::BinaryHeap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sched::{setns, CloneFlags};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the delayer does to each packet.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Mean delay.
    pub delay: Duration,
    /// Each packet's delay is uniform in `delay ± jitter`.
    pub jitter: Duration,
    /// Share of packets dropped, in per mille.
    pub loss_per_mille: u32,
}

/// The harness's impairment (of the order of Jepsen's netem defaults: enough
/// to reorder and drop Raft messages, not to stop progress).
pub const IMPAIRMENT: Impairment =
    Impairment { delay: Duration::from_millis(40), jitter: Duration::from_millis(20), loss_per_mille: 30 };

/// Packets held at once; past it packets pass undelayed (the kernel's own
/// queue is bounded the same way, and fails open).
const HELD_MAX: usize = 4_096;
/// How often the thread looks for due packets and new ones.
const TICK: Duration = Duration::from_millis(1);

struct Held {
    due: Instant,
    message: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    // Earliest first out of a max-heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.due.cmp(&self.due)
    }
}

/// A running delayer thread; stopped (every held packet let go) on drop.
pub struct Delayer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<Counts>>>,
}

/// What a delayer did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Packets let through after a delay.
    pub delayed: u64,
    /// Packets dropped.
    pub dropped: u64,
}

impl Delayer {
    /// Serve queue `queue` of network namespace `netns` (a path under
    /// `/run/netns`; `None`: this process's namespace). Returns once the
    /// queue is bound, so a rule added after it loses nothing.
    pub fn start(netns: Option<PathBuf>, queue: u16, impairment: Impairment, seed: u64) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("delayer".to_owned())
            .spawn(move || {
                let opened = open(netns, queue);
                let mut socket = match opened {
                    Ok(socket) => {
                        ready_tx.send(Ok(())).ok();
                        socket
                    }
                    Err(error) => {
                        ready_tx.send(Err(format!("{error:#}"))).ok();
                        return Err(error);
                    }
                };
                serve(&mut socket, &stopping, impairment, seed)
            })
            .context("cannot start the delayer thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { stop, thread: Some(thread) }),
            Ok(Err(error)) => anyhow::bail!("the delayer could not bind queue {queue}: {error}"),
            Err(_) => anyhow::bail!("the delayer thread ended before binding queue {queue}"),
        }
    }

    /// Stop: let every held packet go and report what was done.
    pub fn stop(mut self) -> anyhow::Result<Counts> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("stopped once");
        thread.join().map_err(|_| anyhow::anyhow!("the delayer thread panicked"))?
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn open(netns: Option<PathBuf>, queue: u16) -> anyhow::Result<nfq::Queue> {
    if let Some(path) = netns {
        // This thread only: namespaces are per thread.
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("cannot enter {}", path.display()))?;
    }
    let mut socket = nfq::Queue::open().context("cannot open a netfilter queue socket")?;
    socket.bind(queue).with_context(|| format!("cannot bind netfilter queue {queue}"))?;
    socket.set_copy_range(queue, 0)?;
    socket.set_fail_open(queue, true)?;
    socket.set_queue_max_len(queue, u32::try_from(HELD_MAX).unwrap_or(u32::MAX))?;
    socket.set_nonblocking(true);
    Ok(socket)
}

fn serve(socket: &mut nfq::Queue, stop: &AtomicBool, impairment: Impairment, seed: u64) -> anyhow::Result<Counts> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut held = BinaryHeap::new();
    let mut counts = Counts::default();
    while !stop.load(Ordering::Relaxed) {
        loop {
            let mut message = match socket.recv() {
                Ok(message) => message,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(error).context("reading the netfilter queue"),
            };
            if rng.gen_range(0..1_000) < impairment.loss_per_mille {
                message.set_verdict(nfq::Verdict::Drop);
                socket.verdict(message)?;
                counts.dropped += 1;
            } else if held.len() >= HELD_MAX {
                message.set_verdict(nfq::Verdict::Accept);
                socket.verdict(message)?;
            } else {
                let low = impairment.delay.saturating_sub(impairment.jitter);
                let high = impairment.delay + impairment.jitter;
                let delay = rng.gen_range(low..=high);
                held.push(Held { due: Instant::now() + delay, message });
            }
        }
        let now = Instant::now();
        while held.peek().is_some_and(|next: &Held| next.due <= now) {
            let Held { mut message, .. } = held.pop().expect("peeked");
            message.set_verdict(nfq::Verdict::Accept);
            socket.verdict(message)?;
            counts.delayed += 1;
        }
        std::thread::sleep(TICK);
    }
    for Held { mut message, .. } in held.into_vec() {
        message.set_verdict(nfq::Verdict::Accept);
        socket.verdict(message)?;
    }
    Ok(counts)
}
