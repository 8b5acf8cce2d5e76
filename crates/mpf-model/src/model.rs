//! The assembled Mask2Former: backbone → pixel decoder → transformer decoder.

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::backbone::{Backbone, BackboneConfig, BackboneKind};
use crate::decoder::{DecoderOutput, ExtraQueries, TransformerDecoder, TransformerDecoderConfig};
use crate::pixel_decoder::{PixelDecoder, PixelDecoderConfig, PixelDecoderOutput};

/// Input normalisation and padding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputConfig {
    /// Per-channel RGB mean on the 0–255 scale.
    pub pixel_mean: [f32; 3],
    /// Per-channel RGB standard deviation on the 0–255 scale.
    pub pixel_std: [f32; 3],
    /// Padded height and width are multiples of this (`SIZE_DIVISIBILITY`).
    pub size_divisibility: usize,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self { pixel_mean: [123.675, 116.28, 103.53], pixel_std: [58.395, 57.12, 57.375], size_divisibility: 32 }
    }
}

/// Upper limits of the model's size keys, checked by [`Mask2FormerConfig::validate`]: `(key, max)`.
/// Each is far above any published Mask2Former / MP-Former model (Swin-L: 200 queries, 1024-wide
/// backbone stages, hidden 256, ffn 2048), so only typos and overflow-sized values are refused.
pub const SIZE_LIMITS: [(&str, usize); 14] = [
    ("model.num_classes", 100_000),
    ("model.backbone.width", 1024),
    ("model.pixel_decoder.conv_dim", 4096),
    ("model.pixel_decoder.mask_dim", 4096),
    ("model.pixel_decoder.num_heads", 256),
    ("model.pixel_decoder.num_points", 64),
    ("model.pixel_decoder.ffn_dim", 65_536),
    ("model.pixel_decoder.gn_groups", 4096),
    ("model.pixel_decoder.encoder_layers", 64),
    ("model.decoder.hidden_dim", 4096),
    ("model.decoder.num_queries", 10_000),
    ("model.decoder.num_heads", 256),
    ("model.decoder.ffn_dim", 65_536),
    ("model.decoder.num_layers", 64),
];

fn size_limit(key: &str) -> usize {
    SIZE_LIMITS.iter().find(|(k, _)| *k == key).map_or(usize::MAX, |(_, v)| *v)
}

/// Configuration of [`Mask2Former`]. Defaults are the COCO R50 model of the paper (80 classes,
/// 100 queries, 9 decoder layers, 256 wide).
#[derive(Config, Debug)]
pub struct Mask2FormerConfig {
    /// Number of real classes `K`.
    #[config(default = 80)]
    pub num_classes: usize,
    /// Backbone (ResNet-50 by default).
    #[config(default = "BackboneConfig::default()")]
    pub backbone: BackboneConfig,
    /// Pixel decoder.
    #[config(default = "PixelDecoderConfig::new()")]
    pub pixel_decoder: PixelDecoderConfig,
    /// Transformer decoder.
    #[config(default = "TransformerDecoderConfig::new()")]
    pub decoder: TransformerDecoderConfig,
}

