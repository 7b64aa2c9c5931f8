//! Bundles: PostgreSQL keeps leaves 16 to a row of `leaf_bundle`
//! (migration 0008), each leaf's bytes preceded by their length on two
//! bytes, big-endian. No I/O.

use crate::store::StoreError;

/// Leaves per bundle.
pub(super) const BUNDLE: i64 = 16;

/// The longest leaf a bundle can hold.
const MAX_LEAF: usize = u16::MAX as usize;

/// The index of the first leaf of the bundle holding leaf `idx`.
pub(super) fn bundle_of(idx: i64) -> i64 {
    idx - idx.rem_euclid(BUNDLE)
}

/// The leaves of a bundle row as `(index, bytes)`, or `None` if its bytes
/// are not exactly `count` length-prefixed leaves (a damaged row: none of
/// its leaves is trusted).
pub(super) fn split(first: i64, count: i32, data: &[u8]) -> Option<Vec<(i64, &[u8])>> {
    let count = usize::try_from(count).ok()?;
    if count == 0 || count > BUNDLE as usize || first.rem_euclid(BUNDLE) != 0 {
        return None;
    }
    let mut leaves = Vec::with_capacity(count);
    let mut rest = data;
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let leaf = tail.get(..len)?;
        leaves.push((first + leaves.len() as i64, leaf));
        rest = &tail[len..];
    }
    (rest.is_empty() && leaves.len() == count).then_some(leaves)
}

/// Appends one leaf, length first, to a bundle's bytes.
pub(super) fn push(bundle: &mut Vec<u8>, leaf: &[u8]) -> Result<(), StoreError> {
    let len = u16::try_from(leaf.len()).map_err(|_| {
        StoreError::Corrupt(format!(
            "a leaf of {} bytes is longer than a bundle holds ({MAX_LEAF})",
            leaf.len()
        ))
    })?;
    bundle.extend_from_slice(&len.to_be_bytes());
    bundle.extend_from_slice(leaf);
    Ok(())
}

/// An append laid out as bundles: the leaves that fill the last bundle
/// (which holds `first % 16` leaves when `first` is not a multiple of 16)
/// and the new bundles after it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Packed {
    /// The bundle that grows (unused when `grow_count` is 0).
    pub grow_first: i64,
    /// How many leaves it gains.
    pub grow_count: i32,
    /// Their bytes.
    pub grow_data: Vec<u8>,
    /// The new bundles' first leaves, counts and bytes.
    pub firsts: Vec<i64>,
    pub counts: Vec<i32>,
    pub datas: Vec<Vec<u8>>,
}

/// Lays out leaves `first, first + 1, …` as bundles.
pub(super) fn pack<'a>(
    first: i64,
    leaves: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Packed, StoreError> {
    let mut p = Packed {
        grow_first: bundle_of(first),
        ..Packed::default()
    };
    // The last bundle grows unless the append starts a new one.
    let growing = first.rem_euclid(BUNDLE) != 0;
    for (idx, leaf) in (first..).zip(leaves) {
        if growing && bundle_of(idx) == p.grow_first {
            push(&mut p.grow_data, leaf)?;
            p.grow_count += 1;
            continue;
        }
        if idx % BUNDLE == 0 {
            p.firsts.push(idx);
            p.counts.push(0);
            p.datas.push(Vec::new());
        }
        if let (Some(count), Some(data)) = (p.counts.last_mut(), p.datas.last_mut()) {
            push(data, leaf)?;
            *count += 1;
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaf(i: i64) -> Vec<u8> {
        vec![i as u8; (i % 7) as usize * 13]
    }

    /// What the table holds after appending `batches` one after another.
    fn apply(batches: &[Vec<Vec<u8>>]) -> Vec<(i64, i32, Vec<u8>)> {
        let mut rows: Vec<(i64, i32, Vec<u8>)> = Vec::new();
        let mut size = 0i64;
        for batch in batches {
            let p = pack(size, batch.iter().map(Vec::as_slice)).unwrap();
            if p.grow_count > 0 {
                let row = rows.iter_mut().find(|r| r.0 == p.grow_first).unwrap();
                assert!(row.1 < 16);
                row.1 += p.grow_count;
                row.2.extend_from_slice(&p.grow_data);
            } else {
                assert!(p.grow_data.is_empty());
            }
            for ((f, c), d) in p.firsts.iter().zip(&p.counts).zip(&p.datas) {
                rows.push((*f, *c, d.clone()));
            }
            size += batch.len() as i64;
        }
        rows
    }

    proptest! {
        /// Appends of any sizes give full bundles but the last, whose
        /// leaves split back to the same indices and bytes.
        #[test]
        fn packs_and_splits_back(sizes in proptest::collection::vec(0usize..40, 1..12)) {
            let mut next = 0i64;
            let batches: Vec<Vec<Vec<u8>>> = sizes
                .iter()
                .map(|&n| (0..n).map(|_| { next += 1; leaf(next - 1) }).collect())
                .collect();
            let rows = apply(&batches);
            let mut all = Vec::new();
            for (i, (f, c, d)) in rows.iter().enumerate() {
                prop_assert_eq!(*f, 16 * i as i64);
                if i + 1 < rows.len() {
                    prop_assert_eq!(*c, 16);
                }
                all.extend(split(*f, *c, d).unwrap().into_iter().map(|(i, l)| (i, l.to_vec())));
            }
            let wanted: Vec<(i64, Vec<u8>)> = (0..next).map(|i| (i, leaf(i))).collect();
            prop_assert_eq!(all, wanted);
        }

        /// No bytes make `split` panic; what it accepts re-encodes to them.
        #[test]
        fn split_takes_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..200), count in 0i32..20) {
            if let Some(leaves) = split(32, count, &data) {
                let mut again = Vec::new();
                for (_, l) in &leaves {
                    push(&mut again, l).unwrap();
                }
                prop_assert_eq!(again, data);
            }
        }
    }

    #[test]
    fn damaged_bundles_are_refused() {
        let mut b = Vec::new();
        push(&mut b, b"abc").unwrap();
        push(&mut b, b"").unwrap();
        assert_eq!(
            split(16, 2, &b),
            Some(vec![(16, &b"abc"[..]), (17, &b""[..])])
        );
        assert_eq!(split(16, 3, &b), None, "count says more");
        assert_eq!(split(16, 1, &b), None, "count says fewer");
        assert_eq!(split(16, 2, &b[..b.len() - 1]), None, "cut");
        assert_eq!(split(17, 2, &b), None, "not on a bundle boundary");
        assert!(push(&mut b, &vec![0; 70_000]).is_err());
    }
}
