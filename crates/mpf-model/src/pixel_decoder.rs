//! `MSDeformAttnPixelDecoder`: input projections, a deformable-attention encoder over
//! the 1/32, 1/16 and 1/8 maps, one extra FPN level at 1/4, and the `mask_features` projection.

use burn::module::{Initializer, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::backbone::BackboneFeatures;
use crate::conv::{conv_forward, group_norm};
use crate::deform_attn::{MSDeformAttn, MSDeformAttnConfig, ReferenceGrid};
use crate::init::{LinearInit, c2_xavier, linear, zero_conv_bias};
use crate::position::sine_encoding;
use crate::resize::bilinear_matmul;

/// Number of levels the deformable encoder attends over (res5, res4, res3).
pub const NUM_LEVELS: usize = 3;

/// Configuration of [`PixelDecoder`]; defaults are Mask2Former's.
#[derive(Config, Debug)]
pub struct PixelDecoderConfig {
    /// Width of every map the decoder produces (`CONVS_DIM`).
    #[config(default = 256)]
    pub conv_dim: usize,
    /// Channels of `mask_features` (`MASK_DIM`).
    #[config(default = 256)]
    pub mask_dim: usize,
    /// Deformable-attention heads.
    #[config(default = 8)]
    pub num_heads: usize,
    /// Sampling points per head and level.
    #[config(default = 4)]
    pub num_points: usize,
    /// Deformable encoder layers (`TRANSFORMER_ENC_LAYERS`).
    #[config(default = 6)]
    pub encoder_layers: usize,
    /// Encoder FFN width (hard-coded 1024 in the reference).
    #[config(default = 1024)]
    pub ffn_dim: usize,
    /// GroupNorm groups (32 in the reference; must divide `conv_dim`).
    #[config(default = 32)]
    pub gn_groups: usize,
}

/// 1×1 conv + GroupNorm projecting one backbone level to `conv_dim`.
#[derive(Module, Debug)]
pub struct ConvNorm<B: Backend> {
    /// The conv.
    pub conv: Conv2d<B>,
    /// GroupNorm after it.
    pub norm: GroupNorm<B>,
}

impl<B: Backend> ConvNorm<B> {
    /// # Shapes
    /// - `x`: `[B, C_in, h, w]` → `[B, C_out, h', w']`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        group_norm(&self.norm, conv_forward(&self.conv, x))
    }
}

/// One post-norm deformable encoder layer: deformable self-attention, then FFN (ReLU).
#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    /// Multi-scale deformable self-attention.
    pub self_attn: MSDeformAttn<B>,
    /// Norm after attention.
    pub norm1: LayerNorm<B>,
    /// FFN `d → ffn`.
    pub linear1: Linear<B>,
    /// FFN `ffn → d`.
    pub linear2: Linear<B>,
    /// Norm after FFN.
    pub norm2: LayerNorm<B>,
}

impl<B: Backend> EncoderLayer<B> {
    /// # Shapes
    /// - `src`, `pos`: `[B, S, d]`; `grid`: the `S` pixel centres over the levels → `[B, S, d]`
    pub fn forward(&self, src: Tensor<B, 3>, pos: Tensor<B, 3>, grid: &ReferenceGrid<B>) -> Tensor<B, 3> {
        let attn = self.self_attn.forward(src.clone() + pos, grid, src.clone());
        let src = self.norm1.forward(src + attn);
        let ffn = self.linear2.forward(relu(self.linear1.forward(src.clone())));
        self.norm2.forward(src + ffn)
    }
}

/// What the pixel decoder hands to the transformer decoder.
#[derive(Debug, Clone)]
pub struct PixelDecoderOutput<B: Backend> {
    /// Per-pixel embeddings at 1/4 resolution, `[B, mask_dim, H/4, W/4]`.
    pub mask_features: Tensor<B, 4>,
    /// Encoder outputs in the order **[1/32, 1/16, 1/8]**, each `[B, conv_dim, h_l, w_l]`.
    pub multi_scale_features: Vec<Tensor<B, 4>>,
}

/// The MSDeformAttn pixel decoder.
#[derive(Module, Debug)]
pub struct PixelDecoder<B: Backend> {
    /// Projections of res5, res4, res3 (in that order: low → high resolution).
    pub input_proj: Vec<ConvNorm<B>>,
    /// Learned per-level embedding `[L, d]`, added to the position encoding.
    pub level_embed: Param<Tensor<B, 2>>,
    /// Deformable encoder layers.
    pub encoder: Vec<EncoderLayer<B>>,
    /// res2 lateral 1×1 conv (no bias) + GN.
    pub lateral: ConvNorm<B>,
    /// 3×3 output conv (no bias) + GN, then ReLU.
    pub output: ConvNorm<B>,
    /// 1×1 conv to `mask_dim` producing `mask_features`.
    pub mask_features: Conv2d<B>,
    /// Channels `d` of the maps.
    pub conv_dim: usize,
}

