//! Multi-scale deformable attention (Deformable DETR's `MSDeformAttn`): bilinear
//! sampling with zero padding and `align_corners = false`. Two equivalent forms of the sampling
//! core: [`ms_deform_attn_core`] (one `grid_sample_2d` per level, the backend's kernel; the
//! reference) and a row gather with bilinear weights (the default: faster, and under autodiff far
//! fewer recorded operations than `grid_sample`, which Burn's autodiff decomposes); see
//! [`MSDeformAttn::forward_with`].

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::ops::GridSampleOptions;

use crate::init::{LinearInit, linear};

/// Configuration of [`MSDeformAttn`]; defaults are the Mask2Former pixel decoder's.
#[derive(Config, Debug)]
pub struct MSDeformAttnConfig {
    /// Model width `d`.
    #[config(default = 256)]
    pub d_model: usize,
    /// Number of feature levels `L`.
    #[config(default = 3)]
    pub n_levels: usize,
    /// Number of heads `M`.
    #[config(default = 8)]
    pub n_heads: usize,
    /// Sampling points per head and level `P`.
    #[config(default = 4)]
    pub n_points: usize,
}

/// Multi-scale deformable attention.
///
/// Initialisation: sampling-offset weights 0 with a "ring" bias (head `h` points along
/// `θ_h = 2πh/M`, normalised by its largest component, scaled by point index + 1); attention-weight
/// projection all zeros (uniform attention); value and output projections xavier with bias 0.
#[derive(Module, Debug)]
pub struct MSDeformAttn<B: Backend> {
    /// `d → M·L·P·2` offsets, in units of each level's size.
    pub sampling_offsets: Linear<B>,
    /// `d → M·L·P` logits, softmaxed over the `L·P` samples of a head.
    pub attention_weights: Linear<B>,
    /// `d → d` value projection.
    pub value_proj: Linear<B>,
    /// `d → d` output projection.
    pub output_proj: Linear<B>,
    /// Heads `M`.
    pub n_heads: usize,
    /// Levels `L`.
    pub n_levels: usize,
    /// Points `P`.
    pub n_points: usize,
}

impl MSDeformAttnConfig {
    /// Initialises the module on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> MSDeformAttn<B> {
        let (d, m, l, p) = (self.d_model, self.n_heads, self.n_levels, self.n_points);
        assert!(d % m == 0, "d_model {d} must be divisible by n_heads {m}");
        let mut sampling_offsets = linear(d, m * l * p * 2, LinearInit::Zeros, device);
        let bias = ring_offsets_bias(m, l, p);
        sampling_offsets.bias =
            Some(Param::from_tensor(Tensor::from_data(TensorData::new(bias, [m * l * p * 2]), device)));
        MSDeformAttn {
            sampling_offsets,
            attention_weights: linear(d, m * l * p, LinearInit::Zeros, device),
            value_proj: linear(d, d, LinearInit::XavierZeroBias, device),
            output_proj: linear(d, d, LinearInit::XavierZeroBias, device),
            n_heads: m,
            n_levels: l,
            n_points: p,
        }
    }
}

/// The initial sampling-offset bias, flattened in `(head, level, point, xy)` order.
pub fn ring_offsets_bias(n_heads: usize, n_levels: usize, n_points: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n_heads * n_levels * n_points * 2);
    for h in 0..n_heads {
        let theta = h as f64 * (2.0 * std::f64::consts::PI / n_heads as f64);
        let (x, y) = (theta.cos(), theta.sin());
        let norm = x.abs().max(y.abs());
        for _ in 0..n_levels {
            for pt in 0..n_points {
                let s = (pt + 1) as f64;
                out.push((x / norm * s) as f32);
                out.push((y / norm * s) as f32);
            }
        }
    }
    out
}

/// Which of the two equivalent forms of the sampling core runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplingForm {
    /// One `grid_sample_2d` per level ([`ms_deform_attn_core`]), the reference formulation.
    GridSample,
    /// One row gather with bilinear weights (see [`MSDeformAttn::forward_with`]).
    Gather,
}

