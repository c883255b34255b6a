//! The registry: the replicated state and its transitions.
//!
//! `Registry::apply` is a pure, deterministic function of (state, index,
//! request): no clock, no randomness, no IO, ordered maps only. The store
//! persists what it changed through [`Registry::take_changes`], so the state on
//! disk and in memory are the same rows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sessions::{self, Sessions, SessionsState};
use crate::table::{split_row_key, DecodeError, RowChange, Table};
use crate::types::{Command, Expect, Outcome, Request, Response, Variable};

/// Most variables the registry holds; a put of a new key past it is refused.
pub const VARIABLES_COUNT_MAX: usize = 1_000_000;
/// Longest variable name, in bytes, accepted by `apply` (the API checks too).
pub const KEY_BYTES_MAX: usize = 4096;
/// Largest value `apply` accepts. The API's configurable limit is lower; this
/// bound holds even for a proposer that skipped it.
pub const VALUE_BYTES_MAX: usize = 16 * 1024 * 1024;

const VARIABLE_ROW: u8 = b'v';

/// The whole registry as a plain value: what snapshots carry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RegistryState {
    /// Variables by name.
    pub variables: BTreeMap<String, Variable>,
    /// The write-session cache.
    pub sessions: SessionsState,
}

/// The replicated registry.
#[derive(Debug, Clone)]
pub struct Registry {
    variables: Table<Variable>,
    sessions: Sessions,
}

impl Default for Registry {
    fn default() -> Self {
        Self { variables: Table::new(VARIABLE_ROW), sessions: Sessions::default() }
    }
}

impl Registry {
    /// Rebuild from persisted rows (as produced by [`Self::take_changes`]).
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Result<Self, DecodeError> {
        let mut registry = Self::default();
        for (key, value) in rows {
            let (prefix, name) = split_row_key(key)?;
            if prefix == VARIABLE_ROW {
                registry.variables.load_row(name, value)?;
            } else if !registry.sessions.load_row(prefix, name, value)? {
                return Err(DecodeError::UnknownRow(prefix));
            }
        }
        registry.sessions.reindex();
        Ok(registry)
    }

    /// Build from a snapshot's state. Nothing is marked changed.
    pub fn from_state(state: RegistryState) -> Self {
        Self {
            variables: Table::with_rows(VARIABLE_ROW, state.variables),
            sessions: Sessions::from_state(state.sessions),
        }
    }

    /// A copy of the whole state, for a snapshot.
    pub fn to_state(&self) -> RegistryState {
        RegistryState { variables: self.variables.rows().clone(), sessions: self.sessions.to_state() }
    }

    /// Every row of the state, for writing a restored snapshot to disk.
    pub fn all_rows(&self) -> Vec<RowChange> {
        let mut rows = Vec::new();
        self.variables.all_rows(&mut rows);
        self.sessions.all_rows(&mut rows);
        rows
    }

    /// Rows changed since the last call, to persist with the applied index.
    pub fn take_changes(&mut self) -> Vec<RowChange> {
        let mut changes = Vec::new();
        self.variables.drain_changes(&mut changes);
        self.sessions.drain_changes(&mut changes);
        changes
    }

    /// A variable by name.
    pub fn variable(&self, key: &str) -> Option<&Variable> {
        self.variables.get(key)
    }

    /// Variables whose names start with `prefix` and sort after `start_after`,
    /// in name order, at most `limit` of them; the flag says whether more match.
    pub fn list_variables(&self, prefix: &str, start_after: &str, limit: usize) -> (Vec<(String, Variable)>, bool) {
        use std::ops::Bound;
        let lower = if start_after.is_empty() || start_after < prefix {
            Bound::Included(prefix.to_owned())
        } else {
            Bound::Excluded(start_after.to_owned())
        };
        let mut matching =
            self.variables.rows().range((lower, Bound::Unbounded)).take_while(|(key, _)| key.starts_with(prefix));
        let page: Vec<_> = matching.by_ref().take(limit).map(|(k, v)| (k.clone(), v.clone())).collect();
        let more = matching.next().is_some();
        (page, more)
    }

    /// Number of variables.
    pub fn variables_count(&self) -> usize {
        self.variables.len()
    }

