//! The `register` workload: per-key reads, writes and compare-and-sets on
//! variables, over the public gRPC API. Each client process talks to one node
//! and never retries, so that every outcome is classified honestly: an error
//! that proves the write had no effect is `fail`, anything else is `info`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use docklock_node::launcher::LocalCluster;
use docklock_proto::v1::variables_client::VariablesClient;
use docklock_proto::v1::{self, cas_request};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

use crate::history::{Event, EventType, History, Process};
use crate::TestConfig;

/// Time one client operation may take before it is `info`.
const OPERATION_TIMEOUT_MS: u64 = 1_000;
/// Pause between a process's operations.
const THINK_MS: u64 = 10;
/// Pause after an operation with an unknown outcome.
const INFO_BACKOFF_MS: u64 = 250;
/// Seconds a generation of keys is used before the workload moves on.
const KEY_GENERATION_SECS: u64 = 2;
/// Most operations one process performs (a bound besides the time limit).
const OPERATIONS_PER_PROCESS_MAX: u64 = 100_000;

/// For each client process, the node it talks to and a client of that node
/// whose every call times out after `timeout` (processes are spread over the
/// nodes round-robin).
pub fn process_clients(
    cluster: &LocalCluster,
    concurrency: u64,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, VariablesClient<Channel>)>> {
    let endpoints = cluster.endpoints();
    (0..concurrency)
        .map(|process| {
            let addr = endpoints[usize::try_from(process)? % endpoints.len()].clone();
            let channel = Channel::from_shared(format!("http://{addr}"))?
                .connect_timeout(timeout)
                .timeout(timeout)
                .connect_lazy();
            Ok((addr, VariablesClient::new(channel)))
        })
        .collect()
}

/// Start one task per client process; each ends at `deadline`.
pub fn start_register(
    cluster: &LocalCluster,
    config: &TestConfig,
    history: Arc<History>,
    deadline: Instant,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let clients = process_clients(cluster, config.concurrency, Duration::from_millis(OPERATION_TIMEOUT_MS))?;
    let mut tasks = Vec::new();
    for (process, (addr, variables)) in (0..).zip(clients) {
        let client = Client {
            process,
            concurrency: config.concurrency,
            addr,
            variables,
            history: history.clone(),
            rng: StdRng::seed_from_u64(config.seed.wrapping_add(process)),
            keys: config.keys,
        };
        tasks.push(tokio::spawn(client.run(deadline)));
    }
    Ok(tasks)
}

struct Client {
    process: u64,
    /// Added to `process` when an operation ends `info` (see `perform`).
    concurrency: u64,
    addr: String,
    variables: VariablesClient<Channel>,
    history: Arc<History>,
    rng: StdRng,
    keys: u64,
}

enum Op {
    Read,
    Write(String),
    Cas(String, String),
}

impl Client {
    async fn run(mut self, deadline: Instant) {
        for _ in 0..OPERATIONS_PER_PROCESS_MAX {
            if Instant::now() >= deadline {
                return;
            }
            // Keys rotate every KEY_GENERATION_SECS, as Jepsen's independent
            // keys do: an operation with an unknown outcome stays open until
            // the end of its key's history, and a checker's search grows
            // exponentially in open operations, so each key's history is kept
            // short.
            let generation = self.history.now() / 1_000_000_000 / KEY_GENERATION_SECS;
            let key = format!("r{generation}-{}", self.rng.gen_range(0..self.keys));
            let op = match self.rng.gen_range(0..4) {
                0 | 1 => Op::Read,
                2 => Op::Write(self.rng.gen_range(0..5).to_string()),
                _ => Op::Cas(self.rng.gen_range(0..5).to_string(), self.rng.gen_range(0..5).to_string()),
            };
            self.perform(&key, op).await;
            tokio::time::sleep(Duration::from_millis(THINK_MS)).await;
        }
    }

    fn event(&self, kind: EventType, f: &str, key: &str, value: Value, error: Option<String>) -> Event {
        Event {
            index: 0,
            kind,
            f: f.to_owned(),
            key: Some(key.to_owned()),
            value,
            process: Process::Client(self.process),
            time: 0,
            node: Some(self.addr.clone()),
            error,
        }
    }

    async fn perform(&mut self, key: &str, op: Op) {
        let (f, argument) = match &op {
            Op::Read => ("read", Value::Null),
            Op::Write(value) => ("write", json!(value)),
            Op::Cas(expect, new) => ("cas", json!([expect, new])),
        };
        self.history.record(self.event(EventType::Invoke, f, key, argument.clone(), None));
        let outcome = match op {
            Op::Read => {
                let request = v1::GetRequest { key: key.to_owned(), consistency: 0 };
                match self.variables.get(request).await {
                    Ok(reply) => {
                        let value = reply.into_inner().kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                        Ok(json!(value))
                    }
                    Err(status) if status.code() == Code::NotFound => Ok(Value::Null),
                    Err(status) => Err(status),
                }
            }
            Op::Write(value) => {
                let request = v1::PutRequest { key: key.to_owned(), value: value.into_bytes(), session: None };
                self.variables.put(request).await.map(|_| argument.clone())
            }
            Op::Cas(expect, new) => {
                let request = v1::CasRequest {
                    key: key.to_owned(),
                    expect: Some(cas_request::Expect::ExpectValue(expect.into_bytes())),
                    value: new.into_bytes(),
                    session: None,
                };
                self.variables.cas(request).await.map(|_| argument.clone())
            }
        };
        let event = match outcome {
            Ok(value) => self.event(EventType::Ok, f, key, value, None),
            Err(status) => {
                // A read has no effect whatever happened.
                let kind = if f == "read" || definitely_no_effect(&status) { EventType::Fail } else { EventType::Info };
                self.event(kind, f, key, argument, Some(format!("{:?}: {}", status.code(), status.message())))
            }
        };
        let indeterminate = event.kind == EventType::Info;
        self.history.record(event);
        if indeterminate {
            // As in Jepsen: the operation stays open forever, so this process
            // is done and a new one takes its place; and it pauses, because
            // every open operation multiplies the checker's search.
            self.process += self.concurrency;
            tokio::time::sleep(Duration::from_millis(INFO_BACKOFF_MS)).await;
        }
    }
}

/// Whether `status` proves a write had no effect. Anything else (timeouts, a
/// connection lost after sending, `UNAVAILABLE` from a node that may have
/// forwarded it) may have been applied: `info`.
pub fn definitely_no_effect(status: &tonic::Status) -> bool {
    match status.code() {
        // The registry refused it deterministically.
        Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument | Code::ResourceExhausted => true,
        // The connection could not be opened, so the request was never sent
        // (tonic's wording for a failed connect; a later failure on an open
        // connection reads differently and stays `info`).
        Code::Unavailable => status.message().contains("tcp connect error"),
        _ => false,
    }
}
