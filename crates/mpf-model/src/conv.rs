//! Convolutions and group norm in the forms that train fastest on the CPU backend, same numbers as
//! Burn's modules up to rounding (tests below).
//!
//! Measured on flex (Burn 0.21's CPU backend, 2 cores): its `conv2d` forward is good, but the
//! backward it gets from autodiff is slow for small convolutions — the weight gradient runs as a
//! convolution whose kernel is the whole output map. So:
//!
//! - a 1×1 convolution is a matrix product `W · X` on every backend (forward as fast, backward
//!   several times faster: tiny pixel decoder `mask_features` 2.8 → 0.2 ms);
//! - on the CPU backends under autodiff, a k×k convolution with few input taps (`C_in·k² < 256`)
//!   or a small output map (`H'·W' ≤ 576`) is an explicit `im2col` gather plus a matrix product,
//!   whose backward is two matrix products and one scatter-add (tiny ResNet stem forward +
//!   backward 7.8 → 2.3 ms, a 3×3 8-channel block conv 2.0 → 0.8 ms; ResNet-50's res5 3×3 at
//!   24×24 32 → 23 ms); larger convolutions keep `conv2d` (im2col is no faster there and holds
//!   `C_in·k²·H'·W'` values per image for the backward). Without autodiff only the RGB stem
//!   (`C_in ≤ 4`) takes im2col (tiny stem forward 3.1 → 1.6 ms). GPU backends always use their
//!   kernels.
//! - [`group_norm`] folds the affine transform into one per-(image, channel) scale and shift, two
//!   full-size operations instead of Burn's broadcasts over `[1, C, 1, 1]`.

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::PaddedConvOptions;

/// Taps (`C_in·k_h·k_w`) below which a k×k convolution is an im2col product on the CPU under
/// autodiff.
const IM2COL_MAX_TAPS: usize = 256;
/// Output pixels (`H'·W'`) up to which a k×k convolution is an im2col product on the CPU under
/// autodiff, whatever its taps.
const IM2COL_MAX_PIXELS: usize = 576;
/// Input channels up to which a k×k convolution is an im2col product on the CPU even without
/// autodiff (the RGB stem: flex's few-channel path is slower).
const IM2COL_MAX_INPUT_CHANNELS: usize = 4;

/// Geometry of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Stride `[y, x]`.
    pub stride: [usize; 2],
    /// Padding before `[top, left]`.
    pub pad_start: [usize; 2],
    /// Padding after `[bottom, right]`.
    pub pad_end: [usize; 2],
    /// Dilation `[y, x]`.
    pub dilation: [usize; 2],
    /// Groups.
    pub groups: usize,
}

impl ConvGeometry {
    /// The geometry of a Burn `Conv2d` on an input of `[h, w]` (`Same` padding resolved as Burn
    /// does: the extra pixel goes after).
    pub fn of<B: Backend>(conv: &Conv2d<B>, [h, w]: [usize; 2]) -> Self {
        let [kh, kw] = conv.kernel_size;
        let same = |size: usize, k: usize, s: usize, d: usize| {
            let out = size.div_ceil(s);
            let total = ((out - 1) * s + d * (k - 1) + 1).saturating_sub(size);
            (total / 2, total - total / 2)
        };
        let (pad_start, pad_end) = match conv.padding {
            PaddingConfig2d::Valid => ([0, 0], [0, 0]),
            PaddingConfig2d::Explicit(top, left, bottom, right) => ([top, left], [bottom, right]),
            PaddingConfig2d::Same => {
                let (t, b) = same(h, kh, conv.stride[0], conv.dilation[0]);
                let (l, r) = same(w, kw, conv.stride[1], conv.dilation[1]);
                ([t, l], [b, r])
            }
        };
        Self { stride: conv.stride, pad_start, pad_end, dilation: conv.dilation, groups: conv.groups }
    }

    /// Output `[h', w']` for an input `[h, w]` and kernel `[k_h, k_w]`.
    pub fn output(&self, [h, w]: [usize; 2], [kh, kw]: [usize; 2]) -> [usize; 2] {
        let out = |size: usize, k: usize, i: usize| {
            (size + self.pad_start[i] + self.pad_end[i] - self.dilation[i] * (k - 1) - 1) / self.stride[i] + 1
        };
        [out(h, kh, 0), out(w, kw, 1)]
    }
}

/// Whether the CPU-tuned forms apply: the flex or ndarray backend (through autodiff or not).
fn cpu_backend<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device);
    name.contains("flex") || name.contains("ndarray")
}

