//! Semantic segmentation from label PNGs (ADE20K style): each class present in an
//! image becomes one object whose mask is all its pixels; `ignore` pixels belong to no object.
//! With `reduce_zero_label` (ADE20K), value 0 becomes `ignore` and every other value `v` is class
//! `v − 1`. Images and labels are paired by file stem.

use std::path::{Path, PathBuf};

use crate::{BinaryMask, ClassInfo, DataError, Dataset, Object, Sample, Summary, read_rgb};

/// A folder of images and a folder of label PNGs.
#[derive(Debug, Clone)]
pub struct SemanticFolder {
    pairs: Vec<(PathBuf, PathBuf)>,
    classes: Vec<ClassInfo>,
    ignore: u16,
    reduce_zero_label: bool,
    summary: Summary,
}

impl SemanticFolder {
    /// Pairs every image in `images_dir` (png, jpg, jpeg, tif, tiff) with `labels_dir/<stem>.png`.
    /// A missing label file is an error naming the image.
    pub fn open(
        images_dir: &Path,
        labels_dir: &Path,
        class_names: &[String],
        ignore: u16,
        reduce_zero_label: bool,
    ) -> Result<Self, DataError> {
        let read = |d: &Path| {
            std::fs::read_dir(d).map_err(|e| DataError::Read { path: d.to_path_buf(), message: e.to_string() })
        };
        let mut images: Vec<PathBuf> = read(images_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
                matches!(ext.as_str(), "png" | "jpg" | "jpeg" | "tif" | "tiff")
            })
            .collect();
        images.sort();
        let mut pairs = Vec::with_capacity(images.len());
        for img in images {
            let stem = img.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            let label = labels_dir.join(format!("{stem}.png"));
            if !label.is_file() {
                return Err(DataError::invalid(&img, "label", format!("no label file {}", label.display())));
            }
            pairs.push((img, label));
        }
        let classes = class_names
            .iter()
            .enumerate()
            .map(|(i, n)| ClassInfo {
                name: n.clone(),
                is_thing: false,
                source_id: i as u64 + reduce_zero_label as u64,
            })
            .collect();
        Ok(Self { pairs, classes, ignore, reduce_zero_label, summary: Summary::default() })
    }
}

impl Dataset for SemanticFolder {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn classes(&self) -> &[ClassInfo] {
        &self.classes
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let (img_path, label_path) = &self.pairs[index];
        let file = img_path.file_name().and_then(|f| f.to_str()).unwrap_or_default().to_string();
        let item = format!("image {index} ({file})");
        let image = read_rgb(img_path, &item)?;
        let decoded = image::open(label_path)
            .map_err(|e| DataError::Read { path: label_path.clone(), message: format!("{item}: {e}") })?;
        // 8-bit PNGs are widened to 16 bits by ×257; undo that so values are the stored ones.
        let wide = matches!(decoded.color(), image::ColorType::L16);
        let labels = decoded.to_luma16();
        if (labels.height() as usize, labels.width() as usize) != (image.height, image.width) {
            return Err(DataError::invalid(
                label_path,
                &item,
                format!(
                    "label PNG is {}×{}, the image {}×{}",
                    labels.height(),
                    labels.width(),
                    image.height,
                    image.width
                ),
            ));
        }
        let k = self.classes.len();
        let mut per_class: Vec<Option<Vec<bool>>> = vec![None; k];
        let n = image.height * image.width;
        for (i, &raw) in labels.as_raw().iter().enumerate() {
            let v = if wide { raw } else { raw / 257 };
            if v == self.ignore {
                continue;
            }
            let class = if self.reduce_zero_label {
                if v == 0 {
                    continue;
                }
                v as usize - 1
            } else {
                v as usize
            };
            if class >= k {
                return Err(DataError::invalid(
                    label_path,
                    &item,
                    format!("label value {v} at pixel {i} is not a class (K = {k}, ignore = {})", self.ignore),
                ));
            }
            per_class[class].get_or_insert_with(|| vec![false; n])[i] = true;
        }
        let objects = per_class
            .into_iter()
            .enumerate()
            .filter_map(|(label, m)| {
                m.map(|data| Object { label, mask: BinaryMask { height: image.height, width: image.width, data } })
            })
            .collect();
        Ok(Sample { id: index as u64, file, image, objects })
    }

    fn num_objects(&self, _index: usize) -> Option<usize> {
        None
    }

    fn summary(&self) -> &Summary {
        &self.summary
    }
}
