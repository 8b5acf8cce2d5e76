//! `mpf-train forward`: one inference pass over images, post-processed for the config's task, with
//! timings and a JSON report. Weights come from a checkpoint (`--checkpoint`, e.g. written by
//! `mpf-train import`) or, without one, from the config's seeded random initialisation, which checks
//! the pipeline and measures speed but gives no meaningful segmentation.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::prelude::*;
use mpf_model::model::{ImageBatch, RgbImage};
use mpf_model::postprocess::{ImageGeometry, instance_inference, panoptic_inference, semantic_inference};
use serde::Serialize;

use crate::config::{ExperimentConfig, Task};
use crate::device::BackendTask;

/// Inputs of a forward run.
#[derive(Debug, Clone)]
pub struct ForwardTask {
    /// The resolved experiment config.
    pub config: ExperimentConfig,
    /// Image files; when empty, one synthetic image of `synthetic_size` is used.
    pub inputs: Vec<PathBuf>,
    /// `[height, width]` of the synthetic image.
    pub synthetic_size: [usize; 2],
    /// Folder for `forward.json` and label maps.
    pub output: PathBuf,
    /// Checkpoint folder to load weights from; `None` runs the seeded random initialisation.
    pub checkpoint: Option<PathBuf>,
}

/// One detected instance in the report.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceReport {
    /// Class id.
    pub label: usize,
    /// Class name.
    pub name: String,
    /// Final score.
    pub score: f32,
    /// Mask area in pixels.
    pub area: usize,
}

/// Per-image results.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// Source file, or `synthetic`.
    pub file: String,
    /// Original `[height, width]`.
    pub size: [usize; 2],
    /// Padded model input `[H, W]`.
    pub padded: [usize; 2],
    /// Backbone + pixel decoder + decoder, milliseconds (synchronised).
    pub forward_ms: f64,
    /// Post-processing, milliseconds.
    pub postprocess_ms: f64,
    /// Instance results (task `instance`), best first, at most 20.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<InstanceReport>>,
    /// Pixels per class (task `semantic`), classes with at least one pixel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semantic_pixels: Option<Vec<(String, usize)>>,
    /// Segments (task `panoptic`): (id, class name, is thing, area).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<(u32, String, bool, usize)>>,
    /// Label or segment-id map written next to the report (semantic / panoptic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_map: Option<String>,
}

/// The `forward.json` report.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardReport {
    /// Device string.
    pub device: String,
    /// Post-processing task.
    pub task: Task,
    /// Where the weights came from.
    pub weights: String,
    /// Per image.
    pub images: Vec<ImageReport>,
}

/// A deterministic test card: a colour gradient with a few flat shapes, so the forward command
/// runs on a fresh machine without any image file.
pub fn synthetic_image(height: usize, width: usize) -> RgbImage {
    let mut pixels = Vec::with_capacity(height * width * 3);
    for y in 0..height {
        for x in 0..width {
            let (fy, fx) = (y as f32 / height as f32, x as f32 / width as f32);
            let in_disc = (fx - 0.3).powi(2) + (fy - 0.4).powi(2) < 0.04;
            let in_box = (0.55..0.85).contains(&fx) && (0.5..0.9).contains(&fy);
            let rgb = if in_disc {
                [220, 40, 40]
            } else if in_box {
                [30, 90, 200]
            } else {
                [(255.0 * fx) as u8, (255.0 * fy) as u8, 128]
            };
            pixels.extend_from_slice(&rgb);
        }
    }
    RgbImage { height, width, pixels }
}

/// Reads an image file as RGB.
pub fn read_image(path: &Path) -> anyhow::Result<RgbImage> {
    let img = image::open(path).with_context(|| format!("cannot read image {}", path.display()))?.to_rgb8();
    Ok(RgbImage { height: img.height() as usize, width: img.width() as usize, pixels: img.into_raw() })
}

fn write_label_map(path: &Path, labels: &[u32], [h, w]: [usize; 2]) -> anyhow::Result<()> {
    let data: Vec<u16> = labels.iter().map(|&v| v.min(u16::MAX as u32) as u16).collect();
    let img =
        image::ImageBuffer::<image::Luma<u16>, _>::from_raw(w as u32, h as u32, data).context("label map size")?;
    img.save(path).with_context(|| format!("cannot write {}", path.display()))
}

