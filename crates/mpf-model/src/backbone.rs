//! Backbones: the torchvision-style ResNet (stride in the 3×3 conv, outputs `res2..res5` at
//! strides 4/8/16/32, frozen batch norm by default) and, through [`BackboneConfig`], the Swin
//! Transformer of [`crate::swin`].

use burn::module::{Initializer, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::conv::{ConvGeometry, conv_forward, conv2d_with};
use crate::init::c2_msra;
use crate::swin::{SwinConfig, SwinTransformer};

/// Normalisation used after every backbone conv.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// detectron2's `FrozenBatchNorm2d`: fixed affine transform from imported statistics; its four
    /// vectors are not trained (the COCO/ADE20K default).
    FrozenBn,
    /// Trainable batch norm with running statistics (Cityscapes uses SyncBN; on one device this is it).
    Bn,
}

/// Which network produces the four feature maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackboneKind {
    /// [`ResNet`], configured by `depth`, `width` and `norm`.
    Resnet,
    /// [`SwinTransformer`], configured by the `swin` table.
    Swin,
}

/// The `[model.backbone]` table: the kind, the ResNet keys (used when `kind = "resnet"`, the
/// default) and the `[model.backbone.swin]` table (used when `kind = "swin"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackboneConfig {
    /// `resnet` or `swin`.
    pub kind: BackboneKind,
    /// ResNet depth: 18 or 34 (basic blocks), 50 or 101 (bottleneck blocks).
    pub depth: usize,
    /// ResNet stem / first-stage width (64 in torchvision).
    pub width: usize,
    /// ResNet normalisation layers.
    pub norm: NormKind,
    /// Swin Transformer sizes (defaults: Swin-T).
    pub swin: SwinConfig,
}

impl Default for BackboneConfig {
    fn default() -> Self {
        ResNetConfig::new().into()
    }
}

impl From<ResNetConfig> for BackboneConfig {
    fn from(r: ResNetConfig) -> Self {
        Self { kind: BackboneKind::Resnet, depth: r.depth, width: r.width, norm: r.norm, swin: SwinConfig::new() }
    }
}

impl From<SwinConfig> for BackboneConfig {
    fn from(swin: SwinConfig) -> Self {
        Self { kind: BackboneKind::Swin, swin, ..ResNetConfig::new().into() }
    }
}

impl BackboneConfig {
    /// The ResNet part of the table.
    pub fn resnet(&self) -> ResNetConfig {
        ResNetConfig { depth: self.depth, width: self.width, norm: self.norm }
    }

    /// Checks the keys of the selected kind, naming them; Swin must have the four stages the pixel
    /// decoder reads.
    pub fn validate(&self) -> Result<(), ModelError> {
        match self.kind {
            BackboneKind::Resnet => self.resnet().layout().map(|_| ()),
            BackboneKind::Swin => {
                let bad = |reason: String| ModelError::InvalidConfig { key: "model.backbone.swin".into(), reason };
                self.swin.validate().map_err(bad)?;
                if self.swin.depths.len() != 4 {
                    return Err(bad(format!(
                        "`depths` has {} stages; the pixel decoder reads 4",
                        self.swin.depths.len()
                    )));
                }
                Ok(())
            }
        }
    }

    /// Channels of the four outputs (strides 4, 8, 16, 32).
    pub fn out_channels(&self) -> Result<[usize; 4], ModelError> {
        self.validate()?;
        match self.kind {
            BackboneKind::Resnet => self.resnet().out_channels(),
            BackboneKind::Swin => {
                let c = self.swin.embed_dim;
                Ok([c, 2 * c, 4 * c, 8 * c])
            }
        }
    }

    /// Initialises the selected backbone on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Backbone<B>, ModelError> {
        self.validate()?;
        Ok(match self.kind {
            BackboneKind::Resnet => Backbone::ResNet(self.resnet().init(device)?),
            BackboneKind::Swin => Backbone::Swin(self.swin.init(device)),
        })
    }
}

/// The backbone of a [`crate::Mask2Former`]. Parameter paths leave the variant out
/// (`backbone.conv1.weight`, `backbone.stages.0.blocks.0.attn.q_proj.weight`).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Backbone<B: Backend> {
    /// ResNet.
    ResNet(ResNet<B>),
    /// Swin Transformer.
    Swin(SwinTransformer<B>),
}

