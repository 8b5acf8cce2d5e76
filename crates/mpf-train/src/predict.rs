//! `mpf-train predict`: runs a checkpoint on image files and writes, per image, an overlay PNG
//! (class names, scores, fixed palette) and the masks as COCO RLE JSON; with `--layers`, a strip
//! per shown query with its mask at each of the decoder's predictions (0 = before the first
//! layer, L = the output), which makes MP-Former's layer-to-layer story visible.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use mpf_eval::coco::{RleJson, encode};
use mpf_eval::viz::{Labelled, overlay};
use mpf_model::Mask2Former;
use mpf_model::mask::BinaryMask;
use mpf_model::model::RgbImage;
use mpf_model::postprocess::{panoptic_inference, resize_to_output, semantic_inference};
use serde::Serialize;

use crate::config::{ExperimentConfig, Task};
use crate::device::BackendTask;
use crate::evaluate::{ImageOutput, instances, progress, run_image};
use mpf_data::augment::resize_image;

/// One predicted mask in the JSON output.
#[derive(Debug, Clone, Serialize)]
pub struct MaskRecord {
    /// Class id.
    pub label: usize,
    /// Class name.
    pub name: String,
    /// Score (instance: class × mask score; semantic: mean class probability is not defined, 1).
    pub score: f32,
    /// The decoder query it came from, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<usize>,
    /// Pixels.
    pub area: usize,
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// The mask as COCO compressed RLE.
    pub segmentation: RleJson,
}

/// The predictions of one image, as written to `NAME.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ImagePrediction {
    /// Input file.
    pub file: String,
    /// `[height, width]`.
    pub size: [usize; 2],
    /// Task of the config.
    pub task: Task,
    /// Masks, best first.
    pub masks: Vec<MaskRecord>,
    /// The overlay PNG.
    pub overlay: String,
    /// The layer strip PNG (with `--layers`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<String>,
}

/// Post-processes one image for the config's task: masks (best first) and the queries behind them.
pub fn predictions<B: Backend>(
    out: &ImageOutput<B>,
    cfg: &ExperimentConfig,
    min_score: f32,
) -> Vec<(MaskRecord, BinaryMask)> {
    let [h, w] = out.geometry.output;
    let record = |label: usize, score: f32, query: Option<usize>, mask: BinaryMask| {
        let rec = MaskRecord {
            label,
            name: cfg.class_name(label),
            score,
            query,
            area: mask.area(),
            bbox: mpf_eval::coco::bbox(&mask),
            segmentation: encode(&mask),
        };
        (rec, mask)
    };
    match cfg.task {
        Task::Instance => instances(out, cfg)
            .into_iter()
            .filter(|i| i.score >= min_score)
            .map(|i| record(i.label, i.score, Some(i.query), BinaryMask { height: h, width: w, data: i.mask }))
            .collect(),
        Task::Semantic => {
            let (cls, masks) = out.last();
            let sem = semantic_inference(cls, masks, out.geometry);
            (0..cfg.model.num_classes)
                .filter_map(|c| {
                    let data: Vec<bool> = sem.labels.iter().map(|&l| l as usize == c).collect();
                    data.iter().any(|&v| v).then(|| record(c, 1.0, None, BinaryMask { height: h, width: w, data }))
                })
                .collect()
        }
        Task::Panoptic => {
            let (cls, masks) = out.last();
            let pan = panoptic_inference(cls, masks, out.geometry, &cfg.test, &cfg.is_thing());
            pan.segment_masks([h, w]).into_iter().map(|(label, m)| record(label, 1.0, None, m)).collect()
        }
    }
}

/// Draws `masks` on `img` with "name score" labels.
pub fn draw(img: &RgbImage, masks: &[(MaskRecord, BinaryMask)], task: Task) -> anyhow::Result<RgbImage> {
    let items: Vec<Labelled<'_>> = masks
        .iter()
        .map(|(r, m)| Labelled {
            class: r.label,
            text: if task == Task::Instance { format!("{} {:.2}", r.name, r.score) } else { r.name.clone() },
            mask: m,
        })
        .collect();
    Ok(overlay(img, &items)?)
}