    /// Apply the request committed at log `index`.
    pub fn apply(&mut self, index: u64, request: &Request) -> Response {
        if let Some(session) = &request.session {
            if let Some(reason) = sessions::invalid_client_id(&session.client_id) {
                return Response { revision: index, outcome: Outcome::Invalid { reason } };
            }
            if let Some(earlier) = self.sessions.deduplicate(session) {
                return earlier;
            }
        }
        let response = Response { revision: index, outcome: self.execute(index, &request.command) };
        if let Some(session) = &request.session {
            self.sessions.remember(index, session, &response);
        }
        assert!(self.variables.len() <= VARIABLES_COUNT_MAX, "variables bound broken");
        response
    }

    fn execute(&mut self, index: u64, command: &Command) -> Outcome {
        match command {
            Command::Put { key, value } => self.write(index, key, value),
            Command::Delete { key } => Outcome::Deleted { prev: self.variables.remove(key) },
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
                    Outcome::CasMismatch { current: current.cloned() }
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
        if prev.is_none() && self.variables.len() >= VARIABLES_COUNT_MAX {
            return Outcome::LimitExceeded { reason: format!("registry holds {VARIABLES_COUNT_MAX} variables") };
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
    use crate::types::WriteSession;

    fn put(key: &str, value: &str) -> Request {
        Request { session: None, command: Command::Put { key: key.into(), value: value.into() } }
    }

    fn with_session(mut request: Request, client: &str, serial: u64) -> Request {
        request.session = Some(WriteSession { client_id: client.into(), serial });
        request
    }

    /// Versions and revisions follow etcd's meaning.
    #[test]
    fn put_tracks_versions_and_revisions() {
        let mut registry = Registry::default();
        registry.apply(5, &put("a", "1"));
        let response = registry.apply(9, &put("a", "2"));
        let Outcome::Written { current, prev } = response.outcome else { panic!("not written: {response:?}") };
        assert_eq!((current.version, current.create_revision, current.mod_revision), (2, 5, 9));
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

    /// A session with an unusable client id is refused and nothing changes.
    #[test]
    fn invalid_session_is_refused() {
        let mut registry = Registry::default();
        let response = registry.apply(1, &with_session(put("k", "v"), "bad\0id", 1));
        assert!(matches!(response.outcome, Outcome::Invalid { .. }));
        assert!(registry.variable("k").is_none());
    }

    /// Each compare-and-set expectation holds or fails as documented.
    #[test]
    fn cas_expectations() {
        let mut registry = Registry::default();
        let cas = |expect, value: &str| Request {
            session: None,
            command: Command::Cas { key: "k".into(), expect, value: value.into() },
        };
        assert!(matches!(
            registry.apply(1, &cas(Expect::Value(b"x".to_vec()), "y")).outcome,
            Outcome::CasMismatch { current: None }
        ));
        assert!(matches!(registry.apply(2, &cas(Expect::Absent, "a")).outcome, Outcome::Written { .. }));
        assert!(matches!(registry.apply(3, &cas(Expect::Absent, "b")).outcome, Outcome::CasMismatch { .. }));
        assert!(matches!(registry.apply(4, &cas(Expect::Value(b"a".to_vec()), "c")).outcome, Outcome::Written { .. }));
        assert!(matches!(registry.apply(5, &cas(Expect::Version(1), "d")).outcome, Outcome::CasMismatch { .. }));
        assert!(matches!(registry.apply(6, &cas(Expect::Version(2), "d")).outcome, Outcome::Written { .. }));
        assert_eq!(registry.variable("k").unwrap().value, b"d");
    }

    /// Rows drained after applying rebuild an equal registry.
    #[test]
    fn rows_round_trip() {
        let mut registry = Registry::default();
        registry.apply(1, &with_session(put("a", "1"), "c", 1));
        registry.apply(2, &put("b", "2"));
        registry.apply(3, &Request { session: None, command: Command::Delete { key: "b".into() } });
        let mut rows = BTreeMap::new();
        for change in registry.take_changes() {
            match change.value {
                Some(value) => rows.insert(change.key, value),
                None => rows.remove(&change.key),
            };
        }
        let rebuilt = Registry::from_rows(rows.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).unwrap();
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
        assert_eq!(page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a/1", "a/2"]);
        assert!(more);
        let (page, more) = registry.list_variables("a/", "a/2", 2);
        assert_eq!(page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a/3"]);
        assert!(!more);
    }
}
