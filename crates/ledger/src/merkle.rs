//! The RFC 6962 / RFC 9162 Merkle tree, without I/O.
//!
//! Leaf hash `SHA-256(0x00 ‖ leaf)`, node hash `SHA-256(0x01 ‖ left ‖ right)`,
//! the tree of `n` leaves splitting at the largest power of two below `n`.
//!
//! Storage keeps the hash of every *complete* subtree: the perfect,
//! power-of-two aligned subtree `(level, index)` covering leaves
//! `[index·2^level, (index+1)·2^level)`. Every node of the RFC tree, complete
//! or not, is the right fold of a few of those, so a root or a proof costs
//! O(log n) lookups and never walks the leaves. Proof generation therefore
//! comes in two steps: a *plan* naming the complete subtrees needed (so a
//! database can fetch them in one query), then its assembly.
//!
//! Verification follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2
//! (consistency) literally.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Root of the empty tree: SHA-256 of the empty string.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Largest tree this module handles: indices and sizes stay below 2^63 so
/// that no shift or sum overflows.
pub const MAX_TREE_SIZE: u64 = 1 << 62;

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 65];
    buf[0] = 0x01;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    Sha256::digest(buf).into()
}

/// Why a proof could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange {
        /// Index asked for.
        index: u64,
        /// Tree size.
        size: u64,
    },
    /// The older tree is larger than the newer one.
    #[error("tree size {old} is larger than tree size {new}")]
    OldLargerThanNew {
        /// Older size.
        old: u64,
        /// Newer size.
        new: u64,
    },
    /// A tree size larger than the log.
    #[error("tree size {size} is beyond the log's {leaves} leaves")]
    BeyondLog {
        /// Size asked for.
        size: u64,
        /// Leaves in the log.
        leaves: u64,
    },
    /// A size beyond [`MAX_TREE_SIZE`].
    #[error("tree size {0} is too large")]
    TreeTooLarge(u64),
    /// The proof has fewer hashes than the sizes call for.
    #[error("proof has too few hashes")]
    TooShort,
    /// The proof has more hashes than the sizes call for.
    #[error("proof has too many hashes")]
    TooLong,
    /// The proof leads to another root.
    #[error("proof does not lead to the expected root")]
    RootMismatch,
    /// The consistency proof does not lead to the older root.
    #[error("consistency proof does not lead to the older root")]
    OldRootMismatch,
    /// The consistency proof does not lead to the newer root.
    #[error("consistency proof does not lead to the newer root")]
    NewRootMismatch,
    /// A stored hash list does not have the expected length.
    #[error("{what}: expected {expected} hashes, found {found}")]
    BadLength {
        /// What was being read.
        what: &'static str,
        /// Expected count.
        expected: usize,
        /// Found count.
        found: usize,
    },
}

/// A complete subtree: `2^level` leaves starting at leaf `index·2^level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height above the leaves (0 = a leaf).
    pub level: u8,
    /// Position among the subtrees of that level.
    pub index: u64,
}

impl NodeId {
    /// The subtree of the given level and index.
    pub fn new(level: u8, index: u64) -> Self {
        NodeId { level, index }
    }

    /// Index of its first leaf.
    pub fn first_leaf(self) -> u64 {
        self.index << self.level
    }

    /// Index of its last leaf: the leaf whose append completes this subtree.
    pub fn last_leaf(self) -> u64 {
        ((self.index + 1) << self.level) - 1
    }
}

/// The complete subtrees that make up leaves `[start, end)`, left to right,
/// each as large as alignment allows. For a node of the RFC tree (every
/// range this module asks about) the right fold of their hashes is the
/// node's hash.
pub fn range_nodes(start: u64, end: u64) -> Vec<NodeId> {
    let mut nodes = Vec::new();
    let mut lo = start;
    while lo < end {
        let remaining = end - lo;
        let mut level = 63 - remaining.leading_zeros();
        if lo != 0 {
            level = level.min(lo.trailing_zeros());
        }
        // `level` < 64, and it is a u32 bit position: the cast is lossless.
        let level = level as u8;
        nodes.push(NodeId::new(level, lo >> level));
        lo += 1 << level;
    }
    nodes
}

