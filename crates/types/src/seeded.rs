//! A tiny seeded pseudo-random generator (xorshift64) for simulations and workloads that
//! must replay from a printed seed. Not for anything secret.

/// xorshift64: every choice drawn from it is a pure function of its seed and stream.
#[derive(Clone, Debug)]
pub struct SeededRng(u64);

impl SeededRng {
    /// The generator of `stream` under `seed` (distinct streams give unrelated sequences).
    pub fn new(seed: u64, stream: u64) -> SeededRng {
        SeededRng((seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform-ish in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_other_stream_other_sequence() {
        let draw = |seed, stream| {
            let mut r = SeededRng::new(seed, stream);
            (0..8).map(|_| r.below(1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7, 1), draw(7, 1));
        assert_ne!(draw(7, 1), draw(7, 2));
        assert_ne!(draw(7, 1), draw(8, 1));
    }
}
