//! Binary masks on the host (GT objects, MP attention rows, data augmentation).

use crate::ModelError;

/// A binary mask on the host, row-major, `true` = foreground.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryMask {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height·width` cells.
    pub data: Vec<bool>,
}

impl BinaryMask {
    /// Checks that the buffer matches the size; `index` names the mask in errors.
    pub fn new(height: usize, width: usize, data: Vec<bool>, index: usize) -> Result<Self, ModelError> {
        if data.len() != height * width {
            return Err(ModelError::InvalidInput(format!(
                "mask {index}: {height}×{width} needs {} cells, got {}",
                height * width,
                data.len()
            )));
        }
        Ok(Self { height, width, data })
    }

    /// Foreground cells.
    pub fn area(&self) -> usize {
        self.data.iter().filter(|&&v| v).count()
    }

    /// Max-pooling with kernel = stride = `factor` (cells at a ragged edge cover what is left): a
    /// cell is foreground if any pixel inside it is. On padded sizes (multiples of 32, levels at
    /// /8, /16, /32) this equals the reference's `area_interpolate(mask) > 1e-8`.
    pub fn downsample_any(&self, factor: usize) -> BinaryMask {
        let f = factor.max(1);
        let (h, w) = (self.height.div_ceil(f), self.width.div_ceil(f));
        let mut data = vec![false; h * w];
        for y in 0..self.height {
            for x in 0..self.width {
                if self.data[y * self.width + x] {
                    data[(y / f) * w + x / f] = true;
                }
            }
        }
        BinaryMask { height: h, width: w, data }
    }

    /// Max-pooling to an explicit `[h, w]`: source pixel `(y, x)` falls in cell
    /// `(⌊y·h/H⌋, ⌊x·w/W⌋)`, which is [`Self::downsample_any`] with factor `H/h` on exact multiples
    /// (padded inputs) and still covers every pixel otherwise.
    pub fn downsample_to(&self, h: usize, w: usize) -> BinaryMask {
        let mut data = vec![false; h * w];
        if h > 0 && w > 0 && self.height > 0 && self.width > 0 {
            let cols: Vec<usize> = (0..self.width).map(|x| x * w / self.width).collect();
            for y in 0..self.height {
                let row = (y * h / self.height) * w;
                for (x, &cx) in cols.iter().enumerate() {
                    if self.data[y * self.width + x] {
                        data[row + cx] = true;
                    }
                }
            }
        }
        BinaryMask { height: h, width: w, data }
    }

    /// The average of each `factor × factor` block (adaptive average pooling on divisible sizes).
    pub fn area_pool(&self, factor: usize) -> Vec<f32> {
        let f = factor.max(1);
        let (h, w) = (self.height / f, self.width / f);
        let mut out = vec![0f32; h * w];
        for cy in 0..h {
            for cx in 0..w {
                let mut n = 0;
                for y in cy * f..(cy + 1) * f {
                    for x in cx * f..(cx + 1) * f {
                        n += self.data[y * self.width + x] as usize;
                    }
                }
                out[cy * w + cx] = n as f32 / (f * f) as f32;
            }
        }
        out
    }

    /// Intersection over union with another mask of the same size (1 when both are empty).
    pub fn iou(&self, other: &BinaryMask) -> f64 {
        let (mut inter, mut union) = (0usize, 0usize);
        for (a, b) in self.data.iter().zip(&other.data) {
            inter += (*a && *b) as usize;
            union += (*a || *b) as usize;
        }
        if union == 0 { 1.0 } else { inter as f64 / union as f64 }
    }
}