/// The complete subtrees whose right fold is the root of a tree of `size`.
pub fn root_nodes(size: u64) -> Vec<NodeId> {
    range_nodes(0, size)
}

/// Right fold: `H(a, H(b, H(c, d)))` for `[a, b, c, d]`; the empty root for
/// an empty list.
pub fn fold_right(hashes: &[Hash]) -> Hash {
    let Some((last, rest)) = hashes.split_last() else {
        return EMPTY_ROOT;
    };
    rest.iter().rev().fold(*last, |acc, h| node_hash(h, &acc))
}

/// Largest power of two strictly below `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

fn check_size(size: u64) -> Result<(), ProofError> {
    if size > MAX_TREE_SIZE {
        Err(ProofError::TreeTooLarge(size))
    } else {
        Ok(())
    }
}

/// Which complete subtrees make up each hash of a proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofPlan {
    elements: Vec<Vec<NodeId>>,
}

impl ProofPlan {
    fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        ProofPlan {
            elements: ranges
                .into_iter()
                .map(|(lo, hi)| range_nodes(lo, hi))
                .collect(),
        }
    }

    /// Number of hashes the proof will have.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    /// Whether the proof is empty.
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// Every complete subtree needed, each once, sorted.
    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.elements.iter().flatten().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Builds the proof from the hashes of the subtrees in [`Self::node_ids`].
    pub fn assemble<E>(
        &self,
        mut lookup: impl FnMut(NodeId) -> Result<Hash, E>,
    ) -> Result<Vec<Hash>, E> {
        let mut out = Vec::with_capacity(self.elements.len());
        let mut parts = Vec::new();
        for element in &self.elements {
            parts.clear();
            for id in element {
                parts.push(lookup(*id)?);
            }
            out.push(fold_right(&parts));
        }
        Ok(out)
    }
}

/// The plan of the inclusion proof of leaf `index` in a tree of `size`
/// (RFC 9162 §2.1.3.1), hashes ordered from the leaf up.
pub fn inclusion_plan(index: u64, size: u64) -> Result<ProofPlan, ProofError> {
    check_size(size)?;
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut ranges = Vec::new();
    let (mut lo, mut hi) = (0, size);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if index < lo + k {
            ranges.push((lo + k, hi));
            hi = lo + k;
        } else {
            ranges.push((lo, lo + k));
            lo += k;
        }
    }
    ranges.reverse();
    Ok(ProofPlan::from_ranges(ranges))
}

/// The plan of the consistency proof from size `old` to size `new`
/// (RFC 9162 §2.1.4.1). Empty when `old` is 0 or equals `new`.
pub fn consistency_plan(old: u64, new: u64) -> Result<ProofPlan, ProofError> {
    check_size(new)?;
    if old > new {
        return Err(ProofError::OldLargerThanNew { old, new });
    }
    let mut ranges = Vec::new();
    if old == 0 || old == new {
        return Ok(ProofPlan::from_ranges(ranges));
    }
    let (mut lo, mut hi) = (0, new);
    // Whether the current subtree is the whole old tree's left edge, whose
    // hash the verifier already holds (the old root).
    let mut at_old_root = true;
    loop {
        let len = hi - lo;
        let m = old - lo;
        if m == len {
            if !at_old_root {
                ranges.push((lo, hi));
            }
            break;
        }
        let k = split_point(len);
        if m <= k {
            ranges.push((lo + k, hi));
            hi = lo + k;
        } else {
            ranges.push((lo, lo + k));
            lo += k;
            at_old_root = false;
        }
    }
    ranges.reverse();
    Ok(ProofPlan::from_ranges(ranges))
}

/// The plan of the root of a tree of `size`: one element (none when empty).
pub fn root_plan(size: u64) -> Result<ProofPlan, ProofError> {
    check_size(size)?;
    Ok(ProofPlan {
        elements: if size == 0 {
            Vec::new()
        } else {
            vec![root_nodes(size)]
        },
    })
}

