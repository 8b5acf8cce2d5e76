//! The results of a grid: one row per variant over its seeds, as `results.json`, `results.md` and
//! PNG plots. Everything is read back from the run folders (`metrics.jsonl`, `layers/layers.json`,
//! `done.json`), so a summary can be rebuilt from finished runs alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use mpf_eval::viz::{Band, Series, band_plot, line_plot};
use serde::Serialize;
use serde_json::Value;

use super::grid::Grid;
use super::stats::{Paired, Spread, paired};
use super::{RunDone, RunPlan};

/// COCO summary numbers shown per variant, in percent (pycocotools' −1 "nothing to score" left out).
pub const COCO_COLUMNS: [&str; 6] = ["AP", "AP50", "AP75", "APs", "APm", "APl"];

/// What one finished run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Variant name.
    pub variant: String,
    /// Seed.
    pub seed: u64,
    /// The run folder.
    pub dir: String,
    /// Final evaluation: the headline metric and every number by name (percent).
    pub metrics: BTreeMap<String, f64>,
    /// Headline metric per evaluation: `(step, value)`.
    pub curve: Vec<(u64, f64)>,
    /// Util^i against the last prediction, per prediction i.
    pub util: Vec<f64>,
    /// mIoU-L^i per prediction i.
    pub miou_l: Vec<f64>,
    /// Loss of the last logging window.
    pub final_loss: f64,
    /// Seconds of training and analysis (the last process, see `done.json`).
    pub wall_s: f64,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct VariantRow {
    /// Variant name.
    pub name: String,
    /// Its overrides.
    pub set: Vec<String>,
    /// The paper's number, when the grid gives one.
    pub paper: Option<String>,
    /// Seeds that finished.
    pub seeds: Vec<u64>,
    /// Median / min / max over seeds of every metric, plus `Util`, `mIoU-L` (averaged over layers),
    /// `loss` and `wall_s`.
    pub spread: BTreeMap<String, Spread>,
    /// Difference to the first row, paired by seed, for the same keys.
    pub delta: BTreeMap<String, Paired>,
    /// Median over seeds of Util^i per layer.
    pub util_layers: Vec<f64>,
    /// Median over seeds of mIoU-L^i per layer.
    pub miou_l_layers: Vec<f64>,
    /// Headline metric per evaluation step: `(step, median, min, max)`.
    pub curve: Vec<(u64, f64, f64, f64)>,
}

/// A grid's results.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Grid name.
    pub grid: String,
    /// Its title.
    pub title: String,
    /// Its description.
    pub description: String,
    /// The scale.
    pub scale: String,
    /// The device.
    pub device: String,
    /// The headline metric (`AP`, `PQ` or `mIoU`).
    pub metric: String,
    /// The columns besides the headline (COCO numbers for instance / panoptic).
    pub columns: Vec<String>,
    /// Steps per run.
    pub steps: u64,
    /// Wall-clock seconds of the whole invocation (all grids).
    pub wall_s: f64,
    /// One row per variant, the reference first.
    pub variants: Vec<VariantRow>,
    /// Every run.
    pub runs: Vec<RunResult>,
    /// Runs planned but not finished (failed), by folder.
    pub missing: Vec<String>,
}

/// The numbers of one evaluation line of `metrics.jsonl`.
fn eval_metrics(line: &Value) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    if let (Some(name), Some(v)) = (line["metric"].as_str(), line["value"].as_f64()) {
        m.insert(name.to_string(), v);
    }
    let ev = &line["evaluation"];
    if let Some(stats) = ev["coco"]["stats"].as_object() {
        for k in COCO_COLUMNS {
            if let Some(v) = stats.get(k).and_then(Value::as_f64).filter(|v| *v >= 0.0) {
                m.insert(k.to_string(), 100.0 * v);
            }
        }
    }
    if let Some(pq) = ev["panoptic"]["all"]["pq"].as_f64() {
        m.insert("PQ".into(), pq);
    }
    if let Some(miou) = ev["semantic"]["miou"].as_f64() {
        m.insert("mIoU".into(), miou);
    }
    m
}

