//! `mpf-train data-info`: a data set as training reads it, with a progress bar.

use indicatif::{ProgressBar, ProgressStyle};
use mpf_data::{DataError, Dataset, Statistics};

/// Loads every image (with a progress bar on stderr) and counts objects per class and per image.
pub fn gather(data: &dyn Dataset) -> Result<Statistics, DataError> {
    let bar = ProgressBar::new(data.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} images [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("reading");
    let counted = ProgressData { inner: data, bar: &bar };
    let stats = mpf_data::statistics(&counted);
    bar.finish_and_clear();
    stats
}

struct ProgressData<'a> {
    inner: &'a dyn Dataset,
    bar: &'a ProgressBar,
}

impl Dataset for ProgressData<'_> {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn classes(&self) -> &[mpf_data::ClassInfo] {
        self.inner.classes()
    }
    fn get(&self, index: usize) -> Result<mpf_data::Sample, DataError> {
        let s = self.inner.get(index);
        self.bar.inc(1);
        s
    }
    fn num_objects(&self, index: usize) -> Option<usize> {
        self.inner.num_objects(index)
    }
    fn summary(&self) -> &mpf_data::Summary {
        self.inner.summary()
    }
}

/// The statistics as a text table; warns when the class count differs from the model's.
pub fn table(s: &Statistics, model_classes: usize) -> String {
    let mut out = format!("images: {}\n", s.images);
    out += &format!("classes: {}\n", s.objects_per_class.len());
    if s.objects_per_class.len() != model_classes {
        out += &format!(
            "warning: the data has {} classes, model.num_classes is {model_classes}\n",
            s.objects_per_class.len()
        );
    }
    out += "objects per class:\n";
    for (name, n) in &s.objects_per_class {
        out += &format!("  {name:<24} {n}\n");
    }
    out += "images by number of objects:\n";
    for (k, n) in &s.objects_per_image {
        out += &format!("  {k:>3} objects: {n} images\n");
    }
    out += &format!("most objects in one image: {}\n", s.max_objects);
    let m = &s.summary;
    out += &format!(
        "skipped / repaired: {} crowd regions excluded, {} annotations skipped ({} degenerate polygons), {} \
         annotations clipped to their image, {} images without objects\n",
        m.crowd_excluded, m.annotations_skipped, m.degenerate_polygons, m.clipped_annotations, m.empty_images
    );
    out
}