impl<B: Backend> Backbone<B> {
    /// # Shapes
    /// - `x`: `[B, 3, H, W]` (normalised), H and W multiples of 32
    /// - output: see [`BackboneFeatures`]
    pub fn forward(&self, x: Tensor<B, 4>) -> BackboneFeatures<B> {
        match self {
            Backbone::ResNet(net) => net.forward(x),
            Backbone::Swin(net) => {
                let mut it = net.forward(x).into_iter();
                let mut next = || it.next().expect("a validated Swin config has four stages");
                BackboneFeatures { res2: next(), res3: next(), res4: next(), res5: next() }
            }
        }
    }
}

/// Configuration of [`ResNet`].
#[derive(Config, Debug)]
pub struct ResNetConfig {
    /// 18 or 34 (basic blocks), 50 or 101 (bottleneck blocks).
    #[config(default = 50)]
    pub depth: usize,
    /// Width of the stem and of the first stage's 3×3 convs (64 in torchvision). Smaller values make
    /// tiny test models: channels scale linearly.
    #[config(default = 64)]
    pub width: usize,
    /// Normalisation layers.
    #[config(default = "NormKind::FrozenBn")]
    pub norm: NormKind,
}

impl ResNetConfig {
    /// Blocks per stage and whether blocks are bottlenecks, or an error naming the config key.
    pub fn layout(&self) -> Result<([usize; 4], bool), ModelError> {
        match self.depth {
            18 => Ok(([2, 2, 2, 2], false)),
            34 => Ok(([3, 4, 6, 3], false)),
            50 => Ok(([3, 4, 6, 3], true)),
            101 => Ok(([3, 4, 23, 3], true)),
            d => Err(ModelError::InvalidConfig {
                key: "model.backbone.depth".into(),
                reason: format!("{d} is not one of 18, 34, 50, 101"),
            }),
        }
    }

    /// Channels of `res2..res5`.
    pub fn out_channels(&self) -> Result<[usize; 4], ModelError> {
        let (_, bottleneck) = self.layout()?;
        let e = if bottleneck { 4 } else { 1 };
        let w = self.width;
        Ok([w * e, 2 * w * e, 4 * w * e, 8 * w * e])
    }

    /// Initialises the backbone on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<ResNet<B>, ModelError> {
        if self.width == 0 {
            return Err(ModelError::InvalidConfig { key: "model.backbone.width".into(), reason: "must be > 0".into() });
        }
        let (blocks, bottleneck) = self.layout()?;
        let w = self.width;
        let expansion = if bottleneck { 4 } else { 1 };
        let mut in_ch = w;
        let mut stages = Vec::with_capacity(4);
        for (i, &n) in blocks.iter().enumerate() {
            let planes = w << i;
            let stride = if i == 0 { 1 } else { 2 };
            let mut stage = Vec::with_capacity(n);
            for j in 0..n {
                let s = if j == 0 { stride } else { 1 };
                let out_ch = planes * expansion;
                let downsample = (s != 1 || in_ch != out_ch).then(|| Downsample {
                    conv: conv(in_ch, out_ch, 1, s, device),
                    norm: norm(self.norm, out_ch, device),
                });
                let block = if bottleneck {
                    Block::Bottleneck(Bottleneck {
                        conv1: conv(in_ch, planes, 1, 1, device),
                        bn1: norm(self.norm, planes, device),
                        conv2: conv(planes, planes, 3, s, device),
                        bn2: norm(self.norm, planes, device),
                        conv3: conv(planes, out_ch, 1, 1, device),
                        bn3: norm(self.norm, out_ch, device),
                        downsample,
                    })
                } else {
                    Block::Basic(BasicBlock {
                        conv1: conv(in_ch, planes, 3, s, device),
                        bn1: norm(self.norm, planes, device),
                        conv2: conv(planes, planes, 3, 1, device),
                        bn2: norm(self.norm, planes, device),
                        downsample,
                    })
                };
                stage.push(block);
                in_ch = out_ch;
            }
            stages.push(stage);
        }
        let mut it = stages.into_iter();
        Ok(ResNet {
            conv1: Conv2dConfig::new([3, w], [7, 7])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
                .with_bias(false)
                .with_initializer(c2_msra())
                .init(device),
            bn1: norm(self.norm, w, device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1: it.next().unwrap_or_default(),
            layer2: it.next().unwrap_or_default(),
            layer3: it.next().unwrap_or_default(),
            layer4: it.next().unwrap_or_default(),
        })
    }
}

