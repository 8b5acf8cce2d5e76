//! Grid and scale files of `ablation`.
//!
//! A grid (`configs/ablation/NAME.toml`) is a base experiment config plus named variants, each a
//! list of `--set` overrides applied on top of it; the first variant is the reference the others
//! are compared with:
//!
//! ```toml
//! title = "Appendix Table 10: naive fixes of layer inconsistency vs MP-Former"
//! base = "../synthetic/simple_mpformer.toml"   # relative to this file
//!
//! [[variants]]
//! name = "Mask2Former"
//! set = ["pilot.enabled=false", "model.decoder.use_query_pos_embed=true"]
//! paper = "38.7"                               # optional: the paper's number, shown beside ours
//! ```
//!
//! A scale (`configs/ablation/scales.toml`, compiled in) sizes every grid: how many seeds, which
//! overrides (steps, data size, evaluation images), optionally another base config and device.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The scales file, compiled into the binary.
pub const SCALES: &str = include_str!("../../../../configs/ablation/scales.toml");

/// Where `SCALES` lives in the repository; its relative `base` paths resolve against this folder.
pub const SCALES_DIR: &str = "configs/ablation";

/// Errors in a grid or scale file, naming the file and the item.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    /// The file could not be read.
    #[error("cannot read grid {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or keys that the format does not have.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A value that makes no sense, naming it.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// One row of a grid.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// The row's name (also its folder name, made file-safe).
    pub name: String,
    /// `key=value` overrides applied to the base config, in order.
    #[serde(default)]
    pub set: Vec<String>,
    /// The paper's number for this row, shown for reference (free text, e.g. "38.7").
    #[serde(default)]
    pub paper: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GridFile {
    title: String,
    #[serde(default)]
    description: String,
    base: String,
    variants: Vec<Variant>,
}

/// A parsed grid.
#[derive(Debug, Clone)]
pub struct Grid {
    /// Short name (the file stem).
    pub name: String,
    /// One-line title for the results.
    pub title: String,
    /// Longer text for the results (may be empty).
    pub description: String,
    /// The base config file (resolved against the grid's folder).
    pub base: PathBuf,
    /// The rows; the first is the reference.
    pub variants: Vec<Variant>,
}

impl Grid {
    /// Reads a grid: `spec` is a path to a `.toml` file, or a name looked up as
    /// `configs/ablation/NAME.toml` under the current folder.
    pub fn find(spec: &str) -> Result<Self, GridError> {
        let path = if spec.ends_with(".toml") || spec.contains('/') {
            PathBuf::from(spec)
        } else {
            Path::new(SCALES_DIR).join(format!("{spec}.toml"))
        };
        Self::load(&path)
    }

    /// Reads and checks a grid file.
    pub fn load(path: &Path) -> Result<Self, GridError> {
        let text = std::fs::read_to_string(path).map_err(|source| GridError::Read { path: path.into(), source })?;
        let shown = path.display().to_string();
        let file: GridFile =
            toml::from_str(&text).map_err(|e| GridError::Parse { path: shown.clone(), message: e.to_string() })?;
        let invalid = |message: String| GridError::Invalid { path: shown.clone(), message };
        if file.variants.is_empty() {
            return Err(invalid("the grid has no [[variants]]".into()));
        }
        let mut slugs = std::collections::BTreeMap::new();
        for (i, v) in file.variants.iter().enumerate() {
            let slug = slug(&v.name);
            if slug.is_empty() {
                return Err(invalid(format!("variant {} has an empty name", i + 1)));
            }
            if let Some(other) = slugs.insert(slug.clone(), v.name.clone()) {
                return Err(invalid(format!(
                    "variants `{other}` and `{}` share the folder name `{slug}`; rename one",
                    v.name
                )));
            }
            if let Some(bad) = v.set.iter().find(|s| !s.contains('=')) {
                return Err(invalid(format!("variant `{}`: `{bad}` is not key=value", v.name)));
            }
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path.file_stem().map_or_else(|| "grid".into(), |s| s.to_string_lossy().to_string());
        Ok(Self {
            name,
            title: file.title,
            description: file.description,
            base: dir.join(file.base),
            variants: file.variants,
        })
    }
}

/// A file- and URL-safe folder name: lower-case ASCII letters, digits and `-`.
pub fn slug(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' => s.push(c),
            'A'..='Z' => s.push(c.to_ascii_lowercase()),
            '+' => s.push_str("-plus-"),
            _ => s.push('-'),
        }
    }
    s.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-")
}

