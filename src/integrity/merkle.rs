//! RFC 6962 Merkle tree hashing over event leaves, and the blocks a
//! checkpoint keeps so that `verify` can name where a range went wrong.
//!
//! A checkpoint covers a range of seqs; its root is the Merkle Tree Hash
//! (RFC 6962 §2.1) of the range's leaf hashes in seq order. The range is cut
//! into blocks of [`BLOCK_LEAVES`] leaves from its start. In an RFC 6962 tree
//! every such block, and the shorter last one, is a node (the tree splits at
//! the largest power of two below its size, so splits stay block-aligned),
//! which is why the root can be computed from the block hashes alone, and an
//! inclusion proof is a path inside one block followed by a path over blocks.

use ring::digest::{Context, SHA256};

pub type Hash = [u8; 32];

/// Leaves per block: the granularity at which `verify` names modified
/// events. A block costs 32 bytes, an eighth of a byte per event.
pub const BLOCK_LEAVES: usize = 256;

const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;

/// `SHA-256(0x00 ‖ data)`: the hash of one leaf.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut context = Context::new(&SHA256);
    context.update(&[LEAF_PREFIX]);
    context.update(data);
    finish(context)
}

/// `SHA-256(0x01 ‖ left ‖ right)`: the hash of an inner node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut context = Context::new(&SHA256);
    context.update(&[NODE_PREFIX]);
    context.update(left);
    context.update(right);
    finish(context)
}

fn finish(context: Context) -> Hash {
    context.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split_point(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The Merkle Tree Hash of `leaves` (leaf hashes); `None` for no leaves,
/// which no checkpoint covers.
pub fn root(leaves: &[Hash]) -> Option<Hash> {
    match leaves.len() {
        0 => None,
        1 => Some(leaves[0]),
        n => {
            let k = split_point(n);
            Some(node_hash(&root(&leaves[..k])?, &root(&leaves[k..])?))
        }
    }
}

/// The hashes of the blocks of a range whose leaves are `leaves`.
pub fn block_hashes(leaves: &[Hash]) -> Vec<Hash> {
    leaves.chunks(BLOCK_LEAVES).map(|block| root(block).expect("chunks are not empty")).collect()
}

/// The root of a range of `leaf_count` leaves from its block hashes; `None`
/// when the count of blocks does not fit `leaf_count`.
pub fn root_from_blocks(blocks: &[Hash], leaf_count: usize) -> Option<Hash> {
    if blocks.len() != leaf_count.div_ceil(BLOCK_LEAVES) {
        return None;
    }
    subtree_from_blocks(blocks, leaf_count)
}

fn subtree_from_blocks(blocks: &[Hash], leaf_count: usize) -> Option<Hash> {
    if leaf_count <= BLOCK_LEAVES {
        return blocks.first().copied();
    }
    let k = split_point(leaf_count);
    let left_blocks = k / BLOCK_LEAVES;
    Some(node_hash(
        &subtree_from_blocks(&blocks[..left_blocks], k)?,
        &subtree_from_blocks(&blocks[left_blocks..], leaf_count - k)?,
    ))
}

/// The audit path (RFC 6962 §2.1.1) of leaf `index` in a tree of `leaves`,
/// from the leaf's sibling up.
pub fn path(index: usize, leaves: &[Hash]) -> Vec<Hash> {
    let mut path = Vec::new();
    path_into(index, leaves, &mut path);
    path
}

fn path_into(index: usize, leaves: &[Hash], path: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split_point(n);
    if index < k {
        path_into(index, &leaves[..k], path);
        path.push(root(&leaves[k..]).expect("right side is not empty"));
    } else {
        path_into(index - k, &leaves[k..], path);
        path.push(root(&leaves[..k]).expect("left side is not empty"));
    }
}

/// The audit path of leaf `index` of a range of `leaf_count` leaves, from
/// the leaves of its block and the block hashes of the range.
pub fn path_in_range(index: usize, block_leaves: &[Hash], blocks: &[Hash], leaf_count: usize) -> Vec<Hash> {
    let mut path = path(index % BLOCK_LEAVES, block_leaves);
    blocks_path_into(index / BLOCK_LEAVES * BLOCK_LEAVES, blocks, leaf_count, &mut path);
    path
}

/// Appends the path from the block starting at leaf `start` to the root of
/// a (sub)tree of `leaf_count` leaves whose blocks are `blocks`.
fn blocks_path_into(start: usize, blocks: &[Hash], leaf_count: usize, path: &mut Vec<Hash>) {
    if leaf_count <= BLOCK_LEAVES {
        return;
    }
    let k = split_point(leaf_count);
    let left_blocks = k / BLOCK_LEAVES;
    if start < k {
        blocks_path_into(start, &blocks[..left_blocks], k, path);
        path.push(subtree_from_blocks(&blocks[left_blocks..], leaf_count - k).expect("blocks fit"));
    } else {
        blocks_path_into(start - k, &blocks[left_blocks..], leaf_count - k, path);
        path.push(subtree_from_blocks(&blocks[..left_blocks], k).expect("blocks fit"));
    }
}

/// The root an audit path leads to from `leaf` at `index` of `leaf_count`
/// (RFC 9162 §2.1.3.2); `None` if the path has the wrong length.
pub fn root_from_path(index: usize, leaf_count: usize, leaf: &Hash, path: &[Hash]) -> Option<Hash> {
    if index >= leaf_count {
        return None;
    }
    let (mut f_n, mut s_n) = (index, leaf_count - 1);
    let mut hash = *leaf;
    for sibling in path {
        if s_n == 0 {
            return None;
        }
        if f_n & 1 == 1 || f_n == s_n {
            hash = node_hash(sibling, &hash);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    (s_n == 0).then_some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&(i as u64).to_be_bytes())).collect()
    }

    #[test]
    fn roots_follow_rfc_6962() {
        // The empty-string leaf of RFC 6962's test vectors.
        assert_eq!(
            crate::storage::settings::to_hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        let l = leaves(3);
        assert_eq!(root(&l[..1]), Some(l[0]));
        assert_eq!(root(&l), Some(node_hash(&node_hash(&l[0], &l[1]), &l[2])));
        assert_eq!(root(&[]), None);
    }

    #[test]
    fn blocks_give_the_root_and_every_path_leads_to_it() {
        for n in [1, 2, 255, 256, 257, 511, 512, 513, 1000, 2048, 2049, 5000] {
            let l = leaves(n);
            let want = root(&l).unwrap();
            let blocks = block_hashes(&l);
            assert_eq!(root_from_blocks(&blocks, n), Some(want), "{n} leaves");
            assert_eq!(root_from_blocks(&blocks, n + BLOCK_LEAVES), None);
            for index in [0, n / 3, n / 2, n - 1] {
                let block_start = index / BLOCK_LEAVES * BLOCK_LEAVES;
                let block = &l[block_start..(block_start + BLOCK_LEAVES).min(n)];
                let p = path_in_range(index, block, &blocks, n);
                assert_eq!(p, path(index, &l), "{n} leaves, leaf {index}");
                assert_eq!(root_from_path(index, n, &l[index], &p), Some(want));
                if n > 1 {
                    assert_ne!(root_from_path(index, n, &l[(index + 1) % n], &p), Some(want));
                    assert_eq!(root_from_path(index, n, &l[index], &p[1..]), None);
                }
            }
        }
    }
}
