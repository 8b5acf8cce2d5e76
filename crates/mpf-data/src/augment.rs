//! Seeded augmentation; masks are transformed with their image.
//!
//! - [`Lsj`] (instance / panoptic, detectron2's `coco_*_lsj`): horizontal flip, resize by a
//!   random scale of the output size (0.1–2.0), random crop to the output size. detectron2's
//!   `FixedSizeCrop` also pads every image to the output size; here padding happens at batching
//!   (to the batch's largest image, rounded to 32), which leaves the content the same and saves
//!   compute on small crops.
//! - [`SemanticAug`] (ADE20K / Cityscapes): short side resized to a random choice, long side
//!   capped, random crop whose largest class covers at most `cat_max_ratio` of the labelled
//!   pixels (10 tries), SSD-style colour jitter (brightness, contrast, saturation; hue is not
//!   jittered), horizontal flip.
//!
//! Images are resized with a triangle (bilinear, antialiased) filter, masks by nearest neighbour.
//! Objects whose mask becomes empty are dropped.

use image::imageops::FilterType;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{BinaryMask, RgbImage, Sample};

/// Large-scale jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lsj {
    /// Output (crop) size `[h, w]` (COCO: 1024×1024).
    pub size: [usize; 2],
    /// Smallest scale (0.1).
    pub min_scale: f64,
    /// Largest scale (2.0).
    pub max_scale: f64,
    /// Random horizontal flip.
    pub flip: bool,
}

/// The semantic-segmentation recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SemanticAug {
    /// Short-side choices (ADE20K: `int(x·0.1·512)`, x = 5..20).
    pub short_sides: Vec<usize>,
    /// Longest side after resizing (2048).
    pub max_size: usize,
    /// Crop `[h, w]` (512×512).
    pub crop: [usize; 2],
    /// Largest share of the labelled pixels one class may cover in a crop (1.0 = no limit).
    pub cat_max_ratio: f64,
    /// SSD colour jitter.
    pub color_jitter: bool,
    /// Random horizontal flip.
    pub flip: bool,
}

/// Which augmentation a split gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Augment {
    /// None (evaluation).
    None,
    /// Large-scale jitter.
    Lsj(Lsj),
    /// The semantic recipe.
    Semantic(SemanticAug),
}

impl Augment {
    /// Applies the augmentation with `rng`.
    pub fn apply(&self, s: Sample, rng: &mut impl Rng) -> Sample {
        match self {
            Augment::None => s,
            Augment::Lsj(a) => a.apply(s, rng),
            Augment::Semantic(a) => a.apply(s, rng),
        }
    }
}

/// Mirrors image and masks left–right.
pub fn flip(mut s: Sample) -> Sample {
    let (h, w) = (s.image.height, s.image.width);
    for y in 0..h {
        for x in 0..w / 2 {
            for c in 0..3 {
                s.image.pixels.swap((y * w + x) * 3 + c, (y * w + w - 1 - x) * 3 + c);
            }
        }
    }
    for o in &mut s.objects {
        for y in 0..h {
            o.mask.data[y * w..(y + 1) * w].reverse();
        }
    }
    s
}

/// Resizes an RGB image to `[h, w]` (triangle filter); unchanged when it already has that size.
pub fn resize_image(img: RgbImage, [h, w]: [usize; 2]) -> RgbImage {
    if [img.height, img.width] == [h, w] {
        return img;
    }
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.pixels)
        .expect("image buffer matches its size");
    let out = image::imageops::resize(&buf, w as u32, h as u32, FilterType::Triangle);
    RgbImage { height: h, width: w, pixels: out.into_raw() }
}

/// Resizes image (triangle filter) and masks (nearest) to `[h, w]`.
pub fn resize(mut s: Sample, [h, w]: [usize; 2]) -> Sample {
    if [s.image.height, s.image.width] == [h, w] {
        return s;
    }
    let (sh, sw) = (s.image.height, s.image.width);
    let rows: Vec<usize> = (0..h).map(|y| (((y as f64 + 0.5) * sh as f64 / h as f64) as usize).min(sh - 1)).collect();
    let cols: Vec<usize> = (0..w).map(|x| (((x as f64 + 0.5) * sw as f64 / w as f64) as usize).min(sw - 1)).collect();
    for o in &mut s.objects {
        let mut data = vec![false; h * w];
        for (y, &ry) in rows.iter().enumerate() {
            for (x, &cx) in cols.iter().enumerate() {
                data[y * w + x] = o.mask.data[ry * sw + cx];
            }
        }
        o.mask = BinaryMask { height: h, width: w, data };
    }
    s.image =
        resize_image(std::mem::replace(&mut s.image, RgbImage { height: 0, width: 0, pixels: Vec::new() }), [h, w]);
    s.objects.retain(|o| o.mask.area() > 0);
    s
}

