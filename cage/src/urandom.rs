//! `/dev/urandom` and `/dev/random` as endless streams, one per open.
//!
//! In the cage both names are one small read-only file drawn from the seed.
//! At each open of it the supervisor gives the new open file a stream of
//! its own: a key drawn from the opening process's random generator (so
//! the bytes depend on the seed and on that process's own history, not on
//! how processes interleave), and a place far past the file's end for its
//! offset, which the kernel keeps and shares with `dup` and `fork` as it
//! would a real device's. The offset names the stream and the position in
//! it. While a process holds such a file, the supervisor stops it at every
//! system call and answers reads of it from the stream; a read it does not
//! see (a descriptor passed in over a socket, `sendfile`) finds the file's
//! end, the same on every run. This module is pure: the supervisor does
//! the stopping, reading and writing.

use std::collections::HashMap;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// A stream's number sits above this bit of its open file's offset.
const STREAM_SHIFT: u32 = 36;
/// Bytes one stream holds (64 GiB); a read at its end returns end of file.
pub(crate) const STREAM_BYTES: u64 = 1 << STREAM_SHIFT;
/// Most streams one run opens (each costs the supervisor 40 bytes).
pub(crate) const STREAMS_MAX: u64 = 1 << 20;
/// Most bytes one emulated read returns (a shorter read than asked, as a
/// read may be; callers loop).
pub(crate) const READ_BYTES_MAX: usize = 1 << 20;

/// The streams a run has opened, by the offset each starts at.
#[derive(Default)]
pub(crate) struct Streams {
    keys: HashMap<u64, [u8; 32]>,
}

impl Streams {
    /// A new stream with `key`: the offset its open file is given, or
    /// `None` past [`STREAMS_MAX`].
    pub(crate) fn open(&mut self, key: [u8; 32]) -> Option<u64> {
        let number = self.keys.len() as u64 + 1;
        if number > STREAMS_MAX {
            return None;
        }
        let start = number << STREAM_SHIFT;
        self.keys.insert(start, key);
        Some(start)
    }

    /// The stream an open file at `offset` reads, and the position in it;
    /// `None` if no stream starts there (the file was never given one).
    pub(crate) fn locate(&self, offset: u64) -> Option<([u8; 32], u64)> {
        let start = offset >> STREAM_SHIFT << STREAM_SHIFT;
        self.keys.get(&start).map(|key| (*key, offset - start))
    }
}

/// `length` bytes of the stream with `key`, from byte `position`.
pub(crate) fn bytes(key: &[u8; 32], position: u64, length: usize) -> Vec<u8> {
    let mut stream = ChaCha20Rng::from_seed(*key);
    // ChaCha20 seeks by 32-bit word: start at the word and drop its head.
    stream.set_word_pos(u128::from(position / 4));
    let skip = (position % 4) as usize;
    let mut out = vec![0; skip + length];
    stream.fill_bytes(&mut out);
    out.drain(..skip);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_read_in_pieces_is_the_stream_read_at_once() {
        let key = [9; 32];
        let whole = bytes(&key, 0, 1000);
        let mut pieces = Vec::new();
        let mut position = 0;
        for length in [1, 3, 7, 64, 125, 300, 500] {
            pieces.extend(bytes(&key, position, length));
            position += length as u64;
        }
        assert_eq!(pieces, whole);
        assert_ne!(bytes(&[8; 32], 0, 1000), whole, "another key, other bytes");
    }

    #[test]
    fn each_open_file_finds_its_own_stream() {
        let mut streams = Streams::default();
        let first = streams.open([1; 32]).unwrap();
        let second = streams.open([2; 32]).unwrap();
        assert!(first >= STREAM_BYTES && second - first == STREAM_BYTES);
        assert_eq!(streams.locate(first + 17), Some(([1; 32], 17)));
        assert_eq!(streams.locate(second), Some(([2; 32], 0)));
        assert_eq!(streams.locate(100), None, "an offset inside the file itself is no stream's");
        assert_eq!(streams.locate(second + STREAM_BYTES), None);
    }
}
