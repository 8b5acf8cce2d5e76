//! Named random streams: one generator per purpose, derived from the run seed and the
//! training step, so a run is reproducible from its config on any backend and a resumed run draws
//! exactly what an uninterrupted one would, without saving generator state.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

/// The generator of `purpose` at `step` for image `image` of the step's (global) batch.
///
/// Draws made per image from these streams do not depend on how the batch is split: image 3 of a
/// batch of 4 on one device draws what image 1 of the second replica's half draws when two
/// replicas take 2 images each.
pub fn image_stream(seed: u64, purpose: Stream, step: u64, image: u64) -> StdRng {
    // Image 0 keeps the step's stream; later images mix their index into the seed.
    stream(seed ^ image.wrapping_mul(0xA076_1D64_78BD_642F), purpose, step)
}

/// Per-image generators of one purpose and step, made on first use.
#[derive(Debug, Clone)]
pub struct ImageStreams {
    seed: u64,
    purpose: Stream,
    step: u64,
    first_image: u64,
    rngs: Vec<StdRng>,
}

impl ImageStreams {
    /// The streams of `purpose` at `step` for a batch whose image 0 is image `first_image` of the
    /// step's global batch (0 on one device; `rank · images per replica` in data-parallel runs).
    pub fn new(seed: u64, purpose: Stream, step: u64, first_image: u64) -> Self {
        Self { seed, purpose, step, first_image, rngs: Vec::new() }
    }
}

/// A source of random draws for the images of a batch: [`ImageStreams`] gives each image its own
/// generator; any plain [`Rng`] serves every image from itself (tests, single draws).
pub trait ImageRng {
    /// The generator type.
    type Rng: Rng;
    /// The generator of image `b` of the batch.
    fn image(&mut self, b: usize) -> &mut Self::Rng;
}

impl ImageRng for ImageStreams {
    type Rng = StdRng;
    fn image(&mut self, b: usize) -> &mut StdRng {
        while self.rngs.len() <= b {
            let i = self.first_image + self.rngs.len() as u64;
            self.rngs.push(image_stream(self.seed, self.purpose, self.step, i));
        }
        &mut self.rngs[b]
    }
}

impl<R: Rng> ImageRng for R {
    type Rng = R;
    fn image(&mut self, _b: usize) -> &mut R {
        self
    }
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

    #[test]
    fn image_streams_do_not_depend_on_the_batch_split() {
        let mut whole = ImageStreams::new(9, Stream::LossPoints, 4, 0);
        let mut second_half = ImageStreams::new(9, Stream::LossPoints, 4, 2);
        // Image 1 first, then image 0: each image's sequence is its own.
        let a: Vec<u64> = (0..3).map(|_| whole.image(3).random()).collect();
        let b: Vec<u64> = (0..3).map(|_| second_half.image(1).random()).collect();
        assert_eq!(a, b);
        assert_ne!(whole.image(0).random::<u64>(), whole.image(1).random::<u64>());
        assert_eq!(
            ImageStreams::new(9, Stream::LossPoints, 4, 0).image(0).random::<u64>(),
            stream(9, Stream::LossPoints, 4).random::<u64>(),
            "image 0 draws the step's stream"
        );
    }
}