/// How big every run of a grid is.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// What the scale is for.
    pub description: String,
    /// Seeds per variant unless `--seeds` is given.
    pub seeds: usize,
    /// Overrides applied after the base config and before the variant's.
    #[serde(default)]
    pub set: Vec<String>,
    /// Another base config for every grid (relative to `configs/ablation/`), e.g. the COCO recipe.
    #[serde(default)]
    pub base: Option<String>,
    /// The device unless `--device` is given.
    #[serde(default)]
    pub device: Option<String>,
}

/// The compiled-in scales by name.
pub fn scales() -> Result<std::collections::BTreeMap<String, Scale>, GridError> {
    toml::from_str(SCALES)
        .map_err(|e| GridError::Parse { path: format!("{SCALES_DIR}/scales.toml"), message: e.to_string() })
}

/// The scale called `name`.
pub fn scale(name: &str) -> Result<Scale, GridError> {
    let all = scales()?;
    all.get(name).cloned().ok_or_else(|| GridError::Invalid {
        path: format!("{SCALES_DIR}/scales.toml"),
        message: format!("no scale `{name}` (known: {})", all.keys().cloned().collect::<Vec<_>>().join(", ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_safe_and_keep_plus() {
        assert_eq!(slug("Mask2Former"), "mask2former");
        assert_eq!(slug("shift+scale"), "shift-plus-scale");
        assert_eq!(slug("layers {0..2}"), "layers-0-2");
        assert_eq!(slug("  --  "), "");
    }

    #[test]
    fn grid_errors_name_the_file_and_variant() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.toml");
        std::fs::write(&p, "title = \"t\"\nbase = \"b.toml\"\n[[variants]]\nname = \"a\"\nset = [\"pilot.enabled\"]\n")
            .unwrap();
        let e = Grid::load(&p).unwrap_err().to_string();
        assert!(e.contains("g.toml") && e.contains("variant `a`") && e.contains("key=value"), "{e}");
        std::fs::write(
            &p,
            "title = \"t\"\nbase = \"b.toml\"\n[[variants]]\nname = \"A b\"\n[[variants]]\nname = \"a-b\"\n",
        )
        .unwrap();
        let e = Grid::load(&p).unwrap_err().to_string();
        assert!(e.contains("share the folder name `a-b`"), "{e}");
        std::fs::write(&p, "title = \"t\"\nbase = \"b.toml\"\nvariant = []\n").unwrap();
        assert!(Grid::load(&p).unwrap_err().to_string().contains("unknown field `variant`"));
        std::fs::write(&p, "title = \"t\"\nbase = \"b.toml\"\n[[variants]]\nname = \"only\"\n").unwrap();
        let g = Grid::load(&p).unwrap();
        assert_eq!(g.base, dir.path().join("b.toml"));
        assert_eq!(g.name, "g");
    }

    #[test]
    fn the_shipped_scales_and_grids_parse() {
        let all = scales().unwrap();
        for name in ["smoke", "cpu", "gpu"] {
            assert!(all.contains_key(name), "scale {name}");
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ablation");
        let mut n = 0;
        for e in std::fs::read_dir(&root).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() == "scales.toml" {
                continue;
            }
            let g = Grid::load(&p).unwrap();
            assert!(g.base.exists(), "{}: base {}", p.display(), g.base.display());
            // Every variant resolves to a valid config at every scale (gpu: on the COCO recipe).
            for (scale_name, scale) in &all {
                let base = match &scale.base {
                    Some(b) => root.join(b),
                    None => g.base.clone(),
                };
                for v in &g.variants {
                    let sets: Vec<String> = scale.set.iter().chain(&v.set).cloned().collect();
                    crate::config::load(Some(&base), &sets)
                        .unwrap_or_else(|e| panic!("{} `{}` at {scale_name}: {e}", p.display(), v.name));
                }
            }
            n += 1;
        }
        assert!(n >= 6, "table10 and the five Table 8 grids");
    }
}
