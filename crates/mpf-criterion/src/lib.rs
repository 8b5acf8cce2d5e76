//! # mpf-criterion
//!
//! The training criterion of Mask2Former and MP-Former:
//!
//! - [`points`]: bilinear point sampling (host and device), uncertainty-based importance
//!   sampling, and the differentiable corner gather the losses sample with;
//! - [`matcher`]: the Hungarian matcher on point-sampled costs of all predictions at once, solved
//!   by `lsap` (SciPy's algorithm), non-finite costs replaced and counted;
//! - [`losses`]: weighted cross-entropy, sigmoid BCE and dice;
//! - [`criterion`]: [`criterion::Criterion`] — deep supervision over all predictions, the MP
//!   part's direct-assignment losses, and the appendix-C baselines (fixed matching, the
//!   layer-consistency auxiliary loss) as `[loss]` config switches; every term is reported by name
//!   and prediction index.
//!
//! Random points come from the named streams of [`mpf_model::rng`], so a step draws the same
//! points on every backend and after a resume.

pub mod criterion;
pub mod losses;
pub mod matcher;
pub mod points;

pub use criterion::{
    Criterion, CriterionStreams, LossConfig, LossTerm, Losses, Matching, MatchingMode, OneReplica, ReplicaMean,
};

/// Errors of the criterion.
#[derive(Debug, thiserror::Error)]
pub enum CriterionError {
    /// Inconsistent shapes between predictions and targets.
    #[error("criterion: {0}")]
    Shape(String),
    /// A GT label outside `0..K`.
    #[error("GT label {label} is not a class of this model (K = {num_classes})")]
    Label {
        /// The label.
        label: usize,
        /// `K`.
        num_classes: usize,
    },
    /// The assignment solver refused the cost matrix.
    #[error("assignment failed: {0}")]
    Assignment(String),
    /// A `[loss]` value out of range.
    #[error("{0}")]
    Config(String),
    /// Averaging the loss normalisers across data-parallel replicas failed.
    #[error("averaging the loss normalisers across replicas failed: {0}")]
    Replicas(String),
}
