//! The `[data]` config table: where a data set is and how it is read, augmented and batched.
//! Paths are relative to the working directory (or absolute).
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `format` | `"synthetic"` | `synthetic`, `coco` (instance JSON), `coco_panoptic`, `semantic` (label PNGs) |
//! | `train_images`, `val_images` | `""` | image folders |
//! | `train_annotations`, `val_annotations` | `""` | COCO instance / panoptic JSON |
//! | `train_panoptic`, `val_panoptic` | `""` | panoptic PNG folders |
//! | `train_labels`, `val_labels` | `""` | semantic label PNG folders |
//! | `ignore_label` | 255 | semantic: pixels of this value belong to no object |
//! | `reduce_zero_label` | false | semantic: 0 → ignore, `v` → class `v − 1` (ADE20K) |
//! | `synthetic_train`, `synthetic_val`, `synthetic_size` | 400, 50, 128 | synthetic set sizes |
//! | `synthetic_style` | `"cluttered"` | `cluttered` (the benchmark shapes) or `simple` (1–3 solid shapes, the default run) |
//! | `batch_size` | 16 | images per step (before gradient accumulation) |
//! | `workers`, `prefetch` | 2, 2 | loader threads and batches queued per thread |
//! | `augment` | `"lsj"` | `lsj`, `semantic` or `none` for training (evaluation never augments) |
//! | `crop_size` | [1024, 1024] | LSJ output / semantic crop size |
//! | `min_scale`, `max_scale` | 0.1, 2.0 | LSJ scale range |
//! | `short_sides`, `max_size`, `cat_max_ratio` | ADE20K's | semantic resize and crop |
//! | `test_short_side`, `test_max_size` | 0, 0 | evaluation resize (detectron2 `INPUT.MIN_SIZE_TEST` / `MAX_SIZE_TEST`, e.g. 800 / 1333 for COCO); 0 = original size |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::augment::{Augment, Lsj, SemanticAug};
use crate::coco::CocoInstances;
use crate::panoptic::CocoPanoptic;
use crate::semantic::SemanticFolder;
use crate::synth::{SynthDataset, SynthStyle};
use crate::{DataError, Dataset};

/// Data set file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The built-in synthetic shapes, generated in memory.
    Synthetic,
    /// COCO instance JSON + images.
    Coco,
    /// COCO panoptic JSON + PNGs + images.
    CocoPanoptic,
    /// Images + label PNGs.
    Semantic,
}

/// Training augmentation kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AugmentKind {
    /// Large-scale jitter.
    Lsj,
    /// Short-side resize, crop, colour jitter, flip.
    Semantic,
    /// None.
    None,
}

/// Train or validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training.
    Train,
    /// Validation.
    Val,
}

/// The `[data]` table (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct DataConfig {
    pub format: Format,
    pub train_images: String,
    pub train_annotations: String,
    pub train_panoptic: String,
    pub train_labels: String,
    pub val_images: String,
    pub val_annotations: String,
    pub val_panoptic: String,
    pub val_labels: String,
    pub ignore_label: u16,
    pub reduce_zero_label: bool,
    pub synthetic_train: usize,
    pub synthetic_val: usize,
    pub synthetic_size: usize,
    pub synthetic_style: SynthStyle,
    pub batch_size: usize,
    pub workers: usize,
    pub prefetch: usize,
    pub augment: AugmentKind,
    pub crop_size: [usize; 2],
    pub min_scale: f64,
    pub max_scale: f64,
    pub short_sides: Vec<usize>,
    pub max_size: usize,
    pub cat_max_ratio: f64,
    pub test_short_side: usize,
    pub test_max_size: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            format: Format::Synthetic,
            train_images: String::new(),
            train_annotations: String::new(),
            train_panoptic: String::new(),
            train_labels: String::new(),
            val_images: String::new(),
            val_annotations: String::new(),
            val_panoptic: String::new(),
            val_labels: String::new(),
            ignore_label: 255,
            reduce_zero_label: false,
            synthetic_train: 400,
            synthetic_val: 50,
            synthetic_size: 128,
            synthetic_style: SynthStyle::Cluttered,
            batch_size: 16,
            workers: 2,
            prefetch: 2,
            augment: AugmentKind::Lsj,
            crop_size: [1024, 1024],
            min_scale: 0.1,
            max_scale: 2.0,
            short_sides: (5..=20).map(|x| x * 512 / 10).collect(),
            max_size: 2048,
            cat_max_ratio: 1.0,
            test_short_side: 0,
            test_max_size: 0,
        }
    }
}