fn conv<B: Backend>(cin: usize, cout: usize, k: usize, stride: usize, device: &B::Device) -> Conv2d<B> {
    let p = k / 2;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(false)
        .with_initializer(c2_msra())
        .init(device)
}

fn norm<B: Backend>(kind: NormKind, channels: usize, device: &B::Device) -> Norm2d<B> {
    match kind {
        NormKind::FrozenBn => Norm2d::Frozen(FrozenBatchNorm2d::new(channels, device)),
        NormKind::Bn => Norm2d::Batch(BatchNormConfig::new(channels).init(device)),
    }
}

/// detectron2's `FrozenBatchNorm2d`: `y = (x − mean)·weight/√(var + ε) + bias` with all four vectors
/// fixed (no gradient). Starts as the identity (weight 1, bias 0, mean 0, var 1 − ε... as in
/// detectron2: var 1), to be overwritten by imported weights.
#[derive(Module, Debug)]
pub struct FrozenBatchNorm2d<B: Backend> {
    /// Scale γ `[C]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Shift β `[C]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Running mean `[C]`.
    pub running_mean: Param<Tensor<B, 1>>,
    /// Running variance `[C]`.
    pub running_var: Param<Tensor<B, 1>>,
}

impl<B: Backend> FrozenBatchNorm2d<B> {
    /// ε of detectron2's frozen batch norm.
    pub const EPS: f64 = 1e-5;

    /// Identity-initialised frozen batch norm over `channels`.
    pub fn new(channels: usize, device: &B::Device) -> Self {
        let frozen =
            |init: Initializer| -> Param<Tensor<B, 1>> { init.init([channels], device).set_require_grad(false) };
        Self {
            weight: frozen(Initializer::Ones),
            bias: frozen(Initializer::Zeros),
            running_mean: frozen(Initializer::Zeros),
            running_var: frozen(Initializer::Ones),
        }
    }

    /// # Shapes
    /// - `x`: `[B, C, H, W]` → same
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let c = x.dims()[1];
        let (scale, shift) = self.affine();
        x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1])
    }

    /// The fixed affine transform `y = scale · x + shift` (no gradient).
    ///
    /// # Shapes
    /// - output: (`[C]`, `[C]`)
    pub fn affine(&self) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let scale = self.weight.val() * self.running_var.val().add_scalar(Self::EPS).sqrt().recip();
        let shift = self.bias.val() - self.running_mean.val() * scale.clone();
        (scale.detach(), shift.detach())
    }
}

/// `norm(conv(x))`. A frozen batch norm is folded into the conv (`W·scale`, `b·scale + shift`):
/// one conv instead of a conv and two full-size element-wise operations, in the forward and the
/// backward pass; equal up to rounding.
///
/// # Shapes
/// - `x`: `[B, C_in, H, W]` → `[B, C_out, H', W']`
pub fn conv_norm<B: Backend>(conv: &Conv2d<B>, norm: &Norm2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    match norm {
        Norm2d::Frozen(bn) => {
            let [_, _, h, w] = x.dims();
            let (scale, shift) = bn.affine();
            let c = scale.dims()[0];
            // Scaled as [C_out, C_in·k·k] rows (a per-row scalar, the backend's fast broadcast).
            let dims = conv.weight.dims();
            let weight = (conv.weight.val().reshape([c, dims[1] * dims[2] * dims[3]]) * scale.clone().reshape([c, 1]))
                .reshape(dims);
            let bias = match &conv.bias {
                Some(b) => b.val() * scale + shift,
                None => shift,
            };
            conv2d_with(x, weight, Some(bias), ConvGeometry::of(conv, [h, w]))
        }
        Norm2d::Batch(_) => norm.forward(conv_forward(conv, x)),
    }
}

/// Frozen or trainable batch norm.
#[derive(Module, Debug)]
pub enum Norm2d<B: Backend> {
    /// See [`FrozenBatchNorm2d`].
    Frozen(FrozenBatchNorm2d<B>),
    /// Burn's [`BatchNorm`].
    Batch(BatchNorm<B>),
}

impl<B: Backend> Norm2d<B> {
    /// # Shapes
    /// - `x`: `[B, C, H, W]` → same
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Norm2d::Frozen(n) => n.forward(x),
            Norm2d::Batch(n) => n.forward(x),
        }
    }
}