/// `conv(x)` for a Burn `Conv2d`, in the fastest form (see the module docs).
///
/// # Shapes
/// - `x`: `[B, C_in, H, W]` → `[B, C_out, H', W']`
pub fn conv_forward<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let geometry = ConvGeometry::of(conv, [h, w]);
    conv2d_with(x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()), geometry)
}

/// A 2-D convolution in the fastest form (see the module docs); `weight` `[C_out, C_in/groups,
/// k_h, k_w]`.
///
/// # Shapes
/// - `x`: `[B, C_in, H, W]` → `[B, C_out, H', W']`
pub fn conv2d_with<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    g: ConvGeometry,
) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let [co, ci, kh, kw] = weight.dims();
    let [ho, wo] = g.output([h, w], [kh, kw]);
    let plain = g.groups == 1 && g.dilation == [1, 1] && ci == c;
    let pointwise = plain && [kh, kw] == [1, 1] && g.stride == [1, 1] && g.pad_start == [0, 0] && g.pad_end == [0, 0];
    let device = x.device();
    let small = c * kh * kw < IM2COL_MAX_TAPS || ho * wo <= IM2COL_MAX_PIXELS;
    let im2col = plain
        && !pointwise
        && cpu_backend::<B>(&device)
        && ((B::ad_enabled(&device) && small) || c <= IM2COL_MAX_INPUT_CHANNELS);
    let y = if pointwise {
        // [1, C_out, C_in] · [B, C_in, H·W]
        weight.reshape([1, co, c]).matmul(x.reshape([b, c, h * w]))
    } else if im2col {
        // Column (c, ky, kx, y', x') reads input pixel (y'·s + ky − pad, x'·s + kx − pad) of channel
        // c; outside the image it reads an appended zero.
        let zero = (h * w) as i64;
        let mut idx = Vec::with_capacity(kh * kw * ho * wo);
        for ky in 0..kh {
            for kx in 0..kw {
                for oy in 0..ho {
                    let iy = (oy * g.stride[0] + ky) as isize - g.pad_start[0] as isize;
                    for ox in 0..wo {
                        let ix = (ox * g.stride[1] + kx) as isize - g.pad_start[1] as isize;
                        let inside = iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                        idx.push(if inside { (iy as usize * w + ix as usize) as i64 } else { zero });
                    }
                }
            }
        }
        let n = idx.len();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n]), &device);
        let padded = Tensor::cat(vec![x.reshape([b * c, h * w]), Tensor::zeros([b * c, 1], &device)], 1);
        let cols = padded.select(1, idx).reshape([b, c * kh * kw, ho * wo]);
        weight.reshape([1, co, c * kh * kw]).matmul(cols)
    } else {
        let options = PaddedConvOptions::asymmetric(g.stride, g.pad_start, g.pad_end, g.dilation, g.groups);
        return conv2d(x, weight, bias, options);
    };
    let y = match bias {
        // As a per-row scalar of [B·C_out, H'·W'] (a broadcast over [1, C_out, 1] would take the
        // backend's slow strided path).
        Some(bias) => {
            let bias = bias.reshape([1, co]).expand([b, co]).reshape([b * co, 1]);
            y.reshape([b * co, ho * wo]) + bias
        }
        None => y.reshape([b * co, ho * wo]),
    };
    y.reshape([b, co, ho, wo])
}

