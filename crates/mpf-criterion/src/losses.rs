//! The three loss functions: weighted cross-entropy over classes, and sigmoid BCE and
//! dice on point-sampled masks, per row (what the criterion reduces per term) and reduced to an
//! unweighted scalar `[1]` as the reference computes them.

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, sigmoid};

/// Log-probability of each row's target class.
///
/// # Shapes
/// - `logits`: `[N, K + 1]`, `targets`: `N` class ids in `0..=K`
/// - output: `[N, 1]`
pub fn target_log_probs<B: Backend>(logits: Tensor<B, 2>, targets: &[usize]) -> Tensor<B, 2> {
    let device = logits.device();
    let n = logits.dims()[0];
    let idx = Tensor::<B, 2, Int>::from_data(
        TensorData::new(targets.iter().map(|&t| t as i64).collect::<Vec<_>>(), [n, 1]),
        &device,
    );
    log_softmax(logits, 1).gather(1, idx)
}

/// Weighted cross-entropy with PyTorch's weighted mean `Σ wᵢ·ceᵢ / Σ wᵢ`; class `K` (no object,
/// the last column) weighs `no_object_weight`, every real class 1.
///
/// # Shapes
/// - `logits`: `[N, K + 1]`, `targets`: `N` class ids in `0..=K`
/// - output: `[1]`
pub fn weighted_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: &[usize],
    no_object_weight: f64,
) -> Tensor<B, 1> {
    let device = logits.device();
    let [n, k1] = logits.dims();
    let weights: Vec<f32> = targets.iter().map(|&t| if t == k1 - 1 { no_object_weight as f32 } else { 1.0 }).collect();
    let total: f32 = weights.iter().sum();
    let w = Tensor::<B, 1>::from_data(TensorData::new(weights, [n]), &device).reshape([n, 1]);
    (target_log_probs(logits, targets) * w).sum().neg() / total.max(f32::MIN_POSITIVE) as f64
}

/// Sigmoid BCE with logits of each row, averaged over its points:
/// `max(x, 0) − x·t + log(1 + e^{−|x|})`, stable for any `x`.
///
/// # Shapes
/// - `logits`, `targets`: `[N, P]` (targets in `[0, 1]`, soft at boundaries)
/// - output: `[N, 1]`
pub fn bce_rows<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 2> {
    let p = logits.dims()[1];
    let loss = logits.clone().clamp_min(0.0) - logits.clone() * targets + logits.abs().neg().exp().log1p();
    loss.sum_dim(1).div_scalar(p as f64)
}

/// Dice loss of each row, `1 − (2Σσ(x)t + 1)/(Σσ(x) + Σt + 1)`.
///
/// # Shapes
/// - `logits`, `targets`: `[N, P]`
/// - output: `[N, 1]`
pub fn dice_rows<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 2> {
    let s = sigmoid(logits);
    let numerator = (s.clone() * targets.clone()).sum_dim(1) * 2.0 + 1.0;
    let denominator = s.sum_dim(1) + targets.sum_dim(1) + 1.0;
    (numerator / denominator).neg() + 1.0
}

/// Sigmoid BCE with logits, averaged over points and summed over masks, divided by `num_masks`.
///
/// # Shapes
/// - `logits`, `targets`: `[N, P]` (targets in `[0, 1]`, soft at boundaries)
/// - output: `[1]`
pub fn sigmoid_bce<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>, num_masks: f64) -> Tensor<B, 1> {
    bce_rows(logits, targets).sum() / num_masks
}

/// Dice loss summed over masks, divided by `num_masks`.
///
/// # Shapes
/// - `logits`, `targets`: `[N, P]`
/// - output: `[1]`
pub fn dice<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>, num_masks: f64) -> Tensor<B, 1> {
    dice_rows(logits, targets).sum() / num_masks
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn scalar(t: Tensor<Flex, 1>) -> f64 {
        t.into_scalar() as f64
    }

    #[test]
    fn cross_entropy_by_hand() {
        let device = Default::default();
        // Two rows, K = 2 (+ no object). Row 0 uniform → ce = ln 3; row 1 logits [0, ln 2, 0],
        // target no-object → p = 1/4, ce = ln 4, weight 0.1.
        let logits = Tensor::<Flex, 2>::from_floats([[0.0, 0.0, 0.0], [0.0, std::f32::consts::LN_2, 0.0]], &device);
        let got = scalar(weighted_cross_entropy(logits, &[1, 2], 0.1));
        let expect = (3f64.ln() + 0.1 * 4f64.ln()) / 1.1;
        assert!((got - expect).abs() < 1e-6, "{got} vs {expect}");
    }

    #[test]
    fn bce_and_dice_by_hand() {
        let device = Default::default();
        // Logits [0, 2], targets [1, 0]: BCE = (ln 2 + ln(1 + e²)) / 2 over one mask.
        let x = Tensor::<Flex, 2>::from_floats([[0.0, 2.0]], &device);
        let t = Tensor::<Flex, 2>::from_floats([[1.0, 0.0]], &device);
        let bce = scalar(sigmoid_bce(x.clone(), t.clone(), 1.0));
        let expect = (2f64.ln() + (1.0 + 2f64.exp()).ln()) / 2.0;
        assert!((bce - expect).abs() < 1e-6, "{bce} vs {expect}");
        // Dice: σ = [0.5, 0.881]; 1 − (2·0.5 + 1)/(1.381 + 1 + 1).
        let s1 = 1.0 / (1.0 + (-2f64).exp());
        let d = scalar(dice(x, t.clone(), 2.0));
        let expect = (1.0 - 2.0 / (0.5 + s1 + 2.0)) / 2.0;
        assert!((d - expect).abs() < 1e-6, "{d} vs {expect}");
        // Large logits stay finite.
        let big = Tensor::<Flex, 2>::from_floats([[100.0, -100.0]], &device);
        let wrong = Tensor::<Flex, 2>::from_floats([[0.0, 1.0]], &device);
        assert!((scalar(sigmoid_bce(big.clone(), wrong, 1.0)) - 100.0).abs() < 1e-3);
        assert!(scalar(sigmoid_bce(big, t, 1.0)).abs() < 1e-6);
    }
}
