//! The registry: the replicated state and its transitions.
//!
//! `Registry::apply` is a pure, deterministic function of (state, index,
//! request): no clock, no randomness, no IO, ordered maps only. The store
//! persists what it changed through [`Registry::take_changes`], so the state on
//! disk and in memory are the same rows.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::{Command, Expect, Outcome, Request, Response, Variable, WriteSession};

/// Most variables the registry holds; a put of a new key past it is refused.
pub const VARIABLES_COUNT_MAX: usize = 1_000_000;
/// Longest variable name, in bytes, accepted by `apply` (the API checks too).
pub const KEY_BYTES_MAX: usize = 4096;
/// Largest value `apply` accepts. The API's configurable limit is lower; this
/// bound holds even for a proposer that skipped it.
pub const VALUE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most client sessions remembered for deduplication; the least recently
/// used one is forgotten past it.
pub const SESSIONS_COUNT_MAX: usize = 10_000;
/// Outcomes remembered per client session (its most recent serials).
pub const SESSION_SERIALS_RETAINED: usize = 64;

/// Row-key prefixes of the persisted tables.
const VARIABLE_ROW: u8 = b'v';
const SESSION_ROW: u8 = b's';

/// What the registry remembers of one client for deduplication.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ClientSession {
    /// Log index of the client's latest write; orders eviction.
    pub last_index: u64,
    /// Outcomes of the most recent serials.
    pub outcomes: BTreeMap<u64, Response>,
}

/// One persisted row that changed: `value` is `None` when it was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    /// Table prefix byte followed by the row's key.
    pub key: Vec<u8>,
    /// The row's encoding, or `None` if the row is gone.
    pub value: Option<Vec<u8>>,
}

/// Error decoding persisted rows or a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A row key with a prefix this version does not know.
    #[error("unknown registry row prefix {0:#04x}")]
    UnknownRow(u8),
    /// A row or snapshot that does not decode.
    #[error("corrupt registry data: {0}")]
    Corrupt(#[from] bincode::Error),
    /// A row key that is not UTF-8.
    #[error("registry row key is not utf-8")]
    KeyNotUtf8,
}

/// An ordered map that remembers which keys changed since the last drain.
#[derive(Debug, Clone)]
struct Table<V> {
    rows: BTreeMap<String, V>,
    dirty: BTreeSet<String>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Self {
            rows: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }
}

impl<V: Clone + Serialize> Table<V> {
    fn get(&self, key: &str) -> Option<&V> {
        self.rows.get(key)
    }

    fn insert(&mut self, key: &str, value: V) -> Option<V> {
        self.dirty.insert(key.to_owned());
        self.rows.insert(key.to_owned(), value)
    }

    fn remove(&mut self, key: &str) -> Option<V> {
        let prev = self.rows.remove(key);
        if prev.is_some() {
            self.dirty.insert(key.to_owned());
        }
        prev
    }

    fn drain_changes(&mut self, prefix: u8, out: &mut Vec<RowChange>) {
        for key in std::mem::take(&mut self.dirty) {
            let value = self.rows.get(&key).map(|row| encode(row));
            out.push(RowChange {
                key: row_key(prefix, &key),
                value,
            });
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs into a Vec cannot fail.
    bincode::serialize(value).expect("bincode serialization of registry rows is infallible")
}

fn row_key(prefix: u8, key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + key.len());
    bytes.push(prefix);
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    Ok(bincode::deserialize(bytes)?)
}

/// The whole registry as a plain value: what snapshots carry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RegistryState {
    /// Variables by name.
    pub variables: BTreeMap<String, Variable>,
    /// Client sessions by client id.
    pub sessions: BTreeMap<String, ClientSession>,
}

/// The replicated registry.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    variables: Table<Variable>,
    sessions: Table<ClientSession>,
    /// Sessions by `last_index`, for least-recently-used eviction. Derived
    /// from `sessions`, never persisted.
    sessions_by_index: BTreeMap<u64, String>,
}

