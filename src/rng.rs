//! Counter-based randomness: every random draw is a pure function of (seed, epoch, index), so the
//! thread count and the prefetch depth never change a batch.

/// SplitMix64: tiny, fast, and good enough for augmentation parameters and shuffles.
#[derive(Debug, Clone)]
pub struct Rng(u64);

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// A stream keyed by several words; different keys give independent streams.
    pub fn keyed(words: &[u64]) -> Self {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for &w in words {
            s = mix(s ^ w.wrapping_add(0x9e37_79b9_7f4a_7c15));
        }
        Rng(s)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn range_f(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in [0, n); n must be > 0. Lemire's multiply-shift, unbiased enough for n << 2^64.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// A uniformly random permutation of 0..n (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            v.swap(i, self.below(i + 1));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_streams_are_deterministic_and_distinct() {
        assert_eq!(Rng::keyed(&[1, 2, 3]).next_u64(), Rng::keyed(&[1, 2, 3]).next_u64());
        assert_ne!(Rng::keyed(&[1, 2, 3]).next_u64(), Rng::keyed(&[1, 2, 4]).next_u64());
        let mut r = Rng::keyed(&[7]);
        let mut counts = [0usize; 9];
        for _ in 0..90_000 {
            counts[r.below(9)] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)), "{counts:?}");
        let mut p = Rng::keyed(&[9]).permutation(1000);
        p.sort();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }
}
