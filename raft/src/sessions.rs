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
//! Each client's outcomes are kept with the client, in serial order: a
//! retry or a new write costs one lookup by client id. Snapshots carry them
//! in the shape they have always had (client records, and one map of
//! outcomes keyed `client \0 serial`), so a data dir written by an earlier
//! version still loads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use imbl::OrdMap;

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

use crate::types::{Outcome, Response, WriteSession};

/// Most clients remembered.
pub const CLIENTS_MAX: usize = 4_096;
/// Outcomes remembered per client.
pub const SERIALS_RETAINED: u32 = 16;
/// Most bytes of remembered outcomes (values counted in full).
pub const OUTCOME_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Longest client id, in bytes.
pub const CLIENT_ID_BYTES_MAX: usize = 128;

/// What a snapshot holds of one client besides its outcomes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ClientRecord {
    /// Request sequence number of the client's latest write; orders eviction.
    pub last_sequence: u64,
    /// Outcomes retained.
    pub retained: u32,
    /// Their size, as counted by [`outcome_bytes`].
    pub bytes: u64,
}

/// One client's session.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct Client {
    /// Request sequence number of the client's latest write; orders eviction.
    last_sequence: u64,
    /// Size of `outcomes`, as counted by [`outcome_bytes`].
    bytes: u64,
    /// Retained outcomes by serial, ascending, at most [`SERIALS_RETAINED`].
    /// Shared: a snapshot's copy of the map (and imbl's copy of a tree node
    /// on write) costs a reference count, not the outcomes.
    outcomes: Arc<Vec<(u64, Response)>>,
}

impl Client {
    fn outcome(&self, serial: u64) -> Option<&Response> {
        let found = self.outcomes.binary_search_by_key(&serial, |(s, _)| *s).ok()?;
        Some(&self.outcomes[found].1)
    }

    fn oldest_serial(&self) -> Option<u64> {
        self.outcomes.first().map(|(serial, _)| *serial)
    }
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
    clients: OrdMap<String, Client>,
    /// Derived, never persisted: clients by `last_sequence`, for eviction.
    by_sequence: BTreeMap<u64, String>,
    /// Derived: sum of every client's `bytes`.
    bytes_total: u64,
}

/// A copy of the cache, for snapshots (an O(1) copy; see [`Client`]).
#[derive(Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(try_from = "WireSessions")]
pub struct SessionsState {
    clients: OrdMap<String, Client>,
}

/// The snapshot shape of the cache.
#[derive(Deserialize)]
struct WireSessions {
    clients: OrdMap<String, ClientRecord>,
    outcomes: OrdMap<String, Response>,
}

impl TryFrom<WireSessions> for SessionsState {
    type Error = String;

    /// Refuses a snapshot whose outcomes do not fit its clients (a key
    /// without a serial, or of a client it does not hold): it was not
    /// written by this cache.
    fn try_from(wire: WireSessions) -> Result<Self, String> {
        let mut clients: OrdMap<String, Client> = wire
            .clients
            .into_iter()
            .map(|(name, record)| {
                let client = Client { last_sequence: record.last_sequence, bytes: record.bytes, ..Client::default() };
                (name, client)
            })
            .collect();
        // Keys sort by client, then serial: each client's outcomes arrive
        // in serial order.
        for (key, response) in wire.outcomes {
            let refused = || format!("session outcome {key:?} matches no client of the snapshot");
            let (name, serial) = split_outcome_key(&key).ok_or_else(refused)?;
            let client = clients.get_mut(name).ok_or_else(refused)?;
            Arc::make_mut(&mut client.outcomes).push((serial, response));
        }
        check_shape(&clients)?;
        Ok(Self { clients })
    }
}

/// What [`Sessions::remember`] keeps true and later relies on (its
/// subtractions and asserts): a snapshot breaking it was not written by this
/// cache, and using it would panic under the state lock.
fn check_shape(clients: &OrdMap<String, Client>) -> Result<(), String> {
    if clients.len() > CLIENTS_MAX {
        return Err(format!("{} session clients, more than {CLIENTS_MAX}", clients.len()));
    }
    let mut sequences = BTreeSet::new();
    let mut total = 0u64;
    for (name, client) in clients {
        let serials_ascend = client.outcomes.windows(2).all(|pair| pair[0].0 < pair[1].0);
        let bytes = client.outcomes.iter().map(|(_, response)| outcome_bytes(response)).sum::<u64>();
        if !serials_ascend || client.outcomes.len() > SERIALS_RETAINED as usize || bytes != client.bytes {
            return Err(format!("session client {name:?} does not hold the outcomes it records"));
        }
        if !sequences.insert(client.last_sequence) {
            return Err(format!("two session clients last wrote at sequence {}", client.last_sequence));
        }
        total = total.saturating_add(bytes);
    }
    if total > OUTCOME_BYTES_MAX {
        return Err(format!("session outcomes of {total} bytes, more than {OUTCOME_BYTES_MAX}"));
    }
    Ok(())
}