/// The queries' reference points of a deformable attention over given levels, with the
/// constants the gather form needs, built once and shared by every layer that attends over the
/// same levels (the pixel decoder's encoder layers). Reference points are the same for every
/// level and every image (Mask2Former's encoder: pixel centres, all valid ratios 1).
#[derive(Debug, Clone)]
pub struct ReferenceGrid<B: Backend> {
    /// `[h_l, w_l]` of each level.
    pub shapes: Vec<[usize; 2]>,
    /// `[B, Lq, L, 2]`, `(x, y)` in `[0, 1]` (the `grid_sample` form's input).
    pub points: Tensor<B, 4>,
    /// Heads and points the gather constants are laid out for.
    heads: usize,
    n_points: usize,
    /// Gather constants, each `[L·P·M, B·Lq]` (rows `(level, point, head)`, columns
    /// `(image, query)`): the reference point in pixels of the level (`x·w_l − 0.5`,
    /// `y·h_l − 0.5`), the level's width and height, and the value row of the level's first pixel.
    ref_x: Tensor<B, 2>,
    ref_y: Tensor<B, 2>,
    width: Tensor<B, 2>,
    height: Tensor<B, 2>,
    base: Tensor<B, 2>,
}

impl<B: Backend> ReferenceGrid<B> {
    /// `points[q]` = `(x, y)` of query `q` in `[0, 1]`, for a batch of `batch` images attending
    /// over levels of `shapes` with `heads` heads and `n_points` points per head and level.
    pub fn new(
        points: &[[f32; 2]],
        batch: usize,
        shapes: &[[usize; 2]],
        heads: usize,
        n_points: usize,
        device: &B::Device,
    ) -> Self {
        let (lq, l) = (points.len(), shapes.len());
        let s: usize = shapes.iter().map(|[h, w]| h * w).sum();
        assert!(
            batch * s * heads < 1 << 24,
            "deformable attention: {batch}·{s}·{heads} value rows exceed exact f32 indexing"
        );
        let (rows, cols) = (l * n_points * heads, batch * lq);
        let mut consts: Vec<Vec<f32>> = (0..5).map(|_| Vec::with_capacity(rows * cols)).collect();
        let mut start = 0;
        for &[h, w] in shapes {
            for _ in 0..n_points {
                for m in 0..heads {
                    for b in 0..batch {
                        for &[x, y] in points {
                            consts[0].push(x * w as f32 - 0.5);
                            consts[1].push(y * h as f32 - 0.5);
                            consts[2].push(w as f32);
                            consts[3].push(h as f32);
                            consts[4].push(((b * s + start) * heads + m) as f32);
                        }
                    }
                }
            }
            start += h * w;
        }
        let mut tensors = consts
            .into_iter()
            .map(|v| Tensor::<B, 1>::from_data(TensorData::new(v, [rows * cols]), device).reshape([rows, cols]));
        let mut next = || tensors.next().expect("five constants");
        let (ref_x, ref_y, width, height, base) = (next(), next(), next(), next(), next());
        let flat: Vec<f32> = points.iter().flat_map(|&[x, y]| (0..l).flat_map(move |_| [x, y])).collect();
        let points = Tensor::<B, 1>::from_data(TensorData::new(flat, [lq * l * 2]), device)
            .reshape([1, lq, l, 2])
            .expand([batch, lq, l, 2]);
        Self { shapes: shapes.to_vec(), points, heads, n_points, ref_x, ref_y, width, height, base }
    }
}

/// `x · W[:, cols] + b[cols]`: a linear layer's output with its columns reordered.
fn linear_columns<B: Backend>(linear: &Linear<B>, x: Tensor<B, 2>, cols: &[usize]) -> Tensor<B, 2> {
    let device = x.device();
    let n = cols.len();
    let idx = Tensor::<B, 1, Int>::from_data(
        TensorData::new(cols.iter().map(|&c| c as i64).collect::<Vec<_>>(), [n]),
        &device,
    );
    let y = x.matmul(linear.weight.val().select(1, idx.clone()));
    match &linear.bias {
        Some(b) => y + b.val().select(0, idx).reshape([1, n]),
        None => y,
    }
}

