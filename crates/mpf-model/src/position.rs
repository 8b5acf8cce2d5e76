//! Normalised sine position encoding (DETR's `PositionEmbeddingSine(normalize=True, scale=2π)`), used by the pixel decoder's encoder and the transformer decoder's memory.

use burn::prelude::*;

/// Numerical epsilon added to the last cumulative coordinate before normalising.
const EPS: f64 = 1e-6;
/// Temperature of the frequency ladder.
const TEMPERATURE: f64 = 10000.0;

/// The encoding of an `h × w` map with `channels` channels (`channels/2` for y, then `channels/2`
/// for x), computed on the host in f64 and returned as f32 in `[c][y][x]` order.
///
/// For channel `k < n = channels/2` of the y half: `v = y_k / 10000^(2⌊k/2⌋/n)` with
/// `y_k = (i+1) / (h + 1e-6) · 2π` for row `i`; even `k` take `sin v`, odd `k` take `cos v`.
/// The x half is the same with columns.
pub fn sine_encoding_values(channels: usize, h: usize, w: usize) -> Vec<f32> {
    assert!(channels.is_multiple_of(2), "sine position encoding needs an even channel count, got {channels}");
    let n = channels / 2;
    let scale = 2.0 * std::f64::consts::PI;
    let mut out = vec![0f32; channels * h * w];
    for k in 0..n {
        let dim_t = TEMPERATURE.powf((2 * (k / 2)) as f64 / n as f64);
        let f = |v: f64| if k % 2 == 0 { v.sin() } else { v.cos() };
        for i in 0..h {
            let y = (i + 1) as f64 / (h as f64 + EPS) * scale / dim_t;
            for j in 0..w {
                let x = (j + 1) as f64 / (w as f64 + EPS) * scale / dim_t;
                out[(k * h + i) * w + j] = f(y) as f32;
                out[((n + k) * h + i) * w + j] = f(x) as f32;
            }
        }
    }
    out
}

/// The sine position encoding as a tensor, identical for every image of the batch (mpf batches
/// carry no padding mask: images are zero-padded and attend over the padded area, as in the
/// reference, whose padding masks are all false).
///
/// # Shapes
/// - output: `[batch, channels, h, w]`
pub fn sine_encoding<B: Backend>(
    batch: usize,
    channels: usize,
    h: usize,
    w: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let values = sine_encoding_values(channels, h, w);
    Tensor::<B, 1>::from_data(TensorData::new(values, [channels * h * w]), device)
        .reshape([1, channels, h, w])
        .expand([batch, channels, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TestBackend;

    #[test]
    fn values_by_hand() {
        // channels 4 → n = 2, dim_t = [1, 1]; h = 2, w = 1.
        let v = sine_encoding_values(4, 2, 1);
        let two_pi = 2.0 * std::f64::consts::PI;
        let y0 = 1.0 / (2.0 + 1e-6) * two_pi;
        let y1 = 2.0 / (2.0 + 1e-6) * two_pi;
        let x0 = 1.0 / (1.0 + 1e-6) * two_pi;
        let expected = [
            y0.sin(),
            y1.sin(), // channel 0: sin y
            y0.cos(),
            y1.cos(), // channel 1: cos y
            x0.sin(),
            x0.sin(), // channel 2: sin x
            x0.cos(),
            x0.cos(), // channel 3: cos x
        ];
        for (a, e) in v.iter().zip(expected) {
            assert!((*a as f64 - e).abs() < 1e-6, "{v:?}");
        }
    }

    #[test]
    fn frequency_ladder_uses_floor_k_over_two() {
        // channels 256 (n = 128): channel 2 and 3 share dim_t = 10000^(2/128).
        let (h, w) = (3, 5);
        let v = sine_encoding_values(256, h, w);
        let dim_t = 10000f64.powf(2.0 / 128.0);
        let y = 3.0 / (3.0 + 1e-6) * 2.0 * std::f64::consts::PI / dim_t; // row 2
        assert!((v[(2 * h + 2) * w] as f64 - y.sin()).abs() < 1e-6);
        assert!((v[(3 * h + 2) * w] as f64 - y.cos()).abs() < 1e-6);
        // The x half of channel 128 + 2 at column 4.
        let x = 5.0 / (5.0 + 1e-6) * 2.0 * std::f64::consts::PI / dim_t;
        assert!((v[((128 + 2) * h) * w + 4] as f64 - x.sin()).abs() < 1e-6);
    }

    #[test]
    fn tensor_shape_and_batch_broadcast() {
        let device = Default::default();
        let t = sine_encoding::<TestBackend>(2, 8, 3, 4, &device);
        assert_eq!(t.dims(), [2, 8, 3, 4]);
        let d = t.into_data().to_vec::<f32>().unwrap();
        assert_eq!(&d[..96], &d[96..]);
    }
}
