//! The `set` workload and its checker.
//!
//! Each client adds unique elements, one variable per element
//! (`set/<element>`). After the faults are healed a final linearizable read
//! lists the set. Every acknowledged add must be present; nothing may appear
//! that was never attempted, or whose add definitely failed; adds with an
//! unknown outcome are reported separately (present or absent is allowed).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use docklock_node::launcher::LocalCluster;
use docklock_proto::client::{Client, ClientOptions};
use docklock_proto::v1;
use serde::Serialize;
use serde_json::{json, Value};

use crate::history::{Event, EventType, History, Process};
use crate::TestConfig;

/// Key prefix of the set's elements.
const PREFIX: &str = "set/";
/// Time one add may take before it is `info`.
const ADD_TIMEOUT_MS: u64 = 1_000;
/// Most adds one process performs.
const ADDS_PER_PROCESS_MAX: u64 = 100_000;
/// Pause between a process's adds.
const THINK_MS: u64 = 10;

fn key_of(element: u64) -> String {
    format!("{PREFIX}{element:012}")
}

/// Start one adding task per client process; each ends at `deadline`.
pub fn start(
    cluster: &LocalCluster,
    config: &TestConfig,
    history: Arc<History>,
    deadline: Instant,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let clients = crate::workload::process_clients(cluster, config.concurrency, Duration::from_millis(ADD_TIMEOUT_MS))?;
    let mut tasks = Vec::new();
    for (process, (addr, mut variables)) in (0..).zip(clients) {
        let history = history.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..ADDS_PER_PROCESS_MAX {
                if Instant::now() >= deadline {
                    return;
                }
                let element = process * ADDS_PER_PROCESS_MAX + i;
                let event = |kind, error: Option<String>| Event {
                    index: 0,
                    kind,
                    f: "add".into(),
                    key: Some(key_of(element)),
                    value: json!(element),
                    process: Process::Client(process),
                    time: 0,
                    node: Some(addr.clone()),
                    error,
                };
                history.record(event(EventType::Invoke, None));
                let request =
                    v1::PutRequest { key: key_of(element), value: element.to_string().into_bytes(), session: None };
                let completion = match variables.put(request).await {
                    Ok(_) => event(EventType::Ok, None),
                    Err(status) => {
                        let definite = crate::workload::definitely_no_effect(&status);
                        let kind = if definite { EventType::Fail } else { EventType::Info };
                        event(kind, Some(format!("{:?}: {}", status.code(), status.message())))
                    }
                };
                history.record(completion);
                tokio::time::sleep(Duration::from_millis(THINK_MS)).await;
            }
        }));
    }
    Ok(tasks)
}

/// Read the whole set once the cluster is healed (linearizable, with the
/// SDK's retries); recorded as the `read` of a final process.
pub async fn final_read(cluster: &LocalCluster, history: &History, process: u64) -> Option<BTreeSet<u64>> {
    let options = ClientOptions { deadline: Duration::from_secs(30), ..ClientOptions::default() };
    let client = Client::new(cluster.endpoints(), options).ok()?;
    let event = |kind, value: Value, error: Option<String>| Event {
        index: 0,
        kind,
        f: "read".into(),
        key: None,
        value,
        process: Process::Client(process),
        time: 0,
        node: None,
        error,
    };
    history.record(event(EventType::Invoke, Value::Null, None));
    let mut elements = BTreeSet::new();
    let mut start_after = String::new();
    loop {
        match client.list(PREFIX, &start_after, 10_000, false).await {
            Ok(page) => {
                for kv in &page.kvs {
                    if let Some(element) = kv.key.strip_prefix(PREFIX).and_then(|e| e.parse().ok()) {
                        elements.insert(element);
                    }
                }
                match page.kvs.last() {
                    Some(last) if page.more => start_after.clone_from(&last.key),
                    _ => break,
                }
            }
            Err(status) => {
                history.record(event(EventType::Info, Value::Null, Some(status.message().to_owned())));
                return None;
            }
        }
    }
    history.record(event(EventType::Ok, json!(elements), None));
    Some(elements)
}

/// The set checker's findings.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SetReport {
    /// Adds attempted.
    pub attempted: usize,
    /// Adds acknowledged.
    pub acknowledged: usize,
    /// Acknowledged but missing from the final read.
    pub lost: Vec<u64>,
    /// In the final read but never attempted.
    pub unexpected: Vec<u64>,
    /// In the final read although their add definitely failed.
    pub failed_but_present: Vec<u64>,
    /// Unknown outcome, present in the final read.
    pub indeterminate_present: usize,
    /// Unknown outcome, absent from the final read.
    pub indeterminate_absent: usize,
}

impl SetReport {
    /// Whether the history keeps the set's promises.
    pub fn is_valid(&self) -> bool {
        self.lost.is_empty() && self.unexpected.is_empty() && self.failed_but_present.is_empty()
    }
}

/// Check the adds in `events` against the final read.
pub fn check(events: &[Event], final_read: &BTreeSet<u64>) -> SetReport {
    let mut attempted = BTreeSet::new();
    let mut acknowledged = BTreeSet::new();
    let mut failed = BTreeSet::new();
    let mut indeterminate = BTreeSet::new();
    for event in events.iter().filter(|e| e.f == "add") {
        let Some(element) = event.value.as_u64() else { continue };
        match event.kind {
            EventType::Invoke => {
                attempted.insert(element);
            }
            EventType::Ok => {
                acknowledged.insert(element);
            }
            EventType::Fail => {
                failed.insert(element);
            }
            EventType::Info => {
                indeterminate.insert(element);
            }
        }
    }
    // An add in flight when the test ended is indeterminate too.
    for element in &attempted {
        if !acknowledged.contains(element) && !failed.contains(element) {
            indeterminate.insert(*element);
        }
    }
    SetReport {
        attempted: attempted.len(),
        acknowledged: acknowledged.len(),
        lost: acknowledged.difference(final_read).copied().collect(),
        unexpected: final_read.difference(&attempted).copied().collect(),
        failed_but_present: failed.intersection(final_read).copied().collect(),
        indeterminate_present: indeterminate.intersection(final_read).count(),
        indeterminate_absent: indeterminate.difference(final_read).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(kind: EventType, element: u64) -> Event {
        Event {
            index: 0,
            kind,
            f: "add".into(),
            key: None,
            value: json!(element),
            process: Process::Client(0),
            time: 0,
            node: None,
            error: None,
        }
    }

    fn history() -> Vec<Event> {
        vec![
            add(EventType::Invoke, 1),
            add(EventType::Ok, 1),
            add(EventType::Invoke, 2),
            add(EventType::Info, 2),
            add(EventType::Invoke, 3),
            add(EventType::Fail, 3),
            add(EventType::Invoke, 4),
        ]
    }

    /// Acknowledged present, indeterminate either way: valid.
    #[test]
    fn valid_set() {
        let report = check(&history(), &BTreeSet::from([1, 2]));
        assert!(report.is_valid(), "{report:?}");
        assert_eq!((report.indeterminate_present, report.indeterminate_absent), (1, 1));
    }

    /// A lost acknowledged add, a phantom element and a failed add that
    /// appears are each caught.
    #[test]
    fn anomalies_are_caught() {
        assert_eq!(check(&history(), &BTreeSet::from([2])).lost, [1]);
        assert_eq!(check(&history(), &BTreeSet::from([1, 99])).unexpected, [99]);
        assert_eq!(check(&history(), &BTreeSet::from([1, 3])).failed_but_present, [3]);
        assert!(!check(&history(), &BTreeSet::from([1, 3])).is_valid());
    }
}