/// Reads a finished run.
pub fn read_run(p: &RunPlan) -> anyhow::Result<RunResult> {
    let log = p.dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))?;
    let (mut curve, mut metrics, mut final_loss) = (Vec::new(), BTreeMap::new(), f64::NAN);
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("{} line {}: not JSON", log.display(), i + 1))?;
        let step = v["step"].as_u64().unwrap_or(0);
        match v["type"].as_str() {
            Some("eval") => {
                if let Some(x) = v["value"].as_f64() {
                    curve.push((step, x));
                }
                metrics = eval_metrics(&v);
            }
            Some("train") => final_loss = v["loss"].as_f64().unwrap_or(f64::NAN),
            _ => {}
        }
    }
    anyhow::ensure!(!metrics.is_empty(), "{} holds no evaluation", log.display());
    let layers = p.dir.join("layers").join("layers.json");
    let lj: Value = serde_json::from_str(
        &std::fs::read_to_string(&layers).with_context(|| format!("cannot read {}", layers.display()))?,
    )
    .with_context(|| format!("{} is not JSON", layers.display()))?;
    let vec_of = |k: &str| -> Vec<f64> {
        lj[0]["metrics"][k].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
    };
    let done_path = p.dir.join("done.json");
    let done: RunDone = serde_json::from_str(
        &std::fs::read_to_string(&done_path).with_context(|| format!("cannot read {}", done_path.display()))?,
    )
    .with_context(|| format!("{} is not a done record", done_path.display()))?;
    Ok(RunResult {
        variant: p.name.clone(),
        seed: p.seed,
        dir: p.dir.display().to_string(),
        metrics,
        curve,
        util: vec_of("util_last"),
        miou_l: vec_of("miou_l"),
        final_loss,
        wall_s: done.train_s + done.layers_s,
    })
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
}

/// Every per-run scalar the table shows, by key.
fn scalars(r: &RunResult) -> BTreeMap<String, f64> {
    let mut m = r.metrics.clone();
    // The last entry is the last prediction against itself (1 by definition): left out.
    m.insert("Util".into(), mean(&r.util[..r.util.len().saturating_sub(1)]));
    m.insert("mIoU-L".into(), mean(&r.miou_l));
    m.insert("loss".into(), r.final_loss);
    m.insert("wall_s".into(), r.wall_s);
    m
}

/// Median over the values at each index (lists of unequal length use what they have).
fn median_per_index(lists: &[&Vec<f64>]) -> Vec<f64> {
    let n = lists.iter().map(|l| l.len()).max().unwrap_or(0);
    (0..n)
        .map(|i| {
            let v: Vec<f64> = lists.iter().filter_map(|l| l.get(i).copied()).collect();
            Spread::of(&v).map_or(f64::NAN, |s| s.median)
        })
        .collect()
}

