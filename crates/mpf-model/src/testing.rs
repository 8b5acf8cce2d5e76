//! Helpers for numerical tests, shared by every crate's tests so that a comparison cannot pass on
//! broken output.

/// The largest absolute difference between two equally long vectors.
///
/// # Panics
/// When the lengths differ, or when either side holds a NaN or an infinity (named with its index):
/// a plain `fold(0.0, f32::max)` ignores NaN, so a comparison against all-NaN output would pass.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared vectors differ in length");
    let mut worst = 0.0f32;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(x.is_finite() && y.is_finite(), "non-finite value at index {i}: {x} vs {y}");
        worst = worst.max((x - y).abs());
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_largest_difference() {
        assert_eq!(max_abs_diff(&[1.0, -2.0, 3.0], &[1.5, -2.0, 0.0]), 3.0);
        assert_eq!(max_abs_diff(&[], &[]), 0.0);
    }

    #[test]
    #[should_panic(expected = "non-finite value at index 1")]
    fn fails_on_nan_output() {
        max_abs_diff(&[0.0, f32::NAN], &[0.0, 0.0]);
    }

    #[test]
    #[should_panic(expected = "non-finite value at index 0")]
    fn fails_on_infinite_reference() {
        max_abs_diff(&[0.0], &[f32::INFINITY]);
    }

    #[test]
    #[should_panic(expected = "differ in length")]
    fn fails_on_length_mismatch() {
        max_abs_diff(&[0.0], &[0.0, 1.0]);
    }
}
