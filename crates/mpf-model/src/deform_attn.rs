//! Multi-scale deformable attention (Deformable DETR's `MSDeformAttn`, spec §2.3): bilinear
//! sampling with zero padding and `align_corners = false`. Two equivalent forms of the sampling
//! core: [`ms_deform_attn_core`] (one `grid_sample_2d` per level, the backend's kernel, used
//! without gradient) and [`ms_deform_attn_gather`] (one row gather with bilinear weights, used
//! under autodiff, where `grid_sample` would be decomposed into dozens of recorded operations).

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
/// Initialisation (spec §2.3): sampling-offset weights 0 with a "ring" bias (head `h` points along
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

impl<B: Backend> MSDeformAttn<B> {
    /// Attends from each query to `L·P` bilinearly sampled points per head around its reference
    /// point. The sampling location for level `l` is `reference + offset / (w_l, h_l)`.
    ///
    /// # Shapes
    /// - `query`: `[B, Lq, d]` (content + position)
    /// - `reference_points`: `[B, Lq, L, 2]`, `(x, y)` in `[0, 1]`
    /// - `input_flatten`: `[B, S, d]` with `S = Σ h_l·w_l`, levels concatenated in `spatial_shapes` order
    /// - `spatial_shapes`: `L` entries `[h_l, w_l]`
    /// - output: `[B, Lq, d]`
    pub fn forward(
        &self,
        query: Tensor<B, 3>,
        reference_points: Tensor<B, 4>,
        input_flatten: Tensor<B, 3>,
        spatial_shapes: &[[usize; 2]],
    ) -> Tensor<B, 3> {
        let [b, lq, d] = query.dims();
        let s = input_flatten.dims()[1];
        let (m, l, p) = (self.n_heads, self.n_levels, self.n_points);
        assert_eq!(spatial_shapes.len(), l, "expected {l} levels");
        assert_eq!(spatial_shapes.iter().map(|[h, w]| h * w).sum::<usize>(), s, "S ≠ Σ h·w");
        let device = query.device();

        let value = self.value_proj.forward(input_flatten).reshape([b, s, m, d / m]);
        let offsets = self.sampling_offsets.forward(query.clone()).reshape([b, lq, m, l, p, 2]);
        let weights = self.attention_weights.forward(query).reshape([b, lq, m, l * p]);
        let weights = softmax(weights, 3).reshape([b, lq, m, l, p]);

        let normalizer: Vec<f32> = spatial_shapes.iter().flat_map(|[h, w]| [*w as f32, *h as f32]).collect();
        let normalizer =
            Tensor::<B, 1>::from_data(TensorData::new(normalizer, [l * 2]), &device).reshape([1, 1, 1, l, 1, 2]);
        let locations = reference_points.reshape([b, lq, 1, l, 1, 2]) + offsets / normalizer;
        // Burn's autodiff backend has no `grid_sample` of its own: it decomposes it into dozens of
        // recorded operations, where the gather form records a handful. Without autodiff the
        // backend's `grid_sample` kernel runs.
        let out = if B::ad_enabled(&device) {
            ms_deform_attn_gather(value, spatial_shapes, locations, weights)
        } else {
            ms_deform_attn_core(value, spatial_shapes, locations, weights)
        };
        self.output_proj.forward(out)
    }
}

