//! Multi-head attention as PyTorch's `nn.MultiheadAttention` computes it, with
//! boolean masks where `true` = blocked.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::init::{LinearInit, linear};

/// Configuration of [`MultiHeadAttention`].
#[derive(Config, Debug)]
pub struct MultiHeadAttentionConfig {
    /// Model width `d`.
    pub d_model: usize,
    /// Number of heads; `d_model` must be divisible by it.
    pub num_heads: usize,
}

/// Multi-head attention with separate q/k/v projections initialised like PyTorch's packed
/// `in_proj_weight` (`xavier_uniform_` over the whole `3d × d` matrix, bias 0) and an output
/// projection (xavier weight, bias 0 in the decoder's `_reset_parameters`).
#[derive(Module, Debug)]
pub struct MultiHeadAttention<B: Backend> {
    /// Query projection `d → d`.
    pub q_proj: Linear<B>,
    /// Key projection `d → d`.
    pub k_proj: Linear<B>,
    /// Value projection `d → d`.
    pub v_proj: Linear<B>,
    /// Output projection `d → d`.
    pub out_proj: Linear<B>,
    /// Number of heads.
    pub num_heads: usize,
}

impl MultiHeadAttentionConfig {
    /// Initialises the module on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> MultiHeadAttention<B> {
        assert!(
            self.num_heads > 0 && self.d_model.is_multiple_of(self.num_heads),
            "d_model {} must be divisible by num_heads {}",
            self.d_model,
            self.num_heads
        );
        let d = self.d_model;
        // xavier_uniform over the packed (3d, d) matrix: bound = sqrt(6 / (d + 3d)).
        let packed = LinearInit::UniformZeroBias((6.0 / (4 * d) as f64).sqrt());
        MultiHeadAttention {
            q_proj: linear(d, d, packed, device),
            k_proj: linear(d, d, packed, device),
            v_proj: linear(d, d, packed, device),
            out_proj: linear(d, d, LinearInit::XavierZeroBias, device),
            num_heads: self.num_heads,
        }
    }
}

impl<B: Backend> MultiHeadAttention<B> {
    /// Scaled dot-product attention over all heads.
    ///
    /// `mask` is `true` where a query may **not** attend to a key; its batch and head dimensions
    /// broadcast (size 1 or the full size). A row that is entirely `true` yields zeros rather than
    /// NaN; callers that need PyTorch's semantics fix such rows first (see
    /// [`crate::decoder::unmask_full_rows`]).
    ///
    /// # Shapes
    /// - `query`: `[B, T, d]`, `key`: `[B, S, d]`, `value`: `[B, S, d]`
    /// - `mask`: `[B | 1, heads | 1, T, S]`
    /// - output: `[B, T, d]`
    pub fn forward(
        &self,
        query: Tensor<B, 3>,
        key: Tensor<B, 3>,
        value: Tensor<B, 3>,
        mask: Option<Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        let [b, t, d] = query.dims();
        let s = key.dims()[1];
        let h = self.num_heads;
        let dh = d / h;
        let q = head_major(&self.q_proj, query, h);
        let k = head_major(&self.k_proj, key, h);
        let v = head_major(&self.v_proj, value, h);
        // Burn's attention op: softmax(q·kᵀ/√dh) with `true` = −∞, NaN-safe for fully masked rows
        // (they give zeros), and fused where the backend has a kernel for it.
        let mask = mask.map(|m| m.expand([b, h, t, s]));
        let out = attention(q, k, v, mask, None, AttentionModuleOptions::default()); // [B, h, T, dh]
        // The output projection head by head, Σₕ outₕ · W[h·dh .. (h+1)·dh, :], so the heads are
        // never permuted back to [B, T, h·dh].
        let w = self.out_proj.weight.val().reshape([1, h, dh, d]);
        let out = out.matmul(w).sum_dim(1).reshape([b, t, d]);
        match &self.out_proj.bias {
            Some(bias) => out + bias.val().reshape([1, 1, d]),
            None => out,
        }
    }
}