/// Builds the summary of one grid from its finished runs.
pub fn summarise(grid: &Grid, plans: &[RunPlan], scale: &str, device: &str, wall_s: f64) -> anyhow::Result<Summary> {
    let mut runs = Vec::new();
    let mut missing = Vec::new();
    for p in plans {
        if p.dir.join("done.json").exists() {
            runs.push(read_run(p)?);
        } else {
            missing.push(p.dir.display().to_string());
        }
    }
    let metric = ["PQ", "AP", "mIoU"]
        .into_iter()
        .find(|m| runs.iter().any(|r| r.metrics.contains_key(*m)))
        .unwrap_or("AP")
        .to_string();
    let columns: Vec<String> = COCO_COLUMNS
        .iter()
        .map(|s| s.to_string())
        .filter(|c| *c != metric && runs.iter().any(|r| r.metrics.contains_key(c)))
        .collect();
    // Every per-run scalar, once: (variant, seed, values by key).
    let values: Vec<(&str, u64, BTreeMap<String, f64>)> =
        runs.iter().map(|r| (r.variant.as_str(), r.seed, scalars(r))).collect();
    let of = |name: &str, key: &str| -> Vec<(u64, f64)> {
        values.iter().filter(|v| v.0 == name).filter_map(|v| v.2.get(key).map(|&x| (v.1, x))).collect()
    };
    let reference = grid.variants.first().map_or("", |v| v.name.as_str());
    let variants = grid
        .variants
        .iter()
        .map(|v| {
            let rs: Vec<&RunResult> = runs.iter().filter(|r| r.variant == v.name).collect();
            let keys: std::collections::BTreeSet<&String> =
                values.iter().filter(|x| x.0 == v.name).flat_map(|x| x.2.keys()).collect();
            let mut spread = BTreeMap::new();
            let mut delta = BTreeMap::new();
            for k in keys {
                let mine = of(&v.name, k);
                if let Some(s) = Spread::of(&mine.iter().map(|x| x.1).collect::<Vec<_>>()) {
                    spread.insert(k.clone(), s);
                }
                if let Some(d) = paired(&of(reference, k), &mine) {
                    delta.insert(k.clone(), d);
                }
            }
            let steps: std::collections::BTreeSet<u64> = rs.iter().flat_map(|r| r.curve.iter().map(|c| c.0)).collect();
            let curve = steps
                .into_iter()
                .filter_map(|s| {
                    let v: Vec<f64> =
                        rs.iter().filter_map(|r| r.curve.iter().find(|c| c.0 == s).map(|c| c.1)).collect();
                    Spread::of(&v).map(|sp| (s, sp.median, sp.min, sp.max))
                })
                .collect();
            VariantRow {
                name: v.name.clone(),
                set: v.set.clone(),
                paper: v.paper.clone(),
                seeds: rs.iter().map(|r| r.seed).collect(),
                spread,
                delta,
                util_layers: median_per_index(&rs.iter().map(|r| &r.util).collect::<Vec<_>>()),
                miou_l_layers: median_per_index(&rs.iter().map(|r| &r.miou_l).collect::<Vec<_>>()),
                curve,
            }
        })
        .collect();
    Ok(Summary {
        grid: grid.name.clone(),
        title: grid.title.clone(),
        description: grid.description.clone(),
        scale: scale.to_string(),
        device: device.to_string(),
        metric,
        columns,
        steps: plans.first().map_or(0, |p| p.config.solver.max_iter),
        wall_s,
        variants,
        runs,
        missing,
    })
}

fn cell(s: Option<&Spread>, digits: usize) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.min == s.max => format!("{:.*}", digits, s.median),
        Some(s) => format!("{:.*} ({:.*}–{:.*})", digits, s.median, digits, s.min, digits, s.max),
    }
}

fn delta_cell(d: Option<&Paired>, digits: usize) -> String {
    match d {
        None => "–".into(),
        Some(d) => format!(
            "{:+.*} [{:+.*}, {:+.*}] {}/{} p={:.2}",
            digits, d.median, digits, d.ci95[0], digits, d.ci95[1], d.wins, d.losses, d.sign_p
        ),
    }
}

