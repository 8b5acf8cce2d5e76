//! The synthetic shapes data set: discs, squares, triangles, rings and bars. Colours are drawn
//! independently of the class, so a model has to learn shape. Two styles ([`SynthStyle`]):
//!
//! - `cluttered` (the benchmark set): 2–6 textured, overlapping shapes of many sizes on a noisy
//!   background with lines and specks that are not objects;
//! - `simple` (the default run's set, learnable in minutes on a CPU): 1–3 larger, solid-coloured
//!   shapes on a smooth background, no clutter.
//!
//! Every image is a pure function of (style, seed, index): the in-memory [`SynthDataset`] and the
//! files [`write`] produces are the same data.

use std::f64::consts::PI;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{BinaryMask, ClassInfo, DataError, Dataset, Object, RgbImage, Sample, Summary, write_png};

/// The classes, in id order.
pub const CLASS_NAMES: [&str; 5] = ["disc", "square", "triangle", "ring", "bar"];

/// How hard the synthetic images are (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SynthStyle {
    /// 2–6 textured, overlapping shapes of many sizes on a cluttered background.
    #[default]
    Cluttered,
    /// 1–3 larger solid shapes on a smooth background.
    Simple,
}

/// Image `index` of the synthetic set seeded `seed`, `size × size` pixels.
pub fn generate(style: SynthStyle, seed: u64, index: u64, size: usize) -> Sample {
    let mut rng = StdRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0x5EED,
    );
    let s = size as f64;
    let simple = style == SynthStyle::Simple;
    let mut pixels = background(size, if simple { 4.0 } else { 18.0 }, &mut rng);
    let n_target = if simple { rng.random_range(1..=3) } else { rng.random_range(2..=6) };
    let (radius, centre) = if simple { (0.16..0.3, 0.2 * s..0.8 * s) } else { (0.06..0.24, -0.1 * s..1.1 * s) };
    let mut objects: Vec<Object> = Vec::new();
    let mut attempts = 0;
    while objects.len() < n_target && attempts < 40 {
        attempts += 1;
        let label = rng.random_range(0..CLASS_NAMES.len());
        let r = s * rng.random_range(radius.clone());
        let (cy, cx) = (rng.random_range(centre.clone()), rng.random_range(centre.clone()));
        let angle = rng.random_range(0.0..PI);
        let shape = rasterise(label, size, cy, cx, r, angle);
        let area = shape.iter().filter(|&&b| b).count();
        if area < 30 {
            continue;
        }
        // Keep every earlier object at least 40 % and 24 px visible.
        let ok = objects.iter().all(|o| {
            let before = o.mask.area();
            let after = o.mask.data.iter().zip(&shape).filter(|(a, b)| **a && !**b).count();
            after >= 24 && after * 5 >= before * 2
        });
        if !ok {
            continue;
        }
        for o in &mut objects {
            for (m, &b) in o.mask.data.iter_mut().zip(&shape) {
                *m &= !b;
            }
        }
        if simple {
            paint_solid(&mut pixels, size, &shape, &mut rng);
        } else {
            paint(&mut pixels, size, &shape, &mut rng);
        }
        objects.push(Object { label, mask: BinaryMask { height: size, width: size, data: shape } });
    }
    if !simple {
        clutter(&mut pixels, size, &objects, &mut rng);
    }
    Sample {
        id: index,
        file: format!("{index:06}.png"),
        image: RgbImage { height: size, width: size, pixels },
        objects,
    }
}

fn background(size: usize, noise: f64, rng: &mut StdRng) -> Vec<u8> {
    let a: [f64; 3] = std::array::from_fn(|_| rng.random_range(40.0..200.0));
    let b: [f64; 3] = std::array::from_fn(|_| rng.random_range(40.0..200.0));
    let theta = rng.random_range(0.0..2.0 * PI);
    let mut px = vec![0u8; size * size * 3];
    for y in 0..size {
        for x in 0..size {
            let t = ((x as f64 * theta.cos() + y as f64 * theta.sin()) / size as f64 * 0.7 + 0.5).clamp(0.0, 1.0);
            for c in 0..3 {
                let noise = rng.random_range(-noise..noise);
                px[(y * size + x) * 3 + c] = (a[c] * (1.0 - t) + b[c] * t + noise).clamp(0.0, 255.0) as u8;
            }
        }
    }
    px
}

