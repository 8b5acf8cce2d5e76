//! # mpf-train
//!
//! The library behind the `mpf-train` program: typed experiment configs ([`config`]), run-time
//! backend selection ([`device`]) and the commands ([`info`], [`forward`]). The binary is a thin
//! clap front end over these, so tests drive the same code.

pub mod config;
pub mod device;
pub mod forward;
pub mod info;