/// Crops `[h, w]` at `(y0, x0)` (clamped to the image).
pub fn crop(mut s: Sample, y0: usize, x0: usize, [h, w]: [usize; 2]) -> Sample {
    let (ih, iw) = (s.image.height, s.image.width);
    let (h, w) = (h.min(ih - y0.min(ih)), w.min(iw - x0.min(iw)));
    let mut px = Vec::with_capacity(h * w * 3);
    for y in y0..y0 + h {
        px.extend_from_slice(&s.image.pixels[(y * iw + x0) * 3..(y * iw + x0 + w) * 3]);
    }
    s.image = RgbImage { height: h, width: w, pixels: px };
    for o in &mut s.objects {
        let mut data = Vec::with_capacity(h * w);
        for y in y0..y0 + h {
            data.extend_from_slice(&o.mask.data[y * iw + x0..y * iw + x0 + w]);
        }
        o.mask = BinaryMask { height: h, width: w, data };
    }
    s.objects.retain(|o| o.mask.area() > 0);
    s
}

impl Lsj {
    /// Flip, scale, crop.
    pub fn apply(&self, mut s: Sample, rng: &mut impl Rng) -> Sample {
        if self.flip && rng.random_bool(0.5) {
            s = flip(s);
        }
        let scale = rng.random_range(self.min_scale..=self.max_scale);
        let (h, w) = (s.image.height as f64, s.image.width as f64);
        let f = (scale * self.size[0] as f64 / h).min(scale * self.size[1] as f64 / w);
        let (nh, nw) = (((h * f).round() as usize).max(1), ((w * f).round() as usize).max(1));
        s = resize(s, [nh, nw]);
        let y0 = rng.random_range(0..=nh.saturating_sub(self.size[0]));
        let x0 = rng.random_range(0..=nw.saturating_sub(self.size[1]));
        crop(s, y0, x0, self.size)
    }
}

impl SemanticAug {
    /// Resize, crop, colour jitter, flip.
    pub fn apply(&self, mut s: Sample, rng: &mut impl Rng) -> Sample {
        let (h, w) = (s.image.height as f64, s.image.width as f64);
        let short = self.short_sides[rng.random_range(0..self.short_sides.len().max(1))] as f64;
        let mut f = short / h.min(w);
        if h.max(w) * f > self.max_size as f64 {
            f = self.max_size as f64 / h.max(w);
        }
        s = resize(s, [((h * f).round() as usize).max(1), ((w * f).round() as usize).max(1)]);
        let (ih, iw) = (s.image.height, s.image.width);
        let mut pick = (0, 0);
        for _ in 0..10 {
            pick = (
                rng.random_range(0..=ih.saturating_sub(self.crop[0])),
                rng.random_range(0..=iw.saturating_sub(self.crop[1])),
            );
            if self.cat_max_ratio >= 1.0 {
                break;
            }
            let counts: Vec<usize> = s
                .objects
                .iter()
                .map(|o| {
                    (pick.0..(pick.0 + self.crop[0]).min(ih))
                        .map(|y| {
                            o.mask.data[y * iw + pick.1..y * iw + (pick.1 + self.crop[1]).min(iw)]
                                .iter()
                                .filter(|&&b| b)
                                .count()
                        })
                        .sum()
                })
                .collect();
            let total: usize = counts.iter().sum();
            let most = counts.iter().copied().max().unwrap_or(0);
            if counts.iter().filter(|&&c| c > 0).count() > 1 && (most as f64) < self.cat_max_ratio * total as f64 {
                break;
            }
        }
        s = crop(s, pick.0, pick.1, self.crop);
        if self.color_jitter {
            jitter(&mut s.image, rng);
        }
        if self.flip && rng.random_bool(0.5) {
            s = flip(s);
        }
        s
    }
}

