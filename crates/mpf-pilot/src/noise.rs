//! Noise on the MP part's inputs: point, shift and scale noise on GT
//! attention masks ([`MaskNoise`]) and label noise on MP query classes. Each takes the random
//! generator of its own named stream.
//!
//! Shift and scale follow the official code's `shift`/`scale` modes with one deliberate
//! difference: the official shift scales both offsets by the map *width* and swaps the
//! row/column axes; here x moves with the box width and y with the box height.

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

/// Bounding box of the foreground as `(y0, x0, y1, x1)` with exclusive ends, or `None` if empty.
pub fn bbox(mask: &BinaryMask) -> Option<(usize, usize, usize, usize)> {
    let mut b: Option<(usize, usize, usize, usize)> = None;
    for y in 0..mask.height {
        for x in 0..mask.width {
            if mask.data[y * mask.width + x] {
                b = Some(match b {
                    None => (y, x, y + 1, x + 1),
                    Some((y0, x0, y1, x1)) => (y0.min(y), x0.min(x), y1.max(y + 1), x1.max(x + 1)),
                });
            }
        }
    }
    b
}

/// Moves the foreground by `dy` rows and `dx` columns; positions are clamped to the map, as in
/// the reference's shift noise.
pub fn translate(mask: &BinaryMask, dy: i64, dx: i64) -> BinaryMask {
    let (h, w) = (mask.height as i64, mask.width as i64);
    let mut data = vec![false; mask.data.len()];
    for y in 0..h {
        for x in 0..w {
            if mask.data[(y * w + x) as usize] {
                let (ny, nx) = ((y + dy).clamp(0, h - 1), (x + dx).clamp(0, w - 1));
                data[(ny * w + nx) as usize] = true;
            }
        }
    }
    BinaryMask { height: mask.height, width: mask.width, data }
}

/// Shift noise: the foreground moves by
/// `U(−1, 1) · λ · box_w / 2` columns and `U(−1, 1) · λ · box_h / 2` rows — x with the box width,
/// y with the box height (the reference scales both by the map width and mixes the axes up).
pub fn shift_noise(mask: &BinaryMask, lambda: f64, rng: &mut impl Rng) -> BinaryMask {
    let Some((y0, x0, y1, x1)) = bbox(mask) else { return mask.clone() };
    let dx = (rng.random_range(-1.0..=1.0) * lambda * (x1 - x0) as f64 / 2.0).round() as i64;
    let dy = (rng.random_range(-1.0..=1.0) * lambda * (y1 - y0) as f64 / 2.0).round() as i64;
    translate(mask, dy, dx)
}

/// Scales the foreground by `factor` about its box centre (nearest sampling at cell centres).
pub fn scale_about_box_centre(mask: &BinaryMask, factor: f64) -> BinaryMask {
    let Some((y0, x0, y1, x1)) = bbox(mask) else { return mask.clone() };
    let (cy, cx) = ((y0 + y1) as f64 / 2.0, (x0 + x1) as f64 / 2.0);
    let (h, w) = (mask.height, mask.width);
    let mut data = vec![false; h * w];
    for y in 0..h {
        let sy = (cy + (y as f64 + 0.5 - cy) / factor).floor();
        if sy < 0.0 || sy >= h as f64 {
            continue;
        }
        for x in 0..w {
            let sx = (cx + (x as f64 + 0.5 - cx) / factor).floor();
            if sx >= 0.0 && sx < w as f64 {
                data[y * w + x] = mask.data[sy as usize * w + sx as usize];
            }
        }
    }
    BinaryMask { height: h, width: w, data }
}

/// Scale noise: with probability `keep_prob` (the reference's `DN_RATIO`, 0.5) the
/// mask is unchanged, otherwise enlarged by `1 + λ` about its box centre.
pub fn scale_noise(mask: &BinaryMask, lambda: f64, keep_prob: f64, rng: &mut impl Rng) -> BinaryMask {
    if rng.random::<f64>() < keep_prob { mask.clone() } else { scale_about_box_centre(mask, 1.0 + lambda) }
}