impl Serialize for SessionsState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("SessionsState", 2)?;
        state.serialize_field("clients", &Records(&self.clients))?;
        state.serialize_field("outcomes", &Outcomes(&self.clients))?;
        state.end()
    }
}

/// The clients as [`ClientRecord`]s, in the wire shape.
struct Records<'a>(&'a OrdMap<String, Client>);

impl Serialize for Records<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, client) in self.0 {
            let retained = client.outcomes.len() as u32;
            map.serialize_entry(
                name,
                &ClientRecord { last_sequence: client.last_sequence, retained, bytes: client.bytes },
            )?;
        }
        map.end()
    }
}

/// Every client's outcomes as one map keyed `client \0 serial`, in key
/// order (clients in name order, then serials: `\0` sorts first).
struct Outcomes<'a>(&'a OrdMap<String, Client>);

impl Serialize for Outcomes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let count = self.0.values().map(|client| client.outcomes.len()).sum();
        let mut map = serializer.serialize_map(Some(count))?;
        for (name, client) in self.0 {
            for (serial, response) in client.outcomes.iter() {
                map.serialize_entry(&outcome_key(name, *serial), response)?;
            }
        }
        map.end()
    }
}

fn outcome_key(client: &str, serial: u64) -> String {
    // Zero-padded so that key order is serial order within a client.
    format!("{client}\0{serial:020}")
}