/// 1×1 projection shortcut (with the block's stride) when shape changes.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    /// 1×1 conv, stride of the block.
    pub conv: Conv2d<B>,
    /// Its norm.
    pub norm: Norm2d<B>,
}

/// Two 3×3 convs (ResNet-18/34).
#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    /// 3×3, carries the stride.
    pub conv1: Conv2d<B>,
    /// Norm after `conv1`.
    pub bn1: Norm2d<B>,
    /// 3×3.
    pub conv2: Conv2d<B>,
    /// Norm after `conv2`.
    pub bn2: Norm2d<B>,
    /// Shortcut projection.
    pub downsample: Option<Downsample<B>>,
}

/// 1×1 → 3×3 (stride) → 1×1 ×4 (ResNet-50/101, torchvision "v1.5").
#[derive(Module, Debug)]
pub struct Bottleneck<B: Backend> {
    /// 1×1 reduce.
    pub conv1: Conv2d<B>,
    /// Norm after `conv1`.
    pub bn1: Norm2d<B>,
    /// 3×3, carries the stride.
    pub conv2: Conv2d<B>,
    /// Norm after `conv2`.
    pub bn2: Norm2d<B>,
    /// 1×1 expand (×4).
    pub conv3: Conv2d<B>,
    /// Norm after `conv3`.
    pub bn3: Norm2d<B>,
    /// Shortcut projection.
    pub downsample: Option<Downsample<B>>,
}

/// A residual block. (Both variants are a few KB of parameter handles; boxing is not supported by
/// Burn's `Module` derive, and blocks live in `Vec`s, so the size difference does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Block<B: Backend> {
    /// ResNet-18/34 block.
    Basic(BasicBlock<B>),
    /// ResNet-50/101 block.
    Bottleneck(Bottleneck<B>),
}

impl<B: Backend> Block<B> {
    /// # Shapes
    /// - `x`: `[B, C_in, H, W]` → `[B, C_out, H/s, W/s]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let (out, downsample) = match self {
            Block::Basic(b) => {
                let y = relu(conv_norm(&b.conv1, &b.bn1, x.clone()));
                (conv_norm(&b.conv2, &b.bn2, y), &b.downsample)
            }
            Block::Bottleneck(b) => {
                let y = relu(conv_norm(&b.conv1, &b.bn1, x.clone()));
                let y = relu(conv_norm(&b.conv2, &b.bn2, y));
                (conv_norm(&b.conv3, &b.bn3, y), &b.downsample)
            }
        };
        let identity = match downsample {
            Some(d) => conv_norm(&d.conv, &d.norm, x),
            None => x,
        };
        relu(out + identity)
    }
}

/// The four feature maps the pixel decoder consumes.
#[derive(Debug, Clone)]
pub struct BackboneFeatures<B: Backend> {
    /// Stride 4, `[B, C2, H/4, W/4]`.
    pub res2: Tensor<B, 4>,
    /// Stride 8, `[B, C3, H/8, W/8]`.
    pub res3: Tensor<B, 4>,
    /// Stride 16, `[B, C4, H/16, W/16]`.
    pub res4: Tensor<B, 4>,
    /// Stride 32, `[B, C5, H/32, W/32]`.
    pub res5: Tensor<B, 4>,
}

/// ResNet backbone (no classification head). Field names follow torchvision so imported weights map
/// one-to-one (`layer3.5.conv2.weight` ↔ `layer3[5].conv2.weight`).
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    /// 7×7 stride-2 stem conv.
    pub conv1: Conv2d<B>,
    /// Stem norm.
    pub bn1: Norm2d<B>,
    /// 3×3 stride-2 max pool.
    pub maxpool: MaxPool2d,
    /// res2 stage (stride 4).
    pub layer1: Vec<Block<B>>,
    /// res3 stage (stride 8).
    pub layer2: Vec<Block<B>>,
    /// res4 stage (stride 16).
    pub layer3: Vec<Block<B>>,
    /// res5 stage (stride 32).
    pub layer4: Vec<Block<B>>,
}