/// The queries a layer strip shows: those behind instance results, else the queries whose best
/// non-void class probability is highest (up to `max`).
fn strip_queries<B: Backend>(out: &ImageOutput<B>, shown: &[(MaskRecord, BinaryMask)], max: usize) -> Vec<usize> {
    let mut qs: Vec<usize> = Vec::new();
    for (r, _) in shown {
        if let Some(q) = r.query
            && !qs.contains(&q)
        {
            qs.push(q);
        }
    }
    if qs.is_empty() {
        let (cls, _) = out.last();
        let [q, k1] = cls.dims();
        let probs: Vec<f32> = softmax(cls, 1).into_data().convert::<f32>().to_vec().unwrap_or_default();
        let mut best: Vec<(f32, usize)> =
            (0..q).map(|i| (probs[i * k1..i * k1 + k1 - 1].iter().copied().fold(0.0, f32::max), i)).collect();
        best.sort_by(|a, b| b.0.total_cmp(&a.0));
        qs = best.into_iter().map(|(_, i)| i).collect();
    }
    qs.truncate(max);
    qs
}

/// A grid: one row per query, one column per prediction; each cell the image (scaled to
/// `cell` pixels wide) with the query's mask (`σ > 0.5`) tinted in its predicted class's colour.
pub fn layer_strip<B: Backend>(
    out: &ImageOutput<B>,
    img: &RgbImage,
    queries: &[usize],
    cfg: &ExperimentConfig,
    cell: usize,
) -> anyhow::Result<RgbImage> {
    let n_pred = out.output.predictions.len();
    let [h, w] = out.geometry.output;
    let ch = (h * cell / w.max(1)).max(1);
    let small = resize_image(img.clone(), [ch, cell]);
    let small_geo = mpf_model::postprocess::ImageGeometry { output: [ch, cell], ..out.geometry };
    let (gw, gh) = (cell * n_pred, ch * queries.len().max(1));
    let mut grid = vec![255u8; gw * gh * 3];
    if queries.is_empty() {
        return Ok(RgbImage { height: gh, width: gw, pixels: grid });
    }
    let device = out.output.predictions[0].mask_logits.device();
    let shown = Tensor::<B, 1, Int>::from_data(
        TensorData::new(queries.iter().map(|&q| q as i64).collect::<Vec<_>>(), [queries.len()]),
        &device,
    );
    for i in 0..n_pred {
        let (cls, masks) = out.prediction(i);
        let k1 = cls.dims()[1];
        let probs: Vec<f32> = softmax(cls, 1).into_data().convert::<f32>().to_vec().unwrap_or_default();
        // Only the shown queries are resized.
        let maps: Vec<f32> = resize_to_output(masks.select(0, shown.clone()), small_geo)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        for (row, &q) in queries.iter().enumerate() {
            let p = &probs[q * k1..(q + 1) * k1];
            let label = (0..k1).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
            let n = ch * cell;
            let mask = BinaryMask {
                height: ch,
                width: cell,
                data: maps[row * n..(row + 1) * n].iter().map(|&v| v > 0.0).collect(),
            };
            let text = if label + 1 == k1 {
                format!("q{q} p{i} void")
            } else {
                format!("q{q} p{i} {}", cfg.class_name(label))
            };
            // Void predictions are drawn in grey so a query's class switching is visible.
            let class = if label + 1 == k1 { 7 } else { label };
            let tile = overlay(&small, &[Labelled { class, text, mask: &mask }])?;
            for y in 0..ch {
                let dst = ((row * ch + y) * gw + i * cell) * 3;
                grid[dst..dst + cell * 3].copy_from_slice(&tile.pixels[y * cell * 3..(y + 1) * cell * 3]);
            }
        }
    }
    Ok(RgbImage { height: gh, width: gw, pixels: grid })
}

/// Image files of `input` (a file, or every PNG/JPEG/TIFF in a folder, sorted).
pub fn list_images(input: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(input)
        .with_context(|| format!("cannot read {}", input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| {
                matches!(e.to_string_lossy().to_lowercase().as_str(), "png" | "jpg" | "jpeg" | "tif" | "tiff")
            })
        })
        .collect();
    v.sort();
    anyhow::ensure!(!v.is_empty(), "{} holds no PNG, JPEG or TIFF image", input.display());
    Ok(v)
}

/// What `predict` draws.
#[derive(Debug, Clone, Copy)]
pub struct PredictOptions {
    /// Minimum instance score drawn and written.
    pub min_score: f32,
    /// Also write layer strips.
    pub layers: bool,
}

