//! Resizing conventions shared by the decoder, pixel decoder and post-processing.
//!
//! Everything here is PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` without
//! antialiasing (spec §4): output pixel `i` samples input coordinate `(i + 0.5)·in/out − 0.5`,
//! clamped at the borders. Burn's `InterpolateOptions::new` defaults to `align_corners = true`, so
//! all resizing in mpf goes through [`bilinear`].

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
