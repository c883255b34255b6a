//! The `ledger` workload's checker.
//!
//! The load is the `set` workload's unique adds (each acknowledged add is a
//! `variable-put` ledger event). After the faults are healed and the nodes
//! have converged, every node's whole ledger is read through the public
//! `Ledger` API, and the checker asks:
//!
//! - does each node's event list decode, number its events 0..n, and hash to
//!   the chain head the node itself reports?
//! - is every node's chain a prefix of the longest one (byte-equal events on
//!   the common prefix)?
//! - is every acknowledged add an event of the longest ledger, and is every
//!   add in it one that was attempted?
//! - does the latest checkpoint verify: signed by a registered node key, its
//!   root and chain head those of the longest ledger at its size?

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use docklock_node::launcher::LocalCluster;
use docklock_proto::client::{Client, ClientOptions};
use docklock_proto::ledger::{chain_next, Checkpoint, Event, EventBody, CHAIN_START};
use docklock_proto::merkle::{Hash, MemoryTree};
use serde::Serialize;

use crate::history::{Event as HistoryEvent, EventType};

/// How long the nodes get to converge after healing.
const CONVERGE: Duration = Duration::from_secs(30);
/// Events read per page.
const PAGE: u32 = 1_000;

/// One node's ledger as read after the run.
#[derive(Debug)]
pub struct NodeLedger {
    /// Node id.
    pub id: u64,
    /// Canonical event bytes, by position.
    pub events: Vec<Vec<u8>>,
    /// The chain head the node reports for its size.
    pub reported_head: Hash,
}

/// Read every running node's ledger once they have converged (equal sizes
/// for a while, or the time is up: a node that cannot catch up is compared
/// as it is).
pub async fn read_ledgers(cluster: &mut LocalCluster) -> anyhow::Result<Vec<NodeLedger>> {
    let options = ClientOptions { deadline: Duration::from_secs(10), ..ClientOptions::default() };
    let probe = Client::new(cluster.endpoints(), options)?;
    let running: Vec<(u64, String)> =
        cluster.nodes.values_mut().filter_map(|node| node.is_running().then(|| (node.id, node.addr.clone()))).collect();
    let deadline = Instant::now() + CONVERGE;
    loop {
        let mut sizes = Vec::new();
        for (_, addr) in &running {
            sizes.push(probe.chain_head_of(addr, None).await.map(|(size, _)| size).ok());
        }
        let converged = sizes.iter().all(|size| size.is_some() && *size == sizes[0]);
        if converged || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut ledgers = Vec::new();
    for (id, addr) in running {
        let node =
            Client::new(vec![addr.clone()], ClientOptions { deadline: Duration::from_secs(10), ..Default::default() })?;
        let (size, reported_head) = node.chain_head_of(&addr, None).await?;
        let mut events = Vec::new();
        while (events.len() as u64) < size {
            let page = node.events(events.len() as u64, PAGE).await?;
            if page.events.is_empty() {
                anyhow::bail!("node {id} returned no events at {} of {size}", events.len());
            }
            events.extend(page.events.into_iter().map(|event| event.event));
        }
        events.truncate(size as usize);
        ledgers.push(NodeLedger { id, events, reported_head });
    }
    Ok(ledgers)
}

/// The ledger checker's findings.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LedgerReport {
    /// Events per node.
    pub sizes: BTreeMap<u64, usize>,
    /// Nodes whose events do not decode, are misnumbered, or do not hash to
    /// the head they report.
    pub inconsistent_nodes: Vec<String>,
    /// Nodes whose chain is not a prefix of the longest (with the first
    /// differing position).
    pub forks: Vec<String>,
    /// Acknowledged adds with no event in the longest ledger.
    pub lost: Vec<String>,
    /// Adds in the ledger that were never attempted.
    pub unexpected: Vec<String>,
    /// Adds acknowledged.
    pub acknowledged: usize,
    /// What is wrong with the latest checkpoint, if anything.
    pub checkpoint_problem: Option<String>,
    /// The checkpoint's size, if one was read.
    pub checkpoint_size: Option<u64>,
}

