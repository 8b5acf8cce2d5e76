//! The optimiser recipe of Mask2Former's detectron2 configs (`[solver]`): AdamW with parameter groups (backbone lr ×0.1;
//! no weight decay on normalisation layers and embeddings), **global** gradient-norm clipping over
//! the whole model, and iteration-based learning-rate schedules (multi-step with warmup, poly).
//!
//! Burn's AdamW takes one learning rate and one weight decay per optimiser, and its gradient
//! clipping is per parameter, so groups are separate AdamW instances stepped over disjoint
//! gradient sets, and clipping is done here over all gradients at once before the split.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// `lr · gamma^(number of steps ≤ iter)` (detectron2 `WarmupMultiStepLR`).
    Multistep,
    /// `lr · (1 − iter / max_iter)^power` (Mask2Former's `WarmupPolyLR`).
    Poly,
}

/// The `[solver]` table. Defaults are the COCO 50-epoch recipe at batch 16.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolverConfig {
    /// Base learning rate (`SOLVER.BASE_LR`).
    pub base_lr: f64,
    /// AdamW weight decay of ordinary weights.
    pub weight_decay: f64,
    /// Weight decay of normalisation parameters (LayerNorm, GroupNorm, BatchNorm).
    pub weight_decay_norm: f64,
    /// Weight decay of embeddings: the decoder's `query_feat`, `query_embed`, `level_embed` and
    /// MP-Former's label embedding (the pixel decoder's `level_embed` is a plain parameter and
    /// decays, as in the reference).
    pub weight_decay_embed: f64,
    /// Learning-rate multiplier of the backbone.
    pub backbone_multiplier: f64,
    /// Global L2 norm bound of all gradients together; 0 disables clipping.
    pub clip_norm: f64,
    /// AdamW betas.
    pub betas: [f64; 2],
    /// AdamW epsilon (PyTorch's default 1e-8).
    pub epsilon: f64,
    /// Training length in iterations (optimiser steps).
    pub max_iter: u64,
    /// Schedule after warmup.
    pub schedule: ScheduleKind,
    /// Multi-step: iterations at which the rate is multiplied by `gamma`.
    pub steps: Vec<u64>,
    /// Multi-step decay factor.
    pub gamma: f64,
    /// Poly exponent.
    pub poly_power: f64,
    /// Linear warmup length in iterations.
    pub warmup_iters: u64,
    /// Rate factor at iteration 0 of the warmup (1 = no warmup).
    pub warmup_factor: f64,
    /// Batches whose gradients are summed per optimiser step (the effective batch is
    /// `data.batch_size × accumulate`; each batch's loss is divided by `accumulate`).
    pub accumulate: usize,
}

impl Default for SolverConfig {
    fn default() -> Self {
        Self {
            base_lr: 1e-4,
            weight_decay: 0.05,
            weight_decay_norm: 0.0,
            weight_decay_embed: 0.0,
            backbone_multiplier: 0.1,
            clip_norm: 0.01,
            betas: [0.9, 0.999],
            epsilon: 1e-8,
            max_iter: 368_750,
            schedule: ScheduleKind::Multistep,
            steps: vec![327_778, 355_092],
            gamma: 0.1,
            poly_power: 0.9,
            warmup_iters: 10,
            warmup_factor: 1.0,
            accumulate: 1,
        }
    }
}

impl SolverConfig {
    /// Checks ranges, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |k: &str, m: String| Err(format!("`solver.{k}` {m}"));
        if !(self.base_lr > 0.0 && self.base_lr.is_finite()) {
            return bad("base_lr", format!("must be positive, got {}", self.base_lr));
        }
        if self.max_iter == 0 {
            return bad("max_iter", "must be at least 1".into());
        }
        if self.accumulate == 0 {
            return bad("accumulate", "must be at least 1".into());
        }
        if self.clip_norm < 0.0 {
            return bad("clip_norm", format!("must be ≥ 0 (0 = off), got {}", self.clip_norm));
        }
        if !self.steps.windows(2).all(|w| w[0] <= w[1]) {
            return bad("steps", format!("must be increasing, got {:?}", self.steps));
        }
        for (k, v) in [("weight_decay", self.weight_decay), ("weight_decay_norm", self.weight_decay_norm)] {
            if v < 0.0 {
                return bad(k, format!("must be ≥ 0, got {v}"));
            }
        }
        if self.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return bad("betas", format!("must be in [0, 1), got {:?}", self.betas));
        }
        Ok(())
    }

    /// The learning rate of iteration `iter` (0-based) before group multipliers.
    pub fn lr_at(&self, iter: u64) -> f64 {
        let warmup = if iter < self.warmup_iters {
            let alpha = iter as f64 / self.warmup_iters as f64;
            self.warmup_factor * (1.0 - alpha) + alpha
        } else {
            1.0
        };
        let decay = match self.schedule {
            ScheduleKind::Multistep => self.gamma.powi(self.steps.iter().filter(|&&s| s <= iter).count() as i32),
            ScheduleKind::Poly => (1.0 - iter as f64 / self.max_iter as f64).max(0.0).powf(self.poly_power),
        };
        self.base_lr * warmup * decay
    }
}

