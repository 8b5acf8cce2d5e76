//! Evaluation of a model on a data set: one image at a time (detectron2's test batch size),
//! optionally resized (`data.test_short_side`), post-processed for the config's task at the
//! original image size, and scored — mask AP through hotcoco's COCOeval for `instance` configs,
//! PQ (hotcoco's panopticapi port) plus mask AP over the thing classes for `panoptic` configs,
//! mIoU for `semantic` configs.
//!
//! Speed is measured on the way: the model alone (synchronised) and model + post-processing.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use mpf_data::augment::resize_image;
use mpf_data::config::Format;
use mpf_data::{Dataset, Sample};
use mpf_eval::coco::{self, CocoMetrics, InstancePrediction, ResultRow};
use mpf_eval::panoptic::{self as pan, PanopticBuilder, PanopticMetrics};
use mpf_eval::semantic::{ConfusionMatrix, SemanticMetrics};
use mpf_model::Mask2Former;
use mpf_model::decoder::DecoderOutput;
use mpf_model::mask::BinaryMask;
use mpf_model::model::{ImageBatch, RgbImage};
use mpf_model::postprocess::{ImageGeometry, Instance, instance_inference, panoptic_inference, semantic_inference};
use serde::Serialize;

use crate::config::{ExperimentConfig, Task};

/// Throughput of an evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Speed {
    /// Device string.
    pub device: String,
    /// Images per second, model only (backbone → last decoder prediction, synchronised).
    pub model_images_per_s: f64,
    /// Images per second including resize, post-processing and result encoding.
    pub end_to_end_images_per_s: f64,
}

/// Results of one evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// The task scored.
    pub task: Task,
    /// Images evaluated.
    pub images: usize,
    /// Mask AP (instance and panoptic tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coco: Option<CocoMetrics>,
    /// PQ (panoptic task).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub panoptic: Option<PanopticMetrics>,
    /// mIoU (semantic task).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semantic: Option<SemanticMetrics>,
    /// Throughput.
    pub speed: Speed,
    /// The COCO results rows (instance and panoptic tasks).
    #[serde(skip)]
    pub rows: Vec<ResultRow>,
    /// Class names, for the tables.
    #[serde(skip)]
    pub class_names: Vec<String>,
}

impl Evaluation {
    /// The headline metric in percent: `("PQ", PQ)`, `("AP", 100·AP)` or `("mIoU", mIoU)`.
    /// "Nothing to score" (pycocotools' −1) is reported as 0.
    pub fn primary(&self) -> (&'static str, f64) {
        match (&self.panoptic, &self.coco, &self.semantic) {
            (Some(p), _, _) => ("PQ", p.all.pq.unwrap_or(0.0)),
            (None, Some(c), _) => ("AP", 100.0 * c.ap().max(0.0)),
            (None, None, Some(s)) => ("mIoU", s.miou),
            _ => ("none", 0.0),
        }
    }

    /// A short printable summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        if let Some(p) = &self.panoptic {
            s += &format!("panoptic quality over {} images:\n{}", p.images, p.table());
        }
        if let Some(c) = &self.coco {
            s += &format!("mask AP over {} images ({} detections):\n{}", self.images, c.detections, c.table());
        }
        if let Some(m) = &self.semantic {
            s += &format!(
                "semantic over {} images: mIoU {:.2}  fwIoU {:.2}  mACC {:.2}  pACC {:.2}\nIoU per class:\n",
                self.images, m.miou, m.fwiou, m.macc, m.pacc
            );
            for (k, iou) in m.per_class_iou.iter().enumerate() {
                let name = self.class_names.get(k).cloned().unwrap_or_else(|| format!("class_{k}"));
                s += &match iou {
                    Some(v) => format!("  {name:<24} {v:6.2}\n"),
                    None => format!("  {name:<24}      – (absent)\n"),
                };
            }
        }
        s += &format!(
            "speed on {}: {:.2} images/s model only, {:.2} images/s with post-processing\n",
            self.speed.device, self.speed.model_images_per_s, self.speed.end_to_end_images_per_s
        );
        s
    }
}

/// The network outputs of one image, ready for post-processing.
pub struct ImageOutput<B: Backend> {
    /// All predictions (the last is the one post-processing uses).
    pub output: DecoderOutput<B>,
    /// Where the image sits in the model input and the size results should have.
    pub geometry: ImageGeometry,
}