impl Mask2FormerConfig {
    /// Checks every constraint the parts rely on, naming the offending config key: every size is
    /// at least 1 and at most its [`SIZE_LIMITS`] entry (far above any published model, low enough
    /// that a typo such as `num_queries = 4000000000` is refused up front instead of failing an
    /// allocation later), head counts and group counts divide the widths they split, and widths fed
    /// to the sine position encoding are even.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |key: &str, reason: String| Err(ModelError::InvalidConfig { key: key.into(), reason });
        self.backbone.validate()?;
        let pd = &self.pixel_decoder;
        let dec = &self.decoder;
        let sizes = [
            ("model.num_classes", self.num_classes),
            ("model.backbone.width", if self.backbone.kind == BackboneKind::Resnet { self.backbone.width } else { 1 }),
            ("model.pixel_decoder.conv_dim", pd.conv_dim),
            ("model.pixel_decoder.mask_dim", pd.mask_dim),
            ("model.pixel_decoder.num_heads", pd.num_heads),
            ("model.pixel_decoder.num_points", pd.num_points),
            ("model.pixel_decoder.ffn_dim", pd.ffn_dim),
            ("model.pixel_decoder.gn_groups", pd.gn_groups),
            ("model.decoder.hidden_dim", dec.hidden_dim),
            ("model.decoder.num_queries", dec.num_queries),
            ("model.decoder.num_heads", dec.num_heads),
            ("model.decoder.ffn_dim", dec.ffn_dim),
            ("model.decoder.num_layers", dec.num_layers),
        ];
        for (key, value) in sizes {
            let limit = size_limit(key);
            if value == 0 || value > limit {
                return bad(key, format!("{value} is outside 1..={limit}"));
            }
        }
        let limit = size_limit("model.pixel_decoder.encoder_layers");
        if pd.encoder_layers > limit {
            return bad("model.pixel_decoder.encoder_layers", format!("{} is outside 0..={limit}", pd.encoder_layers));
        }
        if !pd.conv_dim.is_multiple_of(pd.gn_groups) {
            return bad(
                "model.pixel_decoder.gn_groups",
                format!("{} must divide conv_dim {}", pd.gn_groups, pd.conv_dim),
            );
        }
        if !pd.conv_dim.is_multiple_of(pd.num_heads) {
            return bad(
                "model.pixel_decoder.num_heads",
                format!("{} must divide conv_dim {}", pd.num_heads, pd.conv_dim),
            );
        }
        if !dec.hidden_dim.is_multiple_of(dec.num_heads) {
            return bad(
                "model.decoder.num_heads",
                format!("{} must divide hidden_dim {}", dec.num_heads, dec.hidden_dim),
            );
        }
        if !dec.hidden_dim.is_multiple_of(2) {
            return bad("model.decoder.hidden_dim", format!("{} must be even (sine encoding)", dec.hidden_dim));
        }
        if !pd.conv_dim.is_multiple_of(2) {
            return bad("model.pixel_decoder.conv_dim", format!("{} must be even (sine encoding)", pd.conv_dim));
        }
        Ok(())
    }

    /// Initialises the model on `device`, after [`Self::validate`].
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Mask2Former<B>, ModelError> {
        self.validate()?;
        let backbone = self.backbone.init(device)?;
        let channels = self.backbone.out_channels()?;
        let pixel_decoder = self.pixel_decoder.init(channels, device);
        let decoder =
            self.decoder.init(self.pixel_decoder.conv_dim, self.pixel_decoder.mask_dim, self.num_classes, device);
        let model = Mask2Former { backbone, pixel_decoder, decoder, num_classes: self.num_classes };
        materialize(&model);
        Ok(model)
    }
}

/// Mask2Former (and MP-Former at inference, which is the same network).
#[derive(Module, Debug)]
pub struct Mask2Former<B: Backend> {
    /// ResNet or Swin backbone.
    pub backbone: Backbone<B>,
    /// MSDeformAttn pixel decoder.
    pub pixel_decoder: PixelDecoder<B>,
    /// Masked-attention transformer decoder with heads.
    pub decoder: TransformerDecoder<B>,
    /// Number of real classes `K`.
    pub num_classes: usize,
}

impl<B: Backend> Mask2Former<B> {
    /// Inference forward.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`, normalised, H and W multiples of 32
    /// - output: `num_layers + 1` predictions of `[B, Q, K+1]` and `[B, Q, H/4, W/4]`
    pub fn forward(&self, images: Tensor<B, 4>) -> DecoderOutput<B> {
        self.forward_with_extra(images, None)
    }

    /// Forward with extra queries prepended (see [`ExtraQueries`]); predictions then cover `P + Q`.
    pub fn forward_with_extra(&self, images: Tensor<B, 4>, extra: Option<ExtraQueries<'_, B>>) -> DecoderOutput<B> {
        self.decode(self.encode(images), extra)
    }

    /// Backbone and pixel decoder: everything before the transformer decoder.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]` → see [`PixelDecoderOutput`]
    pub fn encode(&self, images: Tensor<B, 4>) -> PixelDecoderOutput<B> {
        self.pixel_decoder.forward(&self.backbone.forward(images))
    }

    /// The transformer decoder and heads on the pixel decoder's output, with optional extra queries.
    pub fn decode(&self, pixel: PixelDecoderOutput<B>, extra: Option<ExtraQueries<'_, B>>) -> DecoderOutput<B> {
        self.decoder.forward(&pixel.multi_scale_features, pixel.mask_features, extra)
    }
}

