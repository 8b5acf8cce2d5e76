//! Swin Transformer backbone (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using
//! Shifted Windows", ICCV 2021), as Mask2Former uses it for its strongest results: four stages of
//! window self-attention blocks at strides 4, 8, 16 and 32, every second block with windows
//! shifted by half a window (and the attention mask that keeps the wrapped-around regions apart),
//! patch merging between stages, and a layer norm on each stage's output.
//!
//! The computation follows Hugging Face transformers' `SwinBackbone` (the backbone of its Swin
//! Mask2Former checkpoints), which is what the parity fixture checks: the image is zero-padded to a
//! multiple of the patch size; inside a block the normalised map is zero-padded (right and bottom)
//! to a multiple of the window size, and windows are always partitioned (`always_partition`), also
//! when a stage is smaller than a window; patch merging pads odd sizes by one row or column.
//!
//! # Shapes
//! `B` batch, `H × W` the image, `C` = `embed_dim`. Inside the network maps are channels-last
//! `[B, h, w, c]`; the outputs are `[B, C·2^s, ⌈H/2^(s+2)⌉, ⌈W/2^(s+2)⌉]` for stages `s = 0..3`.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Distribution, TensorData};

/// Configuration of a [`SwinTransformer`]. Defaults are Swin-T.
#[derive(Config, Debug, PartialEq)]
pub struct SwinConfig {
    /// Channels `C` of the first stage (doubled at each later stage).
    #[config(default = 96)]
    pub embed_dim: usize,
    /// Blocks per stage.
    #[config(default = "vec![2, 2, 6, 2]")]
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    #[config(default = "vec![3, 6, 12, 24]")]
    pub num_heads: Vec<usize>,
    /// Window side (7 for ImageNet-224 weights, 12 for the ImageNet-22k-384 ones).
    #[config(default = 7)]
    pub window_size: usize,
    /// MLP hidden width as a multiple of the block's width.
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    /// Side of the non-overlapping patches of the stem.
    #[config(default = 4)]
    pub patch_size: usize,
    /// Stochastic-depth rate of the last block, rising linearly from 0 at the first (training only).
    #[config(default = 0.3)]
    pub drop_path_rate: f64,
    /// Epsilon of every layer norm.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

impl SwinConfig {
    /// Swin-T: 96 channels, depths 2-2-6-2, window 7 (Mask2Former's drop-path 0.3).
    pub fn tiny() -> Self {
        Self::new()
    }

    /// Swin-S: depths 2-2-18-2.
    pub fn small() -> Self {
        Self::new().with_depths(vec![2, 2, 18, 2])
    }

    /// Swin-B (ImageNet-22k, 384 px): 128 channels, heads 4-8-16-32, window 12.
    pub fn base() -> Self {
        Self::new()
            .with_embed_dim(128)
            .with_depths(vec![2, 2, 18, 2])
            .with_num_heads(vec![4, 8, 16, 32])
            .with_window_size(12)
    }

    /// Swin-L (ImageNet-22k, 384 px): 192 channels, heads 6-12-24-48, window 12.
    pub fn large() -> Self {
        Self::new()
            .with_embed_dim(192)
            .with_depths(vec![2, 2, 18, 2])
            .with_num_heads(vec![6, 12, 24, 48])
            .with_window_size(12)
    }

    /// Channels of the four outputs.
    pub fn out_channels(&self) -> Vec<usize> {
        (0..self.depths.len()).map(|s| self.embed_dim << s).collect()
    }

    /// Checks sizes, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.depths.is_empty() || self.depths.len() != self.num_heads.len() {
            return Err(format!(
                "`depths` ({}) and `num_heads` ({}) need one entry per stage",
                self.depths.len(),
                self.num_heads.len()
            ));
        }
        for (s, &h) in self.num_heads.iter().enumerate() {
            let c = self.embed_dim << s;
            if h == 0 || !c.is_multiple_of(h) {
                return Err(format!("stage {s}: {c} channels do not split into {h} heads (`num_heads`)"));
            }
        }
        if self.window_size == 0 || self.patch_size == 0 || self.embed_dim == 0 {
            return Err("`window_size`, `patch_size` and `embed_dim` must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return Err(format!("`drop_path_rate` = {} must be in [0, 1)", self.drop_path_rate));
        }
        Ok(())
    }

