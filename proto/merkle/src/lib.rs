//! Append-only Merkle tree in the shape of RFC 6962 §2.1 / RFC 9162 §2.1, hashed with SHA3-256.
//!
//! The tree hash, audit paths and consistency proofs are exactly those of the RFCs with SHA-256 replaced by
//! SHA3-256, so a verifier written against the RFC text (with that one substitution) accepts our proofs.
//!
//! Storage model: a log keeps the hashes of *complete, aligned* subtrees. Node `(level, index)` is the hash of
//! the perfect subtree over leaves `[index << level, (index + 1) << level)`; level 0 holds the leaf hashes. Such
//! a node never changes once its last leaf is appended, so it can be written once and read forever. Every RFC
//! subtree hash (including the ones over ragged right edges) is derived from at most 64 of these nodes, which is
//! what keeps [`root_at`], [`inclusion_proof`] and [`consistency_proof`] at O(log n) lookups.

use sha3::{Digest, Sha3_256};

/// A SHA3-256 digest: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Domain-separation prefix for leaves; distinct from [`NODE_PREFIX`] so that a leaf can never be passed off as
/// an interior node (second-preimage protection, RFC 6962 §2.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix for interior nodes.
const NODE_PREFIX: u8 = 0x01;

/// Hash of one log entry: `SHA3-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    leaf_hash_parts(&[data])
}

