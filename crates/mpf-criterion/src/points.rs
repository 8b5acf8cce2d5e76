//! Point sampling: masks are compared at a few thousand points instead of every
//! pixel. A point is a normalised `(x, y)` in `[0, 1]²` (`x` along the width); sampling is
//! bilinear with half-pixel centres (`align_corners = false`) and zero padding outside the map,
//! which is PyTorch's `grid_sample(input, 2·p − 1)` that Mask2Former's `point_sample` calls.
//!
//! Everything that needs no gradient runs on the host from named random streams, so a run draws
//! the same points on every backend: uniform points, the losses' importance sampling
//! ([`importance_points`]: oversampled candidates ranked by `−|logit|`), GT labels at the points
//! ([`sample_mask`]). The one sampling on the gradient path is a gather of the four bilinear
//! corners with fixed weights ([`Corners`], [`gather_points`]): its backward is a single
//! scatter-add, where `grid_sample` under autodiff is decomposed into dozens of operations.
//! [`point_sample`] (`grid_sample`) stays for sampling without gradient on the device.

use burn::prelude::*;
use burn::tensor::ops::GridSampleOptions;
use mpf_model::mask::BinaryMask;
use rand::Rng;

/// A normalised point `(x, y)`.
pub type Point = [f32; 2];

/// Samples `input` at `coords` with `grid_sample` (no gradient needed; used on the device by the
/// matcher).
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

/// `n` uniform points in `[0, 1)²` from `rng` (x then y for each point).
pub fn uniform_points(n: usize, rng: &mut impl Rng) -> Vec<Point> {
    (0..n).map(|_| [rng.random::<f32>(), rng.random::<f32>()]).collect()
}

/// The bilinear corners of one point on an `h × w` map: four `(flat index, weight)` pairs in the
/// order (y0,x0), (y0,x1), (y1,x0), (y1,x1). Corners outside the map get weight 0 (zero padding)
/// and index 0.
#[inline]
pub fn corners(h: usize, w: usize, [x, y]: Point) -> [(usize, f32); 4] {
    let (px, py) = (x * w as f32 - 0.5, y * h as f32 - 0.5);
    let (x0, y0) = (px.floor(), py.floor());
    let (fx, fy) = (px - x0, py - y0);
    let (x0, y0) = (x0 as isize, y0 as isize);
    let at = |yi: isize, xi: isize, wt: f32| {
        // Negative coordinates wrap to huge values and fail the bound check.
        if (xi as usize) < w && (yi as usize) < h { (yi as usize * w + xi as usize, wt) } else { (0, 0.0) }
    };
    [
        at(y0, x0, (1.0 - fx) * (1.0 - fy)),
        at(y0, x0 + 1, fx * (1.0 - fy)),
        at(y0 + 1, x0, (1.0 - fx) * fy),
        at(y0 + 1, x0 + 1, fx * fy),
    ]
}

/// Bilinear sample of a row-major `h × w` plane at `p` (zero outside).
#[inline]
pub fn sample_plane(plane: &[f32], h: usize, w: usize, [x, y]: Point) -> f32 {
    let (px, py) = (x * w as f32 - 0.5, y * h as f32 - 0.5);
    let (x0, y0) = (px.floor(), py.floor());
    let (xi, yi) = (x0 as isize, y0 as isize);
    if xi >= 0 && yi >= 0 && (xi as usize) + 1 < w && (yi as usize) + 1 < h {
        // All four corners inside: the common case, without bound checks per corner.
        let (fx, fy) = (px - x0, py - y0);
        let i = yi as usize * w + xi as usize;
        let top = plane[i] + (plane[i + 1] - plane[i]) * fx;
        let bottom = plane[i + w] + (plane[i + w + 1] - plane[i + w]) * fx;
        return top + (bottom - top) * fy;
    }
    corners(h, w, [x, y]).iter().map(|&(i, wt)| if wt == 0.0 { 0.0 } else { wt * plane[i] }).sum()
}

/// Writes the bilinear corners of `points` on an `h × w` map into `index` and `weight` (four
/// entries per point, as [`corners`]).
pub fn fill_corners(h: usize, w: usize, points: &[Point], index: &mut [i64], weight: &mut [f32]) {
    for (k, &p) in points.iter().enumerate() {
        for (j, (i, wt)) in corners(h, w, p).into_iter().enumerate() {
            index[k * 4 + j] = i as i64;
            weight[k * 4 + j] = wt;
        }
    }
}

/// A binary mask sampled bilinearly at `points` (soft values at boundaries, as the reference's
/// `point_sample` of the float GT mask).
pub fn sample_mask(mask: &BinaryMask, points: &[Point]) -> Vec<f32> {
    points
        .iter()
        .map(|&p| corners(mask.height, mask.width, p).iter().map(|&(i, wt)| if mask.data[i] { wt } else { 0.0 }).sum())
        .collect()
}