fn need(value: &str, key: &str) -> Result<PathBuf, DataError> {
    if value.is_empty() {
        Err(DataError::invalid(Path::new("config"), format!("data.{key}"), "is empty but the data format needs it"))
    } else {
        Ok(PathBuf::from(value))
    }
}

impl DataConfig {
    /// Opens a split. `class_names` are used by the semantic format (which has no class list).
    pub fn open(&self, split: Split, seed: u64, class_names: &[String]) -> Result<Arc<dyn Dataset>, DataError> {
        let (p, images, ann, pan, labels) = match split {
            Split::Train => {
                ("train", &self.train_images, &self.train_annotations, &self.train_panoptic, &self.train_labels)
            }
            Split::Val => ("val", &self.val_images, &self.val_annotations, &self.val_panoptic, &self.val_labels),
        };
        let key = |k: &str| format!("{p}_{k}");
        Ok(match self.format {
            Format::Synthetic => {
                // Validation images come from a disjoint index range of the same generator.
                let (offset, n) = match split {
                    Split::Train => (0, self.synthetic_train),
                    Split::Val => (1 << 32, self.synthetic_val),
                };
                Arc::new(SynthDataset::new(seed, offset, n, self.synthetic_size).with_style(self.synthetic_style))
            }
            Format::Coco => {
                Arc::new(CocoInstances::open(&need(ann, &key("annotations"))?, &need(images, &key("images"))?)?)
            }
            Format::CocoPanoptic => Arc::new(CocoPanoptic::open(
                &need(ann, &key("annotations"))?,
                &need(images, &key("images"))?,
                &need(pan, &key("panoptic"))?,
            )?),
            Format::Semantic => Arc::new(SemanticFolder::open(
                &need(images, &key("images"))?,
                &need(labels, &key("labels"))?,
                class_names,
                self.ignore_label,
                self.reduce_zero_label,
            )?),
        })
    }

    /// Checks ranges, naming the key.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad =
            |key: &str, message: String| Err(DataError::invalid(Path::new("config"), format!("data.{key}"), message));
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if let Err(m) = crate::check_image_size(self.crop_size[0], self.crop_size[1]) {
            return bad("crop_size", m);
        }
        if !(self.min_scale > 0.0 && self.min_scale <= self.max_scale && self.max_scale.is_finite()) {
            return bad(
                "min_scale",
                format!("need 0 < min_scale ≤ max_scale, got {} and {}", self.min_scale, self.max_scale),
            );
        }
        if self.augment == AugmentKind::Semantic && (self.short_sides.is_empty() || self.short_sides.contains(&0)) {
            return bad("short_sides", "the semantic augmentation needs positive short-side choices".into());
        }
        if !(self.cat_max_ratio > 0.0 && self.cat_max_ratio <= 1.0) {
            return bad("cat_max_ratio", format!("must lie in (0, 1], got {}", self.cat_max_ratio));
        }
        if self.format == Format::Synthetic
            && let Err(m) = crate::synth::check_size(self.synthetic_size)
        {
            return bad("synthetic_size", m);
        }
        Ok(())
    }

    /// The size an image of `[h, w]` is resized to for evaluation: the short side to
    /// `test_short_side`, capped so the long side stays within `test_max_size` (detectron2's
    /// `ResizeShortestEdge`); unchanged when `test_short_side` is 0.
    pub fn test_size(&self, [h, w]: [usize; 2]) -> [usize; 2] {
        if self.test_short_side == 0 || h == 0 || w == 0 {
            return [h, w];
        }
        let short = h.min(w) as f64;
        let mut scale = self.test_short_side as f64 / short;
        let long = h.max(w) as f64 * scale;
        if self.test_max_size > 0 && long > self.test_max_size as f64 {
            scale *= self.test_max_size as f64 / long;
        }
        [(h as f64 * scale + 0.5) as usize, (w as f64 * scale + 0.5) as usize]
    }

    /// The training augmentation.
    pub fn train_augment(&self) -> Augment {
        match self.augment {
            AugmentKind::None => Augment::None,
            AugmentKind::Lsj => Augment::Lsj(Lsj {
                size: self.crop_size,
                min_scale: self.min_scale,
                max_scale: self.max_scale,
                flip: true,
            }),
            AugmentKind::Semantic => Augment::Semantic(SemanticAug {
                short_sides: self.short_sides.clone(),
                max_size: self.max_size,
                crop: self.crop_size,
                cat_max_ratio: self.cat_max_ratio,
                color_jitter: true,
                flip: true,
            }),
        }
    }
}

