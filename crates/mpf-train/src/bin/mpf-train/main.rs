//! `mpf-train`: the mpf command-line program.

mod args;
mod commands;

use clap::Parser;

use args::Command;

/// Train and run MP-Former / Mask2Former on Burn.
///
/// Without a command, trains the tiny MP-Former on the built-in simple synthetic shapes on the
/// CPU (under 5 minutes on 2 cores in a release build; the config is `simple_mpformer.toml`),
/// evaluates it and draws its predictions.
#[derive(Parser)]
#[command(name = "mpf-train", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

fn main() -> anyhow::Result<()> {
    mpf_train::keep_freed_memory();
    mpf_train::quiet_broken_pipe();
    // Warnings and mpf's progress notes on stderr; `RUST_LOG` (e.g. `RUST_LOG=debug`) overrides.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,mpf_train=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        return commands::default_run();
    };
    match command {
        Command::Train(a) => commands::train(a),
        Command::Eval(a) => commands::eval(a),
        Command::CocoEval(a) => commands::coco_eval(a),
        Command::Layers(a) => commands::layers(a),
        Command::Predict(a) => commands::predict(a),
        Command::Info(a) => commands::info(a),
        Command::Forward(a) => commands::forward(a),
        Command::Import(a) => commands::import(a),
        Command::Synth(a) => commands::synth(a),
        Command::Ablation(a) => commands::ablation(a),
        Command::DataInfo(a) => commands::data_info(a),
    }
}
