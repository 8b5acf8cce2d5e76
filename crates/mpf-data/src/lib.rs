//! # mpf-data
//!
//! Data sets as plain files, never a registration step:
//!
//! - [`coco`]: COCO instance JSON (polygons, compressed and uncompressed RLE decoded by hotcoco);
//!   crowd regions are excluded from training targets, categories mapped to contiguous ids;
//! - [`panoptic`]: COCO panoptic (segment-id PNGs + segments JSON), things and stuff;
//! - [`semantic`]: label PNGs (ADE20K style: ignore value, optional reduce-zero-label);
//! - [`synth`]: a synthetic generator of textured, overlapping shapes on cluttered backgrounds,
//!   written as COCO instance / panoptic / semantic files or used in memory;
//! - [`augment`]: seeded large-scale jitter (instance / panoptic) and the semantic recipe;
//! - [`batch`]: normalisation, padding to a multiple of 32, tensors; [`loader`]: worker threads
//!   with prefetch, deterministic whatever the worker count.
//!
//! Every data set yields [`Sample`]s: an RGB image and per-object `(class, mask)` targets. Bad input is an error naming the file and the item, or a documented skip counted in the
//! [`Summary`].

pub mod augment;
pub mod batch;
pub mod coco;
pub mod config;
pub mod loader;
pub mod panoptic;
pub mod semantic;
pub mod synth;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use mpf_model::mask::BinaryMask;
pub use mpf_model::model::RgbImage;
use serde::Serialize;

/// One object of a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Contiguous class id `< K`.
    pub label: usize,
    /// Its mask at the image's size.
    pub mask: BinaryMask,
}

/// One image with its targets.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Image id (COCO id, or the index for folder data sets).
    pub id: u64,
    /// Where the image came from.
    pub file: String,
    /// The pixels.
    pub image: RgbImage,
    /// Objects (crowd regions excluded).
    pub objects: Vec<Object>,
}

/// A class of a data set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassInfo {
    /// Name.
    pub name: String,
    /// Thing (countable) or stuff.
    pub is_thing: bool,
    /// The id in the source files (COCO category id; the label value for semantic data).
    pub source_id: u64,
}

/// A random-access data set.
pub trait Dataset: Send + Sync {
    /// Number of images.
    fn len(&self) -> usize;
    /// Whether it has no image.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `K` classes, in contiguous-id order.
    fn classes(&self) -> &[ClassInfo];
    /// Loads image `index` with its targets.
    fn get(&self, index: usize) -> Result<Sample, DataError>;
    /// Number of (non-crowd) objects of image `index` without decoding it, if known.
    fn num_objects(&self, index: usize) -> Option<usize>;
    /// What was skipped or clipped while indexing.
    fn summary(&self) -> &Summary;
}

/// Items skipped or repaired while reading a data set (documented, never silent).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Crowd annotations excluded from training targets.
    pub crowd_excluded: usize,
    /// Polygons with fewer than 3 points (dropped; an annotation left without polygons is skipped).
    pub degenerate_polygons: usize,
    /// Annotations skipped: no segmentation, or only degenerate polygons.
    pub annotations_skipped: usize,
    /// Annotations with coordinates outside the image (rasterised clipped to it).
    pub clipped_annotations: usize,
    /// Images with no object.
    pub empty_images: usize,
}

/// Per-class and per-image statistics (`mpf-train data-info`).
#[derive(Debug, Clone, Serialize)]
pub struct Statistics {
    /// Images.
    pub images: usize,
    /// Objects per class name.
    pub objects_per_class: BTreeMap<String, usize>,
    /// Histogram: number of images with `n` objects.
    pub objects_per_image: BTreeMap<usize, usize>,
    /// Most objects in one image.
    pub max_objects: usize,
    /// Skips and repairs.
    pub summary: Summary,
}