/// [`leaf_hash`] of the concatenation of `parts`, without concatenating.
pub fn leaf_hash_parts(parts: &[&[u8]]) -> Hash {
    let mut hasher = Sha3_256::new();
    hasher.update([LEAF_PREFIX]);
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Hash of an interior node: `SHA3-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha3_256::new();
    hasher.update([NODE_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// Root of the tree with no leaves, `MTH({})`: the SHA3-256 hash of the empty string.
pub fn empty_root() -> Hash {
    Sha3_256::digest([]).into()
}

/// Read access to the stored hashes of complete, aligned subtrees (see the module docs).
///
/// The functions in this module only ever ask for a node whose leaves all lie within the tree size they were
/// given, so an implementation may treat any other request as a bug or as an error of its own.
pub trait NodeSource {
    /// Why a lookup failed (I/O, corruption, missing node, ...).
    type Error;

    /// The hash of the perfect subtree over leaves `[index << level, (index + 1) << level)`.
    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// Why a proof could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ProofError<E> {
    /// The node store failed to return a node the proof needs.
    #[error("node store lookup failed")]
    Store(#[source] E),
    /// The arguments do not describe a valid proof: a leaf index at or beyond the tree size, an old size above
    /// the new size, or an old size of zero (RFC 9162 §2.1.4 defines consistency only from a non-empty tree).
    #[error("{what} {value} is out of range for a tree of size {size}")]
    OutOfRange {
        /// Which argument was wrong (`"leaf index"` or `"old size"`).
        what: &'static str,
        /// The offending value.
        value: u64,
        /// The tree size it was checked against.
        size: u64,
    },
}

/// Why a proof was rejected. Each variant names the check that failed so that callers can log something useful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The claimed leaf index is not below the claimed tree size.
    #[error("leaf index {index} is out of range for a tree of size {size}")]
    IndexOutOfRange {
        /// The claimed leaf index.
        index: u64,
        /// The claimed tree size.
        size: u64,
    },
    /// A consistency proof was requested from the empty tree, which RFC 9162 §2.1.4 does not define.
    #[error("old tree size is zero; consistency is only defined from a non-empty tree")]
    OldSizeZero,
    /// The old tree is larger than the new one, so it cannot be a prefix of it.
    #[error("old tree size {old_size} exceeds new tree size {new_size}")]
    OldSizeExceedsNew {
        /// The claimed old tree size.
        old_size: u64,
        /// The claimed new tree size.
        new_size: u64,
    },
    /// The proof does not have the number of hashes the sizes (and index) call for.
    #[error("proof has {actual} hashes, expected {expected}")]
    WrongProofLength {
        /// How many hashes a proof for these sizes must have.
        expected: usize,
        /// How many hashes were supplied.
        actual: usize,
    },
    /// The root recomputed from the proof differs from the supplied (new) root.
    #[error("recomputed root does not match the expected root")]
    RootMismatch,
    /// The old root recomputed from a consistency proof differs from the supplied old root.
    #[error("recomputed old root does not match the expected old root")]
    OldRootMismatch,
}

/// Why [`Frontier::from_parts`] refused its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrontierError {
    /// A frontier holds exactly one hash per set bit of its size; anything else is corrupt or mismatched.
    #[error("frontier of size {size} needs {expected} hashes, got {actual}")]
    WrongHashCount {
        /// The claimed tree size.
        size: u64,
        /// `size.count_ones()`.
        expected: usize,
        /// How many hashes were supplied.
        actual: usize,
    },
}

/// The right edge of a growing tree: the roots of the perfect subtrees that make up its leaves.
///
/// There is one hash per set bit of the size, ordered from the oldest (largest, leftmost) subtree to the newest
/// (smallest, rightmost). That is all that is needed to append and to compute the current root without reading
/// the node store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores a frontier persisted with [`Frontier::parts`].
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Result<Self, FrontierError> {
        let expected = size.count_ones() as usize;
        if hashes.len() != expected {
            return Err(FrontierError::WrongHashCount { size, expected, actual: hashes.len() });
        }
        Ok(Self { size, hashes })
    }

    /// The tree size and the subtree roots (largest first), for persisting.
    pub fn parts(&self) -> (u64, &[Hash]) {
        (self.size, &self.hashes)
    }

    /// [`Frontier::parts`], taken apart without a copy.
    pub fn into_parts(self) -> (u64, Vec<Hash>) {
        (self.size, self.hashes)
    }

    /// Number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `MTH` of all leaves so far, in O(log n) hashing and no node lookups.
    pub fn root(&self) -> Hash {
        // MTH nests to the right: the largest perfect subtree is the left child of the root, and the remainder is
        // the right child, recursively. So fold from the smallest subtree outwards.
        let mut iter = self.hashes.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// Appends one leaf (given by its [`leaf_hash`]) and returns every node completed by it, as
    /// `(level, index, hash)` from the leaf upwards. The caller must persist them for later proofs.
    ///
    /// # Panics
    ///
    /// If the tree already holds `u64::MAX` leaves.
    pub fn append(&mut self, leaf_hash: Hash) -> Vec<(u32, u64, Hash)> {
        assert!(self.size < u64::MAX, "Merkle tree is full");
        let mut completed = Vec::with_capacity(self.size.trailing_ones() as usize + 1);
        let mut hash = leaf_hash;
        let mut level = 0u32;
        let mut index = self.size;
        completed.push((level, index, hash));
        // Each trailing one bit of the old size is a perfect subtree of the same height as the one being carried,
        // immediately to its left: merge them, like a binary increment.
        while (self.size >> level) & 1 == 1 {
            let left = self.hashes.pop().expect("frontier has one hash per set bit of size");
            hash = node_hash(&left, &hash);
            level += 1;
            index >>= 1;
            completed.push((level, index, hash));
        }
        self.hashes.push(hash);
        self.size += 1;
        completed
    }
}

/// Largest power of two strictly less than `n`; the RFC's split point. Requires `n >= 2`.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[start .. start + len])` for a range that the RFC recursion can produce: `len >= 1` and `start` a
/// multiple of the smallest power of two `>= len`. Such a range is a run of perfect, aligned subtrees, one per set
/// bit of `len`, so it costs `len.count_ones()` lookups.
fn subtree_root<S: NodeSource>(src: &S, start: u64, len: u64) -> Result<Hash, S::Error> {
    debug_assert!(len >= 1);
    debug_assert!(len.checked_next_power_of_two().map_or(start == 0, |p| start.is_multiple_of(p)));
    // Walk from the smallest subtree at the right end leftwards, which is the order MTH nests in.
    let mut end = start + len;
    let mut bits = len;
    let mut acc: Option<Hash> = None;
    while bits != 0 {
        let level = bits.trailing_zeros();
        end -= 1 << level;
        let hash = src.node(level, end >> level)?;
        acc = Some(match acc {
            None => hash,
            Some(right) => node_hash(&hash, &right),
        });
        bits &= bits - 1;
    }
    Ok(acc.expect("len >= 1"))
}

/// `MTH` of the first `size` leaves, using `size.count_ones()` node lookups.
pub fn root_at<S: NodeSource>(src: &S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    subtree_root(src, 0, size)
}

/// Walks RFC 6962 `PATH(index, D[0:size])` top-down, calling `visit(start, len)` for the subtree whose root is
/// each audit path element. Shared by proof generation and by the verifier's length check.
fn walk_inclusion<E>(index: u64, size: u64, mut visit: impl FnMut(u64, u64) -> Result<(), E>) -> Result<(), E> {
    debug_assert!(index < size);
    let (mut start, mut n, mut m) = (0u64, size, index);
    while n > 1 {
        let k = split_point(n);
        if m < k {
            visit(start + k, n - k)?;
            n = k;
        } else {
            visit(start, k)?;
            start += k;
            m -= k;
            n -= k;
        }
    }
    Ok(())
}

/// Walks RFC 6962 `PROOF(old_size, D[0:new_size])` (i.e. `SUBPROOF(m, D, true)`) top-down, calling
/// `visit(start, len)` for the subtree behind each proof element. Requires `0 < old_size <= new_size`.
fn walk_consistency<E>(
    old_size: u64,
    new_size: u64,
    mut visit: impl FnMut(u64, u64) -> Result<(), E>,
) -> Result<(), E> {
    debug_assert!(0 < old_size && old_size <= new_size);
    // `whole_old` is the RFC's `b`: true while the current subtree's prefix is the entire old tree, whose root the
    // verifier already has and so need not be sent.
    let (mut start, mut n, mut m, mut whole_old) = (0u64, new_size, old_size, true);
    loop {
        if m == n {
            if !whole_old {
                visit(start, m)?;
            }
            return Ok(());
        }
        let k = split_point(n);
        if m <= k {
            visit(start + k, n - k)?;
            n = k;
        } else {
            visit(start, k)?;
            start += k;
            m -= k;
            n -= k;
            whole_old = false;
        }
    }
}

fn inclusion_proof_len(index: u64, size: u64) -> usize {
    let mut len = 0;
    let _ = walk_inclusion::<()>(index, size, |_, _| {
        len += 1;
        Ok(())
    });
    len
}

fn consistency_proof_len(old_size: u64, new_size: u64) -> usize {
    let mut len = 0;
    let _ = walk_consistency::<()>(old_size, new_size, |_, _| {
        len += 1;
        Ok(())
    });
    len
}

/// Fetches the subtree roots named by a walk and puts them in the RFC's order (leaf end first).
fn collect_proof<S: NodeSource>(
    src: &S,
    walk: impl FnOnce(&mut dyn FnMut(u64, u64) -> Result<(), S::Error>) -> Result<(), S::Error>,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    let mut proof = Vec::new();
    walk(&mut |start, len| {
        proof.push(subtree_root(src, start, len)?);
        Ok(())
    })
    .map_err(ProofError::Store)?;
    // The walks go from the root down, but the RFC appends each sibling after the sub-proof below it.
    proof.reverse();
    Ok(proof)
}

/// RFC 6962 `PATH(index, D[0:size])`: the audit path for leaf `index` in the tree of the first `size` leaves,
/// ordered from the leaf's sibling up to the root's child. Uses O(log size) node lookups.
pub fn inclusion_proof<S: NodeSource>(src: &S, index: u64, size: u64) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if index >= size {
        return Err(ProofError::OutOfRange { what: "leaf index", value: index, size });
    }
    collect_proof(src, |visit| walk_inclusion(index, size, visit))
}

