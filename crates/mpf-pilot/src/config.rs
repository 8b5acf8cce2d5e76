//! The `[pilot]` table of an experiment config: every knob of the MP part, with the released
//! recipe (MP-Former's released training script) as default.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `enabled` | `false` in the experiment defaults (plain Mask2Former); MP-Former configs set `true` | build the MP part during training |
//! | `group_rule` | `"fixed"` | `"fixed"`: `groups` groups; `"dynamic"`: `n_g = ⌊queries / n_o⌋` |
//! | `groups` | 1 | fixed group count (released recipe: 1) |
//! | `queries` | 100 | MP query budget `n_q` of the dynamic rule |
//! | `mask_noise` | `"points"` | `points`, `shift`, `scale` or `shift_scale` |
//! | `mask_noise_ratio` | 0.0 | point-flip ratio `r`, or shift/scale magnitude `λ` (released: 0, clean GT) |
//! | `scale_keep_prob` | 0.5 | `scale`/`shift_scale`: probability a mask is not enlarged |
//! | `label_noise_ratio` | 0.2 | probability an MP query's class is redrawn uniformly |
//! | `piloted_layers` | `[0, …, 8]` | decoder layers whose MP rows come from GT |
//! | `per_head` | `false` | draw point noise independently per attention head |
//! | `class_loss` | `true` | supervise the MP queries' classes too |
//!
//! Why these defaults (appendix A, D and §3):
//! - **point noise** rather than shift/scale: a ratio `r` pins the IoU between noised and clean
//!   mask to `[1 − r, 1/(1 + r)]` for *any* shape, so `r` means the same thing for a thin bar and a
//!   blob; a shift by `λ` gives `(1 − λ)/(1 + λ)` only for boxes and anything from 0 to 1 for other
//!   shapes. The released run uses `r = 0`: max-pooling to a level's resolution already perturbs the
//!   mask, and MP "improves AP by 0.9 even without any noise" (appendix A.1).
//! - **all layers piloted**: "the more layers we add noised masks, the better" (appendix D); every
//!   layer then learns to refine from a known-good mask, which is what makes the layers consistent.
//! - **the group mask** (self-attention): the MP queries carry GT; if the matching queries could
//!   attend to them, training would leak GT into the matching part and inference (which has no MP
//!   part) would differ from training. Groups are hidden from each other so that each group is an
//!   independent reconstruction task.
//! - **label noise 0.2** with the target kept clean: the MP queries learn to correct a wrong class,
//!   not only to copy it.

use serde::{Deserialize, Serialize};

/// How the MP group count is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupMode {
    /// `groups` groups every batch.
    Fixed,
    /// `⌊queries / n_o⌋` groups, `n_o` the most objects in any image of the batch.
    Dynamic,
}

/// Which corruption the GT attention masks get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskNoiseKind {
    /// Independent cell flips, fresh per layer (the paper's method).
    Points,
    /// Box-relative translation, once per batch at 1/8 (appendix ablation).
    Shift,
    /// Enlargement about the box centre, once per batch at 1/8 (appendix ablation).
    Scale,
    /// Scale, then shift.
    ShiftScale,
}

/// The `[pilot]` config table. See the module docs for each key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PilotConfig {
    /// Build the MP part during training.
    pub enabled: bool,
    /// Fixed or dynamic group count.
    pub group_rule: GroupMode,
    /// Group count of the fixed rule.
    pub groups: usize,
    /// MP query budget `n_q` of the dynamic rule.
    pub queries: usize,
    /// Kind of mask noise.
    pub mask_noise: MaskNoiseKind,
    /// Point ratio `r` or shift/scale magnitude `λ`.
    pub mask_noise_ratio: f64,
    /// `scale`/`shift_scale`: probability of leaving a mask unscaled.
    pub scale_keep_prob: f64,
    /// Label-noise probability.
    pub label_noise_ratio: f64,
    /// Piloted decoder layers (0-based).
    pub piloted_layers: Vec<usize>,
    /// Independent point noise per head.
    pub per_head: bool,
    /// MP classification loss on.
    pub class_loss: bool,
}

impl Default for PilotConfig {
    /// The released recipe (MP-Former's released training script), enabled.
    fn default() -> Self {
        Self {
            enabled: true,
            group_rule: GroupMode::Fixed,
            groups: 1,
            queries: 100,
            mask_noise: MaskNoiseKind::Points,
            mask_noise_ratio: 0.0,
            scale_keep_prob: 0.5,
            label_noise_ratio: 0.2,
            piloted_layers: (0..9).collect(),
            per_head: false,
            class_loss: true,
        }
    }
}