/// `results.md`.
pub fn markdown(s: &Summary) -> String {
    let m = &s.metric;
    let seeds = s.variants.first().map_or(0, |v| v.seeds.len());
    let mut out = format!("# Ablation `{}`: {}\n\n", s.grid, s.title);
    if !s.description.is_empty() {
        out += &format!("{}\n\n", s.description.trim());
    }
    out += &format!(
        "Scale `{}`, {} steps per run, {} seed(s) per variant, device {}; {} runs, {:.0} s wall clock for this \
         invocation. Cells are the median over seeds with the range in brackets. Δ is the per-seed difference to \
         the first row: median, 95 % bootstrap interval of the mean, seeds higher/lower, exact sign-test p (with \
         n seeds the smallest possible two-sided p is 2^(1−n): 0.25 at 3 seeds, below 0.05 from 6). Util is Util^i \
         (vs the last prediction) averaged over the layers before the last, mIoU-L is mIoU-L^i averaged over all \
         layers, both on the final checkpoint. The final loss includes the MP part's terms where it is on, so it \
         compares only rows with the same losses.\n\n",
        s.scale,
        s.steps,
        seeds,
        s.device,
        s.runs.len(),
        s.wall_s
    );
    let mut header = format!("| variant | {m} | Δ{m} vs first row |");
    let mut rule = "|---|---:|---|".to_string();
    for c in &s.columns {
        header += &format!(" {c} |");
        rule += "---:|";
    }
    header += " Util | ΔUtil | mIoU-L | ΔmIoU-L | final loss | wall s | paper |";
    rule += "---:|---|---:|---|---:|---:|---:|";
    out += &format!("{header}\n{rule}\n");
    for (i, v) in s.variants.iter().enumerate() {
        let d = |k: &str, digits| if i == 0 { "(reference)".into() } else { delta_cell(v.delta.get(k), digits) };
        let mut row = format!("| {} | {} | {} |", v.name, cell(v.spread.get(m), 2), d(m, 2));
        for c in &s.columns {
            row += &format!(" {} |", cell(v.spread.get(c), 2));
        }
        row += &format!(
            " {} | {} | {} | {} | {} | {} | {} |",
            cell(v.spread.get("Util"), 3),
            d("Util", 3),
            cell(v.spread.get("mIoU-L"), 3),
            d("mIoU-L", 3),
            cell(v.spread.get("loss"), 3),
            cell(v.spread.get("wall_s"), 0),
            v.paper.clone().unwrap_or_else(|| "–".into())
        );
        out += &format!("{row}\n");
    }
    for (title, pick) in [
        ("Util^i per layer (median over seeds)", (|v: &VariantRow| &v.util_layers) as fn(&VariantRow) -> &Vec<f64>),
        ("mIoU-L^i per layer (median over seeds)", |v: &VariantRow| &v.miou_l_layers),
    ] {
        let n = s.variants.iter().map(|v| pick(v).len()).max().unwrap_or(0);
        if n == 0 {
            continue;
        }
        out += &format!("\n## {title}\n\n| variant |");
        for i in 1..=n {
            out += &format!(" {i} |");
        }
        out += &format!("\n|---|{}\n", "---:|".repeat(n));
        for v in &s.variants {
            out += &format!("| {} |{}\n", v.name, pick(v).iter().map(|x| format!(" {x:.3} |")).collect::<String>());
        }
    }
    out += &format!("\n## Verdict\n\n{}", verdict(s));
    if !s.missing.is_empty() {
        out += &format!("\nRuns that did not finish (left out): {}\n", s.missing.join(", "));
    }
    out += "\nPlots: `ap.png` (headline metric vs step, median and seed range), `util.png`, `miou_l.png`.\n";
    out
}

/// Which variant has the highest median headline metric, and how sure that is.
pub fn verdict(s: &Summary) -> String {
    let m = &s.metric;
    let Some(best) = s
        .variants
        .iter()
        .filter(|v| v.spread.contains_key(m))
        .max_by(|a, b| a.spread[m].median.total_cmp(&b.spread[m].median))
    else {
        return "No finished runs.\n".into();
    };
    let reference = &s.variants[0];
    let mut out = format!("Highest median {m}: **{}** ({:.2}).", best.name, best.spread[m].median);
    if best.name != reference.name {
        if let Some(d) = best.delta.get(m) {
            let sure = if d.n < 2 {
                "one seed only, so nothing can be said about its spread".to_string()
            } else if d.sign_p < 0.05 && d.ci95[0] > 0.0 {
                "the sign test and the bootstrap interval both separate it from the reference".to_string()
            } else if d.ci95[0] > 0.0 {
                format!(
                    "higher in {}/{} seeds and the bootstrap interval excludes 0, but {} seeds are too few for the sign test (p={:.2})",
                    d.wins, d.n, d.n, d.sign_p
                )
            } else {
                format!(
                    "not separated from the reference: higher in {}/{} seeds, interval [{:+.2}, {:+.2}] contains 0",
                    d.wins, d.n, d.ci95[0], d.ci95[1]
                )
            };
            out += &format!(" {:+.2} vs {} (median per-seed difference); {sure}.", d.median, reference.name);
        }
    } else {
        out += " The reference row itself is best.";
    }
    out += "\n";
    for v in s.variants.iter().skip(1) {
        if let (Some(du), Some(dm)) = (v.delta.get("Util"), v.delta.get("mIoU-L")) {
            out += &format!(
                "\n- {} vs {}: Util {:+.3} ({}/{} seeds higher), mIoU-L {:+.3} ({}/{} seeds higher).",
                v.name, reference.name, du.median, du.wins, du.n, dm.median, dm.wins, dm.n
            );
        }
    }
    out + "\n"
}

