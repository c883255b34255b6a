//! The canonical byte encoding of everything DockLock signs or hashes.
//!
//! Signed and hashed bytes are never a serde dump (whose layout could change
//! with a library version); they are this encoding, specified in
//! `docs/FORMATS.md` so that a third party can implement it:
//!
//! - every signed or hashed value starts with a domain-separation prefix
//!   (`docklock-agreement-v1`, ...) written as a length-prefixed string;
//! - integers are fixed-width big-endian (`u8`, `u32`, `u64`);
//! - byte strings and UTF-8 strings are a `u32` length and the bytes;
//! - lists are a `u32` count and the items; maps are lists of pairs in
//!   strictly increasing key order; optional values are a `u8` 0 or 1 and the
//!   value.
//!
//! The [`Reader`] is strict: lengths are bounded, maps must be sorted without
//! duplicates, booleans are 0 or 1, strings are UTF-8, and nothing may follow
//! the value. So each value has exactly one encoding, and decoding then
//! re-encoding gives back the same bytes.

use std::collections::BTreeMap;

/// Longest byte string a [`Reader`] accepts (the largest signed object is
/// far smaller; this bounds allocation on hostile input).
pub const FIELD_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Why bytes are not a canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a value.
    #[error("truncated: {what} needs {needed} more bytes")]
    Truncated {
        /// The value being read.
        what: &'static str,
        /// Bytes missing.
        needed: usize,
    },
    /// The value is well-formed but not what this position allows.
    #[error("{what}: {reason}")]
    Invalid {
        /// The value being read.
        what: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// Bytes follow the value.
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

impl DecodeError {
    /// A value that decodes but is not allowed.
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid { what, reason: reason.into() }
    }
}

/// Builds a canonical encoding.
#[derive(Default)]
pub struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    /// A writer whose output starts with the domain-separation `prefix`.
    pub fn with_prefix(prefix: &str) -> Self {
        // Room for most encodings (an event, a chain link), so building one
        // rarely reallocates; larger ones grow as before.
        let mut writer = Self { bytes: Vec::with_capacity(256) };
        writer.str(prefix);
        writer
    }

    /// The encoding.
    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }

    /// A `u8`.
    pub fn u8(&mut self, value: u8) -> &mut Self {
        self.bytes.push(value);
        self
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A boolean as a `u8` 0 or 1.
    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.u8(u8::from(value))
    }

    /// A fixed-width value, written without a length (its width is implied).
    pub fn fixed(&mut self, value: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(value);
        self
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        let len = u32::try_from(value.len()).expect("canonical field over 4 GiB");
        self.u32(len);
        self.fixed(value)
    }

    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self, value: &str) -> &mut Self {
        self.bytes(value.as_bytes())
    }

    /// A count-prefixed list of strings.
    pub fn strs(&mut self, values: &[String]) -> &mut Self {
        self.u32(count(values.len()));
        for value in values {
            self.str(value);
        }
        self
    }

    /// A map of strings, in key order.
    pub fn str_map(&mut self, map: &BTreeMap<String, String>) -> &mut Self {
        self.u32(count(map.len()));
        for (key, value) in map {
            self.str(key).str(value);
        }
        self
    }

    /// An optional `u64`.
    pub fn opt_u64(&mut self, value: Option<u64>) -> &mut Self {
        match value {
            Some(value) => self.u8(1).u64(value),
            None => self.u8(0),
        }
    }
}

fn count(len: usize) -> u32 {
    u32::try_from(len).expect("canonical list over 4 billion items")
}