    /// Builds the backbone with PyTorch's default initialisation (truncated-normal tables would
    /// only matter when training from scratch; Swin backbones are loaded from checkpoints).
    pub fn init<B: Backend>(&self, device: &B::Device) -> SwinTransformer<B> {
        let total: usize = self.depths.iter().sum();
        let mut block = 0;
        let stages = (0..self.depths.len())
            .map(|s| {
                let dim = self.embed_dim << s;
                let blocks = (0..self.depths[s])
                    .map(|i| {
                        let rate = self.drop_path_rate * block as f64 / (total.max(2) - 1) as f64;
                        block += 1;
                        SwinBlock {
                            norm1: LayerNormConfig::new(dim).with_epsilon(self.layer_norm_eps).init(device),
                            attn: WindowAttention::new(dim, self.num_heads[s], self.window_size, device),
                            norm2: LayerNormConfig::new(dim).with_epsilon(self.layer_norm_eps).init(device),
                            fc1: LinearConfig::new(dim, (self.mlp_ratio * dim as f64) as usize).init(device),
                            fc2: LinearConfig::new((self.mlp_ratio * dim as f64) as usize, dim).init(device),
                            shift: if i % 2 == 1 { self.window_size / 2 } else { 0 },
                            window: self.window_size,
                            drop_path: rate,
                        }
                    })
                    .collect();
                let downsample = (s + 1 < self.depths.len()).then(|| PatchMerging {
                    norm: LayerNormConfig::new(4 * dim).with_epsilon(self.layer_norm_eps).init(device),
                    reduction: LinearConfig::new(4 * dim, 2 * dim).with_bias(false).init(device),
                });
                SwinStage { blocks, downsample }
            })
            .collect();
        SwinTransformer {
            patch_embed: Conv2dConfig::new([3, self.embed_dim], [self.patch_size; 2])
                .with_stride([self.patch_size; 2])
                .init(device),
            embed_norm: LayerNormConfig::new(self.embed_dim).with_epsilon(self.layer_norm_eps).init(device),
            stages,
            out_norms: self.out_channels().into_iter().map(|c| LayerNormConfig::new(c).init(device)).collect(),
            patch_size: self.patch_size,
            window: self.window_size,
        }
    }
}

/// Window multi-head self-attention with a learned relative position bias.
#[derive(Module, Debug)]
pub struct WindowAttention<B: Backend> {
    /// Query projection.
    pub q_proj: Linear<B>,
    /// Key projection.
    pub k_proj: Linear<B>,
    /// Value projection.
    pub v_proj: Linear<B>,
    /// Output projection.
    pub o_proj: Linear<B>,
    /// `[(2w − 1)², heads]`: one bias per head and relative offset `(Δy, Δx)`.
    pub relative_position_bias_table: burn::module::Param<Tensor<B, 2>>,
    heads: usize,
    window: usize,
}

impl<B: Backend> WindowAttention<B> {
    fn new(dim: usize, heads: usize, window: usize, device: &B::Device) -> Self {
        let side = 2 * window - 1;
        Self {
            q_proj: LinearConfig::new(dim, dim).init(device),
            k_proj: LinearConfig::new(dim, dim).init(device),
            v_proj: LinearConfig::new(dim, dim).init(device),
            o_proj: LinearConfig::new(dim, dim).init(device),
            relative_position_bias_table: burn::module::Param::from_tensor(Tensor::random(
                [side * side, heads],
                Distribution::Normal(0.0, 0.02),
                device,
            )),
            heads,
            window,
        }
    }

    /// `[heads, w², w²]`: the bias between every pair of positions of a window; `index` from
    /// [`relative_index`].
    fn bias(&self, index: Tensor<B, 1, Int>) -> Tensor<B, 3> {
        let n = self.window * self.window;
        self.relative_position_bias_table.val().select(0, index).reshape([n, n, self.heads]).permute([2, 0, 1])
    }

    /// Attention inside each window.
    ///
    /// # Shapes
    /// - `x`: `[B·nW, w², C]` (windows of `B` images, `nW` per image)
    /// - `mask`: `[nW, w², w²]` additive (0 or −100), or none
    /// - `index`: `[w⁴]`, the [`relative_index`] of the window
    /// - output: `[B·nW, w², C]`
    pub fn forward(&self, x: Tensor<B, 3>, mask: Option<Tensor<B, 3>>, index: Tensor<B, 1, Int>) -> Tensor<B, 3> {
        let [bw, n, c] = x.dims();
        let (h, hd) = (self.heads, c / self.heads);
        let split = |t: Tensor<B, 3>| t.reshape([bw, n, h, hd]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone())).mul_scalar((hd as f64).powf(-0.5));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let mut scores = q.matmul(k.swap_dims(2, 3)) + self.bias(index).unsqueeze_dim::<4>(0);
        if let Some(mask) = mask {
            let nw = mask.dims()[0];
            let per_image: Tensor<B, 5> = scores.reshape([bw / nw, nw, h, n, n]);
            scores = (per_image + mask.unsqueeze_dim::<4>(1).unsqueeze_dim::<5>(0)).reshape([bw, h, n, n]);
        }
        let out = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([bw, n, c]);
        self.o_proj.forward(out)
    }
}