/// A `[pilot]` value out of range, naming the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("pilot.{key}: {message}")]
pub struct PilotConfigError {
    /// Key inside `[pilot]`.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl PilotConfig {
    /// The released recipe, switched off (the experiment default: plain Mask2Former).
    pub fn disabled() -> Self {
        Self { enabled: false, ..Self::default() }
    }

    /// The group rule as the layout builder takes it.
    pub fn group_rule(&self) -> crate::layout::GroupRule {
        match self.group_rule {
            GroupMode::Fixed => crate::layout::GroupRule::Fixed(self.groups),
            GroupMode::Dynamic => crate::layout::GroupRule::Dynamic { queries: self.queries },
        }
    }

    /// The mask noise as the row builder applies it.
    pub fn mask_noise(&self) -> crate::noise::MaskNoise {
        use crate::noise::MaskNoise;
        let (lambda, keep) = (self.mask_noise_ratio, self.scale_keep_prob);
        match self.mask_noise {
            _ if lambda == 0.0 => MaskNoise::None,
            MaskNoiseKind::Points => MaskNoise::Points { ratio: lambda },
            MaskNoiseKind::Shift => MaskNoise::Shift { lambda },
            MaskNoiseKind::Scale => MaskNoise::Scale { lambda, keep_prob: keep },
            MaskNoiseKind::ShiftScale => MaskNoise::ShiftScale { lambda, keep_prob: keep },
        }
    }

    /// Checks ranges against a decoder of `num_layers` layers.
    pub fn validate(&self, num_layers: usize) -> Result<(), PilotConfigError> {
        let err = |key, message: String| Err(PilotConfigError { key, message });
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        if self.group_rule == GroupMode::Fixed && self.groups == 0 {
            return err("groups", "must be at least 1 (set pilot.enabled = false to train without MP)".into());
        }
        if self.group_rule == GroupMode::Dynamic && self.queries == 0 {
            return err("queries", "the dynamic rule needs a query budget of at least 1".into());
        }
        if !(self.mask_noise_ratio >= 0.0 && self.mask_noise_ratio.is_finite()) {
            return err("mask_noise_ratio", format!("must be a finite number ≥ 0, got {}", self.mask_noise_ratio));
        }
        if self.mask_noise == MaskNoiseKind::Points && self.mask_noise_ratio > 1.0 {
            return err("mask_noise_ratio", format!("a point ratio lies in [0, 1], got {}", self.mask_noise_ratio));
        }
        if !unit(self.scale_keep_prob) {
            return err("scale_keep_prob", format!("a probability lies in [0, 1], got {}", self.scale_keep_prob));
        }
        if !unit(self.label_noise_ratio) {
            return err("label_noise_ratio", format!("a probability lies in [0, 1], got {}", self.label_noise_ratio));
        }
        if let Some(&l) = self.piloted_layers.iter().find(|&&l| l >= num_layers) {
            return err("piloted_layers", format!("layer {l} does not exist; the decoder has layers 0..{num_layers}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::MaskNoise;

    #[test]
    fn default_is_the_released_recipe() {
        let c = PilotConfig::default();
        assert_eq!(c.group_rule(), crate::layout::GroupRule::Fixed(1));
        assert_eq!(c.mask_noise(), MaskNoise::None, "point ratio 0: clean GT");
        assert_eq!(c.label_noise_ratio, 0.2);
        assert_eq!(c.piloted_layers, (0..9).collect::<Vec<_>>());
        assert!(c.class_loss && !c.per_head);
        assert!(c.validate(9).is_ok());
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        let bad = |c: PilotConfig| c.validate(9).unwrap_err().key;
        assert_eq!(bad(PilotConfig { piloted_layers: vec![0, 9], ..Default::default() }), "piloted_layers");
        assert_eq!(bad(PilotConfig { groups: 0, ..Default::default() }), "groups");
        assert_eq!(bad(PilotConfig { label_noise_ratio: 1.5, ..Default::default() }), "label_noise_ratio");
        assert_eq!(bad(PilotConfig { mask_noise_ratio: f64::NAN, ..Default::default() }), "mask_noise_ratio");
        let e = PilotConfig { piloted_layers: vec![12], ..Default::default() }.validate(9).unwrap_err();
        assert_eq!(e.to_string(), "pilot.piloted_layers: layer 12 does not exist; the decoder has layers 0..9");
        let dynamic = PilotConfig { group_rule: GroupMode::Dynamic, queries: 50, ..Default::default() };
        assert_eq!(dynamic.group_rule(), crate::layout::GroupRule::Dynamic { queries: 50 });
    }
}