/// Initialises every lazily-initialised parameter of `module` now, in field order.
///
/// Burn parameters draw their initial values on first access, and a clone of a module whose
/// parameters are still lazy draws *its own* values. Materialising right after `init` makes the
/// weights a function of the seed alone (not of which code touches a parameter first) and makes
/// clones and records carry the same values as the original.
pub fn materialize<B: Backend, M: Module<B>>(module: &M) {
    struct Touch;
    impl<B: Backend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
}

/// Joins the autodiff graphs of all of `module`'s trainable parameters into one, through a single
/// operation that has them all as parents (a concatenation of one element of each); does nothing
/// without autodiff.
///
/// Burn's autodiff keeps one graph per leaf until an operation joins two, and then moves every
/// node of one of them (chosen in hash-map order) into the other. A forward pass that meets each
/// parameter one at a time can so move the whole activation graph once per parameter; joining the
/// parameters up front makes every later join move a handful of nodes. The returned value is not
/// used: the concatenation is never on the path of the loss, so the backward pass skips it.
pub fn join_parameter_graphs<B: Backend, M: Module<B>>(module: &M) {
    struct Collect<B: Backend> {
        parts: Vec<Tensor<B, 1>>,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            if value.is_require_grad() && value.shape().num_elements() > 0 {
                self.parts.push(value.flatten::<1>(0, D - 1).narrow(0, 0, 1));
            }
        }
    }
    let mut c = Collect::<B> { parts: Vec::new() };
    module.visit(&mut c);
    if let Some(first) = c.parts.first()
        && B::ad_enabled(&first.device())
        && c.parts.len() > 1
    {
        let _ = Tensor::cat(c.parts, 0);
    }
}

/// The dotted field path (enum variant names left out, e.g. `decoder.layers.0.linear1.weight`)
/// and shape of every float parameter of `module`, in visit order; shapes come from
/// `Param::lazy_shape`, so nothing is initialised.
pub fn param_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    struct Walk {
        stack: Vec<String>,
        out: Vec<(String, Vec<usize>)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Walk {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack.push(if container_type.starts_with("Enum:") { String::new() } else { name.into() });
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let path = self.stack.iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>().join(".");
            self.out.push((path, param.lazy_shape().to_vec()));
        }
    }
    let mut w = Walk { stack: Vec::new(), out: Vec::new() };
    module.visit(&mut w);
    w.out
}

/// Counts the elements of trainable parameters: everything except the four vectors of each
/// [`FrozenBatchNorm2d`](crate::backbone::FrozenBatchNorm2d), i.e. what PyTorch's
/// `sum(p.numel() for p in model.parameters())` gives for the reference (where frozen batch norm
/// holds buffers). Decided by module type, so it holds on backends without autodiff too.
pub fn trainable_params<B: Backend, M: Module<B>>(module: &M) -> usize {
    struct Count {
        total: usize,
        frozen_depth: usize,
    }
    const FROZEN: &str = "Struct:FrozenBatchNorm2d";
    impl<B: Backend> ModuleVisitor<B> for Count {
        fn enter_module(&mut self, _name: &str, container_type: &str) {
            if container_type == FROZEN || self.frozen_depth > 0 {
                self.frozen_depth += 1;
            }
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.frozen_depth = self.frozen_depth.saturating_sub(1);
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.frozen_depth == 0 {
                self.total += param.shape().num_elements();
            }
        }
    }
    let mut c = Count { total: 0, frozen_depth: 0 };
    module.visit(&mut c);
    c.total
}

/// A batch of images ready for the model: normalised, zero-padded bottom/right to a multiple of
/// `size_divisibility`.
#[derive(Debug, Clone)]
pub struct ImageBatch<B: Backend> {
    /// `[B, 3, H, W]`.
    pub images: Tensor<B, 4>,
    /// Unpadded `[h, w]` of each image.
    pub image_sizes: Vec<[usize; 2]>,
}

/// One RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone)]
pub struct RgbImage {
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// `height·width·3` bytes, RGB interleaved.
    pub pixels: Vec<u8>,
}