/// A short text for the terminal.
pub fn headline(s: &Summary) -> String {
    let m = &s.metric;
    let mut out = format!("\n{} — {} ({} scale)\n", s.grid, s.title, s.scale);
    for v in &s.variants {
        out += &format!(
            "  {:<28} {m} {:<22} Util {:<8} mIoU-L {}\n",
            v.name,
            cell(v.spread.get(m), 2),
            v.spread.get("Util").map_or("–".into(), |x| format!("{:.3}", x.median)),
            v.spread.get("mIoU-L").map_or("–".into(), |x| format!("{:.3}", x.median)),
        );
    }
    out + &verdict(s)
}

/// Writes `results.json`, `results.md`, `ap.png`, `util.png` and `miou_l.png` into `dir`.
pub fn write(dir: &Path, s: &Summary) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = dir.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(s)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    let md = dir.join("results.md");
    std::fs::write(&md, markdown(s)).with_context(|| format!("cannot write {}", md.display()))?;
    let ap = dir.join("ap.png");
    let bands: Vec<Band> = s
        .variants
        .iter()
        .map(|v| Band {
            line: Series { name: v.name.clone(), points: v.curve.iter().map(|c| (c.0 as f64, c.1)).collect() },
            range: v.curve.iter().map(|c| (c.0 as f64, c.2, c.3)).collect(),
        })
        .collect();
    band_plot(&ap, &format!("{}: {} vs step (median, seed range)", s.grid, s.metric), "step", &s.metric, &bands)?;
    let per_layer = |pick: fn(&VariantRow) -> &Vec<f64>| -> Vec<Series> {
        s.variants
            .iter()
            .map(|v| Series {
                name: v.name.clone(),
                points: pick(v).iter().enumerate().map(|(i, &x)| ((i + 1) as f64, x)).collect(),
            })
            .collect()
    };
    let mut files = vec![md, json, ap];
    for (file, what, pick) in [
        ("util.png", "Util^i", (|v: &VariantRow| &v.util_layers) as fn(&VariantRow) -> &Vec<f64>),
        ("miou_l.png", "mIoU-L^i", |v: &VariantRow| &v.miou_l_layers),
    ] {
        let path = dir.join(file);
        let title = format!("{}: {what} (median over seeds)", s.grid);
        line_plot(&path, &title, "decoder layer i", what, &per_layer(pick))?;
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ablation::grid::Variant;

    /// A finished run folder with made-up numbers: AP `ap` at the end (half of it at step 5),
    /// Util^i and mIoU-L^i per layer, loss and times.
    fn fake_run(dir: &Path, ap: f64, util: &[f64], miou: &[f64]) {
        std::fs::create_dir_all(dir.join("layers")).unwrap();
        let eval = |step: u64, ap: f64| {
            serde_json::json!({"type": "eval", "step": step, "metric": "AP", "value": ap,
                "evaluation": {"coco": {"stats": {"AP": ap / 100.0, "AP50": 0.5, "APl": -1.0}}}})
        };
        let train = serde_json::json!({"type": "train", "step": 10, "loss": 2.5});
        let log = format!("{}\n{}\n{}\n", eval(5, ap / 2.0), train, eval(10, ap));
        std::fs::write(dir.join("metrics.jsonl"), log).unwrap();
        let layers = serde_json::json!([{"label": "x", "checkpoint": "c",
            "metrics": {"util_last": util, "util_prev": util, "miou_l": miou}}]);
        std::fs::write(dir.join("layers/layers.json"), layers.to_string()).unwrap();
        let done = RunDone { variant: "x".into(), seed: 0, train_s: 30.0, layers_s: 2.0, resumed: false, threads: 1 };
        std::fs::write(dir.join("done.json"), serde_json::to_string(&done).unwrap()).unwrap();
    }

    #[test]
    fn rows_hold_medians_ranges_and_paired_differences_by_hand() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = crate::config::load_embedded("tiny_mpformer.toml", &[]).unwrap();
        let variant = |name: &str| Variant { name: name.into(), set: vec![], paper: None };
        let grid = Grid {
            name: "g".into(),
            title: "t".into(),
            description: String::new(),
            base: PathBuf::new(),
            variants: vec![variant("ref"), variant("new")],
        };
        // ref: AP 10, 20, 30; new: AP 12, 19, 35 → differences +2, −1, +5.
        let mut plans = Vec::new();
        for (v, aps) in [(0usize, [10.0, 20.0, 30.0]), (1, [12.0, 19.0, 35.0])] {
            for (seed, ap) in aps.into_iter().enumerate() {
                let dir = tmp.path().join(format!("{v}/{seed}"));
                fake_run(&dir, ap, &[0.2, 0.4, 1.0], &[0.5, 0.7, 0.9]);
                let name = grid.variants[v].name.clone();
                plans.push(RunPlan { variant: v, name, seed: seed as u64, dir, config: cfg.clone() });
            }
        }
        // One planned run that never finished.
        let missing = tmp.path().join("1/3");
        plans.push(RunPlan { variant: 1, name: "new".into(), seed: 3, dir: missing.clone(), config: cfg.clone() });

        let s = summarise(&grid, &plans, "cpu", "flex", 99.0).unwrap();
        assert_eq!(s.metric, "AP");
        assert_eq!(s.columns, ["AP50"], "APl is −1 (nothing to score) everywhere: no column");
        assert_eq!(s.missing, [missing.display().to_string()]);
        let (r, n) = (&s.variants[0], &s.variants[1]);
        assert_eq!(r.spread["AP"], Spread { median: 20.0, min: 10.0, max: 30.0 });
        assert_eq!(n.spread["AP"], Spread { median: 19.0, min: 12.0, max: 35.0 });
        let d = &n.delta["AP"];
        assert_eq!((d.n, d.median, d.mean, d.wins, d.losses), (3, 2.0, 2.0, 2, 1));
        assert_eq!(d.sign_p, 1.0);
        // Util averages the layers before the last (0.2, 0.4 → 0.3); mIoU-L all of them (0.7).
        assert!((n.spread["Util"].median - 0.3).abs() < 1e-12);
        assert!((n.spread["mIoU-L"].median - 0.7).abs() < 1e-12);
        assert_eq!(n.spread["loss"].median, 2.5);
        assert_eq!(n.spread["wall_s"].median, 32.0);
        assert_eq!(n.util_layers, [0.2, 0.4, 1.0]);
        // AP vs step: median and range over the seeds at each evaluation.
        assert_eq!(n.curve, [(5, 9.5, 6.0, 17.5), (10, 19.0, 12.0, 35.0)]);
        let md = markdown(&s);
        assert!(md.contains("| new | 19.00 (12.00–35.00) | +2.00 ["), "{md}");
        assert!(md.contains("Highest median AP: **ref** (20.00)"), "{md}");
        assert!(md.contains("Runs that did not finish"), "{md}");
        let files = write(&tmp.path().join("out"), &s).unwrap();
        assert!(files.iter().all(|f| f.exists()));
    }
}
