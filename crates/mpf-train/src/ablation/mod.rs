//! `ablation`: the paper's ablations (appendix Tables 8 and 10) as runs of this program.
//!
//! A [grid](grid::Grid) names a base config and variants (overrides); a [scale](grid::Scale) sizes
//! them. Every (variant, seed) pair becomes an ordinary run folder `OUT/VARIANT/seed_N`, trained by
//! a child `train` process and analysed by a child `layers` process, so a grid can be stopped at
//! any time: on the next invocation finished runs are skipped, interrupted ones resumed from their
//! last checkpoint. `--jobs J` trains J runs at a time with `cores / J` threads each. When all runs
//! are done, [`summary`] writes `OUT/results.md`, `OUT/results.json` and the plots.
//!
//! ```text
//! OUT/VARIANT/seed_N/ablation.toml   the run's resolved config (what makes it this run)
//! OUT/VARIANT/seed_N/ablation.log    the child processes' output
//! OUT/VARIANT/seed_N/…               the run folder of `train` (metrics.jsonl, checkpoints/, …)
//! OUT/VARIANT/seed_N/layers/         Util^i and mIoU-L^i of the final checkpoint (`layers`)
//! OUT/VARIANT/seed_N/done.json       written last: the run is finished (wall time inside)
//! OUT/results.md, results.json       one row per variant
//! OUT/ap.png, util.png, miou_l.png   metric vs step (median and seed range), Util^i and mIoU-L^i per layer
//! ```

pub mod grid;
pub mod stats;
pub mod summary;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::config::{self, ExperimentConfig};
use grid::{Grid, Scale};

/// A user's COCO data set for every run of the grid.
#[derive(Debug, Clone)]
pub struct UserData {
    /// Training annotations (COCO instance or panoptic JSON).
    pub train: PathBuf,
    /// Their image folder (default: the JSON's folder).
    pub train_images: Option<PathBuf>,
    /// Validation annotations; without them the training file is evaluated (scores then measure fit).
    pub val: Option<PathBuf>,
    /// Their image folder.
    pub val_images: Option<PathBuf>,
}

/// What `ablation` runs.
#[derive(Debug, Clone)]
pub struct AblationOptions {
    /// The grids, in order.
    pub grids: Vec<Grid>,
    /// The scale's name (for the results).
    pub scale_name: String,
    /// The scale.
    pub scale: Scale,
    /// Seeds per variant (the scale's when `None`).
    pub seeds: Option<usize>,
    /// Training steps per run (the scaled config's when `None`); the schedule is stretched to fit.
    pub steps: Option<u64>,
    /// Runs at a time.
    pub jobs: usize,
    /// Output folder; each grid writes into `OUT/GRID`.
    pub out: PathBuf,
    /// Train and evaluate on this data instead of the config's.
    pub data: Option<UserData>,
    /// Extra overrides applied last to every run.
    pub sets: Vec<String>,
    /// Device for every run (the scale's, else flex, when `None`).
    pub device: Option<String>,
    /// The `mpf-train` executable that trains (normally this program itself).
    pub exe: PathBuf,
    /// Show a progress bar.
    pub progress: bool,
}

/// One (variant, seed) run.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// Index of the variant in its grid.
    pub variant: usize,
    /// The variant's name.
    pub name: String,
    /// The seed.
    pub seed: u64,
    /// The run folder.
    pub dir: PathBuf,
    /// The resolved config.
    pub config: ExperimentConfig,
}

/// `done.json`: what a finished run took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunDone {
    /// Variant name.
    pub variant: String,
    /// Seed.
    pub seed: u64,
    /// Seconds of the `train` process that finished the run (a resumed run: its last part).
    pub train_s: f64,
    /// Seconds of the `layers` analysis.
    pub layers_s: f64,
    /// Whether the last `train` process resumed an interrupted run.
    pub resumed: bool,
    /// Threads the run was given.
    pub threads: usize,
}