/// Gives the hash of a complete subtree.
pub trait NodeSource {
    /// Why a hash could not be given.
    type Error;
    /// The hash of the complete subtree `id`.
    fn node(&self, id: NodeId) -> Result<Hash, Self::Error>;
}

/// A proof could not be made: bad arguments, or the source failed.
#[derive(Debug, thiserror::Error)]
pub enum ProveError<E> {
    /// The arguments do not describe a proof.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// The node source failed.
    #[error("node source: {0}")]
    Source(E),
}

/// Inclusion proof of leaf `index` in the tree of `size`, from `source`.
pub fn prove_inclusion<S: NodeSource>(
    source: &S,
    index: u64,
    size: u64,
) -> Result<InclusionProof, ProveError<S::Error>> {
    let plan = inclusion_plan(index, size)?;
    let hashes = plan
        .assemble(|id| source.node(id))
        .map_err(ProveError::Source)?;
    Ok(InclusionProof {
        index,
        size,
        hashes,
    })
}

/// Consistency proof from size `old` to size `new`, from `source`.
pub fn prove_consistency<S: NodeSource>(
    source: &S,
    old: u64,
    new: u64,
) -> Result<ConsistencyProof, ProveError<S::Error>> {
    let plan = consistency_plan(old, new)?;
    let hashes = plan
        .assemble(|id| source.node(id))
        .map_err(ProveError::Source)?;
    Ok(ConsistencyProof {
        old_size: old,
        new_size: new,
        hashes,
    })
}

/// Root of the tree of `size`, from `source`.
pub fn root<S: NodeSource>(source: &S, size: u64) -> Result<Hash, ProveError<S::Error>> {
    let plan = root_plan(size)?;
    let hashes = plan
        .assemble(|id| source.node(id))
        .map_err(ProveError::Source)?;
    Ok(hashes.first().copied().unwrap_or(EMPTY_ROOT))
}

/// Proof that a leaf is at `index` in the tree of `size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The leaf's index.
    pub index: u64,
    /// The tree size the proof is for.
    pub size: u64,
    /// Sibling hashes, from the leaf up.
    pub hashes: Vec<Hash>,
}

impl InclusionProof {
    /// Checks the proof against a leaf hash and the root of the tree of
    /// `self.size`.
    pub fn verify(&self, leaf_hash: &Hash, root: &Hash) -> Result<(), ProofError> {
        verify_inclusion(leaf_hash, self.index, self.size, &self.hashes, root)
    }
}

/// Proof that the tree of `old_size` is a prefix of the tree of `new_size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// The older size.
    pub old_size: u64,
    /// The newer size.
    pub new_size: u64,
    /// The proof's hashes.
    pub hashes: Vec<Hash>,
}

impl ConsistencyProof {
    /// Checks the proof against the two roots.
    pub fn verify(&self, old_root: &Hash, new_root: &Hash) -> Result<(), ProofError> {
        verify_consistency(
            self.old_size,
            self.new_size,
            &self.hashes,
            old_root,
            new_root,
        )
    }
}