/// What kind of parameter, for weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// Convolution and linear weights and biases, plain parameters.
    Weight,
    /// LayerNorm / GroupNorm / BatchNorm scale and shift.
    Norm,
    /// Embedding tables.
    Embedding,
    /// Swin's relative-position bias tables: no weight decay, whatever the config (Mask2Former's
    /// `build_optimizer` zeroes it for `relative_position_bias_table` and `absolute_pos_embed`).
    Position,
}

/// A set of parameters sharing a learning-rate multiplier and a weight decay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamGroup {
    /// `backbone` or `head`, then the kind: e.g. `head/norm`.
    pub name: String,
    /// Multiplier of the scheduled rate.
    pub lr_multiplier: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// The parameters.
    #[serde(skip)]
    pub ids: Vec<ParamId>,
    /// Number of scalars.
    pub numel: usize,
}

const NORMS: [&str; 4] = ["Struct:LayerNorm", "Struct:GroupNorm", "Struct:BatchNorm", "Struct:FrozenBatchNorm2d"];
const DECODER_EMBEDDINGS: [&str; 3] = ["query_feat", "query_embed", "level_embed"];

/// Sorts every trainable parameter of `model` (one that requires a gradient) into groups.
pub fn param_groups<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, cfg: &SolverConfig) -> Vec<ParamGroup> {
    struct Walk {
        stack: Vec<(String, String)>,
        found: Vec<(bool, ParamKind, ParamId, usize)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Walk {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack.push((name.to_string(), container_type.to_string()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            if !value.is_require_grad() {
                return;
            }
            // `enter_module(field, owner type)` is called per field, so the last entry is this
            // parameter's field and the struct that holds it.
            let backbone = self.stack.iter().any(|(n, _)| n == "backbone");
            let (field, owner) = self.stack.last().map(|(n, t)| (n.as_str(), t.as_str())).unwrap_or(("", ""));
            let kind = if self.stack.iter().any(|(_, t)| NORMS.contains(&t.as_str())) {
                ParamKind::Norm
            } else if owner == "Struct:WindowAttention" && field == "relative_position_bias_table" {
                ParamKind::Position
            } else if owner == "Struct:LabelEmbedding"
                || (owner == "Struct:TransformerDecoder" && DECODER_EMBEDDINGS.contains(&field))
            {
                ParamKind::Embedding
            } else {
                ParamKind::Weight
            };
            self.found.push((backbone, kind, param.id, value.shape().num_elements()));
        }
    }
    let mut walk = Walk { stack: Vec::new(), found: Vec::new() };
    model.visit(&mut walk);
    let mut groups: Vec<ParamGroup> = Vec::new();
    for (backbone, kind, id, numel) in walk.found {
        let name = format!(
            "{}/{}",
            if backbone { "backbone" } else { "head" },
            match kind {
                ParamKind::Weight => "weight",
                ParamKind::Norm => "norm",
                ParamKind::Embedding => "embedding",
                ParamKind::Position => "position",
            }
        );
        let g = match groups.iter_mut().position(|g| g.name == name) {
            Some(i) => &mut groups[i],
            None => {
                groups.push(ParamGroup {
                    name,
                    lr_multiplier: if backbone { cfg.backbone_multiplier } else { 1.0 },
                    weight_decay: match kind {
                        ParamKind::Weight => cfg.weight_decay,
                        ParamKind::Norm => cfg.weight_decay_norm,
                        ParamKind::Embedding => cfg.weight_decay_embed,
                        ParamKind::Position => 0.0,
                    },
                    ids: Vec::new(),
                    numel: 0,
                });
                groups.last_mut().expect("just pushed")
            }
        };
        g.ids.push(id);
        g.numel += numel;
    }
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    groups
}

/// The global L2 norm of all gradients in `grads` that belong to `model`'s parameters.
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, grads: &GradientsParams) -> f64 {
    struct SumSq<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SumSq<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let s = g.powi_scalar(2).sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    let mut v = SumSq::<B> { grads, total: None };
    model.visit(&mut v);
    v.total.map(|t| t.into_scalar().elem::<f64>().sqrt()).unwrap_or(0.0)
}

/// Multiplies every gradient of `model`'s parameters in `grads` by `factor`.
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, grads: &mut GradientsParams, factor: f64) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads.register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    model.visit(&mut Scale { grads, factor });
}