/// RFC 6962 `PROOF(old_size, D[0:new_size])`: proof that the tree of the first `old_size` leaves is a prefix of
/// the tree of the first `new_size` leaves. Uses O(log new_size) node lookups.
///
/// Following RFC 9162 §2.1.4, `old_size` must be at least 1 (consistency with the empty tree is trivially true and
/// has no proof); zero is reported as [`ProofError::OutOfRange`], as is `old_size > new_size`. Equal sizes give an
/// empty proof.
pub fn consistency_proof<S: NodeSource>(
    src: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if old_size == 0 || old_size > new_size {
        return Err(ProofError::OutOfRange { what: "old size", value: old_size, size: new_size });
    }
    collect_proof(src, |visit| walk_consistency(old_size, new_size, visit))
}

/// Right-shifts `fn_` and `sn` together until `fn_` is odd or zero: skips the levels where the node on the path is
/// the last one of its level and is promoted without a sibling.
fn skip_promotions(fn_: &mut u64, sn: &mut u64) {
    while *fn_ & 1 == 0 && *fn_ != 0 {
        *fn_ >>= 1;
        *sn >>= 1;
    }
}

/// Checks an audit path with the algorithm of RFC 9162 §2.1.3.2.
///
/// As in the RFCs, `size` is bound only through `root`: a proof can also pass for a different size whose path has
/// the same shape (e.g. leaf 0 of 3 and of 4), so `(size, root)` must come from the same signed tree head.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), VerifyError> {
    if index >= size {
        return Err(VerifyError::IndexOutOfRange { index, size });
    }
    // The RFC loop below also catches a wrong length, but only as a root mismatch or a late `sn != 0`; checking
    // first gives the caller a precise error.
    let expected = inclusion_proof_len(index, size);
    if proof.len() != expected {
        return Err(VerifyError::WrongProofLength { expected, actual: proof.len() });
    }
    let wrong_len = VerifyError::WrongProofLength { expected, actual: proof.len() };
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if sn == 0 {
            return Err(wrong_len);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            skip_promotions(&mut fn_, &mut sn);
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(wrong_len);
    }
    if r != *root {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

/// Checks a consistency proof with the algorithm of RFC 9162 §2.1.4.2.
///
/// As with [`verify_inclusion`], the sizes are bound only through the roots, so they must come from signed tree
/// heads together with them.
///
/// `old_size == new_size` is accepted with an empty proof when the two roots are equal (the RFC only covers
/// `old_size < new_size`); `old_size == 0` is rejected as [`VerifyError::OldSizeZero`], matching
/// [`consistency_proof`].
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), VerifyError> {
    if old_size == 0 {
        return Err(VerifyError::OldSizeZero);
    }
    if old_size > new_size {
        return Err(VerifyError::OldSizeExceedsNew { old_size, new_size });
    }
    let expected = consistency_proof_len(old_size, new_size);
    if proof.len() != expected {
        return Err(VerifyError::WrongProofLength { expected, actual: proof.len() });
    }
    if old_size == new_size {
        return if old_root == new_root { Ok(()) } else { Err(VerifyError::RootMismatch) };
    }
    let wrong_len = VerifyError::WrongProofLength { expected, actual: proof.len() };
    // When the old tree is a perfect subtree its root is a node of the new tree, so the proof omits it and the
    // verifier supplies it itself.
    let (seed, rest) = if old_size.is_power_of_two() {
        (*old_root, proof)
    } else {
        let (first, rest) = proof.split_first().ok_or(wrong_len)?;
        (*first, rest)
    };
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    // Levels where the old tree's last node is a right child are already folded into `seed`.
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (seed, seed);
    for c in rest {
        if sn == 0 {
            return Err(wrong_len);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            // A left sibling belongs to both trees.
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            skip_promotions(&mut fn_, &mut sn);
        } else {
            // A right sibling only exists in the new tree.
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(wrong_len);
    }
    if fr != *old_root {
        return Err(VerifyError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

/// A whole tree held in memory, for small logs (such as a workload's witness log) and tests.
///
/// It stores every complete node, exactly what a persistent log would write, so proofs served from it exercise
/// the same [`NodeSource`] path.
#[derive(Clone, Debug, Default)]
pub struct MemoryTree {
    /// `levels[level][index]` is node `(level, index)`.
    levels: Vec<Vec<Hash>>,
    frontier: Frontier,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one entry (its data, not its hash).
    pub fn push(&mut self, data: &[u8]) {
        self.push_parts(&[data]);
    }

    /// Appends one entry given as pieces to be concatenated.
    pub fn push_parts(&mut self, parts: &[&[u8]]) {
        for (level, index, hash) in self.frontier.append(leaf_hash_parts(parts)) {
            let level = level as usize;
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            debug_assert_eq!(self.levels[level].len() as u64, index, "nodes complete in order");
            self.levels[level].push(hash);
        }
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.frontier.size()
    }

    /// Whether the tree has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `MTH` of all entries.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }
}

impl NodeSource for MemoryTree {
    type Error = std::convert::Infallible;

    /// # Panics
    ///
    /// If the node is not complete yet, i.e. when asked for a tree size above [`MemoryTree::len`]: an in-memory
    /// tree has no failure mode to report, so that can only be a caller bug.
    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        let node = usize::try_from(level)
            .ok()
            .and_then(|l| self.levels.get(l))
            .and_then(|nodes| nodes.get(usize::try_from(index).ok()?));
        match node {
            Some(hash) => Ok(*hash),
            None => panic!("node ({level}, {index}) is not complete in a tree of {} leaves", self.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::HashMap;

    const MAX: u64 = 70;

    /// Distinct data for every leaf, of every length from 0 up, so that no two leaf hashes coincide and the empty
    /// entry is covered.
    fn data(i: u64) -> Vec<u8> {
        (0..i).map(|b| (b as u8) ^ 0x5a).collect()
    }

    fn leaves(n: u64) -> Vec<Vec<u8>> {
        (0..n).map(data).collect()
    }

    fn tree(n: u64) -> MemoryTree {
        let mut t = MemoryTree::new();
        for i in 0..n {
            t.push(&data(i));
        }
        t
    }

    /// Bits to flip for trees of `n` leaves: all 256 for every tree up to 16 leaves (every proof shape of up to
    /// four levels), a spread including both ends of the hash plus one that moves with `salt` above that, which
    /// keeps the debug-build test time in seconds rather than minutes.
    fn bits_to_flip(n: u64, salt: u64) -> Vec<usize> {
        if n <= 16 {
            (0..256).collect()
        } else {
            vec![0, 7, 8, 127, 128, 248, 255, (salt * 37 % 256) as usize]
        }
    }

    fn flipped(h: &Hash, bit: usize) -> Hash {
        let mut out = *h;
        out[bit / 8] ^= 1 << (bit % 8);
        out
    }

    // ---- Reference implementation, straight from the RFC 6962 §2.1 recursions over the data. ----

    fn ref_split(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    fn ref_mth(d: &[Vec<u8>]) -> Hash {
        match d.len() {
            0 => Sha3_256::digest(b"").into(),
            1 => ref_leaf(&d[0]),
            n => {
                let k = ref_split(n);
                ref_node(&ref_mth(&d[..k]), &ref_mth(&d[k..]))
            }
        }
    }

    fn ref_leaf(data: &[u8]) -> Hash {
        let mut buf = vec![0x00];
        buf.extend_from_slice(data);
        Sha3_256::digest(&buf).into()
    }

    fn ref_node(l: &Hash, r: &Hash) -> Hash {
        let mut buf = vec![0x01];
        buf.extend_from_slice(l);
        buf.extend_from_slice(r);
        Sha3_256::digest(&buf).into()
    }

    /// Which side of the running hash a proof element goes on; lets the tests predict when a proof for one
    /// (index, size) must also verify for another because the hash computation is literally identical.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Side {
        Left,
        Right,
    }

    /// `PATH(m, D)` with the side of each element.
    fn ref_path(m: usize, d: &[Vec<u8>]) -> Vec<(Hash, Side)> {
        let n = d.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = ref_split(n);
        if m < k {
            let mut p = ref_path(m, &d[..k]);
            p.push((ref_mth(&d[k..]), Side::Right));
            p
        } else {
            let mut p = ref_path(m - k, &d[k..]);
            p.push((ref_mth(&d[..k]), Side::Left));
            p
        }
    }

    /// Role of a consistency proof element: the starting subtree, or a sibling on one side.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Role {
        Seed,
        Sibling(Side),
    }

    /// `SUBPROOF(m, D, b)` with the role of each element.
    fn ref_subproof(m: usize, d: &[Vec<u8>], b: bool) -> Vec<(Hash, Role)> {
        let n = d.len();
        if m == n {
            return if b { Vec::new() } else { vec![(ref_mth(d), Role::Seed)] };
        }
        let k = ref_split(n);
        if m <= k {
            let mut p = ref_subproof(m, &d[..k], b);
            p.push((ref_mth(&d[k..]), Role::Sibling(Side::Right)));
            p
        } else {
            let mut p = ref_subproof(m - k, &d[k..], false);
            p.push((ref_mth(&d[..k]), Role::Sibling(Side::Left)));
            p
        }
    }

    fn ref_proof(m: usize, d: &[Vec<u8>]) -> Vec<(Hash, Role)> {
        ref_subproof(m, d, true)
    }

    fn hashes<T>(p: &[(Hash, T)]) -> Vec<Hash> {
        p.iter().map(|(h, _)| *h).collect()
    }

    fn sides<T: Copy>(p: &[(Hash, T)]) -> Vec<T> {
        p.iter().map(|(_, s)| *s).collect()
    }

    /// A `NodeSource` that checks the completeness contract and counts lookups.
    struct Checked<'a> {
        inner: &'a MemoryTree,
        size: u64,
        lookups: Cell<u32>,
    }

    impl<'a> Checked<'a> {
        fn new(inner: &'a MemoryTree, size: u64) -> Self {
            Self { inner, size, lookups: Cell::new(0) }
        }
    }

    impl NodeSource for Checked<'_> {
        type Error = std::convert::Infallible;

        fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
            let end = (u128::from(index) + 1) << level;
            assert!(end <= u128::from(self.size), "node ({level}, {index}) is not complete within size {}", self.size);
            self.lookups.set(self.lookups.get() + 1);
            self.inner.node(level, index)
        }
    }

    fn ceil_log2(n: u64) -> u32 {
        64 - n.saturating_sub(1).leading_zeros()
    }

    // ---- Hash primitives. ----

    #[test]
    fn known_answers() {
        // SHA3-256("") from FIPS 202 test vectors, independent of the sha3 crate.
        let empty = "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a";
        let hex: String = empty_root().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, empty);

        assert_eq!(leaf_hash(b""), <Hash>::from(Sha3_256::digest([0x00])));
        assert_eq!(leaf_hash(b"abc"), <Hash>::from(Sha3_256::digest(b"\x00abc")));
        assert_eq!(leaf_hash(&[0x01]), <Hash>::from(Sha3_256::digest([0x00, 0x01])));
        // The prefix must separate leaves from nodes even when the bytes otherwise agree.
        let a = leaf_hash(b"a");
        let b = leaf_hash(b"b");
        let mut concat = vec![0x01];
        concat.extend_from_slice(&a);
        concat.extend_from_slice(&b);
        assert_eq!(node_hash(&a, &b), <Hash>::from(Sha3_256::digest(&concat)));
        assert_ne!(node_hash(&a, &b), node_hash(&b, &a));
        assert_ne!(node_hash(&a, &b), leaf_hash(&concat[1..]));
        let zero = [0u8; 32];
        let mut buf = vec![0x01];
        buf.extend_from_slice(&[0u8; 64]);
        assert_eq!(node_hash(&zero, &zero), <Hash>::from(Sha3_256::digest(&buf)));
    }

    #[test]
    fn empty_tree() {
        let t = MemoryTree::new();
        assert!(t.is_empty());
        assert_eq!(t.root(), empty_root());
        assert_eq!(root_at(&t, 0).unwrap(), empty_root());
        assert_eq!(Frontier::new().root(), empty_root());
        assert_eq!(ref_mth(&[]), empty_root());
        assert!(matches!(inclusion_proof(&t, 0, 0), Err(ProofError::OutOfRange { .. })));
        assert_eq!(
            verify_inclusion(&empty_root(), 0, 0, &[], &empty_root()),
            Err(VerifyError::IndexOutOfRange { index: 0, size: 0 })
        );
    }

    // ---- Roots and the frontier. ----

    #[test]
    fn roots_match_reference() {
        let d = leaves(MAX);
        let full = tree(MAX);
        let mut t = MemoryTree::new();
        for n in 0..=MAX {
            let expected = ref_mth(&d[..n as usize]);
            assert_eq!(t.len(), n);
            assert_eq!(t.root(), expected, "frontier root, size {n}");
            assert_eq!(root_at(&t, n).unwrap(), expected, "root_at on a tree of exactly {n}");
            let checked = Checked::new(&full, n);
            assert_eq!(root_at(&checked, n).unwrap(), expected, "root_at({n}) on a larger tree");
            assert_eq!(checked.lookups.get(), n.count_ones());
            if n < MAX {
                t.push(&d[n as usize]);
            }
        }
    }

    #[test]
    fn stored_nodes_are_perfect_subtrees() {
        let d = leaves(MAX);
        let t = tree(MAX);
        let mut count = 0;
        for level in 0..7u32 {
            let width = 1u64 << level;
            for index in 0..MAX / width {
                let range = (index * width) as usize..((index + 1) * width) as usize;
                assert_eq!(t.node(level, index).unwrap(), ref_mth(&d[range]), "node ({level}, {index})");
                count += 1;
            }
        }
        // A perfect-subtree store holds fewer than 2n nodes.
        assert_eq!(count, t.levels.iter().map(Vec::len).sum::<usize>());
    }

    #[test]
    fn append_reports_exactly_the_completed_nodes() {
        let mut f = Frontier::new();
        for i in 0..MAX {
            let leaf = leaf_hash(&data(i));
            let completed = f.append(leaf);
            assert_eq!(completed[0], (0, i, leaf));
            // Node (level, index) completes when leaf i is its last leaf.
            let expected: Vec<(u32, u64)> =
                (0..64u32).take_while(|&l| (i + 1) % (1u64 << l) == 0).map(|l| (l, i >> l)).collect();
            let got: Vec<(u32, u64)> = completed.iter().map(|&(l, idx, _)| (l, idx)).collect();
            assert_eq!(got, expected, "after leaf {i}");
            assert_eq!(f.parts().1.len(), f.size().count_ones() as usize);
        }
    }

    #[test]
    fn frontier_parts_round_trip() {
        let mut f = Frontier::new();
        for i in 0..MAX {
            let (size, hashes) = f.parts();
            let restored = Frontier::from_parts(size, hashes.to_vec()).unwrap();
            assert_eq!(restored, f);
            let mut restored = restored;
            let leaf = leaf_hash(&data(i));
            assert_eq!(restored.append(leaf), f.append(leaf));
            assert_eq!(restored.root(), f.root());
        }
        let (size, hashes) = f.parts();
        let mut fewer = hashes.to_vec();
        fewer.pop();
        let expected = size.count_ones() as usize;
        assert_eq!(
            Frontier::from_parts(size, fewer),
            Err(FrontierError::WrongHashCount { size, expected, actual: expected - 1 })
        );
        let mut more = hashes.to_vec();
        more.push([0; 32]);
        assert!(Frontier::from_parts(size, more).is_err());
        assert!(Frontier::from_parts(0, vec![[0; 32]]).is_err());
        assert_eq!(Frontier::from_parts(0, Vec::new()).unwrap(), Frontier::new());
    }

    #[test]
    fn frontier_reaches_max_size() {
        let mut f = Frontier::from_parts(u64::MAX - 1, vec![[7; 32]; 63]).unwrap();
        let completed = f.append([9; 32]);
        assert_eq!(completed, vec![(0, u64::MAX - 1, [9; 32])]);
        assert_eq!(f.size(), u64::MAX);
        assert_eq!(f.parts().1.len(), 64);
    }

    #[test]
    #[should_panic(expected = "Merkle tree is full")]
    fn frontier_append_beyond_max_panics() {
        let mut f = Frontier::from_parts(u64::MAX, vec![[7; 32]; 64]).unwrap();
        f.append([9; 32]);
    }

    // ---- Inclusion proofs. ----

    #[test]
    fn inclusion_proofs_match_reference_and_verify() {
        let d = leaves(MAX);
        let t = tree(MAX);
        for n in 1..=MAX {
            let root = ref_mth(&d[..n as usize]);
            for i in 0..n {
                let checked = Checked::new(&t, n);
                let proof = inclusion_proof(&checked, i, n).unwrap();
                assert!(checked.lookups.get() <= 2 * ceil_log2(n), "lookups for ({i}, {n})");
                assert_eq!(proof, hashes(&ref_path(i as usize, &d[..n as usize])), "PATH({i}, {n})");
                assert_eq!(proof.len(), inclusion_proof_len(i, n));
                verify_inclusion(&leaf_hash(&d[i as usize]), i, n, &proof, &root).unwrap();
            }
        }
    }

    #[test]
    fn inclusion_rejects_bit_flips() {
        let d = leaves(MAX);
        let t = tree(MAX);
        for n in 1..=MAX {
            let root = t.root_for_test(n);
            for i in 0..n {
                let leaf = leaf_hash(&d[i as usize]);
                let proof = inclusion_proof(&t, i, n).unwrap();
                for bit in bits_to_flip(n, i) {
                    let err = verify_inclusion(&leaf, i, n, &proof, &flipped(&root, bit));
                    assert_eq!(err, Err(VerifyError::RootMismatch));
                    let err = verify_inclusion(&flipped(&leaf, bit), i, n, &proof, &root);
                    assert_eq!(err, Err(VerifyError::RootMismatch));
                    for j in 0..proof.len() {
                        let mut bad = proof.clone();
                        bad[j] = flipped(&bad[j], bit);
                        assert_eq!(verify_inclusion(&leaf, i, n, &bad, &root), Err(VerifyError::RootMismatch));
                    }
                }
            }
        }
    }

    #[test]
    fn inclusion_rejects_wrong_index_size_and_length() {
        let d = leaves(MAX);
        let t = tree(MAX);
        let roots: Vec<Hash> = (0..=MAX).map(|n| t.root_for_test(n)).collect();
        let shapes: HashMap<(u64, u64), Vec<Side>> = (1..=MAX)
            .flat_map(|n| (0..n).map(move |i| (i, n)))
            .map(|(i, n)| ((i, n), sides(&ref_path(i as usize, &d[..n as usize]))))
            .collect();
        let mut coincidences = 0;
        for n in 1..=MAX {
            let root = roots[n as usize];
            for i in 0..n {
                let leaf = leaf_hash(&d[i as usize]);
                let proof = inclusion_proof(&t, i, n).unwrap();

                // Every other index in the same tree follows a different path, so it must fail.
                for j in (0..n).filter(|&j| j != i) {
                    assert!(verify_inclusion(&leaf, j, n, &proof, &root).is_err(), "index {j} for {i}/{n}");
                }
                for j in [n, n + 1, u64::MAX] {
                    assert_eq!(
                        verify_inclusion(&leaf, j, n, &proof, &root),
                        Err(VerifyError::IndexOutOfRange { index: j, size: n })
                    );
                }

                for m in (1..=MAX).filter(|&m| m != n) {
                    if i >= m {
                        assert_eq!(
                            verify_inclusion(&leaf, i, m, &proof, &root),
                            Err(VerifyError::IndexOutOfRange { index: i, size: m })
                        );
                        continue;
                    }
                    // Against the claimed size's own root the proof must fail.
                    assert!(verify_inclusion(&leaf, i, m, &proof, &roots[m as usize]).is_err(), "{i}/{n} as {i}/{m}");
                    // Against the true root, a wrong size can only pass when the RFC computation for it is
                    // step-for-step the one for the true size: the root binds the shape of the path, not the size.
                    let same_shape = shapes[&(i, m)] == shapes[&(i, n)];
                    let res = verify_inclusion(&leaf, i, m, &proof, &root);
                    assert_eq!(res.is_ok(), same_shape, "{i}/{n} claimed as {i}/{m}: {res:?}");
                    coincidences += usize::from(same_shape);
                }

                // Truncated or extended proofs.
                let mut extra = proof.clone();
                extra.push(root);
                assert_eq!(
                    verify_inclusion(&leaf, i, n, &extra, &root),
                    Err(VerifyError::WrongProofLength { expected: proof.len(), actual: proof.len() + 1 })
                );
                if !proof.is_empty() {
                    assert_eq!(
                        verify_inclusion(&leaf, i, n, &proof[..proof.len() - 1], &root),
                        Err(VerifyError::WrongProofLength { expected: proof.len(), actual: proof.len() - 1 })
                    );
                    assert!(verify_inclusion(&leaf, i, n, &proof[1..], &root).is_err());
                }
            }
        }
        // Sanity check that the shape rule is exercised, e.g. PATH(0, 3) also reads as PATH(0, 4).
        assert!(coincidences > 0);
    }

    #[test]
    fn inclusion_proof_rejects_out_of_range() {
        let t = tree(5);
        for (index, size) in [(5, 5), (6, 5), (0, 0), (u64::MAX, 5)] {
            match inclusion_proof(&t, index, size) {
                Err(ProofError::OutOfRange { what: "leaf index", value, size: s }) => {
                    assert_eq!((value, s), (index, size));
                }
                other => panic!("expected OutOfRange, got {other:?}"),
            }
        }
        let msg = inclusion_proof(&t, 5, 5).unwrap_err().to_string();
        assert_eq!(msg, "leaf index 5 is out of range for a tree of size 5");
    }

    // ---- Consistency proofs. ----

    #[test]
    fn consistency_proofs_match_reference_and_verify() {
        let d = leaves(MAX);
        let t = tree(MAX);
        for n in 1..=MAX {
            let new_root = ref_mth(&d[..n as usize]);
            for m in 1..=n {
                let old_root = ref_mth(&d[..m as usize]);
                let checked = Checked::new(&t, n);
                let proof = consistency_proof(&checked, m, n).unwrap();
                assert!(checked.lookups.get() <= 3 * ceil_log2(n) + 1, "lookups for {m} -> {n}");
                assert_eq!(proof, hashes(&ref_proof(m as usize, &d[..n as usize])), "PROOF({m}, {n})");
                if m == n {
                    assert!(proof.is_empty());
                }
                verify_consistency(m, n, &old_root, &new_root, &proof).unwrap();
            }
        }
    }

    #[test]
    fn consistency_rejects_bit_flips() {
        let t = tree(MAX);
        let roots: Vec<Hash> = (0..=MAX).map(|n| t.root_for_test(n)).collect();
        for n in 1..=MAX {
            for m in 1..=n {
                let (old, new) = (roots[m as usize], roots[n as usize]);
                let proof = consistency_proof(&t, m, n).unwrap();
                for bit in bits_to_flip(n, m) {
                    assert!(verify_consistency(m, n, &flipped(&old, bit), &new, &proof).is_err(), "old root {m}->{n}");
                    assert!(verify_consistency(m, n, &old, &flipped(&new, bit), &proof).is_err(), "new root {m}->{n}");
                    for j in 0..proof.len() {
                        let mut bad = proof.clone();
                        bad[j] = flipped(&bad[j], bit);
                        assert!(verify_consistency(m, n, &old, &new, &bad).is_err(), "proof[{j}] bit {bit} {m}->{n}");
                    }
                }
            }
        }
    }

    /// Sizes near `(m, n)` and a few far ones, to try as wrong claims without the cost of all pairs.
    fn nearby_sizes(m: u64, n: u64) -> Vec<(u64, u64)> {
        let around = |x: u64| [x.saturating_sub(2), x.saturating_sub(1), x, x + 1, x + 2, x * 2, x / 2, 1, MAX];
        let mut out: Vec<(u64, u64)> = around(m)
            .into_iter()
            .flat_map(|m2| around(n).into_iter().map(move |n2| (m2, n2)))
            .filter(|&(m2, n2)| 1 <= m2 && m2 <= n2 && n2 <= MAX && (m2, n2) != (m, n))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    #[test]
    fn consistency_rejects_wrong_sizes_and_lengths() {
        let d = leaves(MAX);
        let t = tree(MAX);
        let roots: Vec<Hash> = (0..=MAX).map(|n| t.root_for_test(n)).collect();
        // How the RFC verifier consumes each proof (seed, then which side each sibling is on): two size pairs with
        // the same shape run the very same hash computation.
        let shapes: HashMap<(u64, u64), Vec<Role>> = (1..=MAX)
            .flat_map(|n| (1..=n).map(move |m| (m, n)))
            .map(|(m, n)| ((m, n), sides(&ref_proof(m as usize, &d[..n as usize]))))
            .collect();
        let mut coincidences = 0;
        for n in 1..=MAX {
            for m in 1..=n {
                let (old, new) = (roots[m as usize], roots[n as usize]);
                let proof = consistency_proof(&t, m, n).unwrap();
                for (m2, n2) in nearby_sizes(m, n) {
                    // Claimed sizes with their own roots must fail, except the true claim "nothing changed".
                    let res = verify_consistency(m2, n2, &roots[m2 as usize], &roots[n2 as usize], &proof);
                    assert_eq!(res.is_ok(), m2 == n2 && proof.is_empty(), "{m}->{n} as {m2}->{n2}, own roots");
                    // Claimed sizes with the true roots: only an identical computation may pass.
                    let same_shape = shapes[&(m2, n2)] == shapes[&(m, n)];
                    let res = verify_consistency(m2, n2, &old, &new, &proof);
                    assert_eq!(res.is_ok(), same_shape, "{m}->{n} claimed as {m2}->{n2}, true roots: {res:?}");
                    coincidences += usize::from(same_shape);
                }

                let mut extra = proof.clone();
                extra.push(new);
                assert_eq!(
                    verify_consistency(m, n, &old, &new, &extra),
                    Err(VerifyError::WrongProofLength { expected: proof.len(), actual: proof.len() + 1 })
                );
                if !proof.is_empty() {
                    assert_eq!(
                        verify_consistency(m, n, &old, &new, &proof[..proof.len() - 1]),
                        Err(VerifyError::WrongProofLength { expected: proof.len(), actual: proof.len() - 1 })
                    );
                    assert!(verify_consistency(m, n, &old, &new, &proof[1..]).is_err());
                    assert!(verify_consistency(m, n, &old, &new, &[]).is_err());
                }
            }
        }
        // e.g. PROOF(2, 3) also reads as PROOF(2, 4).
        assert!(coincidences > 0);
    }

    #[test]
    fn consistency_specific_errors() {
        let t = tree(8);
        let (r3, r5) = (t.root_for_test(3), t.root_for_test(5));
        let p = consistency_proof(&t, 3, 5).unwrap();
        assert_eq!(verify_consistency(0, 5, &r3, &r5, &p), Err(VerifyError::OldSizeZero));
        assert_eq!(verify_consistency(0, 0, &empty_root(), &empty_root(), &[]), Err(VerifyError::OldSizeZero));
        assert_eq!(
            verify_consistency(6, 5, &r3, &r5, &p),
            Err(VerifyError::OldSizeExceedsNew { old_size: 6, new_size: 5 })
        );
        // Swapping the roots breaks the old-tree recomputation first.
        assert_eq!(verify_consistency(3, 5, &r5, &r5, &p), Err(VerifyError::OldRootMismatch));
        assert_eq!(verify_consistency(3, 5, &r3, &r3, &p), Err(VerifyError::RootMismatch));
        // Equal sizes: empty proof, equal roots.
        assert_eq!(verify_consistency(5, 5, &r5, &r5, &[]), Ok(()));
        assert_eq!(verify_consistency(5, 5, &r3, &r5, &[]), Err(VerifyError::RootMismatch));
        assert_eq!(
            verify_consistency(5, 5, &r5, &r5, &[r5]),
            Err(VerifyError::WrongProofLength { expected: 0, actual: 1 })
        );
        // A proof is always needed between different sizes, even from a perfect old tree.
        let r4 = t.root_for_test(4);
        assert_eq!(
            verify_consistency(4, 5, &r4, &r5, &[]),
            Err(VerifyError::WrongProofLength { expected: 1, actual: 0 })
        );

        for (old, new) in [(0, 5), (0, 0), (6, 5)] {
            match consistency_proof(&t, old, new) {
                Err(ProofError::OutOfRange { what: "old size", value, size }) => assert_eq!((value, size), (old, new)),
                other => panic!("expected OutOfRange for {old}->{new}, got {other:?}"),
            }
        }
        assert_eq!(consistency_proof(&t, 8, 8).unwrap(), Vec::<Hash>::new());
    }

    // ---- Store errors and large trees. ----

    struct Failing;

    #[derive(Debug, PartialEq)]
    struct Boom(u32, u64);

    impl NodeSource for Failing {
        type Error = Boom;
        fn node(&self, level: u32, index: u64) -> Result<Hash, Boom> {
            Err(Boom(level, index))
        }
    }

    #[test]
    fn store_errors_propagate() {
        assert_eq!(root_at(&Failing, 0), Ok(empty_root()));
        assert!(root_at(&Failing, 3).is_err());
        assert!(matches!(inclusion_proof(&Failing, 0, 2), Err(ProofError::Store(Boom(0, 1)))));
        assert!(matches!(consistency_proof(&Failing, 1, 2), Err(ProofError::Store(Boom(0, 1)))));
        // Nothing to look up, so nothing can fail.
        assert!(inclusion_proof(&Failing, 0, 1).unwrap().is_empty());
        assert!(consistency_proof(&Failing, 2, 2).unwrap().is_empty());

        let err: ProofError<std::io::Error> = ProofError::Store(std::io::Error::other("disk on fire"));
        assert_eq!(err.to_string(), "node store lookup failed");
        assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "disk on fire");
    }

    /// A tree of identical leaves: node (level, _) depends only on the level, so trees of any size are cheap.
    struct Uniform(Vec<Hash>);

    impl Uniform {
        fn new() -> Self {
            let mut levels = vec![leaf_hash(b"same")];
            for l in 0..63 {
                levels.push(node_hash(&levels[l], &levels[l]));
            }
            Uniform(levels)
        }
    }

    impl NodeSource for Uniform {
        type Error = std::convert::Infallible;
        fn node(&self, level: u32, _index: u64) -> Result<Hash, Self::Error> {
            Ok(self.0[level as usize])
        }
    }

    #[test]
    fn huge_trees_do_not_overflow() {
        let u = Uniform::new();
        let leaf = u.0[0];
        let sizes = [u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) + 1, (1 << 63) - 1, (1 << 40) + 12345];
        for &n in &sizes {
            let root = root_at(&u, n).unwrap();
            for i in [0, 1, n / 2, n - 2, n - 1] {
                let proof = inclusion_proof(&u, i, n).unwrap();
                assert!(proof.len() <= 64);
                verify_inclusion(&leaf, i, n, &proof, &root).unwrap();
                assert_eq!(verify_inclusion(&leaf, i, n, &proof, &flipped(&root, 3)), Err(VerifyError::RootMismatch));
            }
            for m in [1, 2, 3, n / 3, n / 2, n - 1, n] {
                let old_root = root_at(&u, m).unwrap();
                let proof = consistency_proof(&u, m, n).unwrap();
                verify_consistency(m, n, &old_root, &root, &proof).unwrap();
                if m < n {
                    assert!(verify_consistency(m, n, &flipped(&old_root, 0), &root, &proof).is_err());
                }
            }
        }
    }

    impl MemoryTree {
        fn root_for_test(&self, size: u64) -> Hash {
            root_at(self, size).unwrap()
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            VerifyError::IndexOutOfRange { index: 3, size: 2 }.to_string(),
            "leaf index 3 is out of range for a tree of size 2"
        );
        assert_eq!(
            VerifyError::WrongProofLength { expected: 2, actual: 3 }.to_string(),
            "proof has 3 hashes, expected 2"
        );
        assert_eq!(
            FrontierError::WrongHashCount { size: 3, expected: 2, actual: 1 }.to_string(),
            "frontier of size 3 needs 2 hashes, got 1"
        );
        let e: ProofError<std::convert::Infallible> = ProofError::OutOfRange { what: "old size", value: 0, size: 4 };
        assert_eq!(e.to_string(), "old size 0 is out of range for a tree of size 4");
    }
}