/// The root an inclusion proof leads to (RFC 9162 §2.1.3.2, steps 1–5).
pub fn root_from_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if s == 0 {
            return Err(ProofError::TooLong);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::TooShort);
    }
    Ok(r)
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if root_from_inclusion(leaf_hash, index, size, proof)? == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2). The empty tree is a
/// prefix of every tree, and a tree is consistent with itself, both with an
/// empty proof.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    proof: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::OldLargerThanNew {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::TooLong);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if old_size == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::TooLong)
        };
    }
    // Step 1.
    if proof.is_empty() {
        return Err(ProofError::TooShort);
    }
    // Step 2: a power-of-two old tree is a complete subtree of the new one,
    // and its root is left out of the proof.
    let prefix = old_size.is_power_of_two().then_some(old_root);
    let mut path = prefix.into_iter().chain(proof.iter());
    // Steps 3 and 4.
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    // Step 5.
    let Some(first) = path.next() else {
        return Err(ProofError::TooShort);
    };
    let (mut fr, mut sr) = (*first, *first);
    // Step 6.
    for c in path {
        if s == 0 {
            return Err(ProofError::TooLong);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    // Step 7.
    if s != 0 {
        return Err(ProofError::TooShort);
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(ProofError::NewRootMismatch);
    }
    Ok(())
}

/// The right edge of a growing tree: the hashes of the complete subtrees
/// that make up its leaves, largest first (one per bit set in the size).
/// Appending a leaf yields the hashes of the complete subtrees it completes,
/// which is exactly what storage keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The frontier of a tree of `size` from the hashes of
    /// [`root_nodes`]`(size)`, in that order.
    pub fn from_nodes(size: u64, nodes: Vec<Hash>) -> Result<Self, ProofError> {
        check_size(size)?;
        let expected = size.count_ones() as usize;
        if nodes.len() != expected {
            return Err(ProofError::BadLength {
                what: "frontier",
                expected,
                found: nodes.len(),
            });
        }
        Ok(Frontier { size, nodes })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The complete subtrees' hashes, largest first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends a leaf by its hash and appends to `completed` the hashes of
    /// the subtrees it completes, level 0 (the leaf hash) upwards: subtree
    /// `(level, (i+1)/2^level − 1)` for leaf `i`, `1 + trailing_zeros(i+1)`
    /// hashes of 32 bytes.
    pub fn push_into(&mut self, leaf_hash: Hash, completed: &mut Vec<u8>) {
        let mut carry = leaf_hash;
        completed.extend_from_slice(&carry);
        let mut level = 0;
        while self.size >> level & 1 == 1 {
            // A set bit means a complete subtree of that level sits at the
            // end of the frontier: merge it with the carry.
            let Some(left) = self.nodes.pop() else { break };
            carry = node_hash(&left, &carry);
            completed.extend_from_slice(&carry);
            level += 1;
        }
        self.nodes.push(carry);
        self.size += 1;
    }

    /// Appends a leaf by its hash; returns the completed subtrees' hashes.
    pub fn push(&mut self, leaf_hash: Hash) -> Vec<Hash> {
        let mut bytes = Vec::with_capacity(64);
        self.push_into(leaf_hash, &mut bytes);
        bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect()
    }

    /// The root of the tree.
    pub fn root(&self) -> Hash {
        fold_right(&self.nodes)
    }
}

/// Number of subtree hashes completed by appending leaf `index`.
pub fn completed_count(index: u64) -> usize {
    // trailing_zeros of a nonzero u64 is < 64.
    1 + (index + 1).trailing_zeros() as usize
}

/// A whole tree in memory (every complete subtree hash): for tests,
/// benchmarks and small logs.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends a leaf by its hash.
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut carry = leaf_hash;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(carry);
            if row.len() % 2 == 1 {
                break;
            }
            carry = node_hash(&row[row.len() - 2], &row[row.len() - 1]);
            level += 1;
        }
    }

    /// The root of the prefix of `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, ProveError<ProofError>> {
        if size > self.size() {
            return Err(ProveError::Proof(ProofError::OldLargerThanNew {
                old: size,
                new: self.size(),
            }));
        }
        root(self, size)
    }
}

impl NodeSource for MemoryTree {
    type Error = ProofError;