/// Stretches a config's schedule to `steps` optimiser steps: the learning-rate drops, warmup and
/// the evaluation/checkpoint periods keep their fraction of the run.
pub fn rescale_steps(cfg: &mut ExperimentConfig, steps: u64) {
    let old = cfg.solver.max_iter.max(1) as f64;
    let f = steps as f64 / old;
    let scale = |v: u64| ((v as f64 * f).round() as u64).clamp(1, steps.max(1));
    cfg.solver.max_iter = steps;
    cfg.solver.steps = cfg.solver.steps.iter().map(|&s| scale(s)).collect();
    cfg.solver.steps.dedup();
    cfg.solver.warmup_iters = if cfg.solver.warmup_iters == 0 { 0 } else { scale(cfg.solver.warmup_iters) };
    if cfg.train.eval_period > 0 {
        cfg.train.eval_period = scale(cfg.train.eval_period);
    }
    cfg.train.checkpoint_period = scale(cfg.train.checkpoint_period);
    cfg.train.log_period = cfg.train.log_period.min(scale(cfg.train.log_period));
}

/// The `--set` overrides that make a config train and evaluate on `data`: format, files and the
/// class count of the training JSON.
pub fn user_data_overrides(data: &UserData) -> anyhow::Result<Vec<String>> {
    let mut sets = crate::cli::coco_data_overrides(&data.train, data.train_images.as_deref(), "train")?;
    let (val, val_images) = match &data.val {
        Some(v) => (v.as_path(), data.val_images.as_deref()),
        None => (data.train.as_path(), data.train_images.as_deref()),
    };
    sets.extend(
        crate::cli::coco_data_overrides(val, val_images, "val")?.into_iter().filter(|s| !s.starts_with("data.format=")),
    );
    let text = std::fs::read_to_string(&data.train).with_context(|| format!("cannot read {}", data.train.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", data.train.display()))?;
    let classes = json["categories"]
        .as_array()
        .filter(|c| !c.is_empty())
        .with_context(|| format!("{}: no \"categories\" list", data.train.display()))?;
    sets.push(format!("model.num_classes={}", classes.len()));
    sets.push("class_names=[]".into());
    sets.push("thing_classes=[]".into());
    Ok(sets)
}

/// The runs of one grid, seed-major (all variants of seed 0 first, so early results compare).
pub fn plan(grid: &Grid, opts: &AblationOptions) -> anyhow::Result<Vec<RunPlan>> {
    let base = match &opts.scale.base {
        Some(b) => Path::new(grid::SCALES_DIR).join(b),
        None => grid.base.clone(),
    };
    let data_sets = opts.data.as_ref().map(user_data_overrides).transpose()?.unwrap_or_default();
    let seeds = opts.seeds.unwrap_or(opts.scale.seeds).max(1);
    let out = opts.out.join(&grid.name);
    let mut plans = Vec::new();
    for k in 0..seeds {
        for (i, v) in grid.variants.iter().enumerate() {
            let mut sets = opts.scale.set.clone();
            sets.extend(v.set.iter().cloned());
            sets.extend(data_sets.iter().cloned());
            sets.extend(opts.sets.iter().cloned());
            let mut cfg = config::load(Some(&base), &sets)
                .with_context(|| format!("grid {}, variant `{}`", grid.name, v.name))?;
            cfg.seed += k as u64;
            if let Some(steps) = opts.steps {
                anyhow::ensure!(steps > 0, "--steps must be at least 1");
                rescale_steps(&mut cfg, steps);
            }
            cfg.validate().map_err(|e| anyhow::anyhow!("grid {}, variant `{}`: {e}", grid.name, v.name))?;
            plans.push(RunPlan {
                variant: i,
                name: v.name.clone(),
                seed: cfg.seed,
                dir: out.join(grid::slug(&v.name)).join(format!("seed_{}", cfg.seed)),
                config: cfg,
            });
        }
    }
    Ok(plans)
}

/// What a run folder holds before this invocation touches it.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Nothing yet.
    Fresh,
    /// Checkpoints but no `done.json`: continue from the newest.
    Interrupted,
    /// Trained, but the layer analysis is missing.
    Trained,
    /// Finished earlier.
    Done,
}

/// Inspects a run folder, refusing one made with another config.
pub fn state(p: &RunPlan) -> anyhow::Result<RunState> {
    let recorded = p.dir.join("ablation.toml");
    if recorded.exists() {
        let old = std::fs::read_to_string(&recorded).with_context(|| format!("cannot read {}", recorded.display()))?;
        if old != p.config.to_toml()? {
            bail!(
                "{} was made with another config than this grid, scale and options now give (e.g. other \
                 --steps or --set); choose another --out, or remove the folder to retrain it",
                p.dir.display()
            );
        }
    }
    if p.dir.join("done.json").exists() {
        return Ok(RunState::Done);
    }
    let last = p.dir.join("checkpoints").join(format!("step_{:08}", p.config.solver.max_iter));
    if last.join("checkpoint.json").exists() {
        return Ok(RunState::Trained);
    }
    if crate::train::find_checkpoint(&p.dir).is_ok() { Ok(RunState::Interrupted) } else { Ok(RunState::Fresh) }
}

/// Runs `cmd`, appending its output to `log`; an error names the run and shows the log's tail.
fn run_child(mut cmd: Command, log: &Path, what: &str) -> anyhow::Result<f64> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = file.try_clone()?;
    let t0 = Instant::now();
    let status =
        cmd.stdin(Stdio::null()).stdout(file).stderr(err).status().with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("{what} failed ({status}); last lines of {}:\n  {}", log.display(), tail.join("\n  "));
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Trains and analyses one run as far as it still needs; `None` when it had finished earlier.
pub fn execute(p: &RunPlan, exe: &Path, device: &str, threads: usize) -> anyhow::Result<Option<RunDone>> {
    let st = state(p)?;
    if st == RunState::Done {
        return Ok(None);
    }
    std::fs::create_dir_all(&p.dir).with_context(|| format!("cannot create {}", p.dir.display()))?;
    let cfg_path = p.dir.join("ablation.toml");
    crate::checkpoint::write_atomic(&cfg_path, &p.config.to_toml()?)?;
    let log = p.dir.join("ablation.log");
    let env = |c: &mut Command| {
        c.env("RAYON_NUM_THREADS", threads.to_string());
    };
    let label = format!("{} seed {}", p.name, p.seed);
    let mut train_s = 0.0;
    let resumed = st == RunState::Interrupted;
    if st != RunState::Trained {
        let mut cmd = Command::new(exe);
        cmd.arg("train").arg("--config").arg(&cfg_path).arg("--output").arg(&p.dir).args(["--device", device]);
        if resumed {
            cmd.arg("--resume").arg(&p.dir);
        }
        env(&mut cmd);
        train_s = run_child(cmd, &log, &format!("training {label}"))?;
    }
    let last = p.dir.join("checkpoints").join(format!("step_{:08}", p.config.solver.max_iter));
    let mut cmd = Command::new(exe);
    cmd.arg("layers")
        .arg("--checkpoint")
        .arg(&last)
        .args(["--label", &p.name, "--device", device])
        .args(["--max-images", &p.config.train.eval_images.to_string()])
        .arg("--output")
        .arg(p.dir.join("layers"));
    env(&mut cmd);
    let layers_s = run_child(cmd, &log, &format!("layer analysis of {label}"))?;
    let done = RunDone { variant: p.name.clone(), seed: p.seed, train_s, layers_s, resumed, threads };
    crate::checkpoint::write_atomic(&p.dir.join("done.json"), &serde_json::to_string_pretty(&done)?)?;
    Ok(Some(done))
}

/// The newest training step logged in a run's `metrics.jsonl` (0 when none).
fn logged_step(dir: &Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(dir.join("metrics.jsonl")) else { return 0 };
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["step"].as_u64())
        .unwrap_or(0)
}