fn split_outcome_key(key: &str) -> Option<(&str, u64)> {
    let (client, serial) = key.rsplit_once('\0')?;
    Some((client, serial.parse().ok()?))
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
        let by_sequence = state.clients.iter().map(|(name, client)| (client.last_sequence, name.clone())).collect();
        // Below OUTCOME_BYTES_MAX: a loaded state passed `check_shape`.
        let bytes_total = state.clients.values().map(|client| client.bytes).sum();
        Self { clients: state.clients, by_sequence, bytes_total }
    }

    /// A copy, for snapshots.
    pub fn to_state(&self) -> SessionsState {
        SessionsState { clients: self.clients.clone() }
    }

    /// Number of clients remembered.
    pub fn clients_count(&self) -> usize {
        self.clients.len()
    }

    /// What is known of a write's session: `None` if the write is new.
    pub fn deduplicate(&self, session: &WriteSession) -> Option<Seen> {
        let client = self.clients.get(&session.client_id)?;
        if let Some(first) = client.outcome(session.serial) {
            return Some(Seen::Repeat(first.clone()));
        }
        let oldest = client.oldest_serial()?;
        if client.outcomes.len() >= SERIALS_RETAINED as usize && session.serial < oldest {
            return Some(Seen::Expired { oldest_retained_serial: oldest });
        }
        None
    }

    /// Remember `response` as the outcome of `session` (a write
    /// [`Self::deduplicate`] found new), the registry's `sequence`-th
    /// request.
    pub fn remember(&mut self, sequence: u64, session: &WriteSession, response: &Response) {
        let name = &session.client_id;
        if !self.clients.contains_key(name) {
            self.clients.insert(name.clone(), Client::default());
        }
        let client = self.clients.get_mut(name).expect("inserted above");
        if client.last_sequence != 0 {
            self.by_sequence.remove(&client.last_sequence);
        }
        let size = outcome_bytes(response);
        let outcomes = Arc::make_mut(&mut client.outcomes);
        match outcomes.binary_search_by_key(&session.serial, |(serial, _)| *serial) {
            Ok(at) => {
                // Not reached through `apply` (a repeat is answered, not
                // remembered); replacing keeps the sizes right if it is.
                let replaced = std::mem::replace(&mut outcomes[at].1, response.clone());
                client.bytes -= outcome_bytes(&replaced);
                self.bytes_total -= outcome_bytes(&replaced);
            }
            Err(at) => outcomes.insert(at, (session.serial, response.clone())),
        }
        client.bytes += size;
        self.bytes_total += size;
        while outcomes.len() > SERIALS_RETAINED as usize {
            let (_, dropped) = outcomes.remove(0);
            let dropped_size = outcome_bytes(&dropped);
            client.bytes -= dropped_size;
            self.bytes_total -= dropped_size;
        }
        client.last_sequence = sequence;
        self.by_sequence.insert(sequence, name.clone());
        while self.clients.len() > CLIENTS_MAX || self.bytes_total > OUTCOME_BYTES_MAX {
            let (_, oldest_client) = self.by_sequence.pop_first().expect("by_sequence matches clients");
            self.forget(&oldest_client);
        }
        self.check();
    }

    fn forget(&mut self, name: &str) {
        let client = self.clients.remove(name).expect("forgotten client exists");
        self.bytes_total -= client.bytes;
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

    /// A snapshot of the cache is byte for byte what the earlier layout
    /// (client records beside one map of outcomes keyed `client \0
    /// serial`) wrote, and such a snapshot loads into the same cache.
    #[test]
    fn snapshot_shape_is_unchanged() {
        #[derive(Serialize)]
        struct Earlier {
            clients: OrdMap<String, ClientRecord>,
            outcomes: OrdMap<String, Response>,
        }
        let mut sessions = Sessions::default();
        let mut earlier = Earlier { clients: OrdMap::new(), outcomes: OrdMap::new() };
        let mut sequence = 0;
        // Serials out of order and past the window; client names that are
        // prefixes of each other.
        for (client, serials) in [("a", vec![3, 1, 2]), ("ab", (1..=20).collect()), ("b", vec![7])] {
            for serial in serials {
                sequence += 1;
                let response = written(serial as usize);
                sessions.remember(sequence, &session(client, serial), &response);
                earlier.outcomes.insert(outcome_key(client, serial), response);
                let record = earlier.clients.entry(client.to_owned()).or_default();
                record.last_sequence = sequence;
                record.retained += 1;
                record.bytes += outcome_bytes(&written(serial as usize));
            }
        }
        for oldest in 1..=4 {
            let dropped = earlier.outcomes.remove(&outcome_key("ab", oldest)).unwrap();
            let record = earlier.clients.get_mut("ab").unwrap();
            record.retained -= 1;
            record.bytes -= outcome_bytes(&dropped);
        }
        let bytes = bincode::serialize(&sessions.to_state()).unwrap();
        assert_eq!(bytes, bincode::serialize(&earlier).unwrap());
        let loaded: SessionsState = bincode::deserialize(&bytes).unwrap();
        assert_eq!(loaded, sessions.to_state());
        let rebuilt = Sessions::from_state(loaded);
        assert_eq!(rebuilt.deduplicate(&session("a", 1)), Some(Seen::Repeat(written(1))));
        assert_eq!(rebuilt.deduplicate(&session("ab", 4)), Some(Seen::Expired { oldest_retained_serial: 5 }));
        assert_eq!(rebuilt.bytes_total, sessions.bytes_total);
        // An outcome of a client the snapshot does not hold is refused.
        earlier.outcomes.insert(outcome_key("nobody", 1), written(1));
        let orphan = bincode::serialize(&earlier).unwrap();
        assert!(bincode::deserialize::<SessionsState>(&orphan).is_err());
        earlier.outcomes.remove(&outcome_key("nobody", 1));
        assert!(bincode::deserialize::<SessionsState>(&bincode::serialize(&earlier).unwrap()).is_ok());

        // What `remember` subtracts and asserts must hold in a loaded copy,
        // or a hostile snapshot panics it later.
        let refused = |change: &dyn Fn(&mut Earlier)| {
            let mut copy = Earlier { clients: earlier.clients.clone(), outcomes: earlier.outcomes.clone() };
            change(&mut copy);
            bincode::deserialize::<SessionsState>(&bincode::serialize(&copy).unwrap()).unwrap_err().to_string()
        };
        let wrong_bytes = refused(&|copy| copy.clients.get_mut("a").unwrap().bytes -= 1);
        assert!(wrong_bytes.contains("\"a\" does not hold the outcomes it records"), "{wrong_bytes}");
        let of_b = earlier.clients["b"].last_sequence;
        let same_sequence = refused(&|copy| copy.clients.get_mut("a").unwrap().last_sequence = of_b);
        assert!(same_sequence.contains("two session clients last wrote"), "{same_sequence}");
        let unpadded = refused(&|copy| {
            let moved = copy.outcomes.remove(&outcome_key("ab", 20)).unwrap();
            copy.outcomes.insert("ab\u{0}3".to_owned(), moved);
        });
        assert!(unpadded.contains("does not hold"), "{unpadded}");
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
