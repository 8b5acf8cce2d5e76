//! The `mpf-train` program as a user runs it.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mpf-train"))
}

fn config(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(rel)
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("mpf-train runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn info_reports_the_papers_parameter_count() {
    let (ok, stdout, stderr) =
        run(bin().args(["info", "--json", "--config"]).arg(config("coco/instance/mask2former_r50.toml")));
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let trainable = v["trainable_params"].as_u64().unwrap() as f64 / 1e6;
    assert!((43.5..=44.5).contains(&trainable), "{trainable}");
    let parts: Vec<&str> = v["parts"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(parts, ["backbone", "pixel_decoder", "transformer_decoder", "heads"]);
    assert!(v["flops"]["backbone"].as_f64().unwrap() > 1e10);
}

#[test]
fn forward_on_synthetic_card_and_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run(bin()
        .args(["forward", "--size", "96x128", "--config"])
        .arg(config("synthetic/tiny_mask2former.toml"))
        .arg("--output")
        .arg(dir.path()));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("forward"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("forward.json")).unwrap()).unwrap();
    assert_eq!(report["task"], "instance");
    assert_eq!(report["images"][0]["padded"], serde_json::json!([96, 128]));
    assert_eq!(report["images"][0]["instances"].as_array().unwrap().len(), 20);

    // A real PNG file, panoptic post-processing, and a label map written next to the report.
    let png = dir.path().join("card.png");
    image::RgbImage::from_fn(50, 40, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, 0])).save(&png).unwrap();
    let (ok, _, stderr) = run(bin()
        .args(["forward", "--config"])
        .arg(config("synthetic/tiny_mask2former_panoptic.toml"))
        .arg("--input")
        .arg(&png)
        .arg("--output")
        .arg(dir.path()));
    assert!(ok, "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("forward.json")).unwrap()).unwrap();
    assert_eq!(report["images"][0]["size"], serde_json::json!([40, 50]));
    assert_eq!(report["images"][0]["padded"], serde_json::json!([64, 64]));
    let map = image::open(dir.path().join("image0_panoptic.png")).unwrap();
    assert_eq!((map.width(), map.height()), (50, 40));
}

#[test]
fn bad_inputs_give_clear_errors() {
    let (ok, _, stderr) = run(bin().args(["info", "--set", "model.decoder.num_querys=3"]));
    assert!(!ok && stderr.contains("model.decoder.num_querys"), "{stderr}");
    let (ok, _, stderr) = run(bin().args(["forward", "--device", "tpu"]));
    assert!(!ok && stderr.contains("unknown device `tpu`"), "{stderr}");
    let (ok, _, stderr) = run(bin()
        .args(["forward", "--input", "/nonexistent/x.png", "--config"])
        .arg(config("synthetic/tiny_mask2former.toml"))
        .arg("--output")
        .arg(tempfile::tempdir().unwrap().path()));
    assert!(!ok && stderr.contains("/nonexistent/x.png"), "{stderr}");
    let (ok, _, stderr) = run(bin().args(["info", "--config", "/nonexistent/c.toml"]));
    assert!(!ok && stderr.contains("/nonexistent/c.toml"), "{stderr}");
}

#[test]
fn import_writes_a_checkpoint_that_forward_loads() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf_tiny");
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let (ok, stdout, stderr) = run(bin()
        .args(["import", "--from", "hf"])
        .arg(fixtures.join("model.safetensors"))
        .arg("--config")
        .arg(fixtures.join("mpf.toml"))
        .arg("--output")
        .arg(&ck));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("imported 400 parameter tensors"), "{stdout}");
    for f in ["model.mpk", "config.toml", "checkpoint.json"] {
        assert!(ck.join(f).exists(), "{f}");
    }
    let out = dir.path().join("fw");
    let (ok, _, stderr) = run(bin().args(["forward", "--checkpoint"]).arg(&ck).arg("--output").arg(&out));
    assert!(ok, "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("forward.json")).unwrap()).unwrap();
    assert!(report["weights"].as_str().unwrap().contains("import hf"), "{report}");

    // Weights that do not fit the config: the error names a key and both shapes.
    let (ok, _, stderr) = run(bin()
        .args(["import", "--from", "hf"])
        .arg(fixtures.join("model.safetensors"))
        .arg("--config")
        .arg(fixtures.join("mpf.toml"))
        .args(["--set", "model.num_classes=7", "--output"])
        .arg(dir.path().join("bad")));
    assert!(
        !ok && stderr.contains("class_predictor.weight") && stderr.contains("[6, 32]") && stderr.contains("[32, 8]"),
        "{stderr}"
    );
}