impl LedgerReport {
    /// Every promise held.
    pub fn is_valid(&self) -> bool {
        self.inconsistent_nodes.is_empty()
            && self.forks.is_empty()
            && self.lost.is_empty()
            && self.unexpected.is_empty()
            && self.checkpoint_problem.is_none()
    }
}

fn chain_of(events: &[Vec<u8>]) -> Hash {
    events.iter().enumerate().fold(CHAIN_START, |head, (index, bytes)| chain_next(&head, index as u64, bytes))
}

/// Check the ledgers read after the run against the history and the latest
/// checkpoint (`None` if none could be read).
pub fn check(history: &[HistoryEvent], ledgers: &[NodeLedger], checkpoint: Option<&Checkpoint>) -> LedgerReport {
    let mut report = LedgerReport::default();
    for ledger in ledgers {
        report.sizes.insert(ledger.id, ledger.events.len());
        let misnumbered = ledger
            .events
            .iter()
            .enumerate()
            .find(|(index, bytes)| Event::decode(bytes).map_or(true, |event| event.index != *index as u64));
        if let Some((index, _)) = misnumbered {
            report
                .inconsistent_nodes
                .push(format!("node {}: event {index} does not decode or is misnumbered", ledger.id));
        } else if chain_of(&ledger.events) != ledger.reported_head {
            report
                .inconsistent_nodes
                .push(format!("node {}: events do not hash to its reported chain head", ledger.id));
        }
    }
    let Some(longest) = ledgers.iter().max_by_key(|ledger| ledger.events.len()) else {
        report.checkpoint_problem = Some("no node could be read".into());
        return report;
    };
    for ledger in ledgers {
        if let Some(position) = ledger.events.iter().zip(&longest.events).position(|(a, b)| a != b) {
            report.forks.push(format!("node {} differs from node {} at event {position}", ledger.id, longest.id));
        }
    }

    let attempted: BTreeSet<String> = history
        .iter()
        .filter(|event| event.f == "add" && event.kind == EventType::Invoke)
        .filter_map(|event| event.key.clone())
        .collect();
    let acknowledged: BTreeSet<String> = history
        .iter()
        .filter(|event| event.f == "add" && event.kind == EventType::Ok)
        .filter_map(|event| event.key.clone())
        .collect();
    report.acknowledged = acknowledged.len();
    let mut written = BTreeSet::new();
    for bytes in &longest.events {
        if let Ok(Event { body: EventBody::VariablePut { key, .. }, .. }) = Event::decode(bytes) {
            if !attempted.contains(&key) {
                report.unexpected.push(key.clone());
            }
            written.insert(key);
        }
    }
    report.lost = acknowledged.difference(&written).cloned().collect();

    match checkpoint {
        None => report.checkpoint_problem = Some("no checkpoint could be read".into()),
        Some(checkpoint) => {
            report.checkpoint_size = Some(checkpoint.tree_size);
            report.checkpoint_problem = checkpoint_problem(checkpoint, &longest.events);
        }
    }
    report
}

fn checkpoint_problem(checkpoint: &Checkpoint, events: &[Vec<u8>]) -> Option<String> {
    if let Err(error) = checkpoint.verify_signature() {
        return Some(format!("signature: {error}"));
    }
    let size = usize::try_from(checkpoint.tree_size).unwrap_or(usize::MAX);
    if size > events.len() {
        return Some(format!("checkpoint covers {size} events; the longest ledger has {}", events.len()));
    }
    let mut tree = MemoryTree::default();
    for bytes in &events[..size] {
        tree.push(bytes);
    }
    if tree.root() != checkpoint.root {
        return Some(format!("root differs from the ledger's at size {size}"));
    }
    if chain_of(&events[..size]) != checkpoint.chain_head {
        return Some(format!("chain head differs from the ledger's at size {size}"));
    }
    None
}