/// `[w⁴]`: for every pair `(i, j)` of positions of a `w × w` window, the row of the bias table of
/// their offset `(Δy, Δx)`, i.e. `(Δy + w − 1)·(2w − 1) + Δx + w − 1`.
fn relative_index<B: Backend>(w: usize, device: &B::Device) -> Tensor<B, 1, Int> {
    let n = w * w;
    let index: Vec<i64> = (0..n)
        .flat_map(|i| {
            (0..n).map(move |j| {
                let (dy, dx) = ((i / w) as i64 - (j / w) as i64, (i % w) as i64 - (j % w) as i64);
                (dy + w as i64 - 1) * (2 * w as i64 - 1) + dx + w as i64 - 1
            })
        })
        .collect();
    Tensor::from_data(TensorData::new(index, [n * n]), device)
}

/// One Swin block: (shifted) window attention and an MLP, each pre-normed with a residual.
#[derive(Module, Debug)]
pub struct SwinBlock<B: Backend> {
    /// Norm before attention.
    pub norm1: LayerNorm<B>,
    /// Window attention.
    pub attn: WindowAttention<B>,
    /// Norm before the MLP.
    pub norm2: LayerNorm<B>,
    /// MLP, first layer (GELU after it).
    pub fc1: Linear<B>,
    /// MLP, second layer.
    pub fc2: Linear<B>,
    shift: usize,
    window: usize,
    drop_path: f64,
}

/// Splits `[B, h, w, C]` (h, w multiples of `win`) into `[B·nW, win², C]`, windows row-major.
fn partition<B: Backend>(x: Tensor<B, 4>, win: usize) -> Tensor<B, 3> {
    let [b, h, w, c] = x.dims();
    x.reshape([b, h / win, win, w / win, win, c]).swap_dims(2, 3).reshape([b * (h / win) * (w / win), win * win, c])
}

/// Inverse of [`partition`].
fn reverse<B: Backend>(x: Tensor<B, 3>, win: usize, b: usize, h: usize, w: usize) -> Tensor<B, 4> {
    let c = x.dims()[2];
    x.reshape([b, h / win, w / win, win, win, c]).swap_dims(2, 3).reshape([b, h, w, c])
}