/// PyTorch's `clip_grad_norm_` over the whole model: when the global norm exceeds `max_norm`,
/// every gradient is multiplied by `max_norm / (norm + 1e-6)`. Returns the norm before clipping.
pub fn clip_global<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = grad_norm(model, grads);
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            scale_grads(model, grads, coef);
        }
    }
    norm
}

/// Splits `grads` into one set per group (a parameter in no group is dropped).
pub fn split_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    mut grads: GradientsParams,
    groups: &[ParamGroup],
) -> Vec<GradientsParams> {
    struct Split<'a> {
        all: &'a mut GradientsParams,
        owner: HashMap<ParamId, usize>,
        out: Vec<GradientsParams>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Split<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let (Some(&g), Some(t)) = (self.owner.get(&param.id), self.all.remove::<B::InnerBackend, D>(param.id)) {
                self.out[g].register::<B::InnerBackend, D>(param.id, t);
            }
        }
    }
    let owner = groups.iter().enumerate().flat_map(|(i, g)| g.ids.iter().map(move |id| (*id, i))).collect();
    let mut s = Split { all: &mut grads, owner, out: (0..groups.len()).map(|_| GradientsParams::new()).collect() };
    model.visit(&mut s);
    s.out
}

/// Adds `more` into `acc` (gradient accumulation).
pub fn add_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    acc: &mut GradientsParams,
    mut more: GradientsParams,
) {
    struct Add<'a> {
        acc: &'a mut GradientsParams,
        more: &'a mut GradientsParams,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Add<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(m) = self.more.remove::<B::InnerBackend, D>(param.id) {
                let sum = match self.acc.remove::<B::InnerBackend, D>(param.id) {
                    Some(a) => a + m,
                    None => m,
                };
                self.acc.register::<B::InnerBackend, D>(param.id, sum);
            }
        }
    }
    model.visit(&mut Add { acc, more: &mut more });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multistep_schedule_with_warmup_by_hand() {
        let cfg = SolverConfig {
            base_lr: 1.0,
            steps: vec![10, 20],
            gamma: 0.1,
            warmup_iters: 4,
            warmup_factor: 0.2,
            ..Default::default()
        };
        // Warmup: factor 0.2·(1 − i/4) + i/4.
        assert!((cfg.lr_at(0) - 0.2).abs() < 1e-12);
        assert!((cfg.lr_at(2) - 0.6).abs() < 1e-12);
        assert!((cfg.lr_at(4) - 1.0).abs() < 1e-12);
        assert!((cfg.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((cfg.lr_at(10) - 0.1).abs() < 1e-12, "the drop applies at the step itself");
        assert!((cfg.lr_at(19) - 0.1).abs() < 1e-12);
        assert!((cfg.lr_at(20) - 0.01).abs() < 1e-12);
        // The COCO default: warmup factor 1 means no warmup at all.
        let coco = SolverConfig::default();
        assert_eq!(coco.lr_at(0), 1e-4);
        assert!((coco.lr_at(327_778) - 1e-5).abs() < 1e-18);
        assert!((coco.lr_at(368_749) - 1e-6).abs() < 1e-18);
    }

    #[test]
    fn poly_schedule_by_hand() {
        let cfg = SolverConfig {
            base_lr: 2.0,
            schedule: ScheduleKind::Poly,
            max_iter: 100,
            poly_power: 0.9,
            warmup_iters: 0,
            ..Default::default()
        };
        assert!((cfg.lr_at(0) - 2.0).abs() < 1e-12);
        assert!((cfg.lr_at(50) - 2.0 * 0.5f64.powf(0.9)).abs() < 1e-12);
        assert_eq!(cfg.lr_at(100), 0.0);
    }

    #[test]
    fn validation_names_the_key() {
        let e = SolverConfig { steps: vec![5, 3], ..Default::default() }.validate().unwrap_err();
        assert!(e.contains("solver.steps"), "{e}");
        let e = SolverConfig { accumulate: 0, ..Default::default() }.validate().unwrap_err();
        assert!(e.contains("solver.accumulate"), "{e}");
    }
}
