//! Prediction heads shared by every decoder layer: `decoder_norm`, the class head
//! (K + 1 logits, the last being "no object") and the 3-layer mask-embedding MLP whose output is
//! dotted with the per-pixel `mask_features`.

use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::init::{LinearInit, linear};

/// Configuration of [`PredictionHeads`].
#[derive(Config, Debug)]
pub struct PredictionHeadsConfig {
    /// Query width `d`.
    pub hidden_dim: usize,
    /// Channels of `mask_features` (the MLP's output width).
    pub mask_dim: usize,
    /// Number of real classes `K` (the head has `K + 1` outputs).
    pub num_classes: usize,
}

/// `decoder_norm` → {class head, mask MLP}.
#[derive(Module, Debug)]
pub struct PredictionHeads<B: Backend> {
    /// LayerNorm applied to the query states before both heads.
    pub decoder_norm: LayerNorm<B>,
    /// `d → K + 1`.
    pub class_embed: Linear<B>,
    /// `d → d → d → mask_dim`, ReLU between layers.
    pub mask_embed: Vec<Linear<B>>,
}

impl PredictionHeadsConfig {
    /// Initialises the heads (PyTorch default `nn.Linear` init, as the reference leaves them).
    pub fn init<B: Backend>(&self, device: &B::Device) -> PredictionHeads<B> {
        let d = self.hidden_dim;
        PredictionHeads {
            decoder_norm: LayerNormConfig::new(d).init(device),
            class_embed: linear(d, self.num_classes + 1, LinearInit::Torch, device),
            mask_embed: vec![
                linear(d, d, LinearInit::Torch, device),
                linear(d, d, LinearInit::Torch, device),
                linear(d, self.mask_dim, LinearInit::Torch, device),
            ],
        }
    }
}

impl<B: Backend> PredictionHeads<B> {
    /// Class and mask logits for every query.
    ///
    /// # Shapes
    /// - `queries`: `[B, T, d]`; `mask_features`: `[B, C, H4, W4]`
    /// - output: (`[B, T, K+1]`, `[B, T, H4, W4]`)
    pub fn forward(&self, queries: Tensor<B, 3>, mask_features: Tensor<B, 4>) -> (Tensor<B, 3>, Tensor<B, 4>) {
        let x = self.decoder_norm.forward(queries);
        let class_logits = self.class_embed.forward(x.clone());
        let n = self.mask_embed.len();
        let emb = self.mask_embed.iter().enumerate().fold(x, |x, (i, l)| {
            let y = l.forward(x);
            if i + 1 < n { relu(y) } else { y }
        });
        let [b, c, h, w] = mask_features.dims();
        let t = emb.dims()[1];
        let masks = emb.matmul(mask_features.reshape([b, c, h * w])).reshape([b, t, h, w]);
        (class_logits, masks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{TestBackend, max_abs_diff};

    #[test]
    fn mask_logits_are_embedding_dot_features() {
        let device = Default::default();
        TestBackend::seed(&device, 5);
        let heads = PredictionHeadsConfig::new(4, 3, 2).init::<TestBackend>(&device);
        let q = Tensor::<TestBackend, 3>::random([1, 2, 4], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let mf = Tensor::<TestBackend, 4>::random([1, 3, 2, 2], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let (cls, masks) = heads.forward(q.clone(), mf.clone());
        assert_eq!(cls.dims(), [1, 2, 3]);
        assert_eq!(masks.dims(), [1, 2, 2, 2]);
        // Recompute the embedding by hand and dot it with each pixel's feature vector.
        let x = heads.decoder_norm.forward(q);
        let e = heads.mask_embed[2].forward(relu(heads.mask_embed[1].forward(relu(heads.mask_embed[0].forward(x)))));
        let e = e.into_data().to_vec::<f32>().unwrap();
        let f = mf.into_data().to_vec::<f32>().unwrap();
        let mut expected = vec![0f32; 8];
        for q in 0..2 {
            for p in 0..4 {
                expected[q * 4 + p] = (0..3).map(|c| e[q * 3 + c] * f[c * 4 + p]).sum();
            }
        }
        assert!(max_abs_diff(&masks.into_data().to_vec::<f32>().unwrap(), &expected) < 1e-5);
    }
}