/// Importance sampling of loss points (Mask2Former's `get_uncertain_point_coords_with_randomness`
/// with fresh uniform random points) for one mask: draw `⌊num_points · oversample⌋` uniform
/// candidates, keep the `⌊importance · num_points⌋` whose logit (bilinear at the candidate) is
/// closest to 0, i.e. of largest uncertainty `−|logit|`, then add the rest as fresh uniform points.
/// `candidates` and `fresh` are the random points (see [`ImportanceDraw`]).
pub fn importance_points(logits: &[f32], h: usize, w: usize, draw: &ImportanceDraw) -> Vec<Point> {
    // Key = (|logit| bits, candidate index): for non-negative floats the bit patterns order as the
    // values, so one integer comparison ranks by uncertainty and breaks ties by index (a
    // deterministic choice).
    let mut keys: Vec<u64> = draw
        .candidates
        .iter()
        .enumerate()
        .map(|(i, &p)| ((sample_plane(logits, h, w, p).abs().to_bits() as u64) << 32) | i as u64)
        .collect();
    let keep = draw.keep.min(keys.len());
    if keep > 0 && keep < keys.len() {
        keys.select_nth_unstable(keep - 1);
    }
    let mut chosen: Vec<usize> = keys[..keep].iter().map(|&k| (k & 0xFFFF_FFFF) as usize).collect();
    chosen.sort_unstable();
    let mut out: Vec<Point> = chosen.into_iter().map(|i| draw.candidates[i]).collect();
    out.extend_from_slice(&draw.fresh);
    out
}

/// The random part of one mask's importance sampling: the candidates, then the fresh points,
/// from one generator (the criterion gives every mask its own, seeded in a fixed order, so the
/// points do not depend on how the work is split across threads).
#[derive(Debug, Clone)]
pub struct ImportanceDraw {
    /// `⌊num_points · oversample⌋` uniform candidates.
    pub candidates: Vec<Point>,
    /// How many candidates to keep.
    pub keep: usize,
    /// `num_points − keep` fresh uniform points.
    pub fresh: Vec<Point>,
}

impl ImportanceDraw {
    /// Draws the candidates, then the fresh points, from `rng`.
    pub fn new(num_points: usize, oversample: f64, importance: f64, rng: &mut impl Rng) -> Self {
        let n_candidates = ((num_points as f64 * oversample) as usize).max(1);
        let keep = ((importance * num_points as f64) as usize).min(num_points).min(n_candidates);
        let candidates = if keep > 0 { uniform_points(n_candidates, rng) } else { Vec::new() };
        let fresh = uniform_points(num_points - keep, rng);
        Self { candidates, keep, fresh }
    }
}

/// Gather indices and weights of the bilinear corners of many rows of points, for
/// [`gather_points`]: row `r` samples its own `h × w` map at its own points.
#[derive(Debug, Clone, Default)]
pub struct Corners {
    /// `rows · P · 4` flat indices into the row's `h·w` map.
    pub index: Vec<i64>,
    /// `rows · P · 4` bilinear weights (0 for corners outside the map).
    pub weight: Vec<f32>,
}

impl Corners {
    /// Appends the corners of one row's points on an `h × w` map.
    pub fn push_row(&mut self, h: usize, w: usize, points: &[Point]) {
        let start = self.index.len();
        self.index.resize(start + points.len() * 4, 0);
        self.weight.resize(start + points.len() * 4, 0.0);
        fill_corners(h, w, points, &mut self.index[start..], &mut self.weight[start..]);
    }
}