impl<B: Backend> ImageOutput<B> {
    /// Class logits `[Q, K+1]` and mask logits `[Q, H/4, W/4]` of prediction `i`.
    pub fn prediction(&self, i: usize) -> (Tensor<B, 2>, Tensor<B, 3>) {
        let p = &self.output.predictions[i];
        let [_, q, k1] = p.class_logits.dims();
        let [_, _, h4, w4] = p.mask_logits.dims();
        (p.class_logits.clone().reshape([q, k1]), p.mask_logits.clone().reshape([q, h4, w4]))
    }

    /// The last prediction.
    pub fn last(&self) -> (Tensor<B, 2>, Tensor<B, 3>) {
        self.prediction(self.output.predictions.len() - 1)
    }
}

/// Runs the model on one image at the config's test size; results map back to the image's size.
pub fn run_image<B: Backend>(
    model: &Mask2Former<B>,
    cfg: &ExperimentConfig,
    img: &RgbImage,
    item: &str,
    device: &B::Device,
) -> anyhow::Result<ImageOutput<B>> {
    let size = [img.height, img.width];
    let resized = resize_image(img.clone(), cfg.data.test_size(size));
    let batch = ImageBatch::<B>::from_images(std::slice::from_ref(&resized), &cfg.input, device)
        .with_context(|| format!("image {item}"))?;
    let [_, _, hp, wp] = batch.images.dims();
    let output = model.forward(batch.images);
    let geometry = ImageGeometry { padded: [hp, wp], image: [resized.height, resized.width], output: size };
    Ok(ImageOutput { output, geometry })
}

/// Instance results of one image (things only when `is_thing` is given).
pub fn instances<B: Backend>(out: &ImageOutput<B>, cfg: &ExperimentConfig) -> Vec<Instance> {
    let (cls, masks) = out.last();
    let things = cfg.is_thing();
    let filter = (cfg.task == Task::Panoptic).then_some(things.as_slice());
    instance_inference(cls, masks, out.geometry, &cfg.test, filter)
}

/// The ground-truth label map of a sample (`ignore` where no object is).
pub fn label_map(objects: &[mpf_data::Object], [h, w]: [usize; 2], ignore: u32) -> Vec<u32> {
    let mut map = vec![ignore; h * w];
    for o in objects {
        for (v, &m) in map.iter_mut().zip(&o.mask.data) {
            if m {
                *v = o.label as u32;
            }
        }
    }
    map
}