impl BackendTask for ForwardTask {
    type Output = anyhow::Result<ForwardReport>;

    fn run<B: Backend>(self, device: B::Device, name: &str) -> Self::Output {
        let cfg = &self.config;
        B::seed(&device, cfg.seed);
        let (model, weights) = match &self.checkpoint {
            Some(dir) => {
                let info = crate::checkpoint::read_info(dir)?;
                (
                    crate::checkpoint::load::<B>(dir, cfg, &device)?.model,
                    format!("checkpoint {} ({})", dir.display(), info.source),
                )
            }
            None => (cfg.model.init::<B>(&device)?, format!("random initialisation (seed {})", cfg.seed)),
        };
        std::fs::create_dir_all(&self.output).with_context(|| format!("cannot create {}", self.output.display()))?;
        let sources: Vec<(String, RgbImage)> = if self.inputs.is_empty() {
            vec![("synthetic".into(), synthetic_image(self.synthetic_size[0], self.synthetic_size[1]))]
        } else {
            self.inputs.iter().map(|p| Ok((p.display().to_string(), read_image(p)?))).collect::<anyhow::Result<_>>()?
        };
        let is_thing = cfg.is_thing();
        let mut images = Vec::new();
        for (idx, (file, img)) in sources.into_iter().enumerate() {
            let size = [img.height, img.width];
            let batch = ImageBatch::<B>::from_images(std::slice::from_ref(&img), &cfg.input, &device)
                .with_context(|| format!("image {file}"))?;
            let [_, _, hp, wp] = batch.images.dims();
            let t0 = Instant::now();
            let out = model.forward(batch.images);
            let last = out.last_matching();
            let [_, q, k1] = last.class_logits.dims();
            let [_, _, h4, w4] = last.mask_logits.dims();
            let cls = last.class_logits.reshape([q, k1]);
            let masks = last.mask_logits.reshape([q, h4, w4]);
            // Synchronise so the timing covers the device work.
            let _ = cls.to_data();
            let forward_ms = t0.elapsed().as_secs_f64() * 1e3;
            let geo = ImageGeometry { padded: [hp, wp], image: size, output: size };
            let t1 = Instant::now();
            let mut report = ImageReport {
                file,
                size,
                padded: [hp, wp],
                forward_ms,
                postprocess_ms: 0.0,
                instances: None,
                semantic_pixels: None,
                segments: None,
                label_map: None,
            };
            match cfg.task {
                Task::Instance => {
                    let inst = instance_inference(cls, masks, geo, &cfg.test, None);
                    report.instances = Some(
                        inst.iter()
                            .take(20)
                            .map(|i| InstanceReport {
                                label: i.label,
                                name: cfg.class_name(i.label),
                                score: i.score,
                                area: i.mask.iter().filter(|&&m| m).count(),
                            })
                            .collect(),
                    );
                }
                Task::Semantic => {
                    let sem = semantic_inference(cls, masks, geo);
                    let mut counts = vec![0usize; cfg.model.num_classes];
                    for &l in &sem.labels {
                        counts[l as usize] += 1;
                    }
                    report.semantic_pixels = Some(
                        counts
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| **c > 0)
                            .map(|(i, c)| (cfg.class_name(i), *c))
                            .collect(),
                    );
                    let path = self.output.join(format!("image{idx}_semantic.png"));
                    write_label_map(&path, &sem.labels, size)?;
                    report.label_map = Some(path.display().to_string());
                }
                Task::Panoptic => {
                    let pan = panoptic_inference(cls, masks, geo, &cfg.test, &is_thing);
                    report.segments = Some(
                        pan.segments
                            .iter()
                            .map(|s| (s.id, cfg.class_name(s.category_id), s.is_thing, s.area))
                            .collect(),
                    );
                    let path = self.output.join(format!("image{idx}_panoptic.png"));
                    write_label_map(&path, &pan.ids, size)?;
                    report.label_map = Some(path.display().to_string());
                }
            }
            report.postprocess_ms = t1.elapsed().as_secs_f64() * 1e3;
            images.push(report);
        }
        let report = ForwardReport { device: name.into(), task: cfg.task, weights, images };
        let path = self.output.join("forward.json");
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(report)
    }
}