/// Indices of the images kept for training: those with at least one object (when the data set
/// can tell without decoding; otherwise all). Evaluation keeps every image.
pub fn training_indices(data: &dyn Dataset) -> Vec<usize> {
    (0..data.len()).filter(|&i| data.num_objects(i) != Some(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_size_is_detectron2_resize_shortest_edge() {
        let cfg = DataConfig { test_short_side: 800, test_max_size: 1333, ..DataConfig::default() };
        // 480×640 → short side 800: 800×1066.67 → 800×1067.
        assert_eq!(cfg.test_size([480, 640]), [800, 1067]);
        // 400×1200 → 800×2400 exceeds 1333: scale 1333/1200 → 444.3×1333.
        assert_eq!(cfg.test_size([400, 1200]), [444, 1333]);
        assert_eq!(DataConfig::default().test_size([37, 51]), [37, 51]);
    }

    #[test]
    fn training_keeps_images_with_objects_and_evaluation_keeps_all() {
        let dir = tempfile::tempdir().unwrap();
        crate::synth::write(dir.path(), SynthStyle::Cluttered, 3, 2, 32).unwrap();
        // Drop every annotation of image 1: it stays in the data set, not in the training order.
        let path = dir.path().join("instances.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["annotations"].as_array_mut().unwrap().retain(|a| a["image_id"] != 1);
        std::fs::write(&path, v.to_string()).unwrap();
        let cfg = DataConfig {
            format: Format::Coco,
            val_annotations: path.display().to_string(),
            val_images: dir.path().join("images").display().to_string(),
            ..DataConfig::default()
        };
        let data = cfg.open(Split::Val, 0, &[]).unwrap();
        assert_eq!(data.len(), 3);
        assert_eq!(training_indices(data.as_ref()), vec![0, 2]);
        assert_eq!(data.summary().empty_images, 1);
        let e = cfg.open(Split::Train, 0, &[]).err().expect("train paths are empty").to_string();
        assert!(e.contains("data.train_annotations"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        assert!(DataConfig::default().validate().is_ok());
        let e = DataConfig { batch_size: 0, ..DataConfig::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("data.batch_size"), "{e}");
        let e = DataConfig { augment: AugmentKind::Semantic, short_sides: vec![], ..DataConfig::default() }
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.short_sides"), "{e}");
        let e =
            DataConfig { min_scale: 2.0, max_scale: 1.0, ..DataConfig::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("data.min_scale"), "{e}");
    }

    #[test]
    fn synthetic_splits_are_disjoint() {
        let cfg = DataConfig { synthetic_train: 2, synthetic_val: 2, synthetic_size: 32, ..DataConfig::default() };
        let (t, v) = (cfg.open(Split::Train, 0, &[]).unwrap(), cfg.open(Split::Val, 0, &[]).unwrap());
        assert_ne!(t.get(0).unwrap().image.pixels, v.get(0).unwrap().image.pixels);
    }
}
