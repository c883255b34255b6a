//! Ordered tables that remember which rows changed, and their row encoding.
//!
//! The registry's state is a few of these tables. After applying entries the
//! store drains the changed rows and writes them in one batch with the applied
//! log id, so memory and disk hold the same rows.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::Serialize;

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
pub struct Table<V> {
    prefix: u8,
    rows: BTreeMap<String, V>,
    dirty: BTreeSet<String>,
}

impl<V: Clone + Serialize + DeserializeOwned> Table<V> {
    /// An empty table whose persisted rows start with `prefix`.
    pub fn new(prefix: u8) -> Self {
        Self { prefix, rows: BTreeMap::new(), dirty: BTreeSet::new() }
    }

    /// A table holding `rows`, none of them marked changed.
    pub fn with_rows(prefix: u8, rows: BTreeMap<String, V>) -> Self {
        Self { prefix, rows, dirty: BTreeSet::new() }
    }

    /// The row prefix.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// All rows, in key order.
    pub fn rows(&self) -> &BTreeMap<String, V> {
        &self.rows
    }

    /// The row at `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.rows.get(key)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Insert or replace a row.
    pub fn insert(&mut self, key: &str, value: V) -> Option<V> {
        self.dirty.insert(key.to_owned());
        self.rows.insert(key.to_owned(), value)
    }

    /// Remove a row.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let prev = self.rows.remove(key);
        if prev.is_some() {
            self.dirty.insert(key.to_owned());
        }
        prev
    }

    /// Decode and insert a persisted row (not marked changed).
    pub fn load_row(&mut self, key: String, value: &[u8]) -> Result<(), DecodeError> {
        self.rows.insert(key, bincode::deserialize(value)?);
        Ok(())
    }

    /// Append the rows changed since the last drain to `out`.
    pub fn drain_changes(&mut self, out: &mut Vec<RowChange>) {
        for key in std::mem::take(&mut self.dirty) {
            let value = self.rows.get(&key).map(encode);
            out.push(RowChange { key: row_key(self.prefix, &key), value });
        }
    }

    /// Every row as a change, for writing a restored snapshot.
    pub fn all_rows(&self, out: &mut Vec<RowChange>) {
        out.extend(
            self.rows.iter().map(|(key, row)| RowChange { key: row_key(self.prefix, key), value: Some(encode(row)) }),
        );
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

/// Split a persisted row key into its prefix and UTF-8 key.
pub fn split_row_key(key: &[u8]) -> Result<(u8, String), DecodeError> {
    let (&prefix, name) = key.split_first().ok_or(DecodeError::UnknownRow(0))?;
    let name = std::str::from_utf8(name).map_err(|_| DecodeError::KeyNotUtf8)?;
    Ok((prefix, name.to_owned()))
}