impl<B: Backend> MSDeformAttn<B> {
    /// Attends from each query to `L·P` bilinearly sampled points per head around its reference
    /// point. The sampling location for level `l` is `reference + offset / (w_l, h_l)`.
    ///
    /// # Shapes
    /// - `query`: `[B, Lq, d]` (content + position)
    /// - `grid`: reference points of the `Lq` queries over the levels `grid.shapes`
    /// - `input_flatten`: `[B, S, d]` with `S = Σ h_l·w_l`, levels concatenated in `grid.shapes` order
    /// - output: `[B, Lq, d]`
    pub fn forward(&self, query: Tensor<B, 3>, grid: &ReferenceGrid<B>, input_flatten: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_with(query, grid, input_flatten, SamplingForm::Gather)
    }

    /// [`Self::forward`] with an explicit sampling form; both give the same numbers up to
    /// rounding. The gather form is what [`Self::forward`] runs: Burn's autodiff has no
    /// `grid_sample` of its own and decomposes it into dozens of recorded operations, where the
    /// gather form records a handful; without autodiff it is faster on flex as well (tiny model:
    /// pixel decoder 19 ms instead of 31 ms). The `grid_sample` form is the reference the tests
    /// compare with.
    ///
    /// The gather form lays every per-sample tensor out as `[L·P·M, B·Lq]` (rows
    /// `(level, point, head)`), so each operation is element-wise on equal shapes; the four
    /// bilinear corners of every sample are rows of the value tensor read as `[B·S·M, D]` (no
    /// copy), gathered once, weighted by bilinear × attention weight (0 outside the level: zero
    /// padding) and summed over `(corner, level, point)` as the outer axis; the output projection
    /// is applied head by head (a batched product) instead of after a permute.
    pub fn forward_with(
        &self,
        query: Tensor<B, 3>,
        grid: &ReferenceGrid<B>,
        input_flatten: Tensor<B, 3>,
        form: SamplingForm,
    ) -> Tensor<B, 3> {
        let s = input_flatten.dims()[1];
        let l = self.n_levels;
        assert_eq!(grid.shapes.len(), l, "expected {l} levels");
        assert_eq!(grid.shapes.iter().map(|[h, w]| h * w).sum::<usize>(), s, "S ≠ Σ h·w");
        match form {
            SamplingForm::Gather => self.forward_gather(query, grid, input_flatten),
            SamplingForm::GridSample => self.forward_grid(query, grid, input_flatten),
        }
    }

