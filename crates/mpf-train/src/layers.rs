//! `mpf-train layers`: the layer-consistency metrics of MP-Former's analysis (Util^i against the
//! last and the previous prediction, mIoU-L^i; see [`mpf_eval::layers`]) for one or more
//! checkpoints on the validation split, as JSON and as PNG line plots comparing the runs.
//!
//! Each image is resized to the test size and padded as in training, run in inference mode (no
//! MP part) with all predictions kept, and every prediction is matched to the ground truth by the
//! training matcher on one set of points per image (drawn from the `MatcherPoints` stream keyed
//! by the image index, so runs compare on identical points).

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::prelude::*;
use mpf_criterion::matcher::{MatchStats, MatchTarget, match_predictions, matcher_points};
use mpf_data::batch::Batch;
use mpf_data::config::Split;
use mpf_eval::layers::{LayerCounts, LayerMetrics};
use mpf_eval::viz::{Series, line_plot};
use mpf_model::rng::{Stream, stream};
use serde::Serialize;

use crate::config::ExperimentConfig;
use crate::device::BackendTask;
use crate::evaluate::progress;

/// One checkpoint to analyse.
#[derive(Debug, Clone)]
pub struct LayerRun {
    /// Name in the JSON and the plots.
    pub label: String,
    /// The checkpoint folder.
    pub checkpoint: PathBuf,
    /// Its config (with overrides); its validation split is analysed.
    pub config: ExperimentConfig,
}

/// The metrics of one run.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// The run's label.
    pub label: String,
    /// The checkpoint folder.
    pub checkpoint: String,
    /// The metrics.
    pub metrics: LayerMetrics,
}

/// `layers` over several checkpoints.
#[derive(Debug, Clone)]
pub struct LayersTask {
    /// The runs to compare.
    pub runs: Vec<LayerRun>,
    /// Images per run (0 = the whole validation split).
    pub max_images: usize,
    /// Folder for `layers.json`, `util.png` and `miou_l.png`.
    pub output: PathBuf,
    /// Show progress bars.
    pub progress: bool,
}

/// The metrics of one checkpoint on its validation split.
pub fn analyse<B: Backend>(
    run: &LayerRun,
    max_images: usize,
    show: bool,
    device: &B::Device,
) -> anyhow::Result<LayerMetrics> {
    let cfg = &run.config;
    let model = crate::checkpoint::load::<B>(&run.checkpoint, cfg, device)?.model;
    let data = cfg.data.open(Split::Val, cfg.seed, &cfg.class_names)?;
    let n = if max_images == 0 { data.len() } else { max_images.min(data.len()) };
    let weights = cfg.loss.matcher_weights();
    let pb = progress(n as u64, show, &format!("layers {}", run.label));
    let mut counts = LayerCounts::default();
    for i in 0..n {
        let s = data.get(i)?;
        let size = cfg.data.test_size([s.image.height, s.image.width]);
        let s = mpf_data::augment::resize(s, size);
        if s.objects.is_empty() {
            pb.inc(1);
            continue;
        }
        let batch = Batch::collate(vec![s], cfg.input.size_divisibility)?;
        let images = batch.images_tensor::<B>(&cfg.input, device)?;
        let labels = batch.labels(0);
        let gt_masks: Vec<_> = batch.objects[0].iter().map(|o| o.mask.clone()).collect();
        let points = matcher_points(1, weights.num_points, &mut stream(cfg.seed, Stream::MatcherPoints, i as u64));
        let target = MatchTarget { labels: &labels, masks: &gt_masks, points: &points[0] };
        let out = model.forward(images.images);
        let class: Vec<_> = out.predictions.iter().map(|p| p.class_logits.clone()).collect();
        let mask_logits: Vec<_> = out.predictions.iter().map(|p| p.mask_logits.clone()).collect();
        let mut stats = MatchStats::default();
        let found = match_predictions(&class, &mask_logits, &[target], &weights, &mut stats)?;
        let mut assign = Vec::new();
        let mut masks = Vec::new();
        for (p, a) in out.predictions.iter().zip(found) {
            let mut per_object = vec![None; labels.len()];
            for &(q, g) in &a[0] {
                per_object[g] = Some(q);
            }
            assign.push(per_object);
            let [_, q, h, w] = p.mask_logits.dims();
            let logits: Vec<f32> = p.mask_logits.clone().into_data().convert::<f32>().to_vec().unwrap_or_default();
            masks.push((0..q).map(|k| logits[k * h * w..(k + 1) * h * w].iter().map(|&v| v > 0.0).collect()).collect());
        }
        counts.add_image(&assign, &masks)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(counts.metrics())
}

/// Writes `layers.json`, `util.png` (Util^i against the last and the previous prediction) and
/// `miou_l.png` into `dir`.
pub fn write_reports(dir: &Path, reports: &[LayerReport]) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = dir.join("layers.json");
    std::fs::write(&json, serde_json::to_string_pretty(reports)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    let series = |f: &dyn Fn(&LayerMetrics) -> &Vec<f64>, suffix: &str| -> Vec<Series> {
        reports
            .iter()
            .map(|r| Series {
                name: format!("{}{suffix}", r.label),
                points: f(&r.metrics).iter().enumerate().map(|(k, &v)| ((k + 1) as f64, v)).collect(),
            })
            .collect()
    };
    let util = dir.join("util.png");
    let mut s = series(&|m| &m.util_last, " vs last");
    s.extend(series(&|m| &m.util_prev, " vs previous"));
    line_plot(&util, "query utilisation Util^i", "decoder layer i", "Util^i", &s)?;
    let miou = dir.join("miou_l.png");
    line_plot(&miou, "layer-to-layer mask IoU mIoU-L^i", "decoder layer i", "mIoU-L^i", &series(&|m| &m.miou_l, ""))?;
    Ok(vec![json, util, miou])
}

impl BackendTask for LayersTask {
    type Output = anyhow::Result<(Vec<LayerReport>, Vec<PathBuf>)>;

    fn run<B: Backend>(self, device: B::Device, _: &str) -> Self::Output {
        let mut reports = Vec::new();
        for run in &self.runs {
            let metrics = analyse::<B>(run, self.max_images, self.progress, &device)?;
            reports.push(LayerReport {
                label: run.label.clone(),
                checkpoint: run.checkpoint.display().to_string(),
                metrics,
            });
        }
        let files = write_reports(&self.output, &reports)?;
        Ok((reports, files))
    }
}
