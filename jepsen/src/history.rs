//! The operation history, in Jepsen's shape: one JSON object per event with
//! `type` (invoke, ok, fail, info), `f`, `value`, `process`, `time` (ns since
//! the test started) and `index`, plus the key and the node addressed.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use crate::checker::{Completion, Operation, RegisterOp};

/// Jepsen's event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The operation starts.
    Invoke,
    /// It took effect.
    Ok,
    /// It definitely did not take effect.
    Fail,
    /// Unknown whether it took effect.
    Info,
}

/// Who performed an event: a client process or the nemesis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Process {
    /// Client process number.
    Client(u64),
    /// The fault injector (`"nemesis"`).
    Nemesis(&'static str),
}

/// One history event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Position in the history.
    pub index: u64,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Function: read, write, cas, or a nemesis action.
    pub f: String,
    /// The key, for client operations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Argument or result.
    pub value: Value,
    /// Who.
    pub process: Process,
    /// Nanoseconds since the test started.
    pub time: u64,
    /// The node addressed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why it failed, for fail and info.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A history being recorded by many tasks.
pub struct History {
    started: Instant,
    events: Mutex<Vec<Event>>,
}

impl Default for History {
    fn default() -> Self {
        Self { started: Instant::now(), events: Mutex::new(Vec::new()) }
    }
}

impl History {
    /// Nanoseconds since the test started.
    pub fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Append an event, stamping its index and time; returns the index.
    pub fn record(&self, mut event: Event) -> u64 {
        let mut events = self.events.lock().expect("history lock");
        event.index = events.len() as u64;
        event.time = self.now();
        let index = event.index;
        events.push(event);
        index
    }

    /// A copy of the events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("history lock").clone()
    }

    /// Write the history as JSON lines.
    pub fn write_jsonl(&self, path: &Path) -> anyhow::Result<()> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        for event in self.events() {
            serde_json::to_writer(&mut file, &event)?;
            file.write_all(b"\n")?;
        }
        file.flush()?;
        Ok(())
    }
}

/// Pair each client invocation with its completion and convert to checker
/// operations. An invocation without a completion (the test ended while it
/// was in flight) counts as `info`.
pub fn register_operations(events: &[Event]) -> Vec<Operation> {
    let mut open: std::collections::BTreeMap<u64, &Event> = std::collections::BTreeMap::new();
    let mut operations = Vec::new();
    let finish = |invoke: &Event, completion: Completion, result: Option<&Value>| -> Option<Operation> {
        let Process::Client(process) = invoke.process else { return None };
        let op = match invoke.f.as_str() {
            "read" => RegisterOp::Read { value: result.and_then(|v| v.as_str()).map(str::to_owned) },
            "write" => RegisterOp::Write { value: invoke.value.as_str()?.to_owned() },
            "cas" => RegisterOp::Cas {
                expect: invoke.value.get(0)?.as_str()?.to_owned(),
                new: invoke.value.get(1)?.as_str()?.to_owned(),
            },
            _ => return None,
        };
        Some(Operation {
            index: invoke.index,
            process,
            key: invoke.key.clone()?,
            op,
            invoked_ns: invoke.time,
            completion,
        })
    };
    for event in events {
        let Process::Client(process) = event.process else { continue };
        match event.kind {
            EventType::Invoke => {
                open.insert(process, event);
            }
            kind => {
                let Some(invoke) = open.remove(&process) else { continue };
                let completion = match kind {
                    EventType::Ok => Completion::Ok { returned_ns: event.time },
                    EventType::Fail => Completion::Fail,
                    _ => Completion::Info,
                };
                operations.extend(finish(invoke, completion, Some(&event.value)));
            }
        }
    }
    for invoke in open.values() {
        operations.extend(finish(invoke, Completion::Info, None));
    }
    operations
}