/// [`ms_deform_attn_core`] as one row gather: each sample's four bilinear corners are rows of the
/// value tensor laid out `[B·M·S, D]`, weighted by bilinear weight × attention weight (0 for
/// corners outside their level: zero padding) and summed per query and head. Differentiable in
/// `value`, `locations` and `weights` with a handful of autodiff operations (the backward of the
/// gather is one `select_add`); the same numbers as the `grid_sample` form up to rounding.
///
/// # Shapes
/// - `value`: `[B, S, M, D]`
/// - `locations`: `[B, Lq, M, L, P, 2]`, `(x, y)` in `[0, 1]` (outside samples zeros)
/// - `weights`: `[B, Lq, M, L, P]`
/// - output: `[B, Lq, M·D]`
pub fn ms_deform_attn_gather<B: Backend>(
    value: Tensor<B, 4>,
    spatial_shapes: &[[usize; 2]],
    locations: Tensor<B, 6>,
    weights: Tensor<B, 5>,
) -> Tensor<B, 3> {
    let [b, s, m, dh] = value.dims();
    let [_, lq, _, l, p, _] = locations.dims();
    let device = value.device();
    let rows = value.swap_dims(1, 2).reshape([b * m * s, dh]);
    // Pixel coordinates (half-pixel centres) of every sample at its level's size.
    let sizes: Vec<f32> = spatial_shapes.iter().flat_map(|&[h, w]| [w as f32, h as f32]).collect();
    let sizes = Tensor::<B, 1>::from_data(TensorData::new(sizes, [l * 2]), &device).reshape([1, 1, 1, l, 1, 2]);
    let pixel = locations * sizes.clone() - 0.5;
    let floor = pixel.clone().detach().floor();
    let frac = pixel - floor.clone(); // carries the gradient of the locations
    let (fx, fy) = (frac.clone().narrow(5, 0, 1), frac.narrow(5, 1, 1));
    // Corners (dy, dx) in the order (0,0), (0,1), (1,0), (1,1).
    let (gx, gy) = (fx.clone().neg() + 1.0, fy.clone().neg() + 1.0);
    let bilinear = Tensor::cat(vec![gx.clone() * gy.clone(), fx.clone() * gy, gx * fy.clone(), fx * fy], 5);
    // Validity and row index of each corner, without gradient.
    let dx = Tensor::<B, 1>::from_floats([0.0, 1.0, 0.0, 1.0], &device).reshape([1, 1, 1, 1, 1, 4]);
    let dy = Tensor::<B, 1>::from_floats([0.0, 0.0, 1.0, 1.0], &device).reshape([1, 1, 1, 1, 1, 4]);
    let xi = floor.clone().narrow(5, 0, 1) + dx;
    let yi = floor.narrow(5, 1, 1) + dy;
    let (w_l, h_l) = (sizes.clone().narrow(5, 0, 1), sizes.narrow(5, 1, 1));
    let inside = xi
        .clone()
        .greater_equal_elem(0.0)
        .bool_and(yi.clone().greater_equal_elem(0.0))
        .bool_and((xi.clone() - w_l.clone()).lower_elem(0.0))
        .bool_and((yi.clone() - h_l).lower_elem(0.0));
    // Row of (b, m, level start + y·w + x) in [B·M·S, D].
    let mut base = Vec::with_capacity(b * m * l);
    for bi in 0..b {
        for mi in 0..m {
            let mut start = 0;
            for &[h, w] in spatial_shapes {
                base.push(((bi * m + mi) * s + start) as f32);
                start += h * w;
            }
        }
    }
    assert!(b * m * s < 1 << 24, "deformable attention: {b}·{m}·{s} value rows exceed exact f32 indexing");
    let base = Tensor::<B, 1>::from_data(TensorData::new(base, [b * m * l]), &device).reshape([b, 1, m, l, 1, 1]);
    let index = (base + yi * w_l + xi).mask_fill(inside.clone().bool_not(), 0.0).int();
    let n = b * lq * m * l * p * 4;
    let corner_weights = bilinear * inside.float() * weights.reshape([b, lq, m, l, p, 1]);
    let sampled = rows.select(0, index.reshape([n])) * corner_weights.reshape([n, 1]);
    sampled.reshape([b * lq * m, l * p * 4, dh]).sum_dim(1).reshape([b, lq, m * dh])
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
        let refs = Tensor::<TestBackend, 4>::full([1, 5, 2, 2], 0.5, &device);
        let out = attn.forward(src.clone(), refs, src, &shapes);
        assert_eq!(out.dims(), [1, 5, 16]);
        assert!(out.into_data().to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()));
    }
}