/// SSD-style photometric distortion: brightness ±32, contrast ×[0.5, 1.5], saturation
/// ×[0.5, 1.5], each applied with probability ½.
pub fn jitter(img: &mut RgbImage, rng: &mut impl Rng) {
    let brightness = if rng.random_bool(0.5) { rng.random_range(-32.0..32.0) } else { 0.0 };
    let contrast = if rng.random_bool(0.5) { rng.random_range(0.5..1.5) } else { 1.0 };
    let saturation = if rng.random_bool(0.5) { rng.random_range(0.5..1.5) } else { 1.0 };
    for p in img.pixels.chunks_mut(3) {
        let v: [f64; 3] = std::array::from_fn(|c| (p[c] as f64 + brightness) * contrast);
        let grey = 0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2];
        for c in 0..3 {
            p[c] = (grey + (v[c] - grey) * saturation).clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Object;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// An image whose red channel is 255 exactly on the object's mask (a disc and a bar).
    fn marked() -> Sample {
        let (h, w) = (60, 90);
        let disc: Vec<bool> = (0..h * w).map(|i| ((i / w) as f64 - 25.0).hypot((i % w) as f64 - 30.0) < 14.0).collect();
        let bar: Vec<bool> = (0..h * w).map(|i| (40..48).contains(&(i / w)) && (50..85).contains(&(i % w))).collect();
        let mut px = vec![0u8; h * w * 3];
        for i in 0..h * w {
            px[i * 3] = if disc[i] || bar[i] { 255 } else { 0 };
            px[i * 3 + 1] = (i % 97) as u8;
        }
        Sample {
            id: 0,
            file: "marked".into(),
            image: RgbImage { height: h, width: w, pixels: px },
            objects: vec![
                Object { label: 0, mask: BinaryMask { height: h, width: w, data: disc } },
                Object { label: 1, mask: BinaryMask { height: h, width: w, data: bar } },
            ],
        }
    }

    /// Share of pixels where "red > 127" agrees with "some mask covers it".
    fn agreement(s: &Sample) -> f64 {
        let n = s.image.height * s.image.width;
        let agree =
            (0..n).filter(|&i| (s.image.pixels[i * 3] > 127) == s.objects.iter().any(|o| o.mask.data[i])).count();
        agree as f64 / n as f64
    }

    #[test]
    fn every_augmentation_keeps_masks_on_their_pixels() {
        // Scales from 0.4: below that a pixel averages a block wider than the objects' thin parts,
        // and colour no longer says which mask a pixel belongs to.
        let lsj = Augment::Lsj(Lsj { size: [64, 64], min_scale: 0.4, max_scale: 2.0, flip: true });
        let sem = Augment::Semantic(SemanticAug {
            short_sides: vec![40, 60, 90],
            max_size: 200,
            crop: [48, 48],
            cat_max_ratio: 0.75,
            color_jitter: false,
            flip: true,
        });
        for (name, aug) in [("lsj", lsj), ("semantic", sem)] {
            for seed in 0..30 {
                let s = aug.apply(marked(), &mut StdRng::seed_from_u64(seed));
                assert!(s.image.height <= 64 && s.image.width <= 64, "{name}: crop bound");
                for o in &s.objects {
                    assert_eq!((o.mask.height, o.mask.width), (s.image.height, s.image.width));
                }
                let a = agreement(&s);
                assert!(a > 0.97, "{name} seed {seed}: agreement {a}");
            }
        }
    }

    #[test]
    fn lsj_output_sizes_follow_the_scale() {
        let lsj = Lsj { size: [64, 64], min_scale: 0.1, max_scale: 0.1, flip: false };
        // 60×90 to fit 6.4×6.4: factor 0.0711 → 4×6.
        let s = lsj.apply(marked(), &mut StdRng::seed_from_u64(0));
        assert_eq!((s.image.height, s.image.width), (4, 6));
        let big = Lsj { size: [64, 64], min_scale: 2.0, max_scale: 2.0, flip: false };
        let s = big.apply(marked(), &mut StdRng::seed_from_u64(0));
        assert_eq!((s.image.height, s.image.width), (64, 64), "cropped to the output size");
    }

    #[test]
    fn the_alignment_check_catches_a_misaligned_transform() {
        // Flip the image but not the masks: the check must fail.
        let s = marked();
        let objects = s.objects.clone();
        let mut broken = flip(s);
        broken.objects = objects;
        assert!(agreement(&broken) < 0.9, "{}", agreement(&broken));
    }

    #[test]
    fn flip_and_crop_by_hand() {
        let s = flip(marked());
        assert!(s.objects[1].mask.data[40 * 90 + (89 - 50)], "bar column 50 moves to 39");
        assert_eq!(agreement(&s), 1.0);
        let c = crop(marked(), 38, 48, [12, 40]);
        assert_eq!((c.image.height, c.image.width), (12, 40));
        assert_eq!(c.objects.len(), 1, "the disc is cropped away, the bar stays");
        assert_eq!(c.objects[0].mask.area(), 8 * 35);
        assert_eq!(agreement(&c), 1.0);
    }

    #[test]
    fn jitter_keeps_grey_grey_and_moves_brightness() {
        let grey = RgbImage { height: 4, width: 4, pixels: vec![100; 48] };
        let mut changed = 0;
        for seed in 0..20 {
            let mut img = grey.clone();
            jitter(&mut img, &mut StdRng::seed_from_u64(seed));
            assert!(img.pixels.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]), "saturation never tints grey");
            changed += (img.pixels[0] != 100) as usize;
        }
        // P(no brightness and no contrast change) = 1/4: about 15 of 20 change.
        assert!((8..=20).contains(&changed), "{changed}");
    }
}