/// Rasterises one shape; `(cy, cx)` centre, `r` radius, `angle` rotation.
fn rasterise(label: usize, size: usize, cy: f64, cx: f64, r: f64, angle: f64) -> Vec<bool> {
    let (ca, sa) = (angle.cos(), angle.sin());
    let tri: Vec<(f64, f64)> =
        (0..3).map(|k| angle + k as f64 * 2.0 * PI / 3.0).map(|a| (r * a.cos(), r * a.sin())).collect();
    let mut out = vec![false; size * size];
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
            let (u, v) = (dx * ca + dy * sa, -dx * sa + dy * ca);
            let d = (dx * dx + dy * dy).sqrt();
            out[y * size + x] = match label {
                0 => d <= r,
                1 => u.abs() <= 0.8 * r && v.abs() <= 0.8 * r,
                2 => {
                    let side =
                        |(x0, y0): (f64, f64), (x1, y1): (f64, f64)| (x1 - x0) * (dy - y0) - (y1 - y0) * (dx - x0);
                    let s = [side(tri[0], tri[1]), side(tri[1], tri[2]), side(tri[2], tri[0])];
                    s.iter().all(|&v| v >= 0.0) || s.iter().all(|&v| v <= 0.0)
                }
                3 => d <= r && d >= 0.55 * r,
                _ => u.abs() <= r && v.abs() <= 0.28 * r,
            };
        }
    }
    out
}

/// Fills `shape` with a random two-colour texture (stripes, checks or speckle).
fn paint(px: &mut [u8], size: usize, shape: &[bool], rng: &mut StdRng) {
    let c1: [f64; 3] = std::array::from_fn(|_| rng.random_range(0.0..255.0));
    let c2: [f64; 3] = std::array::from_fn(|_| rng.random_range(0.0..255.0));
    let kind = rng.random_range(0..3);
    let period = rng.random_range(3.0..10.0);
    let theta = rng.random_range(0.0..PI);
    for (i, _) in shape.iter().enumerate().filter(|(_, b)| **b) {
        let (y, x) = ((i / size) as f64, (i % size) as f64);
        let t = match kind {
            0 => (((x * theta.cos() + y * theta.sin()) / period).floor() as i64).rem_euclid(2) as f64,
            1 => (((x / period).floor() + (y / period).floor()) as i64).rem_euclid(2) as f64,
            _ => rng.random_range(0.0..1.0),
        };
        for c in 0..3 {
            px[i * 3 + c] = (c1[c] * (1.0 - t) + c2[c] * t).clamp(0.0, 255.0) as u8;
        }
    }
}

/// Fills `shape` with one colour that stands out from what is under it (at least 90 in the sum of
/// channel differences from the mean colour there).
fn paint_solid(px: &mut [u8], size: usize, shape: &[bool], rng: &mut StdRng) {
    let under: Vec<usize> = (0..size * size).filter(|&i| shape[i]).collect();
    let mean: [f64; 3] =
        std::array::from_fn(|c| under.iter().map(|&i| px[i * 3 + c] as f64).sum::<f64>() / under.len().max(1) as f64);
    let mut colour = [0u8; 3];
    for _ in 0..20 {
        colour = std::array::from_fn(|_| rng.random_range(0..=255));
        if (0..3).map(|c| (colour[c] as f64 - mean[c]).abs()).sum::<f64>() >= 90.0 {
            break;
        }
    }
    for i in under {
        px[i * 3..i * 3 + 3].copy_from_slice(&colour);
    }
}

/// Thin lines and small specks over the background only (never over an object).
fn clutter(px: &mut [u8], size: usize, objects: &[Object], rng: &mut StdRng) {
    let covered = |i: usize| objects.iter().any(|o| o.mask.data[i]);
    for _ in 0..rng.random_range(2..7) {
        let colour: [u8; 3] = std::array::from_fn(|_| rng.random_range(0..=255));
        let (mut y, mut x) = (rng.random_range(0.0..size as f64), rng.random_range(0.0..size as f64));
        let a = rng.random_range(0.0..2.0 * PI);
        for _ in 0..rng.random_range(size / 4..size) {
            let (yi, xi) = (y as usize, x as usize);
            if yi < size && xi < size && !covered(yi * size + xi) {
                px[(yi * size + xi) * 3..(yi * size + xi) * 3 + 3].copy_from_slice(&colour);
            }
            y += a.sin();
            x += a.cos();
        }
    }
    for _ in 0..size / 2 {
        let i = rng.random_range(0..size * size);
        if !covered(i) {
            let v = rng.random_range(0..=255);
            px[i * 3..i * 3 + 3].copy_from_slice(&[v, v, v]);
        }
    }
}

/// The synthetic set in memory: images `offset .. offset + len` of seed `seed`.
#[derive(Debug, Clone)]
pub struct SynthDataset {
    style: SynthStyle,
    seed: u64,
    offset: u64,
    len: usize,
    size: usize,
    classes: Vec<ClassInfo>,
    summary: Summary,
}

impl SynthDataset {
    /// `len` images of `size × size` starting at index `offset` (train and validation sets use
    /// disjoint offsets).
    pub fn new(seed: u64, offset: u64, len: usize, size: usize) -> Self {
        let classes = CLASS_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| ClassInfo { name: n.to_string(), is_thing: true, source_id: i as u64 + 1 })
            .collect();
        Self { style: SynthStyle::Cluttered, seed, offset, len, size, classes, summary: Summary::default() }
    }

    /// The same images in another style.
    pub fn with_style(self, style: SynthStyle) -> Self {
        Self { style, ..self }
    }
}