    /// The reference formulation: locations `[B, Lq, M, L, P, 2]`, `grid_sample` per level.
    fn forward_grid(&self, query: Tensor<B, 3>, grid: &ReferenceGrid<B>, input_flatten: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, lq, d] = query.dims();
        let s = input_flatten.dims()[1];
        let (m, l, p) = (self.n_heads, self.n_levels, self.n_points);
        let device = query.device();
        let value = self.value_proj.forward(input_flatten).reshape([b, s, m, d / m]);
        let offsets = self.sampling_offsets.forward(query.clone()).reshape([b, lq, m, l, p, 2]);
        let weights = self.attention_weights.forward(query).reshape([b, lq, m, l * p]);
        let weights = softmax(weights, 3).reshape([b, lq, m, l, p]);
        let normalizer: Vec<f32> = grid.shapes.iter().flat_map(|[h, w]| [*w as f32, *h as f32]).collect();
        let normalizer =
            Tensor::<B, 1>::from_data(TensorData::new(normalizer, [l * 2]), &device).reshape([1, 1, 1, l, 1, 2]);
        let locations = grid.points.clone().reshape([b, lq, 1, l, 1, 2]) + offsets / normalizer;
        self.output_proj.forward(ms_deform_attn_core(value, &grid.shapes, locations, weights))
    }

    /// The gather formulation (see [`Self::forward_with`]).
    fn forward_gather(
        &self,
        query: Tensor<B, 3>,
        grid: &ReferenceGrid<B>,
        input_flatten: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let [b, lq, d] = query.dims();
        let s = input_flatten.dims()[1];
        let (m, l, p) = (self.n_heads, self.n_levels, self.n_points);
        assert_eq!((grid.heads, grid.n_points), (m, p), "reference grid laid out for other heads / points");
        assert_eq!(grid.ref_x.dims()[1], b * lq, "reference grid for another batch or query count");
        let (dh, n0, q) = (d / m, l * p * m, b * lq);
        let value = self.value_proj.forward(input_flatten).reshape([b * s * m, dh]);
        let query = query.reshape([q, d]);
        // Offsets with columns (xy, level, point, head), transposed to [2·L·P·M, B·Lq].
        let off_cols: Vec<usize> = (0..2)
            .flat_map(|xy| {
                (0..l).flat_map(move |li| {
                    (0..p).flat_map(move |pi| (0..m).map(move |mi| ((mi * l + li) * p + pi) * 2 + xy))
                })
            })
            .collect();
        let offsets = linear_columns(&self.sampling_offsets, query.clone(), &off_cols).transpose().reshape([2, n0 * q]);
        let ox = offsets.clone().narrow(0, 0, 1).reshape([n0, q]);
        let oy = offsets.narrow(0, 1, 1).reshape([n0, q]);
        // Attention weights with columns (level, point, head), softmaxed over (level, point).
        let att_cols: Vec<usize> =
            (0..l).flat_map(|li| (0..p).flat_map(move |pi| (0..m).map(move |mi| (mi * l + li) * p + pi))).collect();
        let att = linear_columns(&self.attention_weights, query, &att_cols).transpose().reshape([l * p, m * q]);
        let att = softmax(att, 0).reshape([n0, q]);
        // Pixel coordinates of the level: reference·size − 0.5 + offset (offsets are in pixels).
        let px = ox + grid.ref_x.clone();
        let py = oy + grid.ref_y.clone();
        let (x0, y0) = (px.clone().detach().floor(), py.clone().detach().floor());
        let (fx, fy) = (px - x0.clone(), py - y0.clone()); // carry the locations' gradient
        let (gx, gy) = (fx.clone().neg() + 1.0, fy.clone().neg() + 1.0);
        let corners = [
            (0.0, 0.0, gx.clone() * gy.clone()),
            (1.0, 0.0, fx.clone() * gy),
            (0.0, 1.0, gx * fy.clone()),
            (1.0, 1.0, fx * fy),
        ];
        let mut weights = Vec::with_capacity(4);
        let mut index = Vec::with_capacity(4);
        for (dx, dy, bilinear) in corners {
            let (xi, yi) = (x0.clone().add_scalar(dx), y0.clone().add_scalar(dy));
            let inside = xi
                .clone()
                .greater_equal_elem(0.0)
                .bool_and(yi.clone().greater_equal_elem(0.0))
                .bool_and(xi.clone().lower(grid.width.clone()))
                .bool_and(yi.clone().lower(grid.height.clone()));
            let row = grid.base.clone() + (yi * grid.width.clone() + xi) * m as f64;
            index.push(row.mask_fill(inside.clone().bool_not(), 0.0));
            weights.push(bilinear * inside.float() * att.clone());
        }
        let k = 4 * l * p;
        let n = k * m * q;
        let index = Tensor::cat(index, 0).reshape([n]).int();
        let weights = Tensor::cat(weights, 0).reshape([n, 1]);
        // Σ over (corner, level, point) of weight · value row → [M, B·Lq, D].
        let sampled = (value.select(0, index) * weights).reshape([k, m * q * dh]).sum_dim(0).reshape([m, q, dh]);
        // Output projection head by head: Σ_m sampled_m · W[m·D .. (m+1)·D, :].
        let w_out = self.output_proj.weight.val().reshape([m, dh, d]);
        let out = sampled.matmul(w_out).sum_dim(0).reshape([q, d]);
        let out = match &self.output_proj.bias {
            Some(bias) => out + bias.val().reshape([1, d]),
            None => out,
        };
        out.reshape([b, lq, d])
    }
}

