//! Client write sessions: at-most-once application of retried writes.
//!
//! A write that carries `(client_id, serial)` has its outcome remembered; a
//! retry with the same pair gets that outcome again instead of being applied
//! twice (Raft thesis §6.3). Memory is bounded three ways, all decided from the
//! replicated state alone so every node forgets the same things:
//! - each client keeps its [`SERIALS_RETAINED`] most recent outcomes; a serial
//!   older than those is refused as expired (its outcome is unknown);
//! - at most [`CLIENTS_MAX`] clients, the least recently writing forgotten;
//! - at most [`OUTCOME_BYTES_MAX`] of remembered outcomes, likewise.
//!
//! Outcomes are keyed `client \0 serial` in one ordered map, so a client's
//! outcomes are a contiguous range in serial order.

use std::collections::BTreeMap;

use imbl::OrdMap;

use serde::{Deserialize, Serialize};

use crate::types::{Outcome, Response, WriteSession};

/// Most clients remembered.
pub const CLIENTS_MAX: usize = 4_096;
/// Outcomes remembered per client.
pub const SERIALS_RETAINED: u32 = 16;
/// Most bytes of remembered outcomes (values counted in full).
pub const OUTCOME_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Longest client id, in bytes.
pub const CLIENT_ID_BYTES_MAX: usize = 128;

/// What is remembered of one client besides its outcomes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ClientRecord {
    /// Request sequence number of the client's latest write; orders eviction.
    pub last_sequence: u64,
    /// Outcomes retained.
    pub retained: u32,
    /// Their size, as counted by [`outcome_bytes`].
    pub bytes: u64,
}

/// A write whose session was seen before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A retry: its first response.
    Repeat(Response),
    /// Its serial is older than every retained one: its outcome is unknown.
    Expired {
        /// The oldest serial still retained.
        oldest_retained_serial: u64,
    },
}

/// The session cache.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    clients: OrdMap<String, ClientRecord>,
    outcomes: OrdMap<String, Response>,
    /// Derived, never persisted: clients by `last_sequence`, for eviction.
    by_sequence: BTreeMap<u64, String>,
    /// Derived: sum of every client's `bytes`.
    bytes_total: u64,
}

/// A plain copy of the cache, for snapshots.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct SessionsState {
    clients: OrdMap<String, ClientRecord>,
    outcomes: OrdMap<String, Response>,
}

fn outcome_key(client: &str, serial: u64) -> String {
    // Zero-padded so that key order is serial order within a client.
    format!("{client}\0{serial:020}")
}

fn client_range(client: &str) -> (String, String) {
    (format!("{client}\0"), format!("{client}\u{1}"))
}

fn serial_of(key: &str) -> u64 {
    key.rsplit('\0').next().and_then(|s| s.parse().ok()).expect("outcome keys end in a serial")
}

/// Approximate memory an outcome holds: its values plus a fixed overhead.
pub fn outcome_bytes(response: &Response) -> u64 {
    let values = match &response.outcome {
        Outcome::Written { current, prev } => current.value.len() + prev.as_ref().map_or(0, |p| p.value.len()),
        Outcome::Deleted { prev: Some(prev) } | Outcome::CasMismatch { current: Some(prev) } => prev.value.len(),
        _ => 0,
    };
    values as u64 + 96
}

/// Why a session cannot be used; the write is refused, not applied.
pub fn invalid_client_id(client_id: &str) -> Option<String> {
    if client_id.is_empty() || client_id.len() > CLIENT_ID_BYTES_MAX || client_id.contains(['\0', '\u{1}']) {
        return Some(format!("write session client id must be 1 to {CLIENT_ID_BYTES_MAX} bytes without control bytes"));
    }
    None
}

impl Sessions {
    /// Rebuild from a snapshot copy, recomputing the derived indexes.
    pub fn from_state(state: SessionsState) -> Self {
        let by_sequence = state.clients.iter().map(|(client, record)| (record.last_sequence, client.clone())).collect();
        let bytes_total = state.clients.values().map(|record| record.bytes).sum();
        Self { clients: state.clients, outcomes: state.outcomes, by_sequence, bytes_total }
    }

    /// A plain copy, for snapshots.
    pub fn to_state(&self) -> SessionsState {
        SessionsState { clients: self.clients.clone(), outcomes: self.outcomes.clone() }
    }

    /// Number of clients remembered.
    pub fn clients_count(&self) -> usize {
        self.clients.len()
    }

    /// What is known of a write's session: `None` if the write is new.
    pub fn deduplicate(&self, session: &WriteSession) -> Option<Seen> {
        let record = self.clients.get(&session.client_id)?;
        if let Some(first) = self.outcomes.get(&outcome_key(&session.client_id, session.serial)) {
            return Some(Seen::Repeat(first.clone()));
        }
        let oldest = self.oldest_serial(&session.client_id)?;
        if record.retained >= SERIALS_RETAINED && session.serial < oldest {
            return Some(Seen::Expired { oldest_retained_serial: oldest });
        }
        None
    }

    fn oldest_serial(&self, client: &str) -> Option<u64> {
        let (start, end) = client_range(client);
        self.outcomes.range(start..end).next().map(|(key, _)| serial_of(key))
    }

