//! mpf-data on files: COCO decoding against pycocotools fixtures
//! (`scripts/fixtures/make_coco_fixtures.sh`), the synthetic writer read back through every
//! reader, and each kind of bad input giving its error or counted skip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hotcoco::types::Dataset as CocoJson;
use mpf_data::coco::{CocoInstances, decode_segmentation};
use mpf_data::panoptic::CocoPanoptic;
use mpf_data::semantic::SemanticFolder;
use mpf_data::synth::{self, CLASS_NAMES};
use mpf_data::{Dataset, RgbImage, statistics, write_png};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/coco_decode").join(name)
}

fn bits(s: &str) -> Vec<bool> {
    s.bytes().map(|b| b == b'1').collect()
}

fn blank(dir: &Path, name: &str, h: usize, w: usize) {
    write_png(&dir.join(name), &RgbImage { height: h, width: w, pixels: vec![90; h * w * 3] }).unwrap();
}

/// The fixture JSON with its two images written (blank) to a temp folder.
fn coco_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("instances.json"), dir.path().join("instances.json")).unwrap();
    blank(dir.path(), "a.png", 23, 31);
    blank(dir.path(), "b.png", 17, 12);
    dir
}

#[test]
fn polygons_and_rles_decode_as_pycocotools_does() {
    let coco: CocoJson = serde_json::from_str(&std::fs::read_to_string(fixture("instances.json")).unwrap()).unwrap();
    let expect: HashMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(fixture("decoded.json")).unwrap()).unwrap();
    let sizes: HashMap<u64, (usize, usize)> =
        coco.images.iter().map(|i| (i.id, (i.height as usize, i.width as usize))).collect();
    assert_eq!(coco.annotations.len(), 6);
    for a in &coco.annotations {
        let (h, w) = sizes[&a.image_id];
        let m = decode_segmentation(a.segmentation.as_ref().unwrap(), h, w).unwrap();
        assert_eq!(m.data, bits(&expect[&a.id.to_string()]), "annotation {}", a.id);
    }
}

#[test]
fn coco_reader_maps_categories_excludes_crowd_and_counts_clipping() {
    let dir = coco_dir();
    let data = CocoInstances::open(&dir.path().join("instances.json"), dir.path()).unwrap();
    let names: Vec<&str> = data.classes().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["three", "seven"], "ids 3 and 7 become 0 and 1, names kept");
    let s = data.summary();
    assert_eq!((s.crowd_excluded, s.clipped_annotations), (1, 1));
    let a = data.get(0).unwrap();
    assert_eq!(a.objects.iter().map(|o| o.label).collect::<Vec<_>>(), [0, 0, 1, 0]);
    let expect: HashMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(fixture("decoded.json")).unwrap()).unwrap();
    assert_eq!(a.objects[3].mask.data, bits(&expect["4"]));
    let b = data.get(1).unwrap();
    assert_eq!(b.objects.len(), 1, "the crowd region is not a target");
    let stats = statistics(&data).unwrap();
    assert_eq!(stats.objects_per_class["three"], 3);
    assert_eq!(stats.objects_per_image[&4], 1);
}

