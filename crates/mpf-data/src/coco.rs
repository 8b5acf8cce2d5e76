//! COCO instance segmentation JSON: polygons and RLE decoded by hotcoco, crowd
//! regions excluded from targets (as detectron2 does), categories mapped to contiguous ids in
//! ascending source-id order, names kept. All annotations are checked when the file is opened,
//! so a bad annotation is reported before training starts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hotcoco::types::{Dataset as CocoJson, Segmentation};

use crate::{BinaryMask, ClassInfo, DataError, Dataset, Object, Sample, Summary, read_json, read_listed_image};

/// One usable annotation.
#[derive(Debug, Clone)]
struct Ann {
    id: u64,
    label: usize,
    segmentation: Segmentation,
}

#[derive(Debug, Clone)]
struct ImageEntry {
    id: u64,
    file: String,
    height: usize,
    width: usize,
    anns: Vec<Ann>,
}

/// A COCO instance data set: a JSON file and an image folder.
#[derive(Debug, Clone)]
pub struct CocoInstances {
    json: PathBuf,
    images_dir: PathBuf,
    classes: Vec<ClassInfo>,
    images: Vec<ImageEntry>,
    summary: Summary,
}

/// Decodes a COCO segmentation (polygons, compressed or uncompressed RLE) to a row-major mask of
/// `height × width`, with hotcoco (pycocotools' rasteriser). Errors name nothing; callers add the
/// file and id.
pub fn decode_segmentation(seg: &Segmentation, height: usize, width: usize) -> Result<BinaryMask, String> {
    if let Some(r) = seg.rle_ref() {
        let rle = r.to_rle().map_err(|e| e.to_string())?;
        if (rle.h as usize, rle.w as usize) != (height, width) {
            return Err(format!("RLE size {}×{} differs from the image's {height}×{width}", rle.h, rle.w));
        }
    }
    let rle = seg.to_rle(height as u32, width as u32).map_err(|e| e.to_string())?;
    let col_major = hotcoco::mask::decode(&rle);
    let mut data = vec![false; height * width];
    for x in 0..width {
        for y in 0..height {
            data[y * width + x] = col_major[x * height + y] != 0;
        }
    }
    Ok(BinaryMask { height, width, data })
}

impl CocoInstances {
    /// Opens `json` with images under `images_dir`, checking every annotation.
    pub fn open(json: &Path, images_dir: &Path) -> Result<Self, DataError> {
        let coco: CocoJson = read_json(json, "COCO instance JSON")?;
        let mut cats = coco.categories.clone();
        cats.sort_by_key(|c| c.id);
        let cat_index: HashMap<u64, usize> = cats.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
        let classes: Vec<ClassInfo> = cats
            .iter()
            .map(|c| ClassInfo {
                name: if c.name.is_empty() { format!("category_{}", c.id) } else { c.name.clone() },
                is_thing: true,
                source_id: c.id,
            })
            .collect();
        if classes.is_empty() {
            return Err(DataError::invalid(json, "categories", "the file lists no category"));
        }
        let mut images: Vec<ImageEntry> = Vec::with_capacity(coco.images.len());
        let mut by_id = HashMap::new();
        for img in &coco.images {
            if img.height == 0 || img.width == 0 {
                return Err(DataError::invalid(json, format!("image {}", img.id), "missing height or width"));
            }
            crate::check_image_size(img.height as usize, img.width as usize)
                .map_err(|m| DataError::invalid(json, format!("image {} ({})", img.id, img.file_name), m))?;
            if by_id.insert(img.id, images.len()).is_some() {
                return Err(DataError::invalid(json, format!("image {}", img.id), "duplicate image id"));
            }
            images.push(ImageEntry {
                id: img.id,
                file: img.file_name.clone(),
                height: img.height as usize,
                width: img.width as usize,
                anns: Vec::new(),
            });
        }
        let mut summary = Summary::default();
        for a in &coco.annotations {
            let item = format!("annotation {}", a.id);
            let &idx = by_id
                .get(&a.image_id)
                .ok_or_else(|| DataError::invalid(json, &item, format!("refers to unknown image {}", a.image_id)))?;
            let &label = cat_index.get(&a.category_id).ok_or_else(|| {
                DataError::invalid(json, &item, format!("refers to unknown category {}", a.category_id))
            })?;
            if a.iscrowd {
                summary.crowd_excluded += 1;
                continue;
            }
            let (h, w) = (images[idx].height, images[idx].width);
            let seg = match &a.segmentation {
                None => {
                    summary.annotations_skipped += 1;
                    continue;
                }
                Some(Segmentation::Polygon(polys)) => {
                    let good: Vec<Vec<f64>> =
                        polys.iter().filter(|p| p.len() >= 6 && p.len() % 2 == 0).cloned().collect();
                    summary.degenerate_polygons += polys.len() - good.len();
                    if good.is_empty() {
                        summary.annotations_skipped += 1;
                        continue;
                    }
                    if let Some(v) = good.iter().flatten().find(|v| !v.is_finite()) {
                        return Err(DataError::invalid(json, &item, format!("non-finite polygon coordinate {v}")));
                    }
                    let outside = good.iter().any(|p| {
                        p.chunks(2).any(|xy| xy[0] < 0.0 || xy[1] < 0.0 || xy[0] > w as f64 || xy[1] > h as f64)
                    });
                    summary.clipped_annotations += outside as usize;
                    Segmentation::Polygon(good)
                }
                Some(seg @ Segmentation::Rect(_)) => seg.clone(),
                Some(seg) => {
                    // RLE: check size and run counts now.
                    decode_segmentation(seg, h, w).map_err(|m| DataError::invalid(json, &item, m))?;
                    seg.clone()
                }
            };
            images[idx].anns.push(Ann { id: a.id, label, segmentation: seg });
        }
        summary.empty_images = images.iter().filter(|i| i.anns.is_empty()).count();
        Ok(Self { json: json.to_path_buf(), images_dir: images_dir.to_path_buf(), classes, images, summary })
    }

    /// Image ids in file order.
    pub fn image_ids(&self) -> Vec<u64> {
        self.images.iter().map(|i| i.id).collect()
    }
}

impl Dataset for CocoInstances {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn classes(&self) -> &[ClassInfo] {
        &self.classes
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let e = &self.images[index];
        let image = read_listed_image(&self.images_dir, &e.file, e.id, &self.json, [e.height, e.width])?;
        let mut objects = Vec::with_capacity(e.anns.len());
        for a in &e.anns {
            let mask = decode_segmentation(&a.segmentation, e.height, e.width)
                .map_err(|m| DataError::invalid(&self.json, format!("annotation {}", a.id), m))?;
            objects.push(Object { label: a.label, mask });
        }
        Ok(Sample { id: e.id, file: e.file.clone(), image, objects })
    }

    fn num_objects(&self, index: usize) -> Option<usize> {
        Some(self.images[index].anns.len())
    }

    fn summary(&self) -> &Summary {
        &self.summary
    }
}
