//! Batching: images normalised and zero-padded (after normalisation) to the batch's
//! largest size rounded up to a multiple of `size_divisibility`, masks padded alike with
//! background.

use burn::prelude::*;
use mpf_model::model::{ImageBatch, InputConfig};

use crate::{BinaryMask, DataError, Object, RgbImage, Sample};

/// A collated batch on the host.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(id, file)` of each image.
    pub items: Vec<(u64, String)>,
    /// The images, unpadded.
    pub images: Vec<RgbImage>,
    /// Objects per image, masks padded to `padded`.
    pub objects: Vec<Vec<Object>>,
    /// Padded `[H, W]`.
    pub padded: [usize; 2],
}

impl Batch {
    /// Pads every mask to the batch's padded size.
    pub fn collate(samples: Vec<Sample>, size_divisibility: usize) -> Result<Self, DataError> {
        if samples.is_empty() {
            return Err(DataError::Invalid { path: "batch".into(), item: "batch".into(), message: "no sample".into() });
        }
        let div = size_divisibility.max(1);
        let hp = samples.iter().map(|s| s.image.height).max().unwrap_or(0).div_ceil(div) * div;
        let wp = samples.iter().map(|s| s.image.width).max().unwrap_or(0).div_ceil(div) * div;
        let mut out = Batch { items: Vec::new(), images: Vec::new(), objects: Vec::new(), padded: [hp, wp] };
        for s in samples {
            let (h, w) = (s.image.height, s.image.width);
            let objects = s
                .objects
                .into_iter()
                .map(|o| {
                    let mut data = vec![false; hp * wp];
                    for y in 0..h {
                        data[y * wp..y * wp + w].copy_from_slice(&o.mask.data[y * w..(y + 1) * w]);
                    }
                    Object { label: o.label, mask: BinaryMask { height: hp, width: wp, data } }
                })
                .collect();
            out.items.push((s.id, s.file));
            out.images.push(s.image);
            out.objects.push(objects);
        }
        Ok(out)
    }

    /// Normalised, padded image tensor `[B, 3, H, W]` with the original sizes.
    pub fn images_tensor<B: Backend>(
        &self,
        input: &InputConfig,
        device: &B::Device,
    ) -> Result<ImageBatch<B>, DataError> {
        ImageBatch::from_images(&self.images, input, device).map_err(|e| DataError::Invalid {
            path: "batch".into(),
            item: format!("{:?}", self.items.iter().map(|i| &i.1).collect::<Vec<_>>()),
            message: e.to_string(),
        })
    }

    /// Class ids of image `b`.
    pub fn labels(&self, b: usize) -> Vec<usize> {
        self.objects[b].iter().map(|o| o.label).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn pads_images_and_masks_to_a_multiple_of_32() {
        let mk = |h: usize, w: usize, n: usize| Sample {
            id: n as u64,
            file: format!("{n}"),
            image: RgbImage { height: h, width: w, pixels: vec![255; h * w * 3] },
            objects: (0..n)
                .map(|k| Object { label: k, mask: BinaryMask { height: h, width: w, data: vec![true; h * w] } })
                .collect(),
        };
        let b = Batch::collate(vec![mk(40, 20, 2), mk(10, 50, 0)], 32).unwrap();
        assert_eq!(b.padded, [64, 64]);
        let m = &b.objects[0][1].mask;
        assert_eq!([m.height, m.width], [64, 64]);
        assert_eq!(b.objects[0].iter().map(|o| o.mask.area()).sum::<usize>(), 2 * 40 * 20, "padding is background");
        assert!(b.objects[1].is_empty());
        let img = b.images_tensor::<Flex>(&InputConfig::default(), &Default::default()).unwrap();
        assert_eq!(img.images.dims(), [2, 3, 64, 64]);
        assert_eq!(img.image_sizes, vec![[40, 20], [10, 50]]);
    }
}