impl PixelDecoderConfig {
    /// Initialises the pixel decoder for backbone channels `[C2, C3, C4, C5]`.
    pub fn init<B: Backend>(&self, in_channels: [usize; 4], device: &B::Device) -> PixelDecoder<B> {
        let d = self.conv_dim;
        let gn = |c: usize| GroupNormConfig::new(self.gn_groups, c).init(device);
        let input_proj = [in_channels[3], in_channels[2], in_channels[1]]
            .into_iter()
            .map(|c| ConvNorm {
                conv: zero_conv_bias(
                    Conv2dConfig::new([c, d], [1, 1])
                        .with_initializer(Initializer::XavierUniform { gain: 1.0 })
                        .init(device),
                ),
                norm: gn(d),
            })
            .collect();
        let attn = MSDeformAttnConfig::new()
            .with_d_model(d)
            .with_n_levels(NUM_LEVELS)
            .with_n_heads(self.num_heads)
            .with_n_points(self.num_points);
        let encoder = (0..self.encoder_layers)
            .map(|_| EncoderLayer {
                self_attn: attn.init(device),
                norm1: LayerNormConfig::new(d).init(device),
                linear1: linear(d, self.ffn_dim, LinearInit::XavierTorchBias, device),
                linear2: linear(self.ffn_dim, d, LinearInit::XavierTorchBias, device),
                norm2: LayerNormConfig::new(d).init(device),
            })
            .collect();
        let plain = |cin: usize, cout: usize, k: usize| {
            let p = k / 2;
            Conv2dConfig::new([cin, cout], [k, k])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_bias(false)
                .with_initializer(c2_xavier())
                .init(device)
        };
        PixelDecoder {
            input_proj,
            level_embed: crate::init::embedding(NUM_LEVELS, d, device),
            encoder,
            lateral: ConvNorm { conv: plain(in_channels[0], d, 1), norm: gn(d) },
            output: ConvNorm { conv: plain(d, d, 3), norm: gn(d) },
            mask_features: zero_conv_bias(
                Conv2dConfig::new([d, self.mask_dim], [1, 1]).with_initializer(c2_xavier()).init(device),
            ),
            conv_dim: d,
        }
    }
}

/// Deformable-encoder reference points: every pixel centre `((j+0.5)/w, (i+0.5)/h)` of every level
/// in order (the same for every level: all valid ratios are 1).
pub fn reference_points(shapes: &[[usize; 2]]) -> Vec<[f32; 2]> {
    shapes
        .iter()
        .flat_map(|&[h, w]| {
            (0..h).flat_map(move |i| (0..w).map(move |j| [(j as f32 + 0.5) / w as f32, (i as f32 + 0.5) / h as f32]))
        })
        .collect()
}

impl<B: Backend> PixelDecoder<B> {
    /// # Shapes
    /// - `features`: backbone maps at strides 4/8/16/32
    /// - output: see [`PixelDecoderOutput`]
    pub fn forward(&self, features: &BackboneFeatures<B>) -> PixelDecoderOutput<B> {
        let device = features.res5.device();
        let inputs = [features.res5.clone(), features.res4.clone(), features.res3.clone()];
        let b = features.res5.dims()[0];
        let d = self.conv_dim;
        let mut shapes = Vec::with_capacity(NUM_LEVELS);
        let mut srcs = Vec::with_capacity(NUM_LEVELS);
        let mut poss = Vec::with_capacity(NUM_LEVELS);
        for (lvl, (x, proj)) in inputs.into_iter().zip(&self.input_proj).enumerate() {
            let [_, _, h, w] = x.dims();
            shapes.push([h, w]);
            srcs.push(proj.forward(x).flatten::<3>(2, 3).swap_dims(1, 2));
            let pos = sine_encoding::<B>(b, d, h, w, &device).flatten::<3>(2, 3).swap_dims(1, 2);
            let level = self.level_embed.val().narrow(0, lvl, 1).reshape([1, 1, d]);
            poss.push(pos + level);
        }
        let mut src = Tensor::cat(srcs, 1);
        let pos = Tensor::cat(poss, 1);
        if let Some(first) = self.encoder.first() {
            let a = &first.self_attn;
            let grid = ReferenceGrid::new(&reference_points(&shapes), b, &shapes, a.n_heads, a.n_points, &device);
            for layer in &self.encoder {
                src = layer.forward(src, pos.clone(), &grid);
            }
        }
        let mut start = 0;
        let mut multi_scale_features = Vec::with_capacity(NUM_LEVELS);
        for &[h, w] in &shapes {
            multi_scale_features.push(src.clone().narrow(1, start, h * w).swap_dims(1, 2).reshape([b, d, h, w]));
            start += h * w;
        }
        let [_, _, h4, w4] = features.res2.dims();
        let finest = multi_scale_features[NUM_LEVELS - 1].clone();
        let y = self.lateral.forward(features.res2.clone()) + bilinear_matmul(finest, [h4, w4]);
        let y = relu(self.output.forward(y));
        PixelDecoderOutput { mask_features: conv_forward(&self.mask_features, y), multi_scale_features }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::ResNetConfig;
    use crate::test_util::TestBackend;

    #[test]
    fn output_shapes_and_order() {
        let device = Default::default();
        TestBackend::seed(&device, 0);
        let backbone = ResNetConfig::new().with_depth(18).with_width(4).init::<TestBackend>(&device).unwrap();
        let pd = PixelDecoderConfig::new()
            .with_conv_dim(16)
            .with_mask_dim(8)
            .with_num_heads(2)
            .with_num_points(2)
            .with_encoder_layers(1)
            .with_ffn_dim(32)
            .with_gn_groups(4)
            .init::<TestBackend>([4, 8, 16, 32], &device);
        let f = backbone.forward(Tensor::random([2, 3, 64, 96], burn::tensor::Distribution::Default, &device));
        let out = pd.forward(&f);
        assert_eq!(out.mask_features.dims(), [2, 8, 16, 24]);
        let dims: Vec<_> = out.multi_scale_features.iter().map(|t| t.dims()).collect();
        assert_eq!(dims, vec![[2, 16, 2, 3], [2, 16, 4, 6], [2, 16, 8, 12]]);
    }

    #[test]
    fn reference_points_are_pixel_centres() {
        let r = reference_points(&[[1, 2], [2, 1]]);
        // pixel 1 of level 0: x=0.75, y=0.5; pixel 3 (level 1, row 1): x=0.5, y=0.75
        assert_eq!(r, vec![[0.25, 0.5], [0.75, 0.5], [0.5, 0.25], [0.5, 0.75]]);
    }
}