/// Runs every grid, then writes its summary. Returns the summaries' folders. Failed runs do not
/// stop the others; they are listed, left out of the summary, and make the result an error.
pub fn run(opts: &AblationOptions) -> anyhow::Result<Vec<PathBuf>> {
    let device = opts.device.clone().or_else(|| opts.scale.device.clone()).unwrap_or_else(|| "flex".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = opts.jobs.clamp(1, cores);
    if opts.jobs > cores {
        eprintln!("--jobs {} exceeds the {cores} cores; running {jobs} at a time", opts.jobs);
    }
    let threads = (cores / jobs).max(1);
    // Plan everything first: a bad grid or override fails before any training starts.
    let plans: Vec<(Grid, Vec<RunPlan>)> =
        opts.grids.iter().map(|g| Ok((g.clone(), plan(g, opts)?))).collect::<anyhow::Result<_>>()?;
    for (_, ps) in &plans {
        for p in ps {
            state(p)?;
        }
    }
    // A private copy of the program (one per invocation, removed at the end): rebuilding mpf-train
    // during a long grid does not change the runs still to come.
    let bin = opts.out.join(".bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    let name = opts.exe.file_name().map_or_else(|| "mpf-train".into(), |n| n.to_string_lossy().to_string());
    let exe = bin.join(format!("{}-{name}", std::process::id()));
    std::fs::copy(&opts.exe, &exe)
        .with_context(|| format!("cannot copy {} to {}", opts.exe.display(), exe.display()))?;

    let all: Vec<&RunPlan> = plans.iter().flat_map(|(_, ps)| ps.iter()).collect();
    let total_steps: u64 = all.iter().map(|p| p.config.solver.max_iter).sum();
    let pb = crate::evaluate::progress(total_steps, opts.progress, "ablation");
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "ablation [{bar:30}] {pos}/{len} steps, {elapsed} elapsed, ETA {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let queue: Mutex<VecDeque<&RunPlan>> = Mutex::new(all.iter().copied().collect());
    let active: Mutex<Vec<&RunPlan>> = Mutex::new(Vec::new());
    let finished: Mutex<(u64, usize)> = Mutex::new((0, 0));
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let n_runs = all.len();
    println!(
        "ablation: {} runs ({} grid(s) × variants × seeds) on {device}, {jobs} at a time with {threads} thread(s) each",
        n_runs,
        plans.len()
    );
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let Some(p) = queue.lock().expect("queue").pop_front() else { break };
                    active.lock().expect("active").push(p);
                    let result = execute(p, &exe, &device, threads);
                    active.lock().expect("active").retain(|a| !std::ptr::eq(*a, p));
                    let mut f = finished.lock().expect("finished");
                    f.0 += p.config.solver.max_iter;
                    f.1 += 1;
                    match result {
                        Ok(done) => pb.suspend(|| {
                            println!(
                                "[{}/{n_runs}] {} seed {}: {}",
                                f.1,
                                p.name,
                                p.seed,
                                match done {
                                    None => "finished earlier".to_string(),
                                    Some(d) if d.resumed => format!("resumed, {:.0} s", d.train_s + d.layers_s),
                                    Some(d) => format!("{:.0} s", d.train_s + d.layers_s),
                                }
                            )
                        }),
                        Err(e) => {
                            pb.suspend(|| eprintln!("[{}/{n_runs}] {} seed {}: FAILED: {e:#}", f.1, p.name, p.seed));
                            failures.lock().expect("failures").push(format!("{}: {e:#}", p.dir.display()));
                        }
                    }
                }
            });
        }
        // Progress: finished runs' steps plus the steps the running ones have logged.
        loop {
            let (done_steps, done_runs) = *finished.lock().expect("finished");
            let running: Vec<&RunPlan> = active.lock().expect("active").clone();
            let partial: u64 = running.iter().map(|p| logged_step(&p.dir).min(p.config.solver.max_iter)).sum();
            pb.set_position(done_steps + partial);
            pb.set_message(running.iter().map(|p| format!("{} s{}", p.name, p.seed)).collect::<Vec<_>>().join(", "));
            if done_runs == n_runs {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    pb.finish_and_clear();
    let _ = std::fs::remove_file(&exe);
    let failures = failures.into_inner().expect("failures");
    let mut written = Vec::new();
    for (g, ps) in &plans {
        let dir = opts.out.join(&g.name);
        let s = summary::summarise(g, ps, &opts.scale_name, &device, t0.elapsed().as_secs_f64())?;
        let files = summary::write(&dir, &s)?;
        print!("{}", summary::headline(&s));
        for f in files {
            println!("  wrote {}", f.display());
        }
        written.push(dir);
    }
    if !failures.is_empty() {
        bail!("{} of {n_runs} runs failed (left out of the results):\n{}", failures.len(), failures.join("\n"));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescaling_keeps_the_schedule_fractions() {
        let mut cfg = config::load_embedded("simple_mpformer.toml", &[]).unwrap();
        assert_eq!((cfg.solver.max_iter, cfg.solver.steps.clone()), (1700, vec![1400, 1600]));
        rescale_steps(&mut cfg, 170);
        assert_eq!(cfg.solver.max_iter, 170);
        assert_eq!(cfg.solver.steps, vec![140, 160]);
        assert_eq!(cfg.solver.warmup_iters, 5);
        assert_eq!((cfg.train.eval_period, cfg.train.checkpoint_period), (85, 85));
        rescale_steps(&mut cfg, 1);
        assert_eq!((cfg.solver.steps.clone(), cfg.train.checkpoint_period), (vec![1], 1));
    }
}
