//! Noise on the MP part's inputs (spec §3.2, §3.4): point noise on GT attention masks and label
//! noise on MP query classes. Each takes the random generator of its own named stream.

use rand::Rng;

use crate::masks::BinaryMask;

/// Point noise: every cell of the map flips independently with probability
/// `ratio · area / (h·w)`, so the expected number of flipped cells is `ratio · area`, spread over
/// the whole map (inside and outside the mask). Returns the noised mask and the number of flips.
///
/// With `k` flips on a mask of area `A`, `1 − k/A ≤ IoU ≤ A/(A + k)`; at `ratio = 0.1` on a small
/// object in a large map the IoU concentrates near `1/1.1 ≈ 0.909` (appendix eq. 4: `[0.9, 0.91]`).
pub fn point_noise(mask: &BinaryMask, ratio: f64, rng: &mut impl Rng) -> (BinaryMask, usize) {
    let n = mask.data.len();
    if n == 0 || ratio <= 0.0 {
        return (mask.clone(), 0);
    }
    let p = (ratio * mask.area() as f64 / n as f64).clamp(0.0, 1.0);
    let mut flips = 0;
    let data = mask
        .data
        .iter()
        .map(|&v| {
            let flip = rng.random::<f64>() < p;
            flips += flip as usize;
            v ^ flip
        })
        .collect();
    (BinaryMask { height: mask.height, width: mask.width, data }, flips)
}

/// Label noise: with probability `ratio`, a class drawn uniformly from `0..num_classes` (which may
/// be the true one, so the effective flip rate is `ratio · (K−1)/K`); otherwise `label`.
pub fn label_noise(label: usize, num_classes: usize, ratio: f64, rng: &mut impl Rng) -> usize {
    if ratio > 0.0 && num_classes > 0 && rng.random::<f64>() < ratio { rng.random_range(0..num_classes) } else { label }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn square(n: usize, side: usize) -> BinaryMask {
        let mut data = vec![false; n * n];
        for y in 0..side {
            for x in 0..side {
                data[y * n + x] = true;
            }
        }
        BinaryMask { height: n, width: n, data }
    }

    #[test]
    fn iou_stays_within_the_appendix_bounds_for_every_draw() {
        let mut rng = StdRng::seed_from_u64(1);
        let m = square(64, 20);
        let a = m.area() as f64;
        for _ in 0..200 {
            let (noised, k) = point_noise(&m, 0.2, &mut rng);
            let iou = m.iou(&noised);
            let k = k as f64;
            assert!(1.0 - k / a - 1e-12 <= iou && iou <= a / (a + k) + 1e-12, "IoU {iou} with {k} flips");
        }
    }

    #[test]
    fn mean_iou_and_flips_at_ratio_point_one() {
        // A 20×20 object in a 128×128 map: IoU ≈ (1 − rA/N)/(1 + r(1 − A/N)) ≈ 0.9087.
        let mut rng = StdRng::seed_from_u64(2);
        let m = square(128, 20);
        let draws = 2000;
        let (mut iou_sum, mut flip_sum) = (0.0, 0.0);
        for _ in 0..draws {
            let (noised, k) = point_noise(&m, 0.1, &mut rng);
            iou_sum += m.iou(&noised);
            flip_sum += k as f64;
        }
        let (mean_iou, mean_flips) = (iou_sum / draws as f64, flip_sum / draws as f64);
        assert!((0.9..=0.91).contains(&mean_iou), "{mean_iou}");
        // E[flips] = r·A = 40, sd of the mean ≈ √40/√2000 ≈ 0.14.
        assert!((mean_flips - 40.0).abs() < 1.0, "{mean_flips}");
    }

    #[test]
    fn zero_ratio_is_the_identity_and_noise_is_fresh_per_call() {
        let mut rng = StdRng::seed_from_u64(3);
        let m = square(32, 10);
        assert_eq!(point_noise(&m, 0.0, &mut rng), (m.clone(), 0));
        let (a, _) = point_noise(&m, 0.5, &mut rng);
        let (b, _) = point_noise(&m, 0.5, &mut rng);
        assert_ne!(a, b, "two layers / groups draw different noise");
        // The same stream seed reproduces the same noise.
        let (c, _) = point_noise(&m, 0.5, &mut StdRng::seed_from_u64(9));
        let (d, _) = point_noise(&m, 0.5, &mut StdRng::seed_from_u64(9));
        assert_eq!(c, d);
    }

    #[test]
    fn label_noise_rate() {
        let mut rng = StdRng::seed_from_u64(4);
        let k = 5;
        let n = 20000;
        let changed = (0..n).filter(|_| label_noise(2, k, 0.2, &mut rng) != 2).count() as f64 / n as f64;
        // 0.2 · (K−1)/K = 0.16, sd ≈ 0.0026.
        assert!((changed - 0.16).abs() < 0.01, "{changed}");
        assert_eq!(label_noise(3, k, 0.0, &mut rng), 3);
    }
}
