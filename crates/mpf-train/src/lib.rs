//! # mpf-train
//!
//! The library behind the `mpf-train` program. The binary (`src/bin/mpf-train`) is a thin clap
//! front end over it, so tests and other programs drive the same code:
//!
//! | module | what |
//! |---|---|
//! | [`config`] | typed TOML experiment configs: defaults, `extends`, `--set`, validation, `[train]` |
//! | [`device`] | run-time backend selection (`--device`) among the compiled-in ones |
//! | [`solver`] | the optimiser recipe: AdamW parameter groups, global clipping, schedules |
//! | [`parallel`] | data-parallel replicas on Burn's collective: shards, averaged normalisers, gradient all-reduce, nodes |
//! | [`train`] | the [`train::Trainer`] (step / evaluate / checkpoint / run with hooks) and the run folder |
//! | [`checkpoint`] | self-verifying checkpoint folders, atomic writes |
//! | [`run_lock`] | one process per run folder |
//! | [`evaluate`] | one [`evaluate::Evaluator`] per task, `evaluate`, the `eval` command |
//! | [`layers`] | Util^i and mIoU-L^i of checkpoints (`layers`) |
//! | [`predict`], [`forward`], [`info`], [`data_info`] | the other commands' work |
//! | [`report`] | end-of-run curves, overlays and results |
//! | [`ablation`] | the paper's ablation grids: planning, child runs, resume, summary and plots |
//! | [`cli`] | helpers shared by the front end and the library (COCO `--data` overrides) |

pub mod ablation;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data_info;
pub mod device;
pub mod evaluate;
pub mod forward;
pub mod info;
pub mod layers;
pub mod parallel;
pub mod predict;
pub mod report;
pub mod run_lock;
pub mod solver;
pub mod train;

/// Keeps freed memory inside the process. A training step allocates and frees the same large
/// tensors over and over; glibc's `malloc` serves blocks above its mmap threshold (128 KiB to
/// 32 MiB) with fresh mappings and returns them on free, so every step pays page faults to map
/// and zero them again (about 8 % of a tiny training step on flex). Raising the mmap and trim
/// thresholds to 1 GiB keeps those blocks in the heap for reuse; the peak memory is unchanged.
/// Linux with glibc only; a no-op elsewhere. Call once at program start.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator tuning parameters; it is called before any
    // other thread allocates (program start) and takes plain integers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Restores the default `SIGPIPE` action, so that output piped into a reader that stops early
/// (`mpf-train synth … | head`) ends the program quietly, as other command-line tools do, instead
/// of a panic in `println!` (Rust ignores `SIGPIPE` by default). Unix only; a no-op elsewhere.
/// Call once at program start.
pub fn quiet_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: resetting a signal's disposition to its default at program start, before any other
    // thread exists, has no memory-safety implications.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
