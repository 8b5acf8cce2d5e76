//! Repository chores: `cargo xtask bench` runs the forward benchmark on the chosen backends and
//! the data-loader benchmark, and writes their JSON lines to `target/bench/forward.jsonl`.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Time forward passes (tiny and COCO R50 models) on flex and any extra backends, and the
    /// data loader against a tiny training step.
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
    },
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    match Cli::parse().command {
        Cmd::Bench { features, out, dev } => {
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
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
            let out = out.unwrap_or_else(|| root.join("target/bench/forward.jsonl"));
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
