//! COCO panoptic: a segments JSON and one PNG per image whose pixel ids are
//! `R + 256·G + 256²·B`. Every non-crowd segment becomes one object (things and stuff alike);
//! crowd segments are excluded, as detectron2's panoptic mapper does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{
    BinaryMask, ClassInfo, DataError, Dataset, Object, Sample, Summary, read_json, read_listed_image, read_rgb,
};

#[derive(Debug, Clone, Deserialize)]
struct PanopticJson {
    images: Vec<ImageJson>,
    annotations: Vec<AnnotationJson>,
    categories: Vec<CategoryJson>,
}

#[derive(Debug, Clone, Deserialize)]
struct ImageJson {
    id: u64,
    file_name: String,
    height: usize,
    width: usize,
}

#[derive(Debug, Clone, Deserialize)]
struct AnnotationJson {
    image_id: u64,
    file_name: String,
    segments_info: Vec<SegmentJson>,
}

#[derive(Debug, Clone, Deserialize)]
struct SegmentJson {
    id: u32,
    category_id: u64,
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Debug, Clone, Deserialize)]
struct CategoryJson {
    id: u64,
    name: String,
    #[serde(default = "one")]
    isthing: u8,
}

fn one() -> u8 {
    1
}

#[derive(Debug, Clone)]
struct Entry {
    image: ImageJson,
    png: String,
    segments: Vec<(u32, usize)>,
}

/// A COCO panoptic data set: segments JSON, image folder and PNG folder.
#[derive(Debug, Clone)]
pub struct CocoPanoptic {
    json: PathBuf,
    images_dir: PathBuf,
    png_dir: PathBuf,
    classes: Vec<ClassInfo>,
    entries: Vec<Entry>,
    summary: Summary,
}

impl CocoPanoptic {
    /// Opens the JSON, checking that every annotation names a known image and category.
    pub fn open(json: &Path, images_dir: &Path, png_dir: &Path) -> Result<Self, DataError> {
        let pj: PanopticJson = read_json(json, "COCO panoptic JSON")?;
        let mut cats = pj.categories.clone();
        cats.sort_by_key(|c| c.id);
        let cat_index: HashMap<u64, usize> = cats.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
        let classes = cats
            .iter()
            .map(|c| ClassInfo { name: c.name.clone(), is_thing: c.isthing != 0, source_id: c.id })
            .collect();
        let by_id: HashMap<u64, &ImageJson> = pj.images.iter().map(|i| (i.id, i)).collect();
        let mut summary = Summary::default();
        let mut entries = Vec::with_capacity(pj.annotations.len());
        for a in &pj.annotations {
            let item = format!("annotation of image {} ({})", a.image_id, a.file_name);
            let image = by_id
                .get(&a.image_id)
                .ok_or_else(|| DataError::invalid(json, &item, format!("refers to unknown image {}", a.image_id)))?;
            crate::check_image_size(image.height, image.width).map_err(|m| DataError::invalid(json, &item, m))?;
            let mut segments = Vec::new();
            for s in &a.segments_info {
                let &label = cat_index.get(&s.category_id).ok_or_else(|| {
                    DataError::invalid(
                        json,
                        format!("segment {} of {item}", s.id),
                        format!("unknown category {}", s.category_id),
                    )
                })?;
                if s.iscrowd != 0 {
                    summary.crowd_excluded += 1;
                } else {
                    segments.push((s.id, label));
                }
            }
            summary.empty_images += segments.is_empty() as usize;
            entries.push(Entry { image: (*image).clone(), png: a.file_name.clone(), segments });
        }
        Ok(Self {
            json: json.to_path_buf(),
            images_dir: images_dir.to_path_buf(),
            png_dir: png_dir.to_path_buf(),
            classes,
            entries,
            summary,
        })
    }
}

impl Dataset for CocoPanoptic {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn classes(&self) -> &[ClassInfo] {
        &self.classes
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let e = &self.entries[index];
        let item = format!("image {} ({})", e.image.id, e.image.file_name);
        let image = read_listed_image(
            &self.images_dir,
            &e.image.file_name,
            e.image.id,
            &self.json,
            [e.image.height, e.image.width],
        )?;
        let png_path = self.png_dir.join(&e.png);
        let png = read_rgb(&png_path, &item)?;
        if (png.height, png.width) != (image.height, image.width) {
            return Err(DataError::invalid(
                &png_path,
                &item,
                format!("segment PNG is {}×{}, the image {}×{}", png.height, png.width, image.height, image.width),
            ));
        }
        let ids: Vec<u32> =
            png.pixels.chunks(3).map(|p| p[0] as u32 + 256 * p[1] as u32 + 65536 * p[2] as u32).collect();
        let mut objects = Vec::with_capacity(e.segments.len());
        for &(id, label) in &e.segments {
            let data: Vec<bool> = ids.iter().map(|&v| v == id).collect();
            if !data.iter().any(|&b| b) {
                return Err(DataError::invalid(
                    &png_path,
                    format!("segment {id} of {item}"),
                    "has no pixel in the PNG",
                ));
            }
            objects.push(Object { label, mask: BinaryMask { height: png.height, width: png.width, data } });
        }
        Ok(Sample { id: e.image.id, file: e.image.file_name.clone(), image, objects })
    }

    fn num_objects(&self, index: usize) -> Option<usize> {
        Some(self.entries[index].segments.len())
    }

    fn summary(&self) -> &Summary {
        &self.summary
    }
}