    /// Remember `response` as the outcome of `session`, the registry's
    /// `sequence`-th request.
    pub fn remember(&mut self, sequence: u64, session: &WriteSession, response: &Response) {
        let client = &session.client_id;
        let mut record = self.clients.get(client).cloned().unwrap_or_default();
        if record.last_sequence != 0 {
            self.by_sequence.remove(&record.last_sequence);
        }
        let size = outcome_bytes(response);
        self.outcomes.insert(outcome_key(client, session.serial), response.clone());
        record.retained += 1;
        record.bytes += size;
        self.bytes_total += size;
        while record.retained > SERIALS_RETAINED {
            let oldest = self.oldest_serial(client).expect("retained outcomes exist");
            let dropped = self.outcomes.remove(&outcome_key(client, oldest)).expect("oldest outcome exists");
            let dropped_size = outcome_bytes(&dropped);
            record.retained -= 1;
            record.bytes -= dropped_size;
            self.bytes_total -= dropped_size;
        }
        record.last_sequence = sequence;
        self.clients.insert(client.clone(), record);
        self.by_sequence.insert(sequence, client.clone());
        while self.clients.len() > CLIENTS_MAX || self.bytes_total > OUTCOME_BYTES_MAX {
            let (_, oldest_client) = self.by_sequence.pop_first().expect("by_sequence matches clients");
            self.forget(&oldest_client);
        }
        self.check();
    }

    fn forget(&mut self, client: &str) {
        let record = self.clients.remove(client).expect("forgotten client exists");
        let (start, end) = client_range(client);
        let keys: Vec<String> = self.outcomes.range(start..end).map(|(key, _)| key.clone()).collect();
        for key in keys {
            self.outcomes.remove(&key);
        }
        self.bytes_total -= record.bytes;
    }

    fn check(&self) {
        assert!(self.clients.len() <= CLIENTS_MAX, "session clients bound broken");
        assert!(self.bytes_total <= OUTCOME_BYTES_MAX, "session bytes bound broken");
        assert_eq!(self.clients.len(), self.by_sequence.len(), "session index out of step");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Variable;

    fn written(value_bytes: usize) -> Response {
        let current = Variable { value: vec![0; value_bytes], version: 1, create_revision: 1, mod_revision: 1 };
        Response { revision: 1, outcome: Outcome::Written { current, prev: None } }
    }

    fn session(client: &str, serial: u64) -> WriteSession {
        WriteSession { client_id: client.into(), serial }
    }

    /// Past the retained window, the oldest outcome is dropped and its serial
    /// is refused as expired, not re-applied.
    #[test]
    fn window_drops_oldest_and_refuses_it() {
        let mut sessions = Sessions::default();
        for serial in 1..=u64::from(SERIALS_RETAINED) + 1 {
            sessions.remember(serial, &session("c", serial), &written(1));
        }
        assert_eq!(sessions.deduplicate(&session("c", 1)), Some(Seen::Expired { oldest_retained_serial: 2 }));
        assert!(sessions.deduplicate(&session("c", 2)).is_some());
        assert!(sessions.deduplicate(&session("c", 100)).is_none());
    }

    /// The least recently writing client is forgotten past the client bound.
    #[test]
    fn clients_are_bounded() {
        let mut sessions = Sessions::default();
        for client in 0..=CLIENTS_MAX as u64 {
            sessions.remember(client + 1, &session(&format!("c{client}"), 1), &written(1));
        }
        assert_eq!(sessions.clients_count(), CLIENTS_MAX);
        assert!(sessions.deduplicate(&session("c0", 1)).is_none());
        assert!(sessions.deduplicate(&session("c1", 1)).is_some());
    }

    /// Remembered bytes stay under their bound, evicting old clients.
    #[test]
    fn bytes_are_bounded() {
        let mut sessions = Sessions::default();
        let big = 4 * 1024 * 1024;
        for client in 0..40u64 {
            sessions.remember(client + 1, &session(&format!("c{client}"), 1), &written(big));
        }
        assert!(sessions.bytes_total <= OUTCOME_BYTES_MAX);
        assert!(sessions.deduplicate(&session("c39", 1)).is_some());
        assert!(sessions.deduplicate(&session("c0", 1)).is_none());
    }

    /// Derived indexes rebuilt from a copy equal the live ones.
    #[test]
    fn state_round_trip_rebuilds_indexes() {
        let mut sessions = Sessions::default();
        for i in 1..40u64 {
            sessions.remember(i, &session(&format!("c{}", i % 5), i), &written(10));
        }
        let rebuilt = Sessions::from_state(sessions.to_state());
        assert_eq!(rebuilt.by_sequence, sessions.by_sequence);
        assert_eq!(rebuilt.bytes_total, sessions.bytes_total);
    }

    /// Client ids that could break row keys are refused.
    #[test]
    fn client_ids_are_validated() {
        assert!(invalid_client_id("ok-client").is_none());
        assert!(invalid_client_id("").is_some());
        assert!(invalid_client_id("a\0b").is_some());
        assert!(invalid_client_id(&"x".repeat(CLIENT_ID_BYTES_MAX + 1)).is_some());
    }
}