/// Reads a canonical encoding strictly.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// A reader over `bytes` that first checks the domain-separation prefix.
    pub fn with_prefix(bytes: &'a [u8], prefix: &'static str) -> Result<Self, DecodeError> {
        let mut reader = Self::new(bytes);
        let found = reader.bytes("prefix")?;
        if found != prefix.as_bytes() {
            return Err(DecodeError::invalid(
                "prefix",
                format!("expected {prefix:?}, found {:?}", String::from_utf8_lossy(found)),
            ));
        }
        Ok(reader)
    }

    /// Fail unless every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() {
            0 => Ok(()),
            left => Err(DecodeError::Trailing(left)),
        }
    }

    /// Exactly `len` bytes.
    pub fn fixed(&mut self, what: &'static str, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < len {
            return Err(DecodeError::Truncated { what, needed: len - self.bytes.len() });
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    /// A fixed-size array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        Ok(self.fixed(what, N)?.try_into().expect("fixed returns N bytes"))
    }

    /// A `u8`.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// A boolean: exactly 0 or 1.
    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::invalid(what, format!("boolean byte {other}"))),
        }
    }

    /// A length-prefixed byte string of at most [`FIELD_BYTES_MAX`] bytes.
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(what)? as usize;
        if len > FIELD_BYTES_MAX {
            return Err(DecodeError::invalid(what, format!("length {len} over {FIELD_BYTES_MAX}")));
        }
        self.fixed(what, len)
    }

    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let bytes = self.bytes(what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::invalid(what, "not UTF-8"))
    }

    /// A count, checked against the bytes left (each item takes at least
    /// `item_bytes_min`), so a hostile count cannot make us allocate.
    fn count(&mut self, what: &'static str, item_bytes_min: usize) -> Result<usize, DecodeError> {
        let count = self.u32(what)? as usize;
        if count.saturating_mul(item_bytes_min) > self.bytes.len() {
            return Err(DecodeError::Truncated { what, needed: count * item_bytes_min - self.bytes.len() });
        }
        Ok(count)
    }

    /// A count-prefixed list of strings.
    pub fn strs(&mut self, what: &'static str) -> Result<Vec<String>, DecodeError> {
        let count = self.count(what, 4)?;
        (0..count).map(|_| self.str(what)).collect()
    }

    /// A map of strings whose keys are strictly increasing.
    pub fn str_map(&mut self, what: &'static str) -> Result<BTreeMap<String, String>, DecodeError> {
        let count = self.count(what, 8)?;
        let mut map = BTreeMap::new();
        for _ in 0..count {
            let key = self.str(what)?;
            let value = self.str(what)?;
            if map.last_key_value().is_some_and(|(last, _)| *last >= key) {
                return Err(DecodeError::invalid(what, "keys not in strictly increasing order"));
            }
            map.insert(key, value);
        }
        Ok(map)
    }

    /// An optional `u64`.
    pub fn opt_u64(&mut self, what: &'static str) -> Result<Option<u64>, DecodeError> {
        if self.bool(what)? {
            self.u64(what).map(Some)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let map = BTreeMap::from([("a".to_owned(), "1".to_owned()), ("b".to_owned(), "2".to_owned())]);
        let mut writer = Writer::with_prefix("docklock-test-v1");
        writer.u8(7).u32(8).u64(9).bool(true).bytes(b"xy").strs(&["s".into()]).str_map(&map).opt_u64(Some(3));
        writer.finish()
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let mut reader = Reader::with_prefix(&bytes, "docklock-test-v1").unwrap();
        assert_eq!(reader.u8("a").unwrap(), 7);
        assert_eq!(reader.u32("b").unwrap(), 8);
        assert_eq!(reader.u64("c").unwrap(), 9);
        assert!(reader.bool("d").unwrap());
        assert_eq!(reader.bytes("e").unwrap(), b"xy");
        assert_eq!(reader.strs("f").unwrap(), ["s"]);
        assert_eq!(reader.str_map("g").unwrap().len(), 2);
        assert_eq!(reader.opt_u64("h").unwrap(), Some(3));
        reader.finish().unwrap();
    }

    #[test]
    fn strictness() {
        let bytes = sample();
        assert!(Reader::with_prefix(&bytes, "docklock-other-v1").is_err());
        // Every truncation fails somewhere.
        for len in 0..bytes.len() {
            let mut reader = match Reader::with_prefix(&bytes[..len], "docklock-test-v1") {
                Ok(reader) => reader,
                Err(_) => continue,
            };
            let read = (|| -> Result<(), DecodeError> {
                reader.u8("a")?;
                reader.u32("b")?;
                reader.u64("c")?;
                reader.bool("d")?;
                reader.bytes("e")?;
                reader.strs("f")?;
                reader.str_map("g")?;
                reader.opt_u64("h")?;
                Ok(())
            })();
            assert!(read.is_err() || reader.finish().is_err(), "truncation to {len} accepted");
        }
        let mut unsorted = Writer::default();
        unsorted.u32(2).str("b").str("1").str("a").str("2");
        assert!(Reader::new(&unsorted.finish()).str_map("m").is_err());
        let mut hostile = Writer::default();
        hostile.u32(u32::MAX);
        assert!(Reader::new(&hostile.finish()).strs("l").is_err());
        assert!(Reader::new(&[2]).bool("b").is_err());
        let mut trailing = Reader::new(&[1, 0]);
        trailing.u8("x").unwrap();
        assert_eq!(trailing.finish(), Err(DecodeError::Trailing(1)));
    }
}
