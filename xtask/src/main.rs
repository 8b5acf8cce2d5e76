//! Repository chores.
//!
//! - `cargo xtask bench`: the forward benchmark on the chosen backends and the data-loader
//!   benchmark, JSON lines in `target/bench/forward.jsonl`.
//! - `cargo xtask bench --peer`: mpf against PyTorch (transformers' Mask2Former at the same widths)
//!   on the same CPU, same threads, same batch, in alternating rounds: training step, inference
//!   forward, peak memory, mpf's per-phase split and the cost of mask piloting. Writes
//!   `benches/results.md` and `target/bench/peer.json`.
//! - `cargo xtask ablation …`: builds `mpf-train` in release (with `--features` when given) and
//!   runs `mpf-train ablation …` from the repository root: the paper's ablation grids
//!   (`configs/ablation/`), results in `runs/ablation-SCALE/GRID/` (see the README).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Time forward passes (tiny and COCO R50 models) on flex and any extra backends, and the
    /// data loader against a tiny training step; with `--peer`, mpf against PyTorch.
    Bench {
        /// Extra backend features to compile in, e.g. `wgpu` or `cuda`.
        #[arg(long)]
        features: Vec<String>,
        /// Where to write the JSON lines (default: target/bench/forward.jsonl).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Build with the dev profile (dependencies at opt-level 3, shared with `cargo test`)
        /// instead of a separate release build; faster to start, slightly slower to run.
        #[arg(long)]
        dev: bool,
        /// Side by side with PyTorch (creates a virtualenv with CPU torch and transformers unless
        /// `--python` names an interpreter that has them) and write `benches/results.md`.
        #[arg(long)]
        peer: bool,
        /// Peer: alternating rounds (the medians of the rounds are reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Peer: CPU threads for both sides (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Peer: cases to compare, from `tiny` and `r50`.
        #[arg(long, value_delimiter = ',', default_values_t = ["tiny".to_string(), "r50".to_string()])]
        cases: Vec<String>,
        /// Peer: a Python interpreter with torch, transformers, scipy and safetensors.
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// The paper's ablations: `mpf-train ablation` built in release. Every argument after
    /// `ablation` is passed on (`--grid`, `--scale`, `--seeds`, `--steps`, `--jobs`, `--data`, …;
    /// `cargo xtask ablation --help-ablation` lists them).
    Ablation {
        /// Extra backend features to compile in, e.g. `cuda` for `--scale gpu`.
        #[arg(long)]
        features: Vec<String>,
        /// Print `mpf-train ablation --help`.
        #[arg(long)]
        help_ablation: bool,
        /// Arguments for `mpf-train ablation`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Pinned versions of the PyTorch side.
const PEER_PACKAGES: [&str; 5] =
    ["torch==2.15.0", "transformers==5.23.0", "scipy==1.16.3", "safetensors==0.8.0", "numpy<3"];

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    match Cli::parse().command {
        Cmd::Ablation { features, help_ablation, args } => {
            let exe = build_release_bin(&root, &features)?;
            let mut cmd = Command::new(&exe);
            cmd.current_dir(&root).arg("ablation");
            if help_ablation {
                cmd.arg("--help");
            }
            let status = cmd.args(&args).status().with_context(|| format!("running {}", exe.display()))?;
            if !status.success() {
                bail!("mpf-train ablation failed ({status})");
            }
        }
        Cmd::Bench { peer: true, rounds, threads, cases, python, .. } => {
            peer_bench(&root, rounds.max(1), threads, &cases, python)?
        }
        Cmd::Bench { features, out, dev, .. } => {
            let mut cmd = cargo();
            cmd.current_dir(&root).args(["bench", "-p", "mpformer", "--bench", "forward", "--bench", "data"]);
            if dev {
                cmd.args(["--profile", "dev"]);
            }
            if !features.is_empty() {
                cmd.args(["--features", &features.join(",")]);
            }
            let output = cmd.output().context("running cargo bench")?;
            std::io::stderr().write_all(&output.stderr)?;
            if !output.status.success() {
                bail!("cargo bench failed");
            }
            let lines: Vec<&str> =
                std::str::from_utf8(&output.stdout)?.lines().filter(|l| l.starts_with('{')).collect();
            let out = out.unwrap_or_else(|| target_dir(&root).join("bench/forward.jsonl"));
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&out, lines.join("\n") + "\n").with_context(|| format!("writing {}", out.display()))?;
            for l in &lines {
                println!("{l}");
            }
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

/// Builds the `mpf-train` program in release (plus `features`) and returns its path.
fn build_release_bin(root: &Path, features: &[String]) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.current_dir(root).args(["build", "--release", "-p", "mpf-train", "--bin", "mpf-train"]);
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    if !cmd.status().context("running cargo build")?.success() {
        bail!("building mpf-train failed");
    }
    let exe = target_dir(root).join("release").join(format!("mpf-train{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(exe.exists(), "cargo build succeeded but {} is missing", exe.display());
    Ok(exe)
}

/// Builds `benches/peer.rs` in release and returns its executable.
fn build_peer(root: &Path) -> anyhow::Result<PathBuf> {
    eprintln!("building the mpf side (cargo bench --bench peer --no-run)");
    let out = cargo()
        .current_dir(root)
        .args(["bench", "-p", "mpformer", "--bench", "peer", "--no-run", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo bench --no-run")?;
    if !out.status.success() {
        bail!("building the peer benchmark failed");
    }
    for line in std::str::from_utf8(&out.stdout)?.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        if v["reason"] == "compiler-artifact"
            && v["target"]["name"] == "peer"
            && let Some(exe) = v["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo did not report the peer benchmark's executable")
}

/// A Python with the peer packages: `python` if given, else a virtualenv under the user cache.
fn peer_python(python: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = python {
        return Ok(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set")?;
    let venv = home.join(".cache/mpf-peer-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        eprintln!("creating {} (CPU PyTorch and transformers from PyPI, several GB)", venv.display());
        let ok = Command::new("python3").args(["-m", "venv"]).arg(&venv).status()?.success();
        if !ok {
            bail!("python3 -m venv {} failed", venv.display());
        }
    }
    let check = "import torch, transformers, scipy, safetensors; \
                 assert torch.__version__.startswith('2.15.0') and transformers.__version__ == '5.23.0'";
    if !Command::new(&py).args(["-c", check]).status()?.success() {
        eprintln!("installing {}", PEER_PACKAGES.join(" "));
        let ok = Command::new(&py).args(["-m", "pip", "install", "-q"]).args(PEER_PACKAGES).status()?.success();
        if !ok {
            bail!("pip install into {} failed", venv.display());
        }
    }
    Ok(py)
}

/// Runs one measurement process and parses its JSON line.
fn measure(cmd: &mut Command, what: &str) -> anyhow::Result<Value> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        std::io::stderr().write_all(&out.stderr)?;
        bail!("{what} failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{')).with_context(|| format!("{what} printed no JSON"))?;
    Ok(serde_json::from_str(line)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// Median over rounds of each phase of a set of results.
fn phase_medians(runs: &[Value]) -> BTreeMap<String, f64> {
    let mut all: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in runs {
        if let Some(m) = r["median_ms"].as_object() {
            for (k, v) in m {
                all.entry(k.clone()).or_default().push(v.as_f64().unwrap_or(f64::NAN));
            }
        }
    }
    all.into_iter().map(|(k, v)| (k, median(v))).collect()
}

fn peer_bench(
    root: &Path,
    rounds: usize,
    threads: Option<usize>,
    cases: &[String],
    python: Option<PathBuf>,
) -> anyhow::Result<()> {
    for c in cases {
        if !["tiny", "r50"].contains(&c.as_str()) {
            bail!("unknown case {c} (tiny or r50)");
        }
    }
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let exe = build_peer(root)?;
    let py = peer_python(python)?;
    let script = root.join("benches/peer/torch_peer.py");
    let dir = target_dir(root).join("bench/peer");
    std::fs::create_dir_all(&dir)?;
    let steps = |case: &str| if case.starts_with("r50") { 5 } else { 20 };
    let mpf = |case: &str, mode: &str| {
        let mut c = Command::new(&exe);
        c.args(["--case", case, "--mode", mode, "--steps", &steps(case).to_string(), "--threads"])
            .arg(threads.to_string())
            .arg("--batch-out")
            .arg(&dir);
        c
    };
    let torch = |case: &str, mode: &str| {
        let mut c = Command::new(&py);
        c.arg(&script)
            .args(["--case", case, "--mode", mode, "--steps", &steps(case).to_string(), "--threads"])
            .arg(threads.to_string())
            .arg("--batch")
            .arg(dir.join(format!("{case}.safetensors")));
        c
    };
    // Mask-piloting cost: MP-Former configs with the pilot on and off, mpf only.
    let mp_pairs: Vec<(&str, &str)> = cases
        .iter()
        .flat_map(|c| match c.as_str() {
            "tiny" => vec![("tiny_mpformer_off", "tiny_mpformer"), ("tiny_q100_mpformer_off", "tiny_q100_mpformer")],
            _ => vec![("r50_mpformer_off", "r50_mpformer")],
        })
        .collect();

    let mut results: BTreeMap<(String, String, String), Vec<Value>> = BTreeMap::new();
    for round in 0..rounds {
        for case in cases {
            for mode in ["train", "infer"] {
                // Alternate which side goes first, so drifts of the machine hit both alike.
                let order = if round % 2 == 0 { ["mpf", "pytorch"] } else { ["pytorch", "mpf"] };
                for side in order {
                    eprintln!("round {}/{rounds}: {side} {case} {mode}", round + 1);
                    let v = if side == "mpf" {
                        measure(&mut mpf(case, mode), &format!("mpf {case} {mode}"))?
                    } else {
                        measure(&mut torch(case, mode), &format!("pytorch {case} {mode}"))?
                    };
                    results.entry((case.clone(), mode.into(), side.into())).or_default().push(v);
                }
            }
        }
        for &(off, on) in &mp_pairs {
            let order = if round % 2 == 0 { [off, on] } else { [on, off] };
            for case in order {
                eprintln!("round {}/{rounds}: mpf {case} train", round + 1);
                let v = measure(&mut mpf(case, "train"), &format!("mpf {case} train"))?;
                results.entry((case.into(), "train".into(), "mpf".into())).or_default().push(v);
            }
        }
    }

    let report = Report { results: &results, threads, rounds, cases, mp_pairs: &mp_pairs };
    let md = report.markdown();
    std::fs::write(root.join("benches/results.md"), &md)?;
    let json_path = target_dir(root).join("bench/peer.json");
    let flat: Vec<Value> = results
        .iter()
        .map(|((case, mode, side), runs)| {
            json!({"case": case, "mode": mode, "side": side, "median_ms": phase_medians(runs), "runs": runs})
        })
        .collect();
    std::fs::write(&json_path, serde_json::to_string_pretty(&flat)?)?;
    print!("{md}");
    eprintln!("wrote benches/results.md and {}", json_path.display());
    Ok(())
}

struct Report<'a> {
    results: &'a BTreeMap<(String, String, String), Vec<Value>>,
    threads: usize,
    rounds: usize,
    cases: &'a [String],
    mp_pairs: &'a [(&'a str, &'a str)],
}

impl Report<'_> {
    fn runs(&self, case: &str, mode: &str, side: &str) -> &[Value] {
        self.results.get(&(case.into(), mode.into(), side.into())).map(Vec::as_slice).unwrap_or_default()
    }

    fn phase(&self, case: &str, mode: &str, side: &str, phase: &str) -> f64 {
        phase_medians(self.runs(case, mode, side)).get(phase).copied().unwrap_or(f64::NAN)
    }

    fn field(&self, case: &str, mode: &str, side: &str, key: &str) -> f64 {
        median(self.runs(case, mode, side).iter().map(|r| r[key].as_f64().unwrap_or(f64::NAN)).collect())
    }

    fn first(&self, case: &str, mode: &str, side: &str, key: &str) -> String {
        self.runs(case, mode, side)
            .first()
            .map(|r| r[key].to_string().trim_matches('"').to_string())
            .unwrap_or_default()
    }

    fn markdown(&self) -> String {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            info.lines().find(|l| l.starts_with(name)).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        };
        // The widest vector extension matters: gemm picks AVX-512 kernels at run time where present.
        let flags = field("flags").unwrap_or_default();
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        let vector = if has("avx512f") {
            "AVX-512"
        } else if has("avx2") {
            "AVX2, no AVX-512"
        } else {
            "no AVX2"
        };
        let cpu = format!("{} ({vector})", field("model name").unwrap_or_else(|| "unknown CPU".into()));
        let mut s = String::new();
        s += "# mpf against PyTorch on the same CPU\n\n";
        s += "Written by `cargo xtask bench --peer` (do not edit by hand). The same network on both sides — \
              mpf's Mask2Former and transformers' `Mask2FormerForUniversalSegmentation` at the same widths \
              (the trainable parameter counts below prove it) — on the same batch of synthetic shapes, \
              with the same thread count, measured in alternating rounds; every number is the median over \
              rounds of the median over timed steps (after two warm-up steps). Ratios are mpf / PyTorch: \
              below 1 means mpf is faster.\n\n";
        s += &format!(
            "Machine: {cpu}, {} thread(s) on both sides; {} rounds. mpf: {}; PyTorch: {}.\n\n",
            self.threads,
            self.rounds,
            self.first(&self.cases[0], "train", "mpf", "backend"),
            self.first(&self.cases[0], "train", "pytorch", "backend"),
        );
        s += "## Side by side\n\n";
        s += "| case | batch × size | mode | mpf ms | PyTorch ms | mpf / PyTorch | mpf peak MiB | PyTorch peak MiB | trainable params (mpf / PyTorch) |\n";
        s += "|---|---|---|---:|---:|---:|---:|---:|---|\n";
        for case in self.cases {
            for mode in ["train", "infer"] {
                let (a, b) = (self.phase(case, mode, "mpf", "step"), self.phase(case, mode, "pytorch", "step"));
                s += &format!(
                    "| {case} | {} × {} px | {} | {a:.1} | {b:.1} | **{:.2}** | {:.0} | {:.0} | {} / {} |\n",
                    self.first(case, mode, "mpf", "batch"),
                    self.first(case, mode, "mpf", "size"),
                    if mode == "train" { "training step" } else { "inference forward" },
                    a / b,
                    self.field(case, mode, "mpf", "peak_rss_mib"),
                    self.field(case, mode, "pytorch", "peak_rss_mib"),
                    self.first(case, mode, "mpf", "trainable_params"),
                    self.first(case, mode, "pytorch", "trainable_params"),
                );
            }
        }
        s += "\nPeak memory is each process's peak resident set (one process per case and mode), \
              including the framework itself (PyTorch's libraries alone take several hundred MiB).\n\n";
        s += "## Per phase, training step (ms)\n\n";
        s += "PyTorch's backbone, pixel decoder and matcher are timed by forward hooks; transformers \
              computes the loss inside the model's forward, so its decoder and losses are one number \
              (`forward_and_loss` minus the hooked parts).\n\n";
        let phases =
            ["input", "backbone", "pixel_decoder", "decoder", "matcher", "losses", "backward", "optimizer", "step"];
        for case in self.cases {
            s += &format!("### {case}\n\n| phase | mpf | PyTorch | mpf / PyTorch |\n|---|---:|---:|---:|\n");
            let torch_rest = self.phase(case, "train", "pytorch", "forward_and_loss")
                - self.phase(case, "train", "pytorch", "backbone")
                - self.phase(case, "train", "pytorch", "pixel_decoder")
                - self.phase(case, "train", "pytorch", "matcher");
            let mpf_rest = self.phase(case, "train", "mpf", "decoder") + self.phase(case, "train", "mpf", "losses");
            for ph in phases {
                let a = self.phase(case, "train", "mpf", ph);
                let b = self.phase(case, "train", "pytorch", ph);
                if ph == "decoder" {
                    s += &format!("| decoder | {a:.1} | | |\n");
                    continue;
                }
                if ph == "losses" {
                    s += &format!("| losses | {a:.1} | | |\n");
                    s += &format!(
                        "| decoder + losses | {mpf_rest:.1} | {torch_rest:.1} | {:.2} |\n",
                        mpf_rest / torch_rest
                    );
                    continue;
                }
                if b.is_finite() {
                    s += &format!("| {ph} | {a:.1} | {b:.1} | {:.2} |\n", a / b);
                } else {
                    s += &format!("| {ph} | {a:.1} | | |\n");
                }
            }
            s += "\n";
        }
        s += "## Cost of mask piloting (mpf, training step)\n\n";
        s += "The MP-Former config with `pilot.enabled` false and true, everything else equal. \
              At inference an MP-trained model is Mask2Former (the MP part is not built), so its \
              inference cost is Mask2Former's by construction.\n\n";
        s += "| config | objects in batch | pilot off ms | pilot on ms | added |\n|---|---:|---:|---:|---:|\n";
        for &(off, on) in self.mp_pairs {
            let (a, b) = (self.phase(off, "train", "mpf", "step"), self.phase(on, "train", "mpf", "step"));
            s += &format!(
                "| {on} | {} | {a:.1} | {b:.1} | {:+.1} % |\n",
                self.first(on, "train", "mpf", "objects"),
                (b / a - 1.0) * 100.0
            );
        }
        s
    }
}