impl Registry {
    /// Rebuild from persisted rows (as produced by [`Self::take_changes`]).
    pub fn from_rows<'a>(
        rows: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<Self, DecodeError> {
        let mut state = RegistryState::default();
        for (key, value) in rows {
            let (&prefix, name) = key.split_first().ok_or(DecodeError::UnknownRow(0))?;
            let name = std::str::from_utf8(name)
                .map_err(|_| DecodeError::KeyNotUtf8)?
                .to_owned();
            match prefix {
                VARIABLE_ROW => {
                    state.variables.insert(name, decode(value)?);
                }
                SESSION_ROW => {
                    state.sessions.insert(name, decode(value)?);
                }
                other => return Err(DecodeError::UnknownRow(other)),
            }
        }
        Ok(Self::from_state(state))
    }

    /// Build from a snapshot's state. Nothing is marked changed.
    pub fn from_state(state: RegistryState) -> Self {
        let sessions_by_index = state
            .sessions
            .iter()
            .map(|(client, session)| (session.last_index, client.clone()))
            .collect();
        Self {
            variables: Table {
                rows: state.variables,
                dirty: BTreeSet::new(),
            },
            sessions: Table {
                rows: state.sessions,
                dirty: BTreeSet::new(),
            },
            sessions_by_index,
        }
    }

    /// A copy of the whole state, for a snapshot.
    pub fn to_state(&self) -> RegistryState {
        RegistryState {
            variables: self.variables.rows.clone(),
            sessions: self.sessions.rows.clone(),
        }
    }

    /// Every row of the state, for writing a restored snapshot to disk.
    pub fn all_rows(&self) -> Vec<RowChange> {
        let variables = self.variables.rows.iter().map(|(key, row)| RowChange {
            key: row_key(VARIABLE_ROW, key),
            value: Some(encode(row)),
        });
        let sessions = self.sessions.rows.iter().map(|(key, row)| RowChange {
            key: row_key(SESSION_ROW, key),
            value: Some(encode(row)),
        });
        variables.chain(sessions).collect()
    }

    /// Rows changed since the last call, to persist with the applied index.
    pub fn take_changes(&mut self) -> Vec<RowChange> {
        let mut changes = Vec::new();
        self.variables.drain_changes(VARIABLE_ROW, &mut changes);
        self.sessions.drain_changes(SESSION_ROW, &mut changes);
        changes
    }

    /// A variable by name.
    pub fn variable(&self, key: &str) -> Option<&Variable> {
        self.variables.get(key)
    }