/// Group norm with the module's parameters: statistics per (image, group), then the affine
/// transform folded into one scale and shift per (image, channel).
///
/// # Shapes
/// - `x`: `[B, C, H, W]` → same
pub fn group_norm<B: Backend>(norm: &GroupNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let g = norm.num_groups;
    let n = c / g * h * w;
    let x = x.reshape([b * g, n]);
    let centred = x.clone() - x.mean_dim(1);
    let var = centred.clone().powi_scalar(2).mean_dim(1); // [B·G, 1]
    let inv_std = var.add_scalar(norm.epsilon).sqrt().recip().reshape([b, g, 1]).expand([b, g, c / g]);
    let inv_std = inv_std.reshape([b, c]);
    let (scale, shift) = match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) if norm.affine => {
            (inv_std * gamma.val().reshape([1, c]), Some(beta.val().reshape([1, c]).expand([b, c])))
        }
        _ => (inv_std, None),
    };
    let y = centred.reshape([b * c, h * w]) * scale.reshape([b * c, 1]);
    let y = match shift {
        Some(shift) => y + shift.reshape([b * c, 1]),
        None => y,
    };
    y.reshape([b, c, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{TestBackend, max_abs_diff};
    use burn::backend::Autodiff;
    use burn::module::Param;
    use burn::nn::GroupNormConfig;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    type AD = Autodiff<TestBackend>;

    /// Output and input / weight / bias gradients of our form and of Burn's `Conv2d::forward`.
    fn parity(cfg: Conv2dConfig, input: [usize; 4]) {
        let device = Default::default();
        AD::seed(&device, 9);
        let conv = cfg.init::<AD>(&device);
        let x0 = Tensor::<AD, 4>::random(input, Distribution::Normal(0.0, 1.0), &device);
        let run = |ours: bool| {
            let x = x0.clone().detach().require_grad();
            let y = if ours { conv_forward(&conv, x.clone()) } else { conv.forward(x.clone()) };
            let up = Tensor::<AD, 4>::ones(y.dims(), &device) * y.clone().detach();
            let grads = (y.clone() * up).sum().backward();
            let mut out = vec![y.into_data().to_vec::<f32>().unwrap()];
            out.push(x.grad(&grads).unwrap().into_data().to_vec().unwrap());
            out.push(conv.weight.grad(&grads).unwrap().into_data().to_vec().unwrap());
            if let Some(b) = &conv.bias {
                out.push(b.grad(&grads).unwrap().into_data().to_vec().unwrap());
            }
            out
        };
        for (a, r) in run(true).iter().zip(&run(false)) {
            let scale = r.iter().fold(1f32, |m, v| m.max(v.abs()));
            assert!(max_abs_diff(a, r) / scale < 1e-5, "{cfg:?}: {}", max_abs_diff(a, r));
        }
    }

    #[test]
    fn pointwise_and_im2col_match_burn_conv_with_gradients() {
        // 1×1 with bias (matrix product), 7×7 stride 2 (im2col: few taps), 3×3 on a small map
        // (im2col), 3×3 with many taps on a larger map (Burn's conv2d), asymmetric and `Same`
        // padding.
        parity(Conv2dConfig::new([5, 4], [1, 1]), [2, 5, 6, 7]);
        parity(
            Conv2dConfig::new([3, 4], [7, 7]).with_stride([2, 2]).with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3)),
            [2, 3, 17, 14],
        );
        parity(Conv2dConfig::new([6, 5], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 0, 2, 1)), [1, 6, 9, 8]);
        parity(Conv2dConfig::new([32, 8], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)), [1, 32, 30, 30]);
        parity(
            Conv2dConfig::new([4, 4], [3, 3]).with_stride([2, 2]).with_padding(PaddingConfig2d::Same),
            [2, 4, 9, 10],
        );
    }

    #[test]
    fn rgb_stem_im2col_without_autodiff_matches_burn_conv() {
        let device = Default::default();
        TestBackend::seed(&device, 2);
        let conv = Conv2dConfig::new([3, 8], [7, 7])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
            .init::<TestBackend>(&device);
        let x = Tensor::<TestBackend, 4>::random([2, 3, 20, 18], Distribution::Normal(0.0, 1.0), &device);
        let a = conv_forward(&conv, x.clone()).into_data().to_vec::<f32>().unwrap();
        let b = conv.forward(x).into_data().to_vec::<f32>().unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-5);
    }

    #[test]
    fn group_norm_matches_burn() {
        let device = Default::default();
        AD::seed(&device, 3);
        let mut gn = GroupNormConfig::new(2, 6).init::<AD>(&device);
        let random = |d: &_| Param::from_tensor(Tensor::random([6], Distribution::Uniform(0.5, 1.5), d));
        gn.gamma = Some(random(&device));
        gn.beta = Some(random(&device));
        let x = Tensor::<AD, 4>::random([3, 6, 4, 5], Distribution::Normal(2.0, 3.0), &device).require_grad();
        let up = Tensor::<AD, 4>::random([3, 6, 4, 5], Distribution::Default, &device);
        let ours = group_norm(&gn, x.clone());
        let g1 = (ours.clone() * up.clone()).sum().backward();
        let theirs = gn.forward(x.clone());
        let g2 = (theirs.clone() * up).sum().backward();
        let v = |t: Tensor<TestBackend, 4>| t.into_data().to_vec::<f32>().unwrap();
        assert!(max_abs_diff(&ours.into_data().to_vec().unwrap(), &theirs.into_data().to_vec().unwrap()) < 1e-5);
        assert!(max_abs_diff(&v(x.grad(&g1).unwrap()), &v(x.grad(&g2).unwrap())) < 1e-4);
        let gamma = gn.gamma.as_ref().unwrap();
        let gv = |g| gamma.grad(g).unwrap().into_data().to_vec::<f32>().unwrap();
        assert!(max_abs_diff(&gv(&g1), &gv(&g2)) < 1e-4);
    }
}