impl<B: Backend> ImageBatch<B> {
    /// Normalises with `input.pixel_mean/std` and pads to the batch's padded size.
    pub fn from_images(images: &[RgbImage], input: &InputConfig, device: &B::Device) -> Result<Self, ModelError> {
        if images.is_empty() {
            return Err(ModelError::InvalidInput("empty image batch".into()));
        }
        let div = input.size_divisibility.max(1);
        let round = |x: usize| x.div_ceil(div) * div;
        let hp = round(images.iter().map(|i| i.height).max().unwrap_or(0));
        let wp = round(images.iter().map(|i| i.width).max().unwrap_or(0));
        let mut data = vec![0f32; images.len() * 3 * hp * wp];
        for (n, img) in images.iter().enumerate() {
            if img.pixels.len() != img.height * img.width * 3 || img.height == 0 || img.width == 0 {
                return Err(ModelError::InvalidInput(format!(
                    "image {n}: {}×{} needs {} RGB bytes, got {}",
                    img.height,
                    img.width,
                    img.height * img.width * 3,
                    img.pixels.len()
                )));
            }
            for y in 0..img.height {
                for x in 0..img.width {
                    for c in 0..3 {
                        let v = img.pixels[(y * img.width + x) * 3 + c] as f32;
                        data[((n * 3 + c) * hp + y) * wp + x] = (v - input.pixel_mean[c]) / input.pixel_std[c];
                    }
                }
            }
        }
        let images_t = Tensor::<B, 1>::from_data(TensorData::new(data, [images.len() * 3 * hp * wp]), device)
            .reshape([images.len(), 3, hp, wp]);
        Ok(Self { images: images_t, image_sizes: images.iter().map(|i| [i.height, i.width]).collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::{BackboneConfig, ResNetConfig};

    /// 2 classes, an 8-wide pixel decoder and decoder (2 layers, 3 queries) on `backbone`.
    fn tiny(backbone: BackboneConfig) -> Mask2FormerConfig {
        Mask2FormerConfig::new()
            .with_num_classes(2)
            .with_backbone(backbone)
            .with_pixel_decoder(
                PixelDecoderConfig::new()
                    .with_conv_dim(8)
                    .with_mask_dim(8)
                    .with_num_heads(2)
                    .with_encoder_layers(1)
                    .with_ffn_dim(8)
                    .with_gn_groups(2),
            )
            .with_decoder(
                TransformerDecoderConfig::new()
                    .with_hidden_dim(8)
                    .with_num_queries(3)
                    .with_num_heads(2)
                    .with_ffn_dim(8)
                    .with_num_layers(2),
            )
    }

    #[test]
    fn joining_parameter_graphs_leaves_gradients_unchanged() {
        use burn::backend::Autodiff;
        use burn::nn::LinearConfig;
        type AD = Autodiff<crate::test_util::TestBackend>;
        let device = Default::default();
        AD::seed(&device, 1);
        let (a, b) = (LinearConfig::new(3, 4).init::<AD>(&device), LinearConfig::new(4, 2).init::<AD>(&device));
        let x = Tensor::<AD, 2>::random([5, 3], burn::tensor::Distribution::Default, &device);
        let grads = |join: bool| {
            if join {
                join_parameter_graphs(&a);
                join_parameter_graphs(&b);
            }
            let g = b.forward(a.forward(x.clone())).powi_scalar(2).sum().backward();
            [a.weight.grad(&g).unwrap(), b.weight.grad(&g).unwrap()].map(|t| t.into_data().to_vec::<f32>().unwrap())
        };
        assert_eq!(grads(false), grads(true));
    }
    use crate::test_util::TestBackend;

    #[test]
    fn padding_and_normalisation() {
        let device = Default::default();
        let img = RgbImage { height: 2, width: 3, pixels: vec![255; 18] };
        let b = ImageBatch::<TestBackend>::from_images(&[img], &InputConfig::default(), &device).unwrap();
        assert_eq!(b.images.dims(), [1, 3, 32, 32]);
        let v = b.images.into_data().to_vec::<f32>().unwrap();
        assert!((v[0] - (255.0 - 123.675) / 58.395).abs() < 1e-6);
        assert_eq!(v[3], 0.0, "padding is zero after normalisation");
    }

    #[test]
    fn bad_image_buffer_is_an_error() {
        let img = RgbImage { height: 2, width: 3, pixels: vec![0; 5] };
        let err =
            ImageBatch::<TestBackend>::from_images(&[img], &InputConfig::default(), &Default::default()).unwrap_err();
        assert!(err.to_string().contains("image 0"), "{err}");
    }

    #[test]
    fn clones_and_records_carry_the_initialised_weights() {
        let device = Default::default();
        let cfg = tiny(ResNetConfig::new().with_depth(18).with_width(2).into());
        TestBackend::seed(&device, 9);
        let model = cfg.init::<TestBackend>(&device).unwrap();
        let copy = model.clone();
        let v = |m: &Mask2Former<TestBackend>| m.decoder.query_feat.val().into_data().to_vec::<f32>().unwrap();
        assert_eq!(v(&copy), v(&model));
        TestBackend::seed(&device, 9);
        let again = cfg.init::<TestBackend>(&device).unwrap();
        // Touch the decoder before the backbone: values do not depend on access order.
        assert_eq!(v(&again), v(&model));
        let w = |m: &Mask2Former<TestBackend>| match &m.backbone {
            crate::backbone::Backbone::ResNet(r) => r.conv1.weight.val().into_data().to_vec::<f32>().unwrap(),
            crate::backbone::Backbone::Swin(_) => unreachable!("the config builds a ResNet"),
        };
        assert_eq!(w(&again), w(&model));
    }

    #[test]
    fn swin_backbone_feeds_the_pixel_decoder() {
        let device = Default::default();
        let swin = crate::swin::SwinConfig::new()
            .with_embed_dim(8)
            .with_depths(vec![1, 1, 1, 1])
            .with_num_heads(vec![1, 2, 2, 4]);
        let cfg = tiny(swin.into());
        assert_eq!(cfg.backbone.out_channels().unwrap(), [8, 16, 32, 64]);
        let model = cfg.init::<TestBackend>(&device).unwrap();
        assert!(matches!(model.backbone, Backbone::Swin(_)));
        let out = model.forward(Tensor::zeros([1, 3, 64, 96], &device));
        let last = out.predictions.last().unwrap();
        assert_eq!(last.mask_logits.dims(), [1, 3, 16, 24]);
        let mut three = cfg.clone();
        three.backbone.swin.depths = vec![1, 1, 1];
        three.backbone.swin.num_heads = vec![1, 2, 2];
        let err = three.validate().unwrap_err().to_string();
        assert!(err.contains("model.backbone.swin") && err.contains("4"), "{err}");
    }

    #[test]
    fn invalid_heads_name_the_key() {
        let cfg = Mask2FormerConfig::new().with_decoder(TransformerDecoderConfig::new().with_num_heads(7));
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("model.decoder.num_heads"), "{err}");
    }

    #[test]
    fn zero_and_oversized_sizes_name_the_key() {
        let dec = TransformerDecoderConfig::new;
        let pd = PixelDecoderConfig::new;
        let cases: Vec<(Mask2FormerConfig, &str)> = vec![
            (Mask2FormerConfig::new().with_decoder(dec().with_hidden_dim(0)), "model.decoder.hidden_dim"),
            (Mask2FormerConfig::new().with_decoder(dec().with_ffn_dim(0)), "model.decoder.ffn_dim"),
            (Mask2FormerConfig::new().with_pixel_decoder(pd().with_ffn_dim(0)), "model.pixel_decoder.ffn_dim"),
            (Mask2FormerConfig::new().with_pixel_decoder(pd().with_num_points(0)), "model.pixel_decoder.num_points"),
            (Mask2FormerConfig::new().with_pixel_decoder(pd().with_mask_dim(0)), "model.pixel_decoder.mask_dim"),
            (Mask2FormerConfig::new().with_backbone(ResNetConfig::new().with_width(0).into()), "model.backbone.width"),
            (Mask2FormerConfig::new().with_decoder(dec().with_num_queries(4_000_000_000)), "model.decoder.num_queries"),
            (Mask2FormerConfig::new().with_pixel_decoder(pd().with_conv_dim(30)), "model.pixel_decoder.gn_groups"),
        ];
        for (cfg, key) in cases {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        let ok = Mask2FormerConfig::new().with_pixel_decoder(pd().with_encoder_layers(0));
        assert!(ok.validate().is_ok(), "a pixel decoder without encoder layers is valid");
        assert_eq!(SIZE_LIMITS.len(), 14);
        assert!(SIZE_LIMITS.iter().all(|(k, _)| size_limit(k) != usize::MAX));
    }
}
