//! Pictures: a fixed palette, prediction overlays (mask tint, outline, "name score" label) and
//! line plots of training curves, all as PNG. Text uses the DejaVu Sans font embedded in the
//! binary, so drawing works the same on a fresh machine without system fonts.

use std::path::Path;
use std::sync::Once;

use mpf_model::mask::BinaryMask;
use mpf_model::model::RgbImage;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::EvalError;

/// A fixed 20-colour palette (Tableau 20 order); class `k` gets `PALETTE[k % 20]`.
pub const PALETTE: [[u8; 3]; 20] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
    [174, 199, 232],
    [255, 187, 120],
    [152, 223, 138],
    [255, 152, 150],
    [197, 176, 213],
    [196, 156, 148],
    [247, 182, 210],
    [199, 199, 199],
    [219, 219, 141],
    [158, 218, 229],
];

/// The colour of class `k`.
pub fn class_color(k: usize) -> [u8; 3] {
    PALETTE[k % PALETTE.len()]
}

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded DejaVu Sans is a valid TrueType font; registration cannot fail on it.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> EvalError {
    EvalError::Write { path: path.into(), message: e.to_string() }
}

/// One thing to draw on an overlay.
#[derive(Debug, Clone)]
pub struct Labelled<'a> {
    /// Class id (picks the colour).
    pub class: usize,
    /// The text, e.g. `disc 0.93`.
    pub text: String,
    /// The mask, at the image's size.
    pub mask: &'a BinaryMask,
}

/// Tints each mask with its class colour (alpha 0.5), outlines it and writes its text at the top
/// left of its box. Masks of another size than the image are an error.
pub fn overlay(image: &RgbImage, items: &[Labelled<'_>]) -> Result<RgbImage, EvalError> {
    let (h, w) = (image.height, image.width);
    let mut px = image.pixels.clone();
    for it in items {
        if it.mask.height != h || it.mask.width != w {
            return Err(EvalError::Invalid(format!(
                "overlay: mask {}×{} on a {h}×{w} image",
                it.mask.height, it.mask.width
            )));
        }
        let c = class_color(it.class);
        let m = &it.mask.data;
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if !m[i] {
                    continue;
                }
                let edge =
                    x == 0 || y == 0 || x + 1 == w || y + 1 == h || !m[i - 1] || !m[i + 1] || !m[i - w] || !m[i + w];
                for ch in 0..3 {
                    let v = &mut px[i * 3 + ch];
                    *v = if edge { c[ch] } else { ((*v as u16 + c[ch] as u16) / 2) as u8 };
                }
            }
        }
    }
    register_font();
    {
        let root = BitMapBackend::with_buffer(&mut px, (w as u32, h as u32)).into_drawing_area();
        let size = (h.min(w) as f64 / 14.0).clamp(9.0, 18.0);
        for it in items {
            let [x, y, _, _] = crate::coco::bbox(it.mask);
            if it.mask.area() == 0 {
                continue;
            }
            let c = class_color(it.class);
            let style = TextStyle::from((FONT, size).into_font()).color(&WHITE);
            let (tw, th) = root.estimate_text_size(&it.text, &style).unwrap_or((0, 0));
            let (x, y) = (x as i32, (y as i32 - th as i32 - 2).max(0));
            root.draw(&Rectangle::new(
                [(x, y), (x + tw as i32 + 3, y + th as i32 + 2)],
                RGBColor(c[0], c[1], c[2]).filled(),
            ))
            .map_err(|e| EvalError::Invalid(format!("overlay text: {e}")))?;
            root.draw_text(&it.text, &style, (x + 1, y + 1))
                .map_err(|e| EvalError::Invalid(format!("overlay text: {e}")))?;
        }
        root.present().map_err(|e| EvalError::Invalid(format!("overlay: {e}")))?;
    }
    Ok(RgbImage { height: h, width: w, pixels: px })
}

/// Colours a label map with the palette (`ignore` stays black).
pub fn colorize(labels: &[u32], height: usize, width: usize, ignore: u32) -> RgbImage {
    let mut pixels = Vec::with_capacity(height * width * 3);
    for &l in labels.iter().take(height * width) {
        pixels.extend_from_slice(&if l == ignore { [0, 0, 0] } else { class_color(l as usize) });
    }
    RgbImage { height, width, pixels }
}

/// One named line of a plot: `(x, y)` points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points in x order.
    pub points: Vec<(f64, f64)>,
}