#[test]
fn synth_then_data_info_on_every_view() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, stdout, stderr) =
        run(bin().args(["synth", "--images", "6", "--seed", "3", "--size", "64", "--out"]).arg(d));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("wrote 6 images"), "{stdout}");
    // Instance JSON via the --data shortcut, as JSON.
    let (ok, stdout, stderr) = run(bin()
        .args(["data-info", "--json", "--data"])
        .arg(d.join("instances.json"))
        .arg("--images")
        .arg(d.join("images")));
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["images"], 6);
    let total: u64 = v["objects_per_class"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    let per_image: u64 = v["objects_per_image"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| k.parse::<u64>().unwrap() * n.as_u64().unwrap())
        .sum();
    assert_eq!(total, per_image);
    // Panoptic (detected from the JSON) as a table.
    let (ok, stdout, stderr) =
        run(bin().args(["data-info", "--data"]).arg(d.join("panoptic.json")).arg("--images").arg(d.join("images")));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("images: 6") && stdout.contains("objects per class"), "{stdout}");
    // Semantic through config keys.
    let q = |p: PathBuf| format!("\"{}\"", p.display());
    let (ok, stdout, stderr) = run(bin()
        .args(["data-info", "--config"])
        .arg(config("synthetic/tiny_mask2former.toml"))
        .args(["--set", "data.format=semantic", "--set", "data.reduce_zero_label=true", "--set"])
        .arg(format!("data.train_images={}", q(d.join("images"))))
        .arg("--set")
        .arg(format!("data.train_labels={}", q(d.join("semantic")))));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("images: 6") && !stdout.contains("warning"), "{stdout}");
    // A broken file is an error naming it.
    std::fs::write(d.join("images/000002.png"), b"garbage").unwrap();
    let (ok, _, stderr) =
        run(bin().args(["data-info", "--data"]).arg(d.join("instances.json")).arg("--images").arg(d.join("images")));
    assert!(!ok && stderr.contains("000002.png") && stderr.contains("image 2"), "{stderr}");
}

/// `--set` arguments for a few-second training run of a very small MP-Former.
fn micro_sets(steps: u64) -> Vec<String> {
    [
        "data.synthetic_size=48",
        "data.crop_size=[48, 48]",
        "data.synthetic_train=8",
        "data.synthetic_val=2",
        "data.batch_size=2",
        "data.workers=1",
        "loss.num_points=64",
        "model.decoder.num_layers=2",
        "pilot.piloted_layers=[0, 1]",
        "model.pixel_decoder.encoder_layers=1",
        "train.log_period=2",
        "train.eval_period=0",
        "train.checkpoint_period=2",
        "train.overlays=1",
        "test.detections_per_image=3",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("solver.max_iter={steps}")])
    .flat_map(|s| ["--set".to_string(), s])
    .collect()
}

#[test]
fn train_resume_eval_and_predict_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let (ok, stdout, stderr) = run(bin()
        .args(["train", "--config"])
        .arg(config("synthetic/tiny_mpformer.toml"))
        .args(micro_sets(2))
        .arg("--output")
        .arg(&run_dir));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("training MP-Former") && stdout.contains("final AP"), "{stdout}");
    assert!(stdout.contains("overlays") && stdout.contains("loss.png"), "{stdout}");
    // Continue the run to 4 steps: the config comes from the checkpoint, --set still applies.
    let (ok, stdout, stderr) =
        run(bin().arg("train").arg("--resume").arg(&run_dir).args(["--set", "solver.max_iter=4"]));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("trained steps 2..4"), "{stdout}");
    let ck = run_dir.join("checkpoints/step_00000004");
    assert!(ck.join("optim-0.mpk").exists());

    let (ok, stdout, stderr) = run(bin().arg("eval").arg("--checkpoint").arg(&ck));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Average Precision") && stdout.contains("images/s with post-processing"), "{stdout}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("eval/results.json")).unwrap()).unwrap();
    assert!(results.as_array().unwrap().iter().all(|r| r["segmentation"]["counts"].is_string()));

    let (ok, _, stderr) =
        run(bin().args(["synth", "--images", "2", "--size", "40", "--out"]).arg(dir.path().join("s")));
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = run(bin()
        .arg("predict")
        .arg("--checkpoint")
        .arg(&ck)
        .arg("--input")
        .arg(dir.path().join("s/images"))
        .arg("--output")
        .arg(dir.path().join("p"))
        .args(["--layers", "--min-score", "0"]));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("layers:"), "{stdout}");
    for f in ["000000.png", "000000.json", "000000_layers.png", "000001.png", "predictions.json"] {
        assert!(dir.path().join("p").join(f).exists(), "{f}");
    }
    // Errors name what is wrong.
    let (ok, _, stderr) = run(bin().arg("eval").arg("--checkpoint").arg(dir.path()));
    assert!(!ok && stderr.contains("not an mpf checkpoint"), "{stderr}");
    let (ok, _, stderr) = run(bin().arg("train").arg("--resume").arg(dir.path().join("s")));
    assert!(!ok && stderr.contains("holds no checkpoint"), "{stderr}");
}

#[test]
fn coco_eval_scores_files_as_the_references() {
    let fx = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/eval");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.json");
    let (ok, stdout, stderr) = run(bin()
        .args(["coco-eval", "--iou-type", "bbox", "--gt"])
        .arg(fx.join("instances_gt.json"))
        .arg("--dt")
        .arg(fx.join("instances_results.json"))
        .arg("--output")
        .arg(&out));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("(AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.538"), "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("instances_expected.json")).unwrap()).unwrap();
    assert!((v["stats"]["AP"].as_f64().unwrap() - want["bbox"][0].as_f64().unwrap()).abs() < 1e-6);
    let (ok, stdout, stderr) = run(bin()
        .args(["coco-eval", "--gt"])
        .arg(fx.join("panoptic_gt.json"))
        .arg("--dt")
        .arg(fx.join("panoptic_pred.json")));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("PQ") && stdout.contains("58.2"), "{stdout}");
    let (ok, _, stderr) = run(bin()
        .args(["coco-eval", "--gt"])
        .arg(fx.join("nope.json"))
        .arg("--dt")
        .arg(fx.join("instances_results.json")));
    assert!(!ok && stderr.contains("nope.json"), "{stderr}");
}