/// A linear projection straight into the head-major layout attention takes: `x · W + b` as
/// `[B, h, n, d/h]`, computed as one product of `[x, 1]` with `[W; b]` split by head, so no
/// `[B, n, h, d/h] → [B, h, n, d/h]` permute (a strided copy on the CPU backend) is needed.
///
/// # Shapes
/// - `x`: `[B, n, d]` → `[B, h, n, d/h]`
fn head_major<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>, h: usize) -> Tensor<B, 4> {
    let [b, n, _] = x.dims();
    let d_out = linear.weight.dims()[1];
    let dh = d_out / h;
    let (x, w) = match &linear.bias {
        Some(bias) => (
            Tensor::cat(vec![x, Tensor::ones([b, n, 1], &linear.weight.device())], 2),
            Tensor::cat(vec![linear.weight.val(), bias.val().reshape([1, d_out])], 0),
        ),
        None => (x, linear.weight.val()),
    };
    let rows = w.dims()[0];
    let w = w.reshape([rows, h, dh]).swap_dims(0, 1).reshape([1, h, rows, dh]);
    x.reshape([b, 1, n, rows]).matmul(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{TestBackend, max_abs_diff};

    fn mha(device: &crate::test_util::TestDevice) -> MultiHeadAttention<TestBackend> {
        TestBackend::seed(device, 7);
        MultiHeadAttentionConfig::new(8, 2).init(device)
    }

    #[test]
    fn mask_with_one_open_key_attends_only_to_it() {
        let device = Default::default();
        let attn = mha(&device);
        let q = Tensor::<TestBackend, 3>::random([1, 3, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let kv = Tensor::<TestBackend, 3>::random([1, 5, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        // Every query may only see key 2.
        let mut m = vec![true; 3 * 5];
        for row in 0..3 {
            m[row * 5 + 2] = false;
        }
        let mask = Tensor::<TestBackend, 1, Bool>::from_data(m.as_slice(), &device).reshape([1, 1, 3, 5]);
        let out = attn.forward(q, kv.clone(), kv.clone(), Some(mask));
        // Attending only to key 2 means output = out_proj(v_proj(kv[2])) for every query.
        let v2 = kv.slice([0..1, 2..3, 0..8]);
        let expected = attn.out_proj.forward(attn.v_proj.forward(v2)).repeat_dim(1, 3);
        let (a, e) = (out.into_data().to_vec::<f32>().unwrap(), expected.into_data().to_vec::<f32>().unwrap());
        assert!(max_abs_diff(&a, &e) < 1e-5);
    }

    #[test]
    fn fully_masked_row_gives_zeros_not_nan() {
        let device = Default::default();
        let attn = mha(&device);
        let q = Tensor::<TestBackend, 3>::ones([1, 1, 8], &device);
        let kv = Tensor::<TestBackend, 3>::ones([1, 2, 8], &device);
        let mask = Tensor::<TestBackend, 4, Bool>::full([1, 1, 1, 2], true, &device);
        let out = attn.forward(q, kv.clone(), kv, Some(mask));
        // Zero context → the output is the out-projection bias (zero at init).
        let v = out.into_data().to_vec::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite() && x.abs() < 1e-6), "{v:?}");
    }

    #[test]
    fn matches_hand_computed_single_head() {
        let device = Default::default();
        let mut attn = MultiHeadAttentionConfig::new(2, 1).init::<TestBackend>(&device);
        // Identity projections: output = softmax(q·kᵀ/√2)·v.
        let eye = |l: Linear<TestBackend>| Linear {
            weight: l.weight.map(|w| Tensor::from_floats([[1.0, 0.0], [0.0, 1.0]], &w.device())),
            bias: l.bias,
        };
        attn.q_proj = eye(attn.q_proj);
        attn.k_proj = eye(attn.k_proj);
        attn.v_proj = eye(attn.v_proj);
        attn.out_proj = eye(attn.out_proj);
        let q = Tensor::<TestBackend, 3>::from_floats([[[1.0, 0.0]]], &device);
        let k = Tensor::<TestBackend, 3>::from_floats([[[1.0, 0.0], [0.0, 1.0]]], &device);
        let v = Tensor::<TestBackend, 3>::from_floats([[[10.0, 0.0], [0.0, 10.0]]], &device);
        let out = attn.forward(q, k, v, None).into_data().to_vec::<f32>().unwrap();
        let s = 1.0f32 / 2f32.sqrt();
        let w0 = s.exp() / (s.exp() + 1.0);
        assert!(max_abs_diff(&out, &[10.0 * w0, 10.0 * (1.0 - w0)]) < 1e-5, "{out:?}");
    }
}