/// Draws `series` as lines (with markers when short) into a PNG of 800×500 pixels.
pub fn line_plot(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<(), EvalError> {
    let bands: Vec<Band> = series.iter().map(|s| Band { line: s.clone(), range: Vec::new() }).collect();
    band_plot(path, title, x_label, y_label, &bands)
}

/// A line with a shaded range around it: `range` holds `(x, low, high)` in x order (empty: no
/// shading), e.g. the median of several seeds with their minimum and maximum.
#[derive(Debug, Clone)]
pub struct Band {
    /// The line.
    pub line: Series,
    /// The shaded range.
    pub range: Vec<(f64, f64, f64)>,
}

/// Draws each band's range as a translucent area in the line's colour, then the lines (with
/// markers when short), into a PNG of 800×500 pixels. Non-finite values are left out.
pub fn band_plot(path: &Path, title: &str, x_label: &str, y_label: &str, bands: &[Band]) -> Result<(), EvalError> {
    register_font();
    let finite = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let pts = bands
        .iter()
        .flat_map(|b| b.line.points.iter().copied().chain(b.range.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)])))
        .filter(finite);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let (pw, ph) = (800u32, 500u32);
    let mut buf = vec![255u8; (pw * ph * 3) as usize];
    let err = |e: &dyn std::fmt::Display| write_err(path, e);
    {
        let root = BitMapBackend::with_buffer(&mut buf, (pw, ph)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(&e))?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).label_style((FONT, 14)).draw().map_err(|e| err(&e))?;
        let color_of = |i: usize| {
            let c = class_color(i);
            RGBColor(c[0], c[1], c[2])
        };
        for (i, b) in bands.iter().enumerate() {
            let range: Vec<(f64, f64, f64)> =
                b.range.iter().copied().filter(|r| r.0.is_finite() && r.1.is_finite() && r.2.is_finite()).collect();
            if range.len() >= 2 {
                let outline: Vec<(f64, f64)> =
                    range.iter().map(|r| (r.0, r.2)).chain(range.iter().rev().map(|r| (r.0, r.1))).collect();
                chart
                    .draw_series(std::iter::once(Polygon::new(outline, color_of(i).mix(0.2).filled())))
                    .map_err(|e| err(&e))?;
            }
        }
        for (i, b) in bands.iter().enumerate() {
            let color = color_of(i);
            let points: Vec<(f64, f64)> = b.line.points.iter().copied().filter(finite).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(b.line.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            if points.len() <= 30 {
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| err(&e))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    image::RgbImage::from_raw(pw, ph, buf).ok_or_else(|| err(&"plot buffer size"))?.save(path).map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_tints_inside_outlines_the_edge_and_leaves_the_rest() {
        let img = RgbImage { height: 40, width: 60, pixels: vec![100; 40 * 60 * 3] };
        let mut data = vec![false; 40 * 60];
        for y in 20..35 {
            for x in 10..40 {
                data[y * 60 + x] = true;
            }
        }
        let mask = BinaryMask { height: 40, width: 60, data };
        let out = overlay(&img, &[Labelled { class: 1, text: "square 0.90".into(), mask: &mask }]).unwrap();
        let at = |y: usize, x: usize| &out.pixels[(y * 60 + x) * 3..(y * 60 + x) * 3 + 3];
        let c = class_color(1);
        assert_eq!(
            at(27, 25),
            &[((100 + c[0] as u16) / 2) as u8, ((100 + c[1] as u16) / 2) as u8, ((100 + c[2] as u16) / 2) as u8]
        );
        assert_eq!(at(20, 25), &c[..], "edge drawn in the class colour");
        assert_eq!(at(39, 59), &[100, 100, 100], "outside the mask and the label untouched");
        // The label box sits above the mask, in the class colour, with some white text pixels.
        let label: Vec<&[u8]> = (8..20).flat_map(|y| (10..40).map(move |x| (y, x))).map(|(y, x)| at(y, x)).collect();
        assert!(label.iter().any(|p| *p == &c[..]) && label.iter().any(|p| p.iter().all(|&v| v > 200)));
        let wrong = BinaryMask { height: 4, width: 4, data: vec![false; 16] };
        assert!(overlay(&img, &[Labelled { class: 0, text: String::new(), mask: &wrong }]).is_err());
    }

    #[test]
    fn band_plot_shades_the_range_in_the_line_colour() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("band.png");
        let line = Series { name: "AP".into(), points: vec![(0.0, 1.0), (10.0, 1.0)] };
        let band = Band { line, range: vec![(0.0, 0.0, 2.0), (10.0, 0.0, 2.0)] };
        band_plot(&path, "ap", "step", "AP", &[band]).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let c = class_color(0);
        // Tinted (not white, not the full line colour) pixels exist: the 20 % band.
        let tinted = img.pixels().filter(|p| {
            let expect = |k: usize| (0.2 * c[k] as f64 + 0.8 * 255.0).round() as i32;
            (0..3).all(|k| (p[k] as i32 - expect(k)).abs() <= 2)
        });
        assert!(tinted.count() > 10_000, "the band covers a large area of the plot");
    }

    #[test]
    fn line_plot_writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curve.png");
        let s = Series { name: "loss".into(), points: (0..50).map(|i| (i as f64, 10.0 / (1.0 + i as f64))).collect() };
        line_plot(&path, "loss", "step", "loss", &[s, Series { name: "empty".into(), points: vec![] }]).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (800, 500));
        let c = class_color(0);
        assert!(img.pixels().any(|p| p.0 == c), "the line is drawn in the first palette colour");
    }
}
