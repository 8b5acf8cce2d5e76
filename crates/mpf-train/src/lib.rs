//! # mpf-train
//!
//! The library behind the `mpf-train` program: typed experiment configs ([`config`]), run-time
//! backend selection ([`device`]), checkpoints ([`checkpoint`]), the optimiser recipe
//! ([`solver`]) and the commands ([`train`], [`evaluate`], [`predict`], [`info`], [`forward`],
//! `import`). The binary is a thin clap front end over these, so tests drive the same code.

pub mod checkpoint;
pub mod config;
pub mod data_info;
pub mod device;
pub mod evaluate;
pub mod forward;
pub mod info;
pub mod layers;
pub mod predict;
pub mod report;
pub mod solver;
pub mod train;