/// A progress bar (hidden when `show` is false).
pub fn progress(len: u64, show: bool, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// The scores an [`Evaluator`] produces.
#[derive(Debug, Clone, Default)]
pub struct Scores {
    /// Mask AP (instance and panoptic tasks).
    pub coco: Option<CocoMetrics>,
    /// PQ (panoptic task).
    pub panoptic: Option<PanopticMetrics>,
    /// mIoU (semantic task).
    pub semantic: Option<SemanticMetrics>,
    /// COCO results rows (instance and panoptic tasks).
    pub rows: Vec<ResultRow>,
}

/// Scores a model image by image (detectron2's `DatasetEvaluator`): [`add`](Evaluator::add) each
/// image's ground truth and network output, then [`finish`](Evaluator::finish).
pub trait Evaluator<B: Backend> {
    /// Adds one image: its sample (ground truth at the original size) and the network's output.
    fn add(&mut self, sample: &Sample, output: &ImageOutput<B>) -> anyhow::Result<()>;
    /// The scores over every image added.
    fn finish(self: Box<Self>) -> anyhow::Result<Scores>;
}

/// Mask AP through COCOeval: instance post-processing, COCO RLE rows, and the ground truth either
/// from the data set's own COCO JSON (`data.format = "coco"`, crowd regions kept) or built from
/// the samples. For a panoptic config only the thing classes are scored.
pub struct InstanceEvaluator {
    cfg: ExperimentConfig,
    category_ids: Vec<u64>,
    predictions: Vec<InstancePrediction>,
    image_ids: Vec<u64>,
    gt: coco::GroundTruthBuilder,
}

impl InstanceEvaluator {
    /// An evaluator for `data` under `cfg`.
    pub fn new(cfg: &ExperimentConfig, data: &dyn Dataset) -> Self {
        Self {
            cfg: cfg.clone(),
            category_ids: coco::category_ids(data),
            predictions: Vec::new(),
            image_ids: Vec::new(),
            gt: coco::GroundTruthBuilder::new(data.classes()),
        }
    }
}

impl<B: Backend> Evaluator<B> for InstanceEvaluator {
    fn add(&mut self, sample: &Sample, out: &ImageOutput<B>) -> anyhow::Result<()> {
        self.image_ids.push(sample.id);
        if self.cfg.data.format != Format::Coco {
            self.gt.add(sample);
        }
        let size = [sample.image.height, sample.image.width];
        for inst in instances(out, &self.cfg) {
            self.predictions.push(InstancePrediction {
                image_id: sample.id,
                label: inst.label,
                score: inst.score,
                mask: BinaryMask { height: size[0], width: size[1], data: inst.mask },
            });
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> anyhow::Result<Scores> {
        let rows = coco::result_rows(&self.predictions, &self.category_ids)?;
        let gt = if self.cfg.data.format == Format::Coco {
            coco::load_ground_truth(Path::new(&self.cfg.data.val_annotations))?
        } else {
            self.gt.finish()
        };
        let metrics = coco::evaluate_segm(gt, &rows, &self.image_ids)?;
        Ok(Scores { coco: Some(metrics), rows, ..Scores::default() })
    }
}

/// PQ through hotcoco's panopticapi port, plus mask AP over the thing classes.
pub struct PanopticEvaluator {
    /// Mask AP over the thing classes; also holds the config and the image ids.
    instances: InstanceEvaluator,
    builder: PanopticBuilder,
}

impl PanopticEvaluator {
    /// An evaluator for `data` under `cfg`.
    pub fn new(cfg: &ExperimentConfig, data: &dyn Dataset) -> Self {
        Self { instances: InstanceEvaluator::new(cfg, data), builder: PanopticBuilder::new(data.classes()) }
    }
}

impl<B: Backend> Evaluator<B> for PanopticEvaluator {
    fn add(&mut self, sample: &Sample, out: &ImageOutput<B>) -> anyhow::Result<()> {
        self.builder.add_ground_truth(sample);
        let cfg = &self.instances.cfg;
        let (cls, masks) = out.last();
        let r = panoptic_inference(cls, masks, out.geometry, &cfg.test, &cfg.is_thing());
        self.builder.add_prediction(sample.id, &r.segment_masks([sample.image.height, sample.image.width]));
        Evaluator::<B>::add(&mut self.instances, sample, out)
    }

    fn finish(self: Box<Self>) -> anyhow::Result<Scores> {
        let (mut gt_pan, pred) = self.builder.finish();
        let (d, ids) = (&self.instances.cfg.data, &self.instances.image_ids);
        if d.format == Format::CocoPanoptic {
            // The original files keep crowd segments, which the reader drops from targets.
            gt_pan = pan::load(Path::new(&d.val_annotations), Some(Path::new(&d.val_panoptic)))?;
            gt_pan.images.retain(|i| ids.contains(&i.id));
            gt_pan.annotations.retain(|a| ids.contains(&a.image_id));
        }
        let panoptic = pan::evaluate(gt_pan, pred)?;
        let mut scores = Evaluator::<B>::finish(Box::new(self.instances))?;
        scores.panoptic = Some(panoptic);
        Ok(scores)
    }
}

/// mIoU and friends from a confusion matrix of per-pixel labels.
pub struct SemanticEvaluator {
    confusion: ConfusionMatrix,
    ignore: u32,
}

impl SemanticEvaluator {
    /// An evaluator for `cfg`'s classes.
    pub fn new(cfg: &ExperimentConfig) -> Self {
        let ignore = cfg.data.ignore_label as u32;
        Self { confusion: ConfusionMatrix::new(cfg.model.num_classes, ignore), ignore }
    }
}

impl<B: Backend> Evaluator<B> for SemanticEvaluator {
    fn add(&mut self, sample: &Sample, out: &ImageOutput<B>) -> anyhow::Result<()> {
        let (cls, masks) = out.last();
        let sem = semantic_inference(cls, masks, out.geometry);
        let size = [sample.image.height, sample.image.width];
        let gt = label_map(&sample.objects, size, self.ignore);
        self.confusion.add(&gt, &sem.labels, &sample.file)?;
        Ok(())
    }

    fn finish(self: Box<Self>) -> anyhow::Result<Scores> {
        Ok(Scores { semantic: Some(self.confusion.metrics()), ..Scores::default() })
    }
}

/// The evaluator of `cfg.task`.
pub fn evaluator_for<B: Backend>(cfg: &ExperimentConfig, data: &dyn Dataset) -> Box<dyn Evaluator<B>> {
    match cfg.task {
        Task::Instance => Box::new(InstanceEvaluator::new(cfg, data)),
        Task::Panoptic => Box::new(PanopticEvaluator::new(cfg, data)),
        Task::Semantic => Box::new(SemanticEvaluator::new(cfg)),
    }
}

/// Evaluates `model` on the first `max_images` images of `data` (all when 0) with the task's
/// [`Evaluator`], timing the model alone and with post-processing.
pub fn evaluate<B: Backend>(
    model: &Mask2Former<B>,
    cfg: &ExperimentConfig,
    data: &dyn Dataset,
    device: &B::Device,
    device_name: &str,
    max_images: usize,
    show_progress: bool,
) -> anyhow::Result<Evaluation> {
    let n = if max_images == 0 { data.len() } else { max_images.min(data.len()) };
    let pb = progress(n as u64, show_progress, "eval");
    let mut evaluator = evaluator_for::<B>(cfg, data);
    let (mut model_s, mut total_s) = (0.0, 0.0);
    for i in 0..n {
        let sample = data.get(i)?;
        let t0 = Instant::now();
        let out = run_image(model, cfg, &sample.image, &sample.file, device)?;
        let _ = out.output.predictions.last().map(|p| p.class_logits.to_data());
        model_s += t0.elapsed().as_secs_f64();
        evaluator.add(&sample, &out)?;
        total_s += t0.elapsed().as_secs_f64();
        pb.inc(1);
    }
    pb.finish_and_clear();
    let Scores { coco, panoptic, semantic, rows } = evaluator.finish()?;
    let speed = Speed {
        device: device_name.to_string(),
        model_images_per_s: n as f64 / model_s.max(1e-9),
        end_to_end_images_per_s: n as f64 / total_s.max(1e-9),
    };
    let class_names = data.classes().iter().map(|c| c.name.clone()).collect();
    Ok(Evaluation { task: cfg.task, images: n, coco, panoptic, semantic, speed, rows, class_names })
}

/// `eval`: a checkpoint on the config's validation split, written to `output`.
#[derive(Debug, Clone)]
pub struct EvalTask {
    /// The checkpoint folder.
    pub checkpoint: std::path::PathBuf,
    /// Its config with overrides (the validation split is what is evaluated).
    pub config: ExperimentConfig,
    /// At most this many images (0 = all).
    pub max_images: usize,
    /// Folder for `metrics.json` and `results.json`.
    pub output: std::path::PathBuf,
}

impl crate::device::BackendTask for EvalTask {
    type Output = anyhow::Result<Evaluation>;

    fn run<B: Backend>(self, device: B::Device, name: &str) -> Self::Output {
        let cfg = &self.config;
        let model = crate::checkpoint::load::<B>(&self.checkpoint, cfg, &device)?.model;
        let data = cfg.data.open(mpf_data::config::Split::Val, cfg.seed, &cfg.class_names)?;
        if data.classes().len() != cfg.model.num_classes {
            anyhow::bail!(
                "the evaluation data has {} classes but the checkpoint's model.num_classes is {}",
                data.classes().len(),
                cfg.model.num_classes
            );
        }
        let ev = evaluate(&model, cfg, data.as_ref(), &device, name, self.max_images, true)?;
        std::fs::create_dir_all(&self.output).with_context(|| format!("cannot create {}", self.output.display()))?;
        let metrics = self.output.join("metrics.json");
        std::fs::write(&metrics, serde_json::to_string_pretty(&ev)?)
            .with_context(|| format!("cannot write {}", metrics.display()))?;
        if ev.coco.is_some() {
            mpf_eval::coco::write_results(&self.output.join("results.json"), &ev.rows)?;
        }
        Ok(ev)
    }
}
