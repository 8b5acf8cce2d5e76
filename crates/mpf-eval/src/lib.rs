//! # mpf-eval
//!
//! Scoring and looking at segmentation results:
//! - [`coco`]: COCO-format mask results (compressed RLE) and mask AP through hotcoco's
//!   `COCOeval` (the pycocotools algorithm; never a hand-written copy), with the 12 summary numbers;
//! - [`semantic`]: a confusion matrix and mIoU as detectron2's `SemSegEvaluator` computes it;
//! - [`viz`]: a fixed palette, prediction overlays with class names and scores, and line plots
//!   (training curves) as PNG, with an embedded font so nothing depends on system fonts.

pub mod coco;
pub mod layers;
pub mod panoptic;
pub mod semantic;
pub mod viz;

use std::path::PathBuf;

/// Errors of the evaluators and writers.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// hotcoco rejected the ground truth or the results.
    #[error("COCO evaluation of {what}: {message}")]
    Coco {
        /// Which input (ground truth file, results, …).
        what: String,
        /// hotcoco's message.
        message: String,
    },
    /// Inputs that do not fit together (sizes, class ids).
    #[error("{0}")]
    Invalid(String),
    /// Reading the data set failed.
    #[error(transparent)]
    Data(#[from] mpf_data::DataError),
    /// A file could not be written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}
