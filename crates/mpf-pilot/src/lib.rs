//! # mpf-pilot
//!
//! Building blocks of MP-Former's mask-piloted (MP) part, computed on the host
//! from ground-truth masks with named, seeded random streams so that a run is reproducible on any
//! backend:
//!
//! - [`masks`]: GT mask → a decoder level's cross-attention row (a cell is attendable if any GT
//!   pixel falls inside it), and the self-attention mask that hides the MP part from the matching
//!   queries and MP groups from each other;
//! - [`layout`]: the MP slot layout (fixed or dynamic group count, object ↔ slot, noised input
//!   class, direct targets), skipped for empty batches;
//! - [`noise`]: point noise (independent cell flips with probability `ratio · area / (h·w)`),
//!   shift and scale noise, and label noise.
//!
//! Why point noise: appendix A.2 — with ratio `r` the IoU between the noised and the clean mask is
//! pinned to `[1 − r, 1/(1 + r)]` whatever the mask's shape, whereas shifting a mask by `λ` gives an
//! IoU that depends on the shape (for a box it is `(1 − λ)/(1 + λ)`).
//!
//! - [`config`]: the `[pilot]` config table, each knob documented with the appendix's reasoning
//!   (why point noise, why all layers, why the group mask);
//! - [`forward`]: [`forward::MpFormer`] — Mask2Former plus the MP class embedding — whose
//!   `forward_train` prepends the MP queries (content from the learned class embedding, no
//!   positional part) and pilots their cross-attention on the chosen layers with GT rows
//!   ([`forward::GtRowBuilder`]: pooled once per level, point noise fresh per layer, shift/scale
//!   once per batch), and whose `forward` (inference) is plain Mask2Former.
//!
//! Random numbers come from [`forward::PilotStreams`], derived from (seed, step), so a run is
//! reproducible on any backend and a resumed run draws what an uninterrupted one would.
//! The MP losses live in `mpf-criterion`, which reads the per-slot targets of [`layout::MpLayout`].

pub mod config;
pub mod forward;
pub mod layout;
pub mod masks;
pub mod noise;