    fn node(&self, id: NodeId) -> Result<Hash, ProofError> {
        usize::try_from(id.index)
            .ok()
            .and_then(|i| self.levels.get(usize::from(id.level))?.get(i))
            .copied()
            .ok_or(ProofError::IndexOutOfRange {
                index: id.last_leaf(),
                size: self.size(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Hash {
        let mut h = [0u8; 32];
        for (i, byte) in h.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        h
    }

    /// RFC 6962 §2.1 MTH, written recursively as in the RFC: the reference.
    fn mth(leaves: &[Vec<u8>]) -> Hash {
        match leaves.len() {
            0 => Sha256::digest([]).into(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    /// The eight leaves of the transparency-dev/merkle (formerly Trillian)
    /// test tree, `testonly.LeafInputs()`.
    fn vector_leaves() -> Vec<Vec<u8>> {
        vec![
            vec![],
            vec![0x00],
            vec![0x10],
            vec![0x20, 0x21],
            vec![0x30, 0x31],
            vec![0x40, 0x41, 0x42, 0x43],
            (0x50..=0x57).collect(),
            (0x60..=0x6f).collect(),
        ]
    }

    /// `testonly.RootHashes()`: roots of the trees of sizes 0 to 8.
    const VECTOR_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn vector_tree() -> MemoryTree {
        let mut t = MemoryTree::new();
        for l in vector_leaves() {
            t.push(leaf_hash(&l));
        }
        t
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(EMPTY_ROOT, <[u8; 32]>::from(Sha256::digest([])));
        assert_eq!(Frontier::new().root(), EMPTY_ROOT);
    }

    #[test]
    fn known_roots_of_the_reference_tree() {
        let leaves = vector_leaves();
        let tree = vector_tree();
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), hex(VECTOR_ROOTS[0]));
        for (n, leaf) in leaves.iter().enumerate() {
            frontier.push(leaf_hash(leaf));
            let want = hex(VECTOR_ROOTS[n + 1]);
            assert_eq!(frontier.root(), want, "frontier, size {}", n + 1);
            assert_eq!(
                tree.root(n as u64 + 1).unwrap(),
                want,
                "nodes, size {}",
                n + 1
            );
            assert_eq!(mth(&leaves[..=n]), want, "mth, size {}", n + 1);
        }
        // testonly.NodeHashes(): two complete subtrees of the reference tree.
        assert_eq!(
            tree.node(NodeId::new(1, 2)).unwrap(),
            hex("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a")
        );
        assert_eq!(
            tree.node(NodeId::new(2, 1)).unwrap(),
            hex("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")
        );
    }

    /// transparency-dev/merkle `proof/verify_test.go`: known proofs over the
    /// reference tree (their leaf numbers are 1-based).
    #[test]
    fn known_inclusion_proofs() {
        let tree = vector_tree();
        let cases: &[(u64, u64, &[&str])] = &[
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
            (0, 1, &[]),
        ];
        let leaves = vector_leaves();
        for (index, size, want) in cases {
            let want: Vec<Hash> = want.iter().map(|h| hex(h)).collect();
            let proof = prove_inclusion(&tree, *index, *size).unwrap();
            assert_eq!(proof.hashes, want, "leaf {index} in {size}");
            let root = hex(VECTOR_ROOTS[*size as usize]);
            proof
                .verify(&leaf_hash(&leaves[*index as usize]), &root)
                .unwrap();
        }
    }

    #[test]
    fn known_consistency_proofs() {
        let tree = vector_tree();
        let cases: &[(u64, u64, &[&str])] = &[
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
            (
                6,
                7,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (old, new, want) in cases {
            let want: Vec<Hash> = want.iter().map(|h| hex(h)).collect();
            let proof = prove_consistency(&tree, *old, *new).unwrap();
            assert_eq!(proof.hashes, want, "{old} → {new}");
            proof
                .verify(
                    &hex(VECTOR_ROOTS[*old as usize]),
                    &hex(VECTOR_ROOTS[*new as usize]),
                )
                .unwrap();
        }
    }

    /// The edge cases of transparency-dev/merkle `TestVerifyConsistency`.
    #[test]
    fn consistency_edge_cases() {
        let (r1, r2) = ([1u8; 32], [2u8; 32]);
        let e = EMPTY_ROOT;
        let ok = |o, n, a: &Hash, b: &Hash, p: &[Hash]| verify_consistency(o, n, p, a, b).is_ok();
        assert!(!ok(0, 0, &r1, &r2, &[]));
        assert!(!ok(1, 1, &r1, &r2, &[]));
        assert!(ok(0, 0, &r1, &r1, &[]));
        assert!(ok(0, 1, &r1, &r2, &[]));
        assert!(ok(1, 1, &r2, &r2, &[]));
        assert!(!ok(1, 0, &r1, &r2, &[]));
        assert!(!ok(2, 1, &r1, &r2, &[]));
        assert!(!ok(1, 2, &r1, &r2, &[]));
        assert!(!ok(0, 0, &e, &r2, &[]));
        assert!(!ok(0, 0, &e, &e, &[e]));
        assert!(!ok(0, 1, &e, &e, &[e]));
        assert!(!ok(1, 1, &e, &e, &[e]));
    }

    #[test]
    fn inclusion_edge_cases() {
        let h = leaf_hash(b"data");
        assert!(verify_inclusion(&h, 0, 1, &[], &h).is_ok());
        assert!(verify_inclusion(&h, 0, 1, &[], &EMPTY_ROOT).is_err());
        for (i, n) in [(0, 0), (1, 0), (2, 1)] {
            assert!(verify_inclusion(&h, i, n, &[], &h).is_err());
        }
        assert!(inclusion_plan(3, 3).is_err());
        assert!(consistency_plan(4, 3).is_err());
        assert!(inclusion_plan(0, MAX_TREE_SIZE + 1).is_err());
    }

    fn ceil_log2(n: u64) -> usize {
        (64 - (n - 1).leading_zeros()) as usize
    }

    fn build(n: usize) -> (Vec<Vec<u8>>, MemoryTree) {
        let leaves: Vec<Vec<u8>> = (0..n).map(|i| format!("leaf {i}").into_bytes()).collect();
        let mut t = MemoryTree::new();
        for l in &leaves {
            t.push(leaf_hash(l));
        }
        (leaves, t)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn roots_match_the_recursive_definition(n in 0usize..300) {
            let (leaves, tree) = build(n);
            let mut f = Frontier::new();
            for l in &leaves { f.push(leaf_hash(l)); }
            prop_assert_eq!(f.root(), mth(&leaves));
            prop_assert_eq!(tree.root(n as u64).unwrap(), mth(&leaves));
        }

        #[test]
        fn inclusion_proofs_verify_and_wrong_ones_fail(n in 1u64..600, seed in any::<u64>()) {
            let (leaves, tree) = build(n as usize);
            let index = seed % n;
            let root = tree.root(n).unwrap();
            let lh = leaf_hash(&leaves[index as usize]);
            let proof = prove_inclusion(&tree, index, n).unwrap();
            let bound = if n == 1 { 0 } else { ceil_log2(n) };
            prop_assert!(proof.hashes.len() <= bound);
            prop_assert_eq!(proof.verify(&lh, &root), Ok(()));
            // Wrong leaf, index, size, root, altered or truncated or extended proof.
            prop_assert!(proof.verify(&leaf_hash(b"other"), &root).is_err());
            prop_assert!(verify_inclusion(&lh, (index + 1) % n, n, &proof.hashes, &root).is_err() || n == 1);
            // As in transparency-dev's corruption probes: a proof may also
            // fit some other sizes (n and n+1 can share it), never 2n or n/2.
            prop_assert!(verify_inclusion(&lh, index, n * 2, &proof.hashes, &root).is_err());
            if index < n / 2 {
                prop_assert!(verify_inclusion(&lh, index, n / 2, &proof.hashes, &root).is_err());
            }
            prop_assert!(proof.verify(&lh, &EMPTY_ROOT).is_err());
            if !proof.hashes.is_empty() {
                let mut bad = proof.clone();
                let at = (seed as usize / 7) % bad.hashes.len();
                bad.hashes[at][0] ^= 1;
                prop_assert!(bad.verify(&lh, &root).is_err());
                let mut short = proof.clone();
                short.hashes.pop();
                prop_assert!(short.verify(&lh, &root).is_err());
            }
            let mut long = proof.clone();
            long.hashes.push(root);
            prop_assert!(long.verify(&lh, &root).is_err());
        }

        #[test]
        fn consistency_proofs_verify_and_wrong_ones_fail(n in 1u64..600, seed in any::<u64>()) {
            let (_, tree) = build(n as usize);
            let m = 1 + seed % n;
            let (r1, r2) = (tree.root(m).unwrap(), tree.root(n).unwrap());
            let proof = prove_consistency(&tree, m, n).unwrap();
            prop_assert!(proof.hashes.len() <= ceil_log2(n.max(2)) + 1);
            prop_assert_eq!(proof.verify(&r1, &r2), Ok(()));
            if m < n {
                prop_assert!(proof.verify(&r2, &r1).is_err());
                prop_assert!(proof.verify(&r1, &EMPTY_ROOT).is_err());
                prop_assert!(proof.verify(&[9; 32], &r2).is_err());
                let mut bad = proof.clone();
                let at = (seed as usize / 7) % bad.hashes.len();
                bad.hashes[at][0] ^= 1;
                prop_assert!(bad.verify(&r1, &r2).is_err());
                let mut short = proof.clone();
                short.hashes.pop();
                prop_assert!(short.verify(&r1, &r2).is_err());
                let mut long = proof.clone();
                long.hashes.push(r2);
                prop_assert!(long.verify(&r1, &r2).is_err());
                if m > 1 {
                    let other = tree.root(m - 1).unwrap();
                    prop_assert!(verify_consistency(m - 1, n, &proof.hashes, &other, &r2).is_err());
                }
            }
        }

        #[test]
        fn frontier_emits_exactly_the_complete_subtrees(n in 1u64..300) {
            let (leaves, tree) = build(n as usize);
            let mut f = Frontier::new();
            for (i, l) in leaves.iter().enumerate() {
                let emitted = f.push(leaf_hash(l));
                prop_assert_eq!(emitted.len(), completed_count(i as u64));
                for (level, h) in emitted.iter().enumerate() {
                    let id = NodeId::new(level as u8, ((i as u64 + 1) >> level) - 1);
                    prop_assert_eq!(id.last_leaf(), i as u64);
                    prop_assert_eq!(&tree.node(id).unwrap(), h);
                }
            }
            let nodes: Vec<Hash> = root_nodes(n).iter().map(|id| tree.node(*id).unwrap()).collect();
            let rebuilt = Frontier::from_nodes(n, nodes).unwrap();
            prop_assert_eq!(rebuilt, f);
        }
    }

    /// An independent implementation (the `ct-merkle` crate) agrees on roots,
    /// inclusion proofs and consistency proofs.
    #[test]
    fn agrees_with_ct_merkle() {
        use ct_merkle::mem_backed_tree::MemoryBackedTree;
        use ct_merkle::{ConsistencyProof as CtConsistency, InclusionProof as CtInclusion};

        let mut theirs = MemoryBackedTree::<sha2::Sha256, Vec<u8>>::new();
        let mut ours = MemoryTree::new();
        let mut leaves = Vec::new();
        for i in 0..130u32 {
            let leaf = format!("entry {i}").into_bytes();
            theirs.push(leaf.clone());
            ours.push(leaf_hash(&leaf));
            leaves.push(leaf);
            let n = u64::from(i) + 1;
            let their_root = theirs.root();
            let root = ours.root(n).unwrap();
            assert_eq!(
                their_root.as_bytes().as_slice(),
                root.as_slice(),
                "root {n}"
            );

            for idx in [0, n / 3, n / 2, n - 1] {
                let proof = prove_inclusion(&ours, idx, n).unwrap();
                let their_proof = theirs.prove_inclusion(idx as usize);
                assert_eq!(their_proof.as_bytes(), proof.hashes.concat().as_slice());
                let mine_in_theirs = CtInclusion::<sha2::Sha256>::from_bytes(proof.hashes.concat());
                their_root
                    .verify_inclusion(&leaves[idx as usize], idx, &mine_in_theirs)
                    .unwrap();
            }
            for m in [1, n / 2, n - 1].into_iter().filter(|m| *m >= 1 && *m < n) {
                let proof = prove_consistency(&ours, m, n).unwrap();
                let their_proof = theirs.prove_consistency((n - m) as usize);
                assert_eq!(
                    their_proof.as_bytes(),
                    proof.hashes.concat().as_slice(),
                    "{m}→{n}"
                );
                let old = ct_merkle::RootHash::<sha2::Sha256>::new(ours.root(m).unwrap().into(), m);
                let mine_in_theirs =
                    CtConsistency::<sha2::Sha256>::try_from_bytes(proof.hashes.concat()).unwrap();
                their_root
                    .verify_consistency(&old, &mine_in_theirs)
                    .unwrap();
            }
        }
    }
}