impl<B: Backend> ResNet<B> {
    /// # Shapes
    /// - `x`: `[B, 3, H, W]` (normalised), H and W multiples of 32
    /// - output: see [`BackboneFeatures`]
    pub fn forward(&self, x: Tensor<B, 4>) -> BackboneFeatures<B> {
        let x = self.maxpool.forward(relu(conv_norm(&self.conv1, &self.bn1, x)));
        let run = |stage: &[Block<B>], x: Tensor<B, 4>| stage.iter().fold(x, |x, b| b.forward(x));
        let res2 = run(&self.layer1, x);
        let res3 = run(&self.layer2, res2.clone());
        let res4 = run(&self.layer3, res3.clone());
        let res5 = run(&self.layer4, res4.clone());
        BackboneFeatures { res2, res3, res4, res5 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TestBackend;

    #[test]
    fn output_strides_and_channels() {
        let device = Default::default();
        for (depth, expected) in [(18, [4, 8, 16, 32]), (50, [16, 32, 64, 128])] {
            let cfg = ResNetConfig::new().with_depth(depth).with_width(4);
            assert_eq!(cfg.out_channels().unwrap(), expected);
            let net = cfg.init::<TestBackend>(&device).unwrap();
            let f = net.forward(Tensor::zeros([1, 3, 64, 96], &device));
            assert_eq!(f.res2.dims(), [1, expected[0], 16, 24]);
            assert_eq!(f.res3.dims(), [1, expected[1], 8, 12]);
            assert_eq!(f.res4.dims(), [1, expected[2], 4, 6]);
            assert_eq!(f.res5.dims(), [1, expected[3], 2, 3]);
        }
    }

    #[test]
    fn bad_depth_names_the_key() {
        let err = ResNetConfig::new().with_depth(42).init::<TestBackend>(&Default::default()).unwrap_err();
        assert!(err.to_string().contains("model.backbone.depth"), "{err}");
    }

    #[test]
    fn resnet50_parameter_count_matches_torchvision() {
        // torchvision resnet50 has 25,557,032 parameters; minus fc (2048·1000 + 1000) = 23,508,032,
        // of which 53,120 are BN weights/biases. Frozen BN here holds γ, β, mean and var as
        // non-trainable params, so num_params = 23,508,032 + 53,120 (mean/var) = 23,561,152.
        let net = ResNetConfig::new().init::<TestBackend>(&Default::default()).unwrap();
        assert_eq!(net.num_params(), 23_561_152);
        assert_eq!(crate::model::trainable_params(&net), 23_508_032 - 53_120);
    }

    #[test]
    fn folded_conv_norm_equals_conv_then_norm() {
        let device = Default::default();
        TestBackend::seed(&device, 4);
        let conv = Conv2dConfig::new([3, 5], [3, 3])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init::<TestBackend>(&device);
        let mut bn = FrozenBatchNorm2d::<TestBackend>::new(5, &device);
        let frozen = |v: Tensor<TestBackend, 1>| Param::from_tensor(v).set_require_grad(false);
        bn.weight = frozen(Tensor::from_floats([0.5, 2.0, -1.0, 1.5, 0.1], &device));
        bn.bias = frozen(Tensor::from_floats([0.1, -0.2, 0.3, 0.0, 1.0], &device));
        bn.running_mean = frozen(Tensor::from_floats([1.0, 0.0, -0.5, 0.2, 0.3], &device));
        bn.running_var = frozen(Tensor::from_floats([4.0, 0.25, 1.0, 2.0, 0.5], &device));
        let norm = Norm2d::Frozen(bn);
        let x = Tensor::<TestBackend, 4>::random([2, 3, 9, 7], burn::tensor::Distribution::Default, &device);
        let folded = conv_norm(&conv, &norm, x.clone()).into_data().to_vec::<f32>().unwrap();
        let plain = norm.forward(conv.forward(x)).into_data().to_vec::<f32>().unwrap();
        assert!(crate::test_util::max_abs_diff(&folded, &plain) < 1e-5);
    }

    #[test]
    fn frozen_bn_applies_affine_transform() {
        let device = Default::default();
        let mut bn = FrozenBatchNorm2d::<TestBackend>::new(1, &device);
        let set = |v: f32| Param::from_tensor(Tensor::from_floats([v], &device)).set_require_grad(false);
        bn.weight = set(2.0);
        bn.bias = set(1.0);
        bn.running_mean = set(3.0);
        bn.running_var = set(4.0 - 1e-5);
        let y = bn.forward(Tensor::from_floats([[[[5.0]]]], &device)).into_scalar();
        // (5 − 3)·2/√4 + 1 = 3
        assert!((y - 3.0).abs() < 1e-5, "{y}");
    }
}