/// Writes `DIR/STEM.png` (overlay), `DIR/STEM.json` (masks) and with `opts.layers`
/// `DIR/STEM_layers.png` for one image; `file` names it in errors and in the JSON.
pub fn write_prediction<B: Backend>(
    model: &Mask2Former<B>,
    cfg: &ExperimentConfig,
    (img, file, stem): (&RgbImage, &str, &str),
    out_dir: &Path,
    opts: PredictOptions,
    device: &B::Device,
) -> anyhow::Result<ImagePrediction> {
    let out = run_image(model, cfg, img, file, device)?;
    let masks = predictions(&out, cfg, opts.min_score);
    let overlay_path = out_dir.join(format!("{stem}.png"));
    mpf_data::write_png(&overlay_path, &draw(img, &masks, cfg.task)?)?;
    let layers_path = if opts.layers {
        let qs = strip_queries(&out, &masks, 8);
        let strip = layer_strip(&out, img, &qs, cfg, 160.min(img.width.max(16)))?;
        let p = out_dir.join(format!("{stem}_layers.png"));
        mpf_data::write_png(&p, &strip)?;
        Some(p.display().to_string())
    } else {
        None
    };
    let pred = ImagePrediction {
        file: file.to_string(),
        size: [img.height, img.width],
        task: cfg.task,
        masks: masks.into_iter().map(|(r, _)| r).collect(),
        overlay: overlay_path.display().to_string(),
        layers: layers_path,
    };
    let json = out_dir.join(format!("{stem}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&pred)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    Ok(pred)
}

/// `predict` over files.
#[derive(Debug, Clone)]
pub struct PredictTask {
    /// The checkpoint folder.
    pub checkpoint: PathBuf,
    /// Its config (with overrides).
    pub config: ExperimentConfig,
    /// Image files.
    pub inputs: Vec<PathBuf>,
    /// Output folder.
    pub output: PathBuf,
    /// Score threshold and layer strips.
    pub options: PredictOptions,
    /// Show a progress bar.
    pub progress: bool,
}

/// What `predict` did: the images it predicted, and the ones it could not read or run, with why.
#[derive(Debug, Clone, Serialize)]
pub struct PredictReport {
    /// One entry per predicted image, in input order (also written to `predictions.json`).
    pub predictions: Vec<ImagePrediction>,
    /// `(file, error)` for every image that failed (also written to `errors.json` when any did).
    pub failures: Vec<(String, String)>,
}

impl BackendTask for PredictTask {
    type Output = anyhow::Result<PredictReport>;

    /// Predicts every input; an image that cannot be read or run is recorded in the report's
    /// failures and the others still go through, so one bad file never loses the batch.
    fn run<B: Backend>(self, device: B::Device, _: &str) -> Self::Output {
        let model = crate::checkpoint::load::<B>(&self.checkpoint, &self.config, &device)?.model;
        std::fs::create_dir_all(&self.output).with_context(|| format!("cannot create {}", self.output.display()))?;
        let pb = progress(self.inputs.len() as u64, self.progress, "predict");
        let mut report = PredictReport { predictions: Vec::new(), failures: Vec::new() };
        for path in &self.inputs {
            let file = path.display().to_string();
            let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "image".into());
            let one = mpf_data::read_rgb(path, &file).map_err(anyhow::Error::from).and_then(|img| {
                write_prediction(&model, &self.config, (&img, &file, &stem), &self.output, self.options, &device)
            });
            match one {
                Ok(p) => report.predictions.push(p),
                Err(e) => report.failures.push((file, format!("{e:#}"))),
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        let write = |name: &str, text: String| {
            let path = self.output.join(name);
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
        };
        write("predictions.json", serde_json::to_string_pretty(&report.predictions)?)?;
        let errors = self.output.join("errors.json");
        if report.failures.is_empty() {
            if errors.exists() {
                std::fs::remove_file(&errors).with_context(|| format!("cannot remove {}", errors.display()))?;
            }
        } else {
            let list: Vec<serde_json::Value> =
                report.failures.iter().map(|(f, e)| serde_json::json!({"file": f, "error": e})).collect();
            write("errors.json", serde_json::to_string_pretty(&list)?)?;
        }
        Ok(report)
    }
}