fn edit_json(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let path = dir.join("instances.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
    path
}

#[test]
fn bad_coco_input_names_the_file_and_item() {
    // Unknown image and unknown category name the annotation.
    let dir = coco_dir();
    let p = edit_json(dir.path(), |v| v["annotations"][2]["image_id"] = 99.into());
    let e = CocoInstances::open(&p, dir.path()).unwrap_err().to_string();
    assert!(e.contains("instances.json") && e.contains("annotation 3") && e.contains("unknown image 99"), "{e}");
    let dir = coco_dir();
    let p = edit_json(dir.path(), |v| v["annotations"][0]["category_id"] = 5.into());
    let e = CocoInstances::open(&p, dir.path()).unwrap_err().to_string();
    assert!(e.contains("annotation 1") && e.contains("unknown category 5"), "{e}");
    // A polygon with fewer than 3 points is a counted skip.
    let dir = coco_dir();
    let p = edit_json(dir.path(), |v| v["annotations"][0]["segmentation"] = serde_json::json!([[1.0, 2.0, 3.0, 4.0]]));
    let data = CocoInstances::open(&p, dir.path()).unwrap();
    assert_eq!((data.summary().degenerate_polygons, data.summary().annotations_skipped), (1, 1));
    assert_eq!(data.get(0).unwrap().objects.len(), 3);
    // An RLE whose size differs from its image.
    let dir = coco_dir();
    let p = edit_json(dir.path(), |v| v["annotations"][4]["segmentation"]["size"] = serde_json::json!([12, 17]));
    let e = CocoInstances::open(&p, dir.path()).unwrap_err().to_string();
    assert!(e.contains("annotation 5"), "{e}");
    // Malformed JSON: file and position.
    let dir = coco_dir();
    std::fs::write(dir.path().join("instances.json"), "{\"images\": [").unwrap();
    let e = CocoInstances::open(&dir.path().join("instances.json"), dir.path()).unwrap_err().to_string();
    assert!(e.contains("instances.json") && e.contains("line 1"), "{e}");
    // Missing, corrupt and wrongly sized images: at load time, naming file and image id.
    let dir = coco_dir();
    std::fs::remove_file(dir.path().join("b.png")).unwrap();
    std::fs::write(dir.path().join("a.png"), b"not a png").unwrap();
    let data = CocoInstances::open(&dir.path().join("instances.json"), dir.path()).unwrap();
    let e = data.get(1).unwrap_err().to_string();
    assert!(e.contains("b.png") && e.contains("image 2"), "{e}");
    let e = data.get(0).unwrap_err().to_string();
    assert!(e.contains("a.png") && e.contains("image 1"), "{e}");
    blank(dir.path(), "a.png", 20, 31);
    let e = data.get(0).unwrap_err().to_string();
    assert!(e.contains("20×31") && e.contains("23×31"), "{e}");
    // An image declared far too large is refused when the JSON is opened, before any allocation.
    let dir = coco_dir();
    let p = edit_json(dir.path(), |v| {
        v["images"][1]["height"] = 100_000.into();
        v["images"][1]["width"] = 100_000.into();
    });
    let e = CocoInstances::open(&p, dir.path()).unwrap_err().to_string();
    assert!(e.contains("instances.json") && e.contains("image 2 (b.png)") && e.contains("100000×100000"), "{e}");
}

#[test]
fn oversized_synthetic_and_panoptic_sizes_are_refused() {
    assert!(mpf_data::check_image_size(9459, 9459).is_ok());
    assert!(mpf_data::check_image_size(9460, 9460).unwrap_err().contains("89478485"));
    assert!(mpf_data::check_image_size(usize::MAX, 2).is_err(), "overflowing products are refused");
    let dir = tempfile::tempdir().unwrap();
    let e = synth::write(dir.path(), synth::SynthStyle::Simple, 1, 0, 100_000).unwrap_err().to_string();
    assert!(e.contains("image size") && e.contains("100000×100000"), "{e}");
    assert!(synth::write(dir.path(), synth::SynthStyle::Simple, 1, 0, 8).is_err());
    synth::write(dir.path(), synth::SynthStyle::Simple, 1, 0, 32).unwrap();
    let path = dir.path().join("panoptic.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["images"][0]["height"] = 200_000.into();
    v["images"][0]["width"] = 1000.into();
    std::fs::write(&path, v.to_string()).unwrap();
    let e =
        CocoPanoptic::open(&path, &dir.path().join("images"), &dir.path().join("panoptic")).unwrap_err().to_string();
    assert!(e.contains("panoptic.json") && e.contains("image 0") && e.contains("200000×1000"), "{e}");
}

#[test]
fn synthetic_files_read_back_through_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = synth::write(d, synth::SynthStyle::Cluttered, 3, 11, 64).unwrap();
    assert!(n >= 6);
    let coco = CocoInstances::open(&d.join("instances.json"), &d.join("images")).unwrap();
    let pan = CocoPanoptic::open(&d.join("panoptic.json"), &d.join("images"), &d.join("panoptic")).unwrap();
    let names: Vec<String> = CLASS_NAMES.iter().map(|s| s.to_string()).collect();
    let sem = SemanticFolder::open(&d.join("images"), &d.join("semantic"), &names, 255, true).unwrap();
    for i in 0..3 {
        let truth = synth::generate(synth::SynthStyle::Cluttered, 11, i as u64, 64);
        let c = coco.get(i).unwrap();
        assert_eq!(c.image.pixels, truth.image.pixels);
        assert_eq!(c.objects, truth.objects, "instance view, image {i}");
        assert_eq!(pan.get(i).unwrap().objects, truth.objects, "panoptic view, image {i}");
        // Semantic view: one object per class present, the union of that class's masks.
        let s = sem.get(i).unwrap();
        for o in &s.objects {
            let union: Vec<bool> =
                (0..64 * 64).map(|p| truth.objects.iter().any(|t| t.label == o.label && t.mask.data[p])).collect();
            assert_eq!(o.mask.data, union, "semantic view, image {i}, class {}", o.label);
        }
    }
}

#[test]
fn bad_semantic_and_panoptic_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    synth::write(d, synth::SynthStyle::Cluttered, 2, 5, 32).unwrap();
    let names: Vec<String> = CLASS_NAMES.iter().map(|s| s.to_string()).collect();
    // A label PNG whose size differs from its image.
    image::GrayImage::new(16, 32).save(d.join("semantic/000001.png")).unwrap();
    let sem = SemanticFolder::open(&d.join("images"), &d.join("semantic"), &names, 255, true).unwrap();
    let e = sem.get(1).unwrap_err().to_string();
    assert!(e.contains("000001.png") && e.contains("32×16"), "{e}");
    // A label value that is no class.
    image::GrayImage::from_pixel(32, 32, image::Luma([9])).save(d.join("semantic/000000.png")).unwrap();
    let e = sem.get(0).unwrap_err().to_string();
    assert!(e.contains("label value 9"), "{e}");
    // An image without a label file.
    std::fs::remove_file(d.join("semantic/000000.png")).unwrap();
    let e = SemanticFolder::open(&d.join("images"), &d.join("semantic"), &names, 255, true).unwrap_err().to_string();
    assert!(e.contains("000000.png") && e.contains("no label file"), "{e}");
    // Panoptic: a listed segment without pixels names the segment and the PNG.
    let pan = CocoPanoptic::open(&d.join("panoptic.json"), &d.join("images"), &d.join("panoptic")).unwrap();
    write_png(&d.join("panoptic/000000.png"), &RgbImage { height: 32, width: 32, pixels: vec![0; 32 * 32 * 3] })
        .unwrap();
    let e = pan.get(0).unwrap_err().to_string();
    assert!(e.contains("panoptic/000000.png") && e.contains("segment 1") && e.contains("no pixel"), "{e}");
    // Panoptic: an unknown category names the segment.
    let path = d.join("panoptic.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["annotations"][1]["segments_info"][0]["category_id"] = 42.into();
    std::fs::write(&path, v.to_string()).unwrap();
    let e = CocoPanoptic::open(&path, &d.join("images"), &d.join("panoptic")).unwrap_err().to_string();
    assert!(e.contains("segment 1") && e.contains("image 1") && e.contains("unknown category 42"), "{e}");
}