    /// Variables whose names start with `prefix` and sort after `start_after`,
    /// in name order, at most `limit` of them; the flag says whether more match.
    pub fn list_variables(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> (Vec<(String, Variable)>, bool) {
        use std::ops::Bound;
        let lower = if start_after.is_empty() || start_after < prefix {
            Bound::Included(prefix.to_owned())
        } else {
            Bound::Excluded(start_after.to_owned())
        };
        let mut matching = self
            .variables
            .rows
            .range((lower, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix));
        let page: Vec<_> = matching
            .by_ref()
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let more = matching.next().is_some();
        (page, more)
    }

    /// Number of variables.
    pub fn variables_count(&self) -> usize {
        self.variables.rows.len()
    }

    /// Apply the request committed at log `index`.
    pub fn apply(&mut self, index: u64, request: &Request) -> Response {
        if let Some(session) = &request.session {
            if let Some(earlier) = self.deduplicate(session) {
                return earlier;
            }
        }
        let response = Response {
            revision: index,
            outcome: self.execute(index, &request.command),
        };
        if let Some(session) = &request.session {
            self.remember(index, session, &response);
        }
        assert!(
            self.variables.rows.len() <= VARIABLES_COUNT_MAX,
            "variables bound broken"
        );
        assert!(
            self.sessions.rows.len() <= SESSIONS_COUNT_MAX,
            "sessions bound broken"
        );
        assert_eq!(
            self.sessions.rows.len(),
            self.sessions_by_index.len(),
            "session index out of step"
        );
        response
    }

    /// The first outcome of a retried write, or a refusal for a serial too old
    /// to know; `None` if the write is new.
    fn deduplicate(&self, session: &WriteSession) -> Option<Response> {
        let known = self.sessions.get(&session.client_id)?;
        if let Some(first) = known.outcomes.get(&session.serial) {
            return Some(first.clone());
        }
        let oldest = *known.outcomes.keys().next()?;
        if known.outcomes.len() >= SESSION_SERIALS_RETAINED && session.serial < oldest {
            return Some(Response {
                revision: known.last_index,
                outcome: Outcome::SessionExpired {
                    oldest_retained_serial: oldest,
                },
            });
        }
        None
    }

    fn remember(&mut self, index: u64, session: &WriteSession, response: &Response) {
        let mut known = self
            .sessions
            .get(&session.client_id)
            .cloned()
            .unwrap_or_default();
        if known.last_index != 0 {
            self.sessions_by_index.remove(&known.last_index);
        }
        known.last_index = index;
        known.outcomes.insert(session.serial, response.clone());
        while known.outcomes.len() > SESSION_SERIALS_RETAINED {
            known.outcomes.pop_first();
        }
        self.sessions.insert(&session.client_id, known);
        self.sessions_by_index
            .insert(index, session.client_id.clone());
        while self.sessions.rows.len() > SESSIONS_COUNT_MAX {
            let (_, oldest_client) = self
                .sessions_by_index
                .pop_first()
                .expect("index matches sessions");
            self.sessions.remove(&oldest_client);
        }
    }

    fn execute(&mut self, index: u64, command: &Command) -> Outcome {
        match command {
            Command::Put { key, value } => self.write(index, key, value),
            Command::Delete { key } => Outcome::Deleted {
                prev: self.variables.remove(key),
            },
            Command::Cas { key, expect, value } => {
                let current = self.variables.get(key);
                let holds = match (expect, current) {
                    (Expect::Absent, None) => true,
                    (Expect::Value(expected), Some(current)) => &current.value == expected,
                    (Expect::Version(expected), Some(current)) => current.version == *expected,
                    _ => false,
                };
                if holds {
                    self.write(index, key, value)
                } else {
                    Outcome::CasMismatch {
                        current: current.cloned(),
                    }
                }
            }
        }
    }

    fn write(&mut self, index: u64, key: &str, value: &[u8]) -> Outcome {
        if key.len() > KEY_BYTES_MAX || value.len() > VALUE_BYTES_MAX {
            return Outcome::LimitExceeded {
                reason: format!("key or value over the registry bound ({KEY_BYTES_MAX} / {VALUE_BYTES_MAX} bytes)"),
            };
        }
        let prev = self.variables.get(key).cloned();
        if prev.is_none() && self.variables.rows.len() >= VARIABLES_COUNT_MAX {
            return Outcome::LimitExceeded {
                reason: format!("registry holds {VARIABLES_COUNT_MAX} variables"),
            };
        }
        let current = Variable {
            value: value.to_vec(),
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            create_revision: prev.as_ref().map_or(index, |p| p.create_revision),
            mod_revision: index,
        };
        self.variables.insert(key, current.clone());
        Outcome::Written { current, prev }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Request {
        Request {
            session: None,
            command: Command::Put {
                key: key.into(),
                value: value.into(),
            },
        }
    }

    fn with_session(mut request: Request, client: &str, serial: u64) -> Request {
        request.session = Some(WriteSession {
            client_id: client.into(),
            serial,
        });
        request
    }

    /// Versions and revisions follow etcd's meaning.
    #[test]
    fn put_tracks_versions_and_revisions() {
        let mut registry = Registry::default();
        registry.apply(5, &put("a", "1"));
        let response = registry.apply(9, &put("a", "2"));
        let Outcome::Written { current, prev } = response.outcome else {
            panic!("not written: {response:?}")
        };
        assert_eq!(
            (
                current.version,
                current.create_revision,
                current.mod_revision
            ),
            (2, 5, 9)
        );
        assert_eq!(prev.unwrap().value, b"1");
    }

    /// A retried write returns the first outcome and changes nothing.
    #[test]
    fn retried_write_applies_once() {
        let mut registry = Registry::default();
        let first = registry.apply(1, &with_session(put("k", "x"), "c1", 7));
        registry.apply(2, &put("k", "y"));
        let retry = registry.apply(3, &with_session(put("k", "x"), "c1", 7));
        assert_eq!(first, retry);
        assert_eq!(registry.variable("k").unwrap().value, b"y");
        assert_eq!(registry.variable("k").unwrap().version, 2);
    }

    /// A serial older than the retained window is refused, not applied.
    #[test]
    fn expired_serial_is_refused() {
        let mut registry = Registry::default();
        let retained = SESSION_SERIALS_RETAINED as u64;
        for serial in 10..10 + retained {
            registry.apply(serial, &with_session(put("k", "v"), "c", serial));
        }
        let response = registry.apply(500, &with_session(put("k", "old"), "c", 3));
        assert_eq!(
            response.outcome,
            Outcome::SessionExpired {
                oldest_retained_serial: 10
            }
        );
        assert_eq!(registry.variable("k").unwrap().value, b"v");
    }

    /// The least recently used session is evicted past the bound.
    #[test]
    fn sessions_are_bounded() {
        let mut registry = Registry::default();
        for client in 0..=SESSIONS_COUNT_MAX as u64 {
            registry.apply(
                client + 1,
                &with_session(put("k", "v"), &format!("c{client}"), 1),
            );
        }
        assert_eq!(registry.sessions.rows.len(), SESSIONS_COUNT_MAX);
        assert!(registry.sessions.get("c0").is_none());
        assert!(registry.sessions.get("c1").is_some());
    }

    /// Each compare-and-set expectation holds or fails as documented.
    #[test]
    fn cas_expectations() {
        let mut registry = Registry::default();
        let cas = |expect, value: &str| Request {
            session: None,
            command: Command::Cas {
                key: "k".into(),
                expect,
                value: value.into(),
            },
        };
        assert!(matches!(
            registry
                .apply(1, &cas(Expect::Value(b"x".to_vec()), "y"))
                .outcome,
            Outcome::CasMismatch { current: None }
        ));
        assert!(matches!(
            registry.apply(2, &cas(Expect::Absent, "a")).outcome,
            Outcome::Written { .. }
        ));
        assert!(matches!(
            registry.apply(3, &cas(Expect::Absent, "b")).outcome,
            Outcome::CasMismatch { .. }
        ));
        assert!(matches!(
            registry
                .apply(4, &cas(Expect::Value(b"a".to_vec()), "c"))
                .outcome,
            Outcome::Written { .. }
        ));
        assert!(matches!(
            registry.apply(5, &cas(Expect::Version(1), "d")).outcome,
            Outcome::CasMismatch { .. }
        ));
        assert!(matches!(
            registry.apply(6, &cas(Expect::Version(2), "d")).outcome,
            Outcome::Written { .. }
        ));
        assert_eq!(registry.variable("k").unwrap().value, b"d");
    }

    /// Rows drained after applying rebuild an equal registry.
    #[test]
    fn rows_round_trip() {
        let mut registry = Registry::default();
        registry.apply(1, &with_session(put("a", "1"), "c", 1));
        registry.apply(2, &put("b", "2"));
        registry.apply(
            3,
            &Request {
                session: None,
                command: Command::Delete { key: "b".into() },
            },
        );
        let mut rows = BTreeMap::new();
        for change in registry.take_changes() {
            match change.value {
                Some(value) => rows.insert(change.key, value),
                None => rows.remove(&change.key),
            };
        }
        let rebuilt =
            Registry::from_rows(rows.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).unwrap();
        assert_eq!(rebuilt.to_state(), registry.to_state());
        assert!(rebuilt.variable("b").is_none());
    }

    /// Paging by `start_after` walks every matching key once.
    #[test]
    fn list_pages_by_prefix() {
        let mut registry = Registry::default();
        for key in ["a/1", "a/2", "a/3", "b/1"] {
            registry.apply(1, &put(key, "v"));
        }
        let (page, more) = registry.list_variables("a/", "", 2);
        assert_eq!(
            page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["a/1", "a/2"]
        );
        assert!(more);
        let (page, more) = registry.list_variables("a/", "a/2", 2);
        assert_eq!(
            page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["a/3"]
        );
        assert!(!more);
    }
}
