//! The end of a training run: the final evaluation's files, loss and metric curves from
//! `metrics.jsonl` (so a resumed run plots its whole history), and prediction overlays.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::prelude::*;
use mpf_data::Dataset;
use mpf_eval::viz::{Series, line_plot};
use mpf_model::Mask2Former;

use crate::config::ExperimentConfig;
use crate::evaluate::Evaluation;
use crate::predict::{PredictOptions, write_prediction};

/// The curves of a run.
#[derive(Debug, Clone, Default)]
pub struct Curves {
    /// `(step, mean training loss)` per logging step.
    pub loss: Vec<(f64, f64)>,
    /// `(step, value)` per evaluation.
    pub metric: Vec<(f64, f64)>,
    /// The evaluation metric's name.
    pub metric_name: String,
}

/// Reads the curves of a run's `metrics.jsonl`.
pub fn read_curves(path: &Path) -> anyhow::Result<Curves> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (mut loss, mut metric, mut name) = (Vec::new(), Vec::new(), String::from("metric"));
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        let step = v["step"].as_f64().unwrap_or(0.0);
        match v["type"].as_str() {
            Some("train") => loss.push((step, v["loss"].as_f64().unwrap_or(f64::NAN))),
            Some("eval") => {
                metric.push((step, v["value"].as_f64().unwrap_or(f64::NAN)));
                name = v["metric"].as_str().unwrap_or("metric").to_string();
            }
            _ => {}
        }
    }
    Ok(Curves { loss, metric, metric_name: name })
}

/// Writes the final evaluation, curves and overlays of the run in `run`; returns the files.
pub fn finish_run<B: Backend>(
    run: &Path,
    cfg: &ExperimentConfig,
    model: &Mask2Former<B>,
    evaluation: &Evaluation,
    val: &dyn Dataset,
    device: &B::Device,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let eval_dir = run.join("eval");
    std::fs::create_dir_all(&eval_dir).with_context(|| format!("cannot create {}", eval_dir.display()))?;
    let metrics = eval_dir.join("metrics.json");
    std::fs::write(&metrics, serde_json::to_string_pretty(evaluation)?)
        .with_context(|| format!("cannot write {}", metrics.display()))?;
    files.push(metrics);
    if !evaluation.rows.is_empty() || evaluation.coco.is_some() {
        let results = eval_dir.join("results.json");
        mpf_eval::coco::write_results(&results, &evaluation.rows)?;
        files.push(results);
    }
    let Curves { loss, metric, metric_name: name } = read_curves(&run.join("metrics.jsonl"))?;
    let loss_png = run.join("loss.png");
    line_plot(&loss_png, "training loss", "step", "loss", &[Series { name: "total loss".into(), points: loss }])?;
    files.push(loss_png);
    let eval_png = run.join("eval.png");
    line_plot(
        &eval_png,
        &format!("validation {name}"),
        "step",
        &name,
        &[Series { name: name.clone(), points: metric }],
    )?;
    files.push(eval_png);
    let n = cfg.train.overlays.min(val.len());
    if n > 0 {
        let dir = run.join("overlays");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let opts = PredictOptions { min_score: cfg.train.overlay_score, layers: true };
        for i in 0..n {
            let s = val.get(i)?;
            let stem =
                format!("{i:03}_{}", Path::new(&s.file).file_stem().map_or("image".into(), |f| f.to_string_lossy()));
            write_prediction(model, cfg, (&s.image, &s.file, &stem), &dir, opts, device)?;
        }
        files.push(dir);
    }
    Ok(files)
}