/// The sampling-and-weighting core of deformable attention (a tensor version of the reference's
/// `ms_deform_attn_core_pytorch`).
///
/// # Shapes
/// - `value`: `[B, S, M, D]`
/// - `locations`: `[B, Lq, M, L, P, 2]`, `(x, y)` in `[0, 1]` (outside samples zeros)
/// - `weights`: `[B, Lq, M, L, P]`
/// - output: `[B, Lq, M·D]`
pub fn ms_deform_attn_core<B: Backend>(
    value: Tensor<B, 4>,
    spatial_shapes: &[[usize; 2]],
    locations: Tensor<B, 6>,
    weights: Tensor<B, 5>,
) -> Tensor<B, 3> {
    let [b, _s, m, dh] = value.dims();
    let [_, lq, _, l, p, _] = locations.dims();
    let grids = locations.mul_scalar(2.0).sub_scalar(1.0);
    let mut start = 0;
    let mut sampled = Vec::with_capacity(l);
    for (lvl, &[h, w]) in spatial_shapes.iter().enumerate() {
        let value_l = value.clone().narrow(1, start, h * w).permute([0, 2, 3, 1]).reshape([b * m, dh, h, w]);
        let grid_l = grids.clone().narrow(3, lvl, 1).reshape([b, lq, m, p, 2]).permute([0, 2, 1, 3, 4]).reshape([
            b * m,
            lq,
            p,
            2,
        ]);
        sampled.push(value_l.grid_sample_2d(grid_l, GridSampleOptions::default()));
        start += h * w;
    }
    let sampled = Tensor::cat(sampled, 3); // [B·M, D, Lq, L·P]
    let weights = weights.permute([0, 2, 1, 3, 4]).reshape([b * m, 1, lq, l * p]);
    (sampled * weights).sum_dim(3).reshape([b, m * dh, lq]).swap_dims(1, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{TestBackend, max_abs_diff};
    use burn::tensor::Distribution;

    /// Bilinear sample of one channel plane at normalised (x, y), zero outside, half-pixel centres.
    fn sample(plane: &[f32], h: usize, w: usize, x: f32, y: f32) -> f32 {
        let px = x * w as f32 - 0.5;
        let py = y * h as f32 - 0.5;
        let (x0, y0) = (px.floor(), py.floor());
        let (fx, fy) = (px - x0, py - y0);
        let mut acc = 0.0;
        for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
            for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
                let (xi, yi) = (x0 as i64 + dx, y0 as i64 + dy);
                if xi >= 0 && yi >= 0 && (xi as usize) < w && (yi as usize) < h {
                    acc += wx * wy * plane[yi as usize * w + xi as usize];
                }
            }
        }
        acc
    }

    #[test]
    fn core_matches_loop_reference() {
        let device = Default::default();
        TestBackend::seed(&device, 3);
        let shapes = [[3usize, 4usize], [2, 2]];
        let (b, m, dh, lq, l, p) = (2, 2, 3, 5, 2, 3);
        let s: usize = shapes.iter().map(|[h, w]| h * w).sum();
        let value = Tensor::<TestBackend, 4>::random([b, s, m, dh], Distribution::Normal(0.0, 1.0), &device);
        // Locations spill outside [0,1] to exercise zero padding.
        let loc = Tensor::<TestBackend, 6>::random([b, lq, m, l, p, 2], Distribution::Uniform(-0.2, 1.2), &device);
        let wts = Tensor::<TestBackend, 5>::random([b, lq, m, l, p], Distribution::Uniform(0.0, 1.0), &device);
        let out = ms_deform_attn_core(value.clone(), &shapes, loc.clone(), wts.clone());
        assert_eq!(out.dims(), [b, lq, m * dh]);
        let out = out.into_data().to_vec::<f32>().unwrap();
        let (v, lo, wt) = (
            value.into_data().to_vec::<f32>().unwrap(),
            loc.into_data().to_vec::<f32>().unwrap(),
            wts.into_data().to_vec::<f32>().unwrap(),
        );
        let mut expected = vec![0f32; b * lq * m * dh];
        for bi in 0..b {
            for q in 0..lq {
                for mi in 0..m {
                    for c in 0..dh {
                        let mut acc = 0.0;
                        let mut start = 0;
                        for (li, &[h, w]) in shapes.iter().enumerate() {
                            // plane of (bi, level li, head mi, channel c)
                            let plane: Vec<f32> =
                                (0..h * w).map(|k| v[((bi * s + start + k) * m + mi) * dh + c]).collect();
                            for pi in 0..p {
                                let base = ((((bi * lq + q) * m + mi) * l + li) * p + pi) * 2;
                                let (x, y) = (lo[base], lo[base + 1]);
                                let wgt = wt[(((bi * lq + q) * m + mi) * l + li) * p + pi];
                                acc += wgt * sample(&plane, h, w, x, y);
                            }
                            start += h * w;
                        }
                        expected[((bi * lq + q) * m + mi) * dh + c] = acc;
                    }
                }
            }
        }
        assert!(max_abs_diff(&out, &expected) < 1e-5);
    }

    #[test]
    fn grid_sample_zero_padding_half_pixel_by_hand() {
        let device = Default::default();
        // 2×2 image [[1, 2], [3, 4]]; pixel centres sit at normalised ±0.5.
        let img = Tensor::<TestBackend, 4>::from_floats([[[[1.0, 2.0], [3.0, 4.0]]]], &device);
        let grid = Tensor::<TestBackend, 4>::from_floats(
            [[[[-0.5, -0.5], [0.5, 0.5], [0.0, 0.0], [-1.0, -0.5], [1.5, 0.0], [0.0, -0.5]]]],
            &device,
        );
        let out = img.grid_sample_2d(grid, GridSampleOptions::default()).into_data().to_vec::<f32>().unwrap();
        // centre of (0,0) = 1; centre of (1,1) = 4; middle = mean 2.5; x=-1 is half a pixel left
        // of column 0: half weight from the zero padding → 0.5·1; x=1.5 is fully outside → 0;
        // (x=0, y=-0.5) halfway between 1 and 2 → 1.5.
        assert!(max_abs_diff(&out, &[1.0, 4.0, 2.5, 0.5, 0.0, 1.5]) < 1e-6, "{out:?}");
    }

    #[test]
    fn ring_bias_matches_spec() {
        let bias = ring_offsets_bias(8, 1, 2);
        // head 0: θ=0 → (1, 0); point 1 doubles it.
        assert_eq!(&bias[0..4], &[1.0, 0.0, 2.0, 0.0]);
        // head 1: θ=π/4 → (1, 1) after max-abs normalisation.
        assert!((bias[4] - 1.0).abs() < 1e-6 && (bias[5] - 1.0).abs() < 1e-6);
        // head 2: θ=π/2 → (0, 1).
        assert!(bias[8].abs() < 1e-6 && (bias[9] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn module_forward_shape_and_initial_uniform_weights() {
        let device = Default::default();
        TestBackend::seed(&device, 1);
        let attn = MSDeformAttnConfig::new()
            .with_d_model(16)
            .with_n_heads(2)
            .with_n_levels(2)
            .with_n_points(2)
            .init::<TestBackend>(&device);
        let shapes = [[2usize, 2usize], [1, 1]];
        let src = Tensor::<TestBackend, 3>::random([1, 5, 16], Distribution::Normal(0.0, 1.0), &device);
        let grid = ReferenceGrid::new(&[[0.5, 0.5]; 5], 1, &shapes, 2, 2, &device);
        for form in [SamplingForm::GridSample, SamplingForm::Gather] {
            let out = attn.forward_with(src.clone(), &grid, src.clone(), form);
            assert_eq!(out.dims(), [1, 5, 16]);
            assert!(out.into_data().to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()));
        }
    }
}