/// Bilinear samples of `rows` (each an `h·w` map) at their points, differentiable with respect
/// to `rows`: `Σ_corners weight · rows[r, index]`, one gather and one product.
///
/// # Shapes
/// - `rows`: `[R, h·w]`; `corners`: `R · P · 4` entries
/// - output: `[R, P]`
pub fn gather_points<B: Backend>(rows: Tensor<B, 2>, corners: &Corners, num_points: usize) -> Tensor<B, 2> {
    let device = rows.device();
    let r = rows.dims()[0];
    let k = num_points * 4;
    assert_eq!(corners.index.len(), r * k, "corner count must be rows · points · 4");
    let index = Tensor::<B, 2, Int>::from_data(TensorData::new(corners.index.clone(), [r, k]), &device);
    let weight = Tensor::<B, 2>::from_data(TensorData::new(corners.weight.clone(), [r, k]), &device);
    (rows.gather(1, index) * weight).reshape([r, num_points, 4]).sum_dim(2).reshape([r, num_points])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
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
        // The host sampler gives the same values.
        let plane = [1.0, 2.0, 3.0, 4.0];
        let host: Vec<f32> = [[0.25, 0.25], [0.75, 0.25], [0.5, 0.5], [0.0, 0.25]]
            .iter()
            .map(|&p| sample_plane(&plane, 2, 2, p))
            .collect();
        assert_eq!(host, vec![1.0, 2.0, 2.5, 0.5]);
        let mask = BinaryMask { height: 2, width: 2, data: vec![true, false, false, false] };
        assert_eq!(sample_mask(&mask, &[[0.25, 0.25], [0.5, 0.25], [0.0, 0.0]]), vec![1.0, 0.5, 0.25]);
    }

    #[test]
    fn gather_points_matches_grid_sample_forward_and_gradient() {
        type AD = Autodiff<Flex>;
        let device = Default::default();
        let (r, h, w, p) = (3, 5, 7, 40);
        let mut rng = StdRng::seed_from_u64(1);
        let values: Vec<f32> = (0..r * h * w).map(|_| rng.random::<f32>() * 4.0 - 2.0).collect();
        // Points spill outside [0, 1] to exercise the zero padding.
        let points: Vec<Vec<Point>> = (0..r)
            .map(|_| (0..p).map(|_| [rng.random::<f32>() * 1.4 - 0.2, rng.random::<f32>() * 1.4 - 0.2]).collect())
            .collect();
        let upstream: Vec<f32> = (0..r * p).map(|_| rng.random::<f32>()).collect();
        let up = |d: &_| Tensor::<AD, 1>::from_data(TensorData::new(upstream.clone(), [r * p]), d).reshape([r, p]);

        // Reference: grid_sample (decomposed by autodiff) at the same points.
        let x = Tensor::<AD, 1>::from_data(TensorData::new(values.clone(), [r * h * w]), &device)
            .reshape([r, 1, h, w])
            .require_grad();
        let coords: Vec<f32> = points.iter().flatten().flat_map(|q| q.to_vec()).collect();
        let coords = Tensor::<AD, 1>::from_data(TensorData::new(coords, [r * p * 2]), &device).reshape([r, p, 2]);
        let reference = point_sample(x.clone(), coords).reshape([r, p]);
        let g_ref = (reference.clone() * up(&device)).sum().backward();
        let g_ref = x.grad(&g_ref).unwrap().into_data().to_vec::<f32>().unwrap();

        let y = Tensor::<AD, 1>::from_data(TensorData::new(values, [r * h * w]), &device)
            .reshape([r, h * w])
            .require_grad();
        let mut c = Corners::default();
        for row in &points {
            c.push_row(h, w, row);
        }
        let ours = gather_points(y.clone(), &c, p);
        let g = (ours.clone() * up(&device)).sum().backward();
        let g = y.grad(&g).unwrap().into_data().to_vec::<f32>().unwrap();
        let (a, b) = (ours.into_data().to_vec::<f32>().unwrap(), reference.into_data().to_vec::<f32>().unwrap());
        let max = mpf_model::testing::max_abs_diff;
        assert!(max(&a, &b) < 1e-5, "forward differs by {}", max(&a, &b));
        assert!(max(&g, &g_ref) < 1e-5, "gradient differs by {}", max(&g, &g_ref));
    }

    #[test]
    fn importance_points_prefer_the_boundary() {
        // Logits rise linearly with x and cross 0 at the middle column: uncertainty = distance
        // to the middle.
        let w = 33;
        let logits: Vec<f32> = (0..w * w).map(|i| (i % w) as f32 - 16.0).collect();
        let mut rng = StdRng::seed_from_u64(0);
        let draw = ImportanceDraw::new(100, 3.0, 0.75, &mut rng);
        assert_eq!((draw.candidates.len(), draw.keep, draw.fresh.len()), (300, 75, 25));
        let pts = importance_points(&logits, w, w, &draw);
        assert_eq!(pts.len(), 100);
        let xs: Vec<f32> = pts.iter().map(|p| p[0]).collect();
        // The 75 kept of 300 uniform candidates are the quarter nearest x = 0.5 (within ≈ 0.125);
        // the 25 uniform points land beyond 0.2 about 60 % of the time.
        assert!(xs[..75].iter().all(|x| (x - 0.5).abs() < 0.2), "{:?}", &xs[..75]);
        let far = xs[75..].iter().filter(|x| (*x - 0.5).abs() > 0.2).count();
        assert!(far >= 5, "{far} of 25 uniform points far from the boundary");
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        // The kept points are exactly the 75 candidates of smallest |logit|.
        let mut all: Vec<f32> = draw.candidates.iter().map(|&p| sample_plane(&logits, w, w, p).abs()).collect();
        all.sort_by(f32::total_cmp);
        let worst_kept = pts[..75].iter().map(|&p| sample_plane(&logits, w, w, p).abs()).fold(0f32, f32::max);
        assert_eq!(worst_kept, all[74]);
    }
}
