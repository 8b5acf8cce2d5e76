//! Point sampling (spec §2.5, §2.6): masks are compared at a few thousand points instead of every
//! pixel. `point_sample` is bilinear `grid_sample` at normalised `[0, 1]²` coordinates with zero
//! padding and `align_corners = false`; [`uncertain_points`] draws the losses' importance-sampled
//! points. Random coordinates come from a host generator (a named stream), so a run draws the same
//! points on every backend.

use burn::prelude::*;
use burn::tensor::ops::GridSampleOptions;
use rand::Rng;

/// Samples `input` at `coords` (`(x, y)` in `[0, 1]`, `x` along the width).
///
/// # Shapes
/// - `input`: `[N, C, H, W]`
/// - `coords`: `[N, P, 2]`
/// - output: `[N, C, P]`
pub fn point_sample<B: Backend>(input: Tensor<B, 4>, coords: Tensor<B, 3>) -> Tensor<B, 3> {
    let [n, c, _, _] = input.dims();
    let [_, p, _] = coords.dims();
    let grid = (coords * 2.0 - 1.0).reshape([n, 1, p, 2]);
    input.grid_sample_2d(grid, GridSampleOptions::default()).reshape([n, c, p])
}

/// `n × p` uniform points in `[0, 1)²` from `rng`.
///
/// # Shapes
/// - output: `[n, p, 2]`
pub fn uniform_points<B: Backend>(n: usize, p: usize, rng: &mut impl Rng, device: &B::Device) -> Tensor<B, 3> {
    let v: Vec<f32> = (0..n * p * 2).map(|_| rng.random::<f32>()).collect();
    Tensor::<B, 1>::from_data(TensorData::new(v, [n * p * 2]), device).reshape([n, p, 2])
}

/// Importance sampling of loss points (Mask2Former's `get_uncertain_point_coords_with_randomness`
/// with fresh uniform random points): draw `⌊num_points · oversample⌋` uniform candidates, keep the
/// `⌊importance · num_points⌋` whose logit is closest to 0 (uncertainty `−|logit|`), add the rest
/// as fresh uniform points. Computed without gradient.
///
/// # Shapes
/// - `logits`: `[N, 1, h, w]`
/// - output: `[N, num_points, 2]`
pub fn uncertain_points<B: Backend>(
    logits: Tensor<B, 4>,
    num_points: usize,
    oversample: f64,
    importance: f64,
    rng: &mut impl Rng,
) -> Tensor<B, 3> {
    let device = logits.device();
    let n = logits.dims()[0];
    let candidates = ((num_points as f64 * oversample) as usize).max(1);
    let keep = ((importance * num_points as f64) as usize).min(num_points).min(candidates);
    let coords = uniform_points::<B>(n, candidates, rng, &device);
    let mut parts = Vec::with_capacity(2);
    if keep > 0 {
        let sampled = point_sample(logits.detach(), coords.clone()).reshape([n, candidates]);
        let (_, idx) = sampled.abs().neg().topk_with_indices(keep, 1);
        let idx = idx.reshape([n, keep, 1]).repeat_dim(2, 2);
        parts.push(coords.gather(1, idx));
    }
    if num_points > keep {
        parts.push(uniform_points::<B>(n, num_points - keep, rng, &device));
    }
    Tensor::cat(parts, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn point_sample_by_hand() {
        let device = Default::default();
        // 2×2 image [[1, 2], [3, 4]]: pixel centres at 0.25 / 0.75; outside is zero-padded.
        let img = Tensor::<Flex, 4>::from_floats([[[[1.0, 2.0], [3.0, 4.0]]]], &device);
        let coords = Tensor::<Flex, 3>::from_floats([[[0.25, 0.25], [0.75, 0.25], [0.5, 0.5], [0.0, 0.25]]], &device);
        let out = point_sample(img, coords).into_data().to_vec::<f32>().unwrap();
        // (0.25,0.25)→1, x=0.75→2, centre→mean 2.5, x=0 → halfway between pixel 1 and padding → 0.5.
        assert_eq!(out, vec![1.0, 2.0, 2.5, 0.5]);
    }

    #[test]
    fn uncertain_points_prefer_the_boundary() {
        let device = Default::default();
        // Logits rise linearly with x and cross 0 at the middle column: uncertainty = distance
        // to the middle.
        let w = 33;
        let v: Vec<f32> = (0..w * w).map(|i| (i % w) as f32 - 16.0).collect();
        let logits = Tensor::<Flex, 1>::from_data(TensorData::new(v, [w * w]), &device).reshape([1, 1, w, w]);
        let mut rng = StdRng::seed_from_u64(0);
        let pts = uncertain_points(logits, 100, 3.0, 0.75, &mut rng);
        assert_eq!(pts.dims(), [1, 100, 2]);
        let xs: Vec<f32> = pts.narrow(2, 0, 1).into_data().to_vec().unwrap();
        // The 75 kept of 300 uniform candidates are the quarter nearest x = 0.5 (within ≈ 0.125);
        // the 25 uniform points land beyond 0.2 about 60 % of the time.
        assert!(xs[..75].iter().all(|x| (x - 0.5).abs() < 0.2), "{:?}", &xs[..75]);
        let far = xs[75..].iter().filter(|x| (*x - 0.5).abs() > 0.2).count();
        assert!(far >= 5, "{far} of 25 uniform points far from the boundary");
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
    }
}