impl Dataset for SynthDataset {
    fn len(&self) -> usize {
        self.len
    }

    fn classes(&self) -> &[ClassInfo] {
        &self.classes
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        Ok(generate(self.style, self.seed, self.offset + index as u64, self.size))
    }

    fn num_objects(&self, _index: usize) -> Option<usize> {
        None
    }

    fn summary(&self) -> &Summary {
        &self.summary
    }
}

#[derive(Serialize)]
struct SegmentOut {
    id: u32,
    category_id: u64,
    iscrowd: u8,
    area: usize,
}

/// Checks a synthetic image side: at least 16 pixels, and within [`crate::MAX_IMAGE_PIXELS`].
pub fn check_size(size: usize) -> Result<(), String> {
    if size < 16 {
        return Err(format!("must be at least 16 pixels, got {size}"));
    }
    crate::check_image_size(size, size)
}

/// Writes `images` synthetic images of seed `seed` to `dir`: `images/*.png`, COCO instance
/// `instances.json` (compressed RLE), panoptic `panoptic.json` + `panoptic/*.png`, and semantic
/// label PNGs `semantic/*.png` (0 = background, `k + 1` = class `k`: read them with
/// `reduce_zero_label = true`). Returns the number of objects written.
pub fn write(dir: &Path, style: SynthStyle, images: usize, seed: u64, size: usize) -> Result<usize, DataError> {
    check_size(size).map_err(|m| DataError::invalid(dir, "image size", m))?;
    let mk = |d: &Path| {
        std::fs::create_dir_all(d).map_err(|e| DataError::Write { path: d.to_path_buf(), message: e.to_string() })
    };
    for sub in ["images", "panoptic", "semantic"] {
        mk(&dir.join(sub))?;
    }
    let mut img_json = Vec::new();
    let mut ann_json = Vec::new();
    let mut pan_json = Vec::new();
    let mut next_ann = 1u64;
    for index in 0..images as u64 {
        let s = generate(style, seed, index, size);
        write_png(&dir.join("images").join(&s.file), &s.image)?;
        img_json.push(serde_json::json!({"id": index, "file_name": s.file, "height": size, "width": size}));
        let mut pan = vec![0u8; size * size * 3];
        let mut sem = vec![0u8; size * size];
        let mut segments = Vec::new();
        for (j, o) in s.objects.iter().enumerate() {
            let mut col = vec![0u8; size * size];
            for (i, &b) in o.mask.data.iter().enumerate() {
                if b {
                    col[(i % size) * size + i / size] = 1;
                    let id = j as u32 + 1;
                    pan[i * 3..i * 3 + 3].copy_from_slice(&[
                        (id % 256) as u8,
                        (id / 256 % 256) as u8,
                        (id / 65536) as u8,
                    ]);
                    sem[i] = o.label as u8 + 1;
                }
            }
            let rle = hotcoco::mask::encode(&col, size as u32, size as u32)
                .map_err(|e| DataError::Write { path: dir.join("instances.json"), message: e.to_string() })?;
            let bbox = hotcoco::mask::to_bbox(&rle);
            ann_json.push(serde_json::json!({
                "id": next_ann, "image_id": index, "category_id": o.label + 1, "iscrowd": 0,
                "area": o.mask.area(), "bbox": bbox,
                "segmentation": {"size": [size, size], "counts": hotcoco::mask::rle_to_string(&rle)},
            }));
            next_ann += 1;
            segments.push(SegmentOut {
                id: j as u32 + 1,
                category_id: o.label as u64 + 1,
                iscrowd: 0,
                area: o.mask.area(),
            });
        }
        write_png(&dir.join("panoptic").join(&s.file), &RgbImage { height: size, width: size, pixels: pan })?;
        let sem_path = dir.join("semantic").join(&s.file);
        image::GrayImage::from_raw(size as u32, size as u32, sem)
            .expect("buffer matches size")
            .save(&sem_path)
            .map_err(|e| DataError::Write { path: sem_path.clone(), message: e.to_string() })?;
        pan_json.push(serde_json::json!({"image_id": index, "file_name": s.file, "segments_info": segments}));
    }
    let categories: Vec<_> = CLASS_NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| serde_json::json!({"id": i + 1, "name": n, "supercategory": "shape", "isthing": 1}))
        .collect();
    let write_json = |name: &str, v: serde_json::Value| {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_vec(&v).expect("JSON values serialise"))
            .map_err(|e| DataError::Write { path, message: e.to_string() })
    };
    write_json(
        "instances.json",
        serde_json::json!({"images": img_json, "annotations": ann_json, "categories": categories}),
    )?;
    write_json(
        "panoptic.json",
        serde_json::json!({"images": img_json, "annotations": pan_json, "categories": categories}),
    )?;
    Ok((next_ann - 1) as usize)
}