/// Counts objects per class and per image by loading every image (errors stop and name the item).
pub fn statistics(data: &dyn Dataset) -> Result<Statistics, DataError> {
    let mut per_class: BTreeMap<String, usize> = data.classes().iter().map(|c| (c.name.clone(), 0)).collect();
    let mut per_image = BTreeMap::new();
    for i in 0..data.len() {
        let s = data.get(i)?;
        *per_image.entry(s.objects.len()).or_insert(0) += 1;
        for o in &s.objects {
            *per_class.entry(data.classes()[o.label].name.clone()).or_insert(0) += 1;
        }
    }
    let max_objects = per_image.keys().copied().max().unwrap_or(0);
    Ok(Statistics {
        images: data.len(),
        objects_per_class: per_class,
        objects_per_image: per_image,
        max_objects,
        summary: data.summary().clone(),
    })
}

/// Errors while reading data. Each names the file and, where there is one, the item.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A JSON file is malformed.
    #[error("{path} is not a valid {what}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What it should be.
        what: &'static str,
        /// The parser's message (with line and column).
        message: String,
    },
    /// An item is inconsistent.
    #[error("{path}: {item}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The item, e.g. `annotation 17` or `image 3 (000003.png)`.
        item: String,
        /// What is wrong.
        message: String,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

impl DataError {
    pub(crate) fn invalid(path: &Path, item: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { path: path.to_path_buf(), item: item.into(), message: message.into() }
    }
}

/// The largest image, in pixels, that the data sets, the augmentations and `synth` accept:
/// Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, 89,478,485 pixels, about
/// 9459 × 9459). Larger sizes — usually a typo or a corrupt JSON — are refused up front, naming the
/// item, instead of failing a multi-gigabyte allocation later.
pub const MAX_IMAGE_PIXELS: usize = 89_478_485;

/// Checks `height × width` against [`MAX_IMAGE_PIXELS`] (and that neither side is 0); the error
/// text states both sizes and the limit.
pub fn check_image_size(height: usize, width: usize) -> Result<(), String> {
    if height == 0 || width == 0 {
        return Err(format!("image size {height}×{width} is empty"));
    }
    match height.checked_mul(width) {
        Some(n) if n <= MAX_IMAGE_PIXELS => Ok(()),
        _ => Err(format!(
            "image size {height}×{width} exceeds the limit of {MAX_IMAGE_PIXELS} pixels (Pillow's decompression-bomb \
             limit)"
        )),
    }
}

/// Reads an image file as RGB, naming the file and the item on failure.
pub fn read_rgb(path: &Path, item: &str) -> Result<RgbImage, DataError> {
    let img = image::open(path)
        .map_err(|e| DataError::Read { path: path.to_path_buf(), message: format!("{item}: {e}") })?
        .to_rgb8();
    Ok(RgbImage { height: img.height() as usize, width: img.width() as usize, pixels: img.into_raw() })
}

/// Reads image `id` listed in `json` as `file` (under `dir`) and checks it has the listed size;
/// errors name the file, the image id and both sizes.
pub(crate) fn read_listed_image(
    dir: &Path,
    file: &str,
    id: u64,
    json: &Path,
    listed: [usize; 2],
) -> Result<RgbImage, DataError> {
    let item = format!("image {id} ({file})");
    let path = dir.join(file);
    let image = read_rgb(&path, &item)?;
    if [image.height, image.width] != listed {
        return Err(DataError::invalid(
            &path,
            &item,
            format!(
                "the file is {}×{} but {} says {}×{}",
                image.height,
                image.width,
                json.display(),
                listed[0],
                listed[1]
            ),
        ));
    }
    Ok(image)
}

/// Writes an RGB image as PNG.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<(), DataError> {
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.pixels.clone())
        .ok_or_else(|| DataError::Write { path: path.to_path_buf(), message: "pixel buffer size".into() })?;
    buf.save(path).map_err(|e| DataError::Write { path: path.to_path_buf(), message: e.to_string() })
}

/// Reads a JSON file into `T`.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &'static str) -> Result<T, DataError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DataError::Read { path: path.to_path_buf(), message: e.to_string() })?;
    serde_json::from_str(&text).map_err(|e| DataError::Json { path: path.to_path_buf(), what, message: e.to_string() })
}
