//! The sample order: a permutation fixed by `(seed, epoch)`, cut into global batches that are dealt
//! to ranks. Nothing here depends on the number of workers, and the world size only decides which
//! rank gets which global batch (MosaicML Streaming's elastic-determinism idea).
//!
//! The permutation is a Fisher–Yates shuffle driven by SplitMix64, small enough to port to any
//! language (`python/mg3d_shards.py` has the same code):
//! ```text
//! mix(z)   = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^ (z >> 31)
//! next()   = state += 0x9E3779B97F4A7C15; mix(state)            (all arithmetic mod 2^64)
//! state0   = mix(seed) ^ mix(epoch ^ 0x6D67336473686172)
//! for i in n-1 down to 1: j = (next() * (i + 1)) >> 64  (128-bit product); swap(perm[i], perm[j])
//! ```

/// SplitMix64's output function.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The generator for `(seed, epoch)`.
    pub fn for_epoch(seed: u64, epoch: u64) -> Self {
        SplitMix64(mix(seed) ^ mix(epoch ^ 0x6D67_3364_7368_6172))
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    /// A number in `0..=i` (multiply-shift; the bias is below 2^-40 for any realistic `i`).
    pub fn below_inclusive(&mut self, i: u64) -> u64 {
        ((self.next_u64() as u128 * (i as u128 + 1)) >> 64) as u64
    }
}

/// The permutation of `0..n` for `(seed, epoch)`.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    let mut g = SplitMix64::for_epoch(seed, epoch);
    for i in (1..n).rev() {
        let j = g.below_inclusive(i as u64) as usize;
        p.swap(i, j);
    }
    p
}

/// Regroups an order so that each global batch of `batch_size` is built from anchors (taken in
/// `order`) each followed by up to `per_anchor` of its unused graph neighbours. The result is still
/// a permutation: every sample appears exactly once per epoch.
pub fn group_neighbors(
    order: &[u32],
    neighbors: &[Vec<u32>],
    batch_size: usize,
    per_anchor: usize,
) -> Vec<u32> {
    let n = order.len();
    let b = batch_size.max(1);
    let mut used = vec![false; neighbors.len().max(n)];
    let mut out = Vec::with_capacity(n);
    let mut pos = 0;
    while out.len() < n {
        let mut in_batch = 0;
        while in_batch < b && out.len() < n {
            while used[order[pos] as usize] {
                pos += 1;
            }
            let a = order[pos];
            used[a as usize] = true;
            out.push(a);
            in_batch += 1;
            let mut added = 0;
            for &nb in neighbors
                .get(a as usize)
                .map(|v| v.as_slice())
                .unwrap_or(&[])
            {
                if added >= per_anchor || in_batch >= b {
                    break;
                }
                if (nb as usize) < used.len() && !used[nb as usize] {
                    used[nb as usize] = true;
                    out.push(nb);
                    in_batch += 1;
                    added += 1;
                }
            }
        }
    }
    out
}

/// The global batches from position `start` of an epoch's order: consecutive chunks of
/// `batch_size`. With `drop_last`, an incomplete last chunk is dropped and the count is cut to a
/// multiple of `world`, so every rank gets the same number of batches.
pub fn global_batches(
    order: &[u32],
    start: usize,
    batch_size: usize,
    world: usize,
    drop_last: bool,
) -> Vec<&[u32]> {
    let rest = order.get(start..).unwrap_or(&[]);
    let mut chunks: Vec<&[u32]> = rest.chunks(batch_size.max(1)).collect();
    if drop_last {
        if chunks.last().is_some_and(|c| c.len() < batch_size) {
            chunks.pop();
        }
        let keep = chunks.len() / world.max(1) * world.max(1);
        chunks.truncate(keep);
    }
    chunks
}

/// The batches of `rank`: global batch `c` goes to rank `c % world`.
pub fn rank_batches(
    order: &[u32],
    start: usize,
    batch_size: usize,
    rank: usize,
    world: usize,
    drop_last: bool,
) -> Vec<Vec<u32>> {
    global_batches(order, start, batch_size, world, drop_last)
        .into_iter()
        .enumerate()
        .filter(|(c, _)| c % world.max(1) == rank)
        .map(|(_, b)| b.to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_depends_on_epoch() {
        for n in [0usize, 1, 2, 7, 100] {
            let p = epoch_permutation(n, 3, 0);
            let mut s = p.clone();
            s.sort();
            assert_eq!(s, (0..n as u32).collect::<Vec<_>>());
        }
        assert_ne!(epoch_permutation(50, 3, 0), epoch_permutation(50, 3, 1));
        assert_ne!(epoch_permutation(50, 3, 0), epoch_permutation(50, 4, 0));
        assert_eq!(epoch_permutation(50, 3, 0), epoch_permutation(50, 3, 0));
    }

    #[test]
    fn fixed_values_for_ports() {
        // The Python port (python/mg3d_shards.py) must print the same.
        assert_eq!(
            epoch_permutation(10, 42, 0),
            vec![4, 0, 7, 9, 8, 1, 6, 2, 5, 3]
        );
    }

    #[test]
    fn neighbours_grouped_and_permutation_kept() {
        let order: Vec<u32> = (0..10).collect();
        let mut nb = vec![Vec::new(); 10];
        nb[0] = vec![9, 8];
        nb[1] = vec![0];
        let g = group_neighbors(&order, &nb, 4, 1);
        assert_eq!(&g[..4], &[0, 9, 1, 2]);
        let mut s = g.clone();
        s.sort();
        assert_eq!(s, order);
    }

    #[test]
    fn ranks_cover_everything_once() {
        let order = epoch_permutation(23, 1, 0);
        for world in [1, 2, 3, 4] {
            let mut all: Vec<u32> = (0..world)
                .flat_map(|r| rank_batches(&order, 0, 4, r, world, false).concat())
                .collect();
            all.sort();
            assert_eq!(all, (0..23).collect::<Vec<_>>());
            let counts: Vec<usize> = (0..world)
                .map(|r| rank_batches(&order, 0, 4, r, world, true).len())
                .collect();
            assert!(counts.windows(2).all(|w| w[0] == w[1]), "{counts:?}");
        }
    }
}