/// Corruption of the MP part's GT attention masks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaskNoise {
    /// Clean GT (the released recipe: point ratio 0).
    None,
    /// [`point_noise`] with this ratio, drawn fresh for every layer, group (and head).
    Points {
        /// Ratio `r`.
        ratio: f64,
    },
    /// [`shift_noise`] by `λ`, drawn once per batch at 1/8 and pooled to the coarser levels.
    Shift {
        /// Magnitude `λ`.
        lambda: f64,
    },
    /// [`scale_noise`] by `1 + λ`, drawn once per batch at 1/8.
    Scale {
        /// Magnitude `λ`.
        lambda: f64,
        /// Probability of no scaling.
        keep_prob: f64,
    },
    /// Scale noise, then shift noise, once per batch at 1/8.
    ShiftScale {
        /// Magnitude `λ` of both.
        lambda: f64,
        /// Probability of no scaling.
        keep_prob: f64,
    },
}

impl MaskNoise {
    /// Whether the noise is drawn once per batch on the 1/8 mask (shift, scale) rather than per
    /// layer on each level's mask (points).
    pub fn once_per_batch(&self) -> bool {
        matches!(self, Self::Shift { .. } | Self::Scale { .. } | Self::ShiftScale { .. })
    }

    /// The once-per-batch corruption of a 1/8 mask (identity for `None` and `Points`).
    pub fn apply_per_batch(&self, mask: &BinaryMask, rng: &mut impl Rng) -> BinaryMask {
        match *self {
            Self::Shift { lambda } => shift_noise(mask, lambda, rng),
            Self::Scale { lambda, keep_prob } => scale_noise(mask, lambda, keep_prob, rng),
            Self::ShiftScale { lambda, keep_prob } => {
                shift_noise(&scale_noise(mask, lambda, keep_prob, rng), lambda, rng)
            }
            Self::None | Self::Points { .. } => mask.clone(),
        }
    }

    /// The per-layer corruption of a level's mask (identity for all but `Points`).
    pub fn apply_per_layer(&self, mask: &BinaryMask, rng: &mut impl Rng) -> BinaryMask {
        match *self {
            Self::Points { ratio } => point_noise(mask, ratio, rng).0,
            _ => mask.clone(),
        }
    }
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

    fn boxed(n: usize, y0: usize, x0: usize, y1: usize, x1: usize) -> BinaryMask {
        let data = (0..n * n).map(|i| (y0..y1).contains(&(i / n)) && (x0..x1).contains(&(i % n))).collect();
        BinaryMask { height: n, width: n, data }
    }

    #[test]
    fn box_shift_along_one_axis_gives_the_appendix_iou() {
        // A 20-wide box moved by λ·w along x: IoU = (1 − λ)/(1 + λ) (appendix A.2).
        let m = boxed(64, 10, 10, 30, 30);
        for (lambda, dx) in [(0.25, 5), (0.5, 10), (0.1, 2)] {
            let iou = m.iou(&translate(&m, 0, dx));
            assert!((iou - (1.0 - lambda) / (1.0 + lambda)).abs() < 1e-12, "λ {lambda}: {iou}");
        }
        // Along y the same, scaled by the box height.
        let m = boxed(64, 10, 10, 50, 20);
        assert!((m.iou(&translate(&m, 10, 0)) - 0.6).abs() < 1e-12);
    }

    #[test]
    fn shift_noise_respects_axes_and_magnitude() {
        // A wide, flat box: x moves up to λ·w/2 = 10, y up to λ·h/2 = 1.
        let m = boxed(128, 60, 20, 64, 100);
        let mut rng = StdRng::seed_from_u64(6);
        for _ in 0..100 {
            let (y0, x0, _, _) = bbox(&shift_noise(&m, 0.25, &mut rng)).unwrap();
            assert!((y0 as i64 - 60).abs() <= 1 && (x0 as i64 - 20).abs() <= 10, "{y0} {x0}");
        }
    }

    #[test]
    fn scale_enlarges_about_the_box_centre() {
        let m = boxed(40, 10, 10, 20, 20);
        let s = scale_about_box_centre(&m, 2.0);
        assert_eq!(bbox(&s), Some((5, 5, 25, 25)));
        assert_eq!(s.area(), 400);
        let mut rng = StdRng::seed_from_u64(7);
        let kept = (0..1000).filter(|_| scale_noise(&m, 1.0, 0.5, &mut rng) == m).count();
        assert!((400..600).contains(&kept), "{kept}");
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
