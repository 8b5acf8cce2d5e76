//! Resizing conventions shared by the decoder, pixel decoder and post-processing.
//!
//! Everything here is PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` without
//! antialiasing: output pixel `i` samples input coordinate `(i + 0.5)·in/out − 0.5`,
//! clamped at the borders. Burn's `InterpolateOptions::new` defaults to `align_corners = true`, so
//! all resizing in mpf goes through [`bilinear`] or [`bilinear_matmul`].
//!
//! Burn 0.21's GPU backends (wgpu, CUDA) have no backward pass for bilinear interpolation (it
//! panics), so a resize on the gradient path — the pixel decoder's FPN upsampling — uses
//! [`bilinear_matmul`]: the same resize written as `R_h · X · R_wᵀ` with fixed interpolation
//! matrices, whose backward is two matrix products on every backend.

use burn::prelude::*;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

/// Bilinear resize with half-pixel centres (`align_corners = false`).
///
/// # Shapes
/// - `x`: `[N, C, h, w]` → `[N, C, size[0], size[1]]`
pub fn bilinear<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    if [h, w] == size {
        return x;
    }
    interpolate(x, size, InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false))
}

/// The `[out, in]` matrix of a 1-D half-pixel bilinear resize (PyTorch `align_corners=False`:
/// source `max(0, (i + 0.5)·in/out − 0.5)`, neighbours clamped at the last pixel).
pub fn interpolation_matrix(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0f32; output * input];
    let scale = input as f64 / output as f64;
    for i in 0..output {
        let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let l1 = (src - i0 as f64) as f32;
        m[i * input + i0] += 1.0 - l1;
        m[i * input + i1] += l1;
    }
    m
}

/// [`bilinear`] as two matrix products, differentiable on every backend (see the module docs).
///
/// # Shapes
/// - `x`: `[N, C, h, w]` → `[N, C, size[0], size[1]]`
pub fn bilinear_matmul<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    if [h, w] == size {
        return x;
    }
    let device = x.device();
    let [oh, ow] = size;
    let rh = Tensor::<B, 2>::from_data(TensorData::new(interpolation_matrix(h, oh), [oh, h]), &device);
    let rwt = Tensor::<B, 2>::from_data(TensorData::new(interpolation_matrix(w, ow), [ow, w]), &device).transpose();
    let x = x.reshape([n * c * h, w]).matmul(rwt); // [N·C·h, W]
    let x = x.reshape([n * c, h, ow]);
    let y = rh.unsqueeze_dim::<3>(0).expand([n * c, oh, h]).matmul(x); // [N·C, H, W]
    y.reshape([n, c, oh, ow])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{TestBackend, max_abs_diff};

    #[test]
    fn bilinear_matches_half_pixel_convention() {
        let device = Default::default();
        // 1×4 row [0, 1, 2, 3] upsampled to 8: PyTorch gives src = (i+0.5)/2 - 0.5 clamped to [0,3].
        let x = Tensor::<TestBackend, 4>::from_floats([[[[0.0, 1.0, 2.0, 3.0]]]], &device);
        let y = bilinear(x, [1, 8]).into_data().to_vec::<f32>().unwrap();
        let expected = [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0];
        assert!(max_abs_diff(&y, &expected) < 1e-6, "{y:?}");
    }

    #[test]
    fn matmul_form_equals_interpolate_forward_and_backward() {
        use burn::backend::Autodiff;
        type AD = Autodiff<TestBackend>;
        let device = Default::default();
        for (h, w, oh, ow) in [(4, 6, 8, 12), (5, 7, 10, 3), (16, 16, 32, 32), (3, 9, 3, 9), (8, 8, 4, 4)] {
            let data: Vec<f32> = (0..2 * 3 * h * w).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
            let mk = || {
                Tensor::<AD, 1>::from_data(TensorData::new(data.clone(), [data.len()]), &device)
                    .reshape([2, 3, h, w])
                    .require_grad()
            };
            let (a, b) = (mk(), mk());
            let ya = bilinear(a.clone(), [oh, ow]);
            let yb = bilinear_matmul(b.clone(), [oh, ow]);
            let (fa, fb) =
                (ya.clone().into_data().to_vec::<f32>().unwrap(), yb.clone().into_data().to_vec::<f32>().unwrap());
            assert!(max_abs_diff(&fa, &fb) < 1e-5, "forward {h}×{w} → {oh}×{ow}");
            // A non-uniform upstream gradient.
            let wts = Tensor::<AD, 1>::from_data(
                TensorData::new(
                    (0..2 * 3 * oh * ow).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<f32>>(),
                    [2 * 3 * oh * ow],
                ),
                &device,
            )
            .reshape([2, 3, oh, ow]);
            let ga = (ya * wts.clone()).sum().backward();
            let gb = (yb * wts).sum().backward();
            let da: Vec<f32> = a.grad(&ga).unwrap().into_data().to_vec().unwrap();
            let db: Vec<f32> = b.grad(&gb).unwrap().into_data().to_vec().unwrap();
            assert!(max_abs_diff(&da, &db) < 1e-4, "backward {h}×{w} → {oh}×{ow}: {da:?} vs {db:?}");
        }
    }

    #[test]
    fn bilinear_downsample_by_two_averages_pairs() {
        let device = Default::default();
        // 4→2: src = (i+0.5)*2 - 0.5 = 0.5, 2.5 → mean of neighbours, no antialiasing.
        let x = Tensor::<TestBackend, 4>::from_floats([[[[0.0, 4.0, 8.0, 16.0]]]], &device);
        let y = bilinear(x, [1, 2]).into_data().to_vec::<f32>().unwrap();
        assert!(max_abs_diff(&y, &[2.0, 12.0]) < 1e-6, "{y:?}");
        // 8→2 (factor 4): src = 1.5, 5.5: pure point sampling between pixels 1,2 and 5,6.
        let x = Tensor::<TestBackend, 4>::from_floats([[[[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]]], &device);
        let y = bilinear(x, [1, 2]).into_data().to_vec::<f32>().unwrap();
        assert!(max_abs_diff(&y, &[1.5, 5.5]) < 1e-6, "{y:?}");
    }
}