/// The additive mask `[nW, win², win²]` of shifted windows on an `h × w` map: positions that the
/// cyclic shift brought together from different regions do not attend to each other (−100).
fn shift_mask<B: Backend>(h: usize, w: usize, win: usize, shift: usize, device: &B::Device) -> Tensor<B, 3> {
    let region = |i: usize, len: usize| (i >= len - win) as usize + (i >= len - shift) as usize;
    let (nh, nw, n) = (h / win, w / win, win * win);
    let mut data = Vec::with_capacity(nh * nw * n * n);
    for wy in 0..nh {
        for wx in 0..nw {
            let label = |p: usize| region(wy * win + p / win, h) * 3 + region(wx * win + p % win, w);
            for i in 0..n {
                for j in 0..n {
                    data.push(if label(i) == label(j) { 0.0f32 } else { -100.0 });
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [nh * nw, n, n]), device)
}

/// Cyclic shift of `[B, h, w, C]` up by `sh` rows and left by `sw` columns
/// (`out[y][x] = in[(y + sh) % h][(x + sw) % w]`, PyTorch's `roll(x, (−sh, −sw), (1, 2))`). Written
/// with slices and concatenation because Burn 0.21's `Tensor::roll` moves elements the other way
/// from `torch.roll` for the same shift.
fn roll_up_left<B: Backend>(x: Tensor<B, 4>, sh: usize, sw: usize) -> Tensor<B, 4> {
    let [b, h, w, c] = x.dims();
    let (sh, sw) = (sh % h, sw % w);
    let x = Tensor::cat(vec![x.clone().slice([0..b, sh..h, 0..w, 0..c]), x.slice([0..b, 0..sh, 0..w, 0..c])], 1);
    Tensor::cat(vec![x.clone().slice([0..b, 0..h, sw..w, 0..c]), x.slice([0..b, 0..h, 0..sw, 0..c])], 2)
}

/// Shifts up-left by `s` (the shifted windows' cyclic shift).
fn shift_up_left<B: Backend>(x: Tensor<B, 4>, s: usize) -> Tensor<B, 4> {
    roll_up_left(x, s, s)
}

/// The inverse of [`shift_up_left`]: down-right by `s`, i.e. up-left by the complement.
fn shift_down_right<B: Backend>(x: Tensor<B, 4>, s: usize) -> Tensor<B, 4> {
    let [_, h, w, _] = x.dims();
    roll_up_left(x, h - s % h, w - s % w)
}

/// Zero-pads `[B, h, w, C]` at the bottom and right to multiples of `m`.
fn pad_to<B: Backend>(x: Tensor<B, 4>, m: usize) -> Tensor<B, 4> {
    let [b, h, w, c] = x.dims();
    let (ph, pw) = (h.div_ceil(m) * m - h, w.div_ceil(m) * m - w);
    if ph == 0 && pw == 0 {
        return x;
    }
    let device = x.device();
    let x = if pw > 0 { Tensor::cat(vec![x, Tensor::zeros([b, h, pw, c], &device)], 2) } else { x };
    if ph > 0 { Tensor::cat(vec![x, Tensor::zeros([b, ph, w + pw, c], &device)], 1) } else { x }
}

/// Stochastic depth: drops the whole residual branch of a sample with probability `p` and scales
/// the kept ones by `1/(1 − p)`. Only under autodiff (training); the identity otherwise.
fn drop_path<B: Backend>(x: Tensor<B, 4>, p: f64) -> Tensor<B, 4> {
    if p <= 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    let b = x.dims()[0];
    let keep = Tensor::<B, 4>::random([b, 1, 1, 1], Distribution::Bernoulli(1.0 - p), &x.device());
    x * keep.div_scalar(1.0 - p)
}

impl<B: Backend> SwinBlock<B> {
    /// # Shapes
    /// - `x`: `[B, h, w, C]` → `[B, h, w, C]`
    /// - `mask`: the stage's [`shift_mask`] (used by shifted blocks only)
    /// - `index`: the [`relative_index`] of the window
    pub fn forward(&self, x: Tensor<B, 4>, mask: &Tensor<B, 3>, index: &Tensor<B, 1, Int>) -> Tensor<B, 4> {
        let [b, h, w, c] = x.dims();
        let win = self.window;
        let y = pad_to(self.norm1.forward(x.clone()), win);
        let [_, hp, wp, _] = y.dims();
        let y = if self.shift > 0 { shift_up_left(y, self.shift) } else { y };
        let mask = (self.shift > 0).then(|| mask.clone());
        let y = reverse(self.attn.forward(partition(y, win), mask, index.clone()), win, b, hp, wp);
        let y = if self.shift > 0 { shift_down_right(y, self.shift) } else { y };
        let y = if hp > h || wp > w { y.slice([0..b, 0..h, 0..w, 0..c]) } else { y };
        let x = x + drop_path(y, self.drop_path);
        let y = self.fc2.forward(gelu(self.fc1.forward(self.norm2.forward(x.clone()))));
        x + drop_path(y, self.drop_path)
    }
}

/// Halves the resolution: each 2×2 neighbourhood's channels are concatenated (4C), normalised and
/// projected to 2C.
#[derive(Module, Debug)]
pub struct PatchMerging<B: Backend> {
    /// Norm over the 4C concatenation.
    pub norm: LayerNorm<B>,
    /// 4C → 2C, no bias.
    pub reduction: Linear<B>,
}

impl<B: Backend> PatchMerging<B> {
    /// # Shapes
    /// - `x`: `[B, h, w, C]` → `[B, ⌈h/2⌉, ⌈w/2⌉, 2C]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = pad_to(x, 2);
        let [b, h, w, c] = x.dims();
        // [B, h/2, row, w/2, col, C] → [B, h/2, w/2, col, row, C]: channel blocks in the order
        // (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1).
        let x = x.reshape([b, h / 2, 2, w / 2, 2, c]).permute([0, 1, 3, 4, 2, 5]).reshape([b, h / 2, w / 2, 4 * c]);
        self.reduction.forward(self.norm.forward(x))
    }
}

/// A stage: blocks, then (but for the last stage) patch merging.
#[derive(Module, Debug)]
pub struct SwinStage<B: Backend> {
    /// The blocks, alternating plain and shifted windows.
    pub blocks: Vec<SwinBlock<B>>,
    /// Patch merging to the next stage.
    pub downsample: Option<PatchMerging<B>>,
}

/// The Swin backbone.
#[derive(Module, Debug)]
pub struct SwinTransformer<B: Backend> {
    /// Patch embedding: `patch_size`-strided convolution to `C` channels.
    pub patch_embed: Conv2d<B>,
    /// Norm after the patch embedding.
    pub embed_norm: LayerNorm<B>,
    /// The four stages.
    pub stages: Vec<SwinStage<B>>,
    /// Norm of each stage's output.
    pub out_norms: Vec<LayerNorm<B>>,
    patch_size: usize,
    window: usize,
}

impl<B: Backend> SwinTransformer<B> {
    /// The feature maps of every stage (before its patch merging), normalised.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`
    /// - output `s`: `[B, C·2^s, ⌈H/2^(s+2)⌉, ⌈W/2^(s+2)⌉]` (for patch size 4)
    pub fn forward(&self, images: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let [b, ch, h, w] = images.dims();
        let p = self.patch_size;
        let (hp, wp) = (h.div_ceil(p) * p, w.div_ceil(p) * p);
        let images = if hp > h || wp > w {
            let padded = Tensor::zeros([b, ch, hp, wp], &images.device());
            padded.slice_assign([0..b, 0..ch, 0..h, 0..w], images)
        } else {
            images
        };
        let mut x = self.embed_norm.forward(self.patch_embed.forward(images).permute([0, 2, 3, 1]));
        let mut outputs = Vec::with_capacity(self.stages.len());
        let device = x.device();
        // Every block of a stage shares the window, the padded size and so the shift mask; the
        // relative-position index depends on the window only. Built once per forward.
        let (win, shift) = (self.window, self.window / 2);
        let index = relative_index::<B>(win, &device);
        for (stage, norm) in self.stages.iter().zip(&self.out_norms) {
            let [_, h, w, _] = x.dims();
            let mask = shift_mask::<B>(h.div_ceil(win) * win, w.div_ceil(win) * win, win, shift, &device);
            for block in &stage.blocks {
                x = block.forward(x, &mask, &index);
            }
            outputs.push(norm.forward(x.clone()).permute([0, 3, 1, 2]));
            if let Some(down) = &stage.downsample {
                x = down.forward(x);
            }
        }
        outputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    #[test]
    fn windows_partition_and_reverse_are_inverse_and_row_major() {
        let device = Default::default();
        let x = Tensor::<B, 1, Int>::arange(0..2 * 4 * 6 * 3, &device).float().reshape([2, 4, 6, 3]);
        let win = partition(x.clone(), 2);
        assert_eq!(win.dims(), [2 * 2 * 3, 4, 3]);
        // Window 1 of image 0 covers rows 0–1, columns 2–3: its first position is (0, 2).
        let first: Vec<f32> = win.clone().slice([1..2, 0..1, 0..3]).into_data().to_vec().unwrap();
        assert_eq!(first, [6.0, 7.0, 8.0]);
        let back = reverse(win, 2, 2, 4, 6);
        assert_eq!(back.into_data().to_vec::<f32>().unwrap(), x.into_data().to_vec::<f32>().unwrap());
    }

    #[test]
    fn cyclic_shifts_move_like_torch_roll_and_invert() {
        let d = Default::default();
        let x = Tensor::<B, 1, Int>::arange(0..12, &d).float().reshape([1, 3, 4, 1]);
        // torch.roll(x, (-1, -1), (1, 2)) on rows [0..4], [4..8], [8..12]:
        let up: Vec<f32> = shift_up_left(x.clone(), 1).into_data().to_vec().unwrap();
        assert_eq!(up, [5.0, 6.0, 7.0, 4.0, 9.0, 10.0, 11.0, 8.0, 1.0, 2.0, 3.0, 0.0]);
        let back = shift_down_right(shift_up_left(x.clone(), 2), 2);
        assert_eq!(back.into_data().to_vec::<f32>().unwrap(), x.into_data().to_vec::<f32>().unwrap());
    }

    #[test]
    fn shift_mask_separates_the_wrapped_regions() {
        // 4×4 map, windows of 2, shift 1: the last window mixes regions (1,1), (1,2), (2,1), (2,2).
        let m: Vec<f32> = shift_mask::<B>(4, 4, 2, 1, &Default::default()).into_data().to_vec().unwrap();
        let at = |win: usize, i: usize, j: usize| m[win * 16 + i * 4 + j];
        // Window 0 (rows 0–1, cols 0–1) lies in region (0, 0) only: nothing masked.
        assert!((0..4).all(|i| (0..4).all(|j| at(0, i, j) == 0.0)));
        // Window 3: positions 0 (row 2, col 2) and 3 (row 3, col 3) are in different regions.
        assert_eq!((at(3, 0, 3), at(3, 0, 0), at(3, 3, 3)), (-100.0, 0.0, 0.0));
    }

    #[test]
    fn relative_bias_index_covers_every_offset_once_per_pair() {
        let device = Default::default();
        let mut attn = WindowAttention::<B>::new(4, 1, 2, &device);
        // Table entry k holds k: the bias of (i, j) names its offset's index.
        attn.relative_position_bias_table =
            burn::module::Param::from_tensor(Tensor::<B, 1, Int>::arange(0..9, &device).float().reshape([9, 1]));
        let bias: Vec<f32> = attn.bias(relative_index::<B>(2, &device)).into_data().to_vec().unwrap();
        // Positions (0,0),(0,1),(1,0),(1,1); offset (dy, dx) → (dy + 1)·3 + dx + 1.
        assert_eq!(bias[0], 4.0, "same position: offset (0, 0)");
        assert_eq!(bias[1], 3.0, "(0,0) vs (0,1): offset (0, −1)");
        assert_eq!(bias[2 * 4 + 1], 5.0 + 1.0, "(1,0) vs (0,1): offset (1, −1) → 2·3 + 0 = 6");
        assert_eq!(bias[3 * 4], 8.0, "(1,1) vs (0,0): offset (1, 1)");
    }

    /// Parameters of a module (float tensors).
    fn count<M: burn::module::Module<B>>(m: &M) -> usize {
        crate::model::param_shapes(m).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    #[test]
    fn preset_parameter_counts_match_transformers_and_the_published_models() {
        // transformers 5.23 `SwinBackbone` with the same settings (its unused final `layernorm`
        // left out): 27,520,698 / 48,838,602 / 86,880,376 / 195,201,204.
        let device = Default::default();
        let presets = [
            (SwinConfig::tiny(), 27_520_698usize),
            (SwinConfig::small(), 48_838_602),
            (SwinConfig::base(), 86_880_376),
            (SwinConfig::large(), 195_201_204),
        ];
        for (cfg, expected) in &presets {
            assert_eq!(count(&cfg.init::<B>(&device)), *expected, "{cfg:?}");
        }
        // As ImageNet classifiers (window 7, no per-stage norms, a final norm and a 1000-way head)
        // Swin-T and Swin-S have the published 28M and 50M parameters (Liu et al. 2021, Table 1;
        // 28,288,354 and 49,606,258 exactly in transformers' SwinForImageClassification).
        for (cfg, published) in [(SwinConfig::tiny(), 28_288_354usize), (SwinConfig::small(), 49_606_258)] {
            let c = cfg.embed_dim;
            let stage_norms: usize = (0..4).map(|s| 2 * (c << s)).sum();
            let classifier = count(&cfg.init::<B>(&device)) - stage_norms + 2 * 8 * c + 8 * c * 1000 + 1000;
            assert_eq!(classifier, published);
        }
    }

    #[test]
    fn output_shapes_follow_the_strides_with_padding() {
        let cfg = SwinConfig::new()
            .with_embed_dim(8)
            .with_depths(vec![2, 2, 2, 2])
            .with_num_heads(vec![1, 2, 2, 4])
            .with_window_size(3);
        cfg.validate().unwrap();
        let model = cfg.init::<B>(&Default::default());
        let out = model.forward(Tensor::random([1, 3, 70, 45], Distribution::Default, &Default::default()));
        let shapes: Vec<[usize; 4]> = out.iter().map(|t| t.dims()).collect();
        assert_eq!(shapes, [[1, 8, 18, 12], [1, 16, 9, 6], [1, 32, 5, 3], [1, 64, 3, 2]]);
        assert!(SwinConfig::new().with_num_heads(vec![5, 6, 12, 24]).validate().unwrap_err().contains("stage 0"));
    }
}
