//! Named random streams: one generator per purpose, derived from the run seed and the
//! training step, so a run is reproducible from its config on any backend and a resumed run draws
//! exactly what an uninterrupted one would, without saving generator state.

use rand::SeedableRng;
use rand::rngs::StdRng;

/// What a stream is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// MP label noise.
    LabelNoise = 1,
    /// MP mask noise (point flips, shifts, scales).
    MaskNoise = 2,
    /// The matcher's shared random points.
    MatcherPoints = 3,
    /// The losses' importance-sampled points.
    LossPoints = 4,
    /// Data augmentation.
    Augmentation = 5,
    /// Data order (shuffling).
    DataOrder = 6,
    /// The backend generator during a training step (Swin's stochastic depth draws from it).
    BackendSeed = 7,
}

/// The generator of `purpose` at `step` of a run seeded `seed`.
pub fn stream(seed: u64, purpose: Stream, step: u64) -> StdRng {
    // SplitMix64 finaliser over (seed, purpose, step): distinct, well-spread stream seeds.
    let mut z = seed ^ (purpose as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_depend_on_seed_purpose_and_step_only() {
        let draw = |seed, purpose, step| stream(seed, purpose, step).random::<u64>();
        assert_eq!(draw(5, Stream::MaskNoise, 10), draw(5, Stream::MaskNoise, 10));
        assert_ne!(draw(5, Stream::MaskNoise, 10), draw(5, Stream::MaskNoise, 11));
        assert_ne!(draw(5, Stream::MaskNoise, 10), draw(6, Stream::MaskNoise, 10));
        assert_ne!(draw(5, Stream::MaskNoise, 10), draw(5, Stream::LabelNoise, 10));
    }
}
