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
    assert_eq!(v["published"]["params_m"], 44.0);
}

#[test]
fn info_prints_the_swin_l_count_next_to_the_published_one() {
    let (ok, stdout, stderr) =
        run(bin().args(["info", "--config"]).arg(config("coco/instance/mask2former_swin_large_100ep.toml")));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("published") && stdout.contains("216 M") && stdout.contains("Swin-L"), "{stdout}");
    let (ok, stdout, stderr) =
        run(bin().args(["info", "--json", "--config"]).arg(config("coco/instance/mask2former_swin_large_100ep.toml")));
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let trainable = v["trainable_params"].as_f64().unwrap() / 1e6;
    // 216 M as printed (rounded) by Cheng et al. 2022.
    assert!((215.5..216.5).contains(&trainable), "{trainable}");
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
fn import_every_pretrained_format_then_forward_and_eval() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let toml = d.join("swin.toml");
    // transformers, with the config written from its config.json.
    let (ok, stdout, stderr) = run(bin()
        .args(["import", "--from", "hf"])
        .arg(fixtures.join("hf_swin_tiny/model.safetensors"))
        .arg("--write-config")
        .arg(&toml)
        .arg("--output")
        .arg(d.join("hf")));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("imported 457 parameter tensors") && stdout.contains("Swin backbone"), "{stdout}");
    let written = std::fs::read_to_string(&toml).unwrap();
    assert!(written.contains("kind = \"swin\"") && written.contains("\"star\""), "{written}");
    // An existing config file is not overwritten without --force.
    let (ok, _, stderr) = run(bin()
        .args(["import", "--from", "hf"])
        .arg(fixtures.join("hf_swin_tiny/model.safetensors"))
        .arg("--write-config")
        .arg(&toml)
        .arg("--output")
        .arg(d.join("hf2")));
    assert!(!ok && stderr.contains("pass --force to overwrite"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&toml).unwrap(), written);
    // detectron2 model-zoo pickle with MP-Former's label embedding kept, and the .pth without it.
    let (ok, stdout, stderr) = run(bin()
        .args(["import", "--from", "detectron2"])
        .arg(fixtures.join("hf_swin_tiny/detectron2.pkl"))
        .arg("--config")
        .arg(&toml)
        .args(["--set", "pilot.enabled=true", "--output"])
        .arg(d.join("pkl")));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("imported 458 parameter tensors") && stdout.contains("kept MP-Former's label embedding"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = run(bin()
        .args(["import", "--from", "detectron2"])
        .arg(fixtures.join("hf_swin_tiny/detectron2.pth"))
        .arg("--config")
        .arg(&toml)
        .arg("--output")
        .arg(d.join("pth")));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("left out `sem_seg_head.predictor.label_enc.weight`"), "{stdout}");
    let (ok, _, stderr) = run(bin()
        .args(["import", "--from", "detectron2"])
        .arg(fixtures.join("hf_tiny/detectron2.pth"))
        .arg("--config")
        .arg(fixtures.join("hf_tiny/mpf.toml"))
        .arg("--output")
        .arg(d.join("r18")));
    assert!(ok, "{stderr}");
    // The same weights give the same predictions whatever the format.
    let forward = |ck: &str| {
        let out = d.join(format!("fw-{ck}"));
        let (ok, _, stderr) = run(bin().args(["forward", "--checkpoint"]).arg(d.join(ck)).arg("--output").arg(&out));
        assert!(ok, "{ck}: {stderr}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("forward.json")).unwrap()).unwrap();
        v["images"][0]["instances"].clone()
    };
    let hf = forward("hf");
    assert!(!hf.as_array().unwrap().is_empty());
    for ck in ["pkl", "pth"] {
        let other = forward(ck);
        for (a, b) in hf.as_array().unwrap().iter().zip(other.as_array().unwrap()).take(10) {
            assert_eq!((&a["label"], &a["area"]), (&b["label"], &b["area"]), "{ck}");
            assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-4, "{ck}");
        }
    }
    forward("r18");
    let (ok, stdout, stderr) = run(bin().arg("eval").arg("--checkpoint").arg(d.join("pkl")).args([
        "--set",
        "data.synthetic_val=2",
        "--set",
        "data.synthetic_size=64",
    ]));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Average Precision"), "{stdout}");
    // Fine-tuning from the imported MP-Former weights: step 0, fresh optimiser, the checkpoint's config.
    let finetune = |output: &str, extra: &[&str]| {
        let mut cmd = bin();
        cmd.arg("train").arg("--init").arg(d.join("pkl")).arg("--output").arg(d.join(output));
        for s in [
            "data.synthetic_size=64",
            "data.crop_size=[64, 64]",
            "data.synthetic_train=4",
            "data.synthetic_val=2",
            "data.batch_size=2",
            "data.workers=1",
            "loss.num_points=64",
            "train.eval_period=0",
            "train.checkpoint_period=2",
            "train.overlays=1",
            "solver.max_iter=2",
        ]
        .iter()
        .chain(extra)
        {
            cmd.args(["--set", s]);
        }
        run(&mut cmd)
    };
    let (ok, stdout, stderr) = finetune("ft", &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("training MP-Former") && stdout.contains("trained steps 0..2"), "{stdout}");
    let (ok, _, stderr) = finetune("ft7", &["model.decoder.num_queries=7"]);
    assert!(!ok && stderr.contains("model.decoder.num_queries"), "{stderr}");
    // detectron2 files carry no architecture.
    let (ok, _, stderr) = run(bin()
        .args(["import", "--from", "detectron2"])
        .arg(fixtures.join("hf_swin_tiny/detectron2.pkl"))
        .arg("--write-config")
        .arg(d.join("x.toml"))
        .arg("--output")
        .arg(d.join("x")));
    assert!(!ok && stderr.contains("--write-config needs --from hf"), "{stderr}");
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
    let predict = |out: &str| {
        let mut cmd = bin();
        cmd.arg("predict")
            .arg("--checkpoint")
            .arg(&ck)
            .arg("--input")
            .arg(dir.path().join("s/images"))
            .arg("--output")
            .arg(dir.path().join(out));
        cmd
    };
    let (ok, stdout, stderr) = run(predict("p").args(["--layers", "--min-score", "0"]));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("layers:"), "{stdout}");
    for f in ["000000.png", "000000.json", "000000_layers.png", "000001.png", "predictions.json"] {
        assert!(dir.path().join("p").join(f).exists(), "{f}");
    }
    // One unreadable image among them: named, the others predicted, exit status 1 at the end.
    std::fs::write(dir.path().join("s/images/000000_bad.png"), b"not an image").unwrap();
    let (code, stderr) = run_code(&mut predict("p2"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("000000_bad.png") && stderr.contains("1 of 3 images failed"), "{stderr}");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("p2/predictions.json")).unwrap()).unwrap();
    assert_eq!(written.as_array().unwrap().len(), 2);
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

/// Runs the program; returns its exit code (1 for an error, 101 for a panic) and stderr.
fn run_code(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd.output().expect("mpf-train runs");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into())
}

fn train_micro(run_dir: &std::path::Path, steps: u64, extra: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.args(["train", "--config"]).arg(config("synthetic/tiny_mpformer.toml")).args(micro_sets(steps));
    for s in extra {
        cmd.args(["--set", s]);
    }
    cmd.arg("--output").arg(run_dir);
    cmd
}

#[test]
fn a_run_folder_takes_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let mut first = train_micro(&run_dir, 1_000_000, &["train.checkpoint_period=100000000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first process holds the lock (it writes its pid into the lock file).
    let owner = format!("pid {}", first.id());
    while !std::fs::read_to_string(run_dir.join(".lock")).is_ok_and(|s| s.contains(&owner)) {
        if let Some(status) = first.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(first.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the first training process ended early ({status}): {err}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, stderr) = run_code(&mut train_micro(&run_dir, 2, &[]));
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("in use by another mpf-train process") && stderr.contains(&owner), "{stderr}");
    // The lock of a killed process is released by the OS: the folder can be used again (here,
    // resumed or restarted; it holds no checkpoint yet, so a fresh start is accepted).
    let (code, stderr) = run_code(&mut train_micro(&run_dir, 2, &[]));
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn checkpoints_verify_themselves_on_every_load() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for (run_dir, seed) in [(&a, "seed=0"), (&b, "seed=1")] {
        let (code, stderr) = run_code(&mut train_micro(run_dir, 2, &[seed]));
        assert_eq!(code, Some(0), "{stderr}");
    }
    let ck = a.join("checkpoints/step_00000002");
    let config_before = std::fs::read(a.join("config.toml")).unwrap();
    let resume = |sets: &[&str]| {
        let mut cmd = bin();
        cmd.arg("train").arg("--resume").arg(&a);
        for s in sets {
            cmd.args(["--set", s]);
        }
        run_code(&mut cmd)
    };
    // Another architecture: named, with both values, never a panic; the run's config is kept.
    let (code, e) = resume(&["model.decoder.num_queries=20", "solver.max_iter=4"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("has model.decoder.num_queries = 10, the config says 20"), "{e}");
    let (code, e) = resume(&["model.decoder.num_layers=3", "solver.max_iter=4"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("model.decoder.num_layers = 2, the config says 3"), "{e}");
    assert_eq!(std::fs::read(a.join("config.toml")).unwrap(), config_before, "a failed resume keeps config.toml");
    let (code, e) =
        run_code(bin().arg("eval").arg("--checkpoint").arg(&ck).args(["--set", "model.decoder.hidden_dim=64"]));
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("model.decoder.hidden_dim = 32, the config says 64"), "{e}");
    // An optimiser file from another run.
    let optim = std::fs::read(ck.join("optim-0.mpk")).unwrap();
    std::fs::copy(b.join("checkpoints/step_00000002/optim-0.mpk"), ck.join("optim-0.mpk")).unwrap();
    let (code, e) = resume(&["solver.max_iter=4"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("optim-0.mpk") && e.contains("does not belong to this checkpoint"), "{e}");
    std::fs::write(ck.join("optim-0.mpk"), optim).unwrap();
    // A hand-edited step.
    let header = std::fs::read_to_string(ck.join("checkpoint.json")).unwrap();
    std::fs::write(ck.join("checkpoint.json"), header.replacen("\"step\": 2", "\"step\": 1", 1)).unwrap();
    let (code, e) = resume(&["solver.max_iter=4"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("checkpoint.json was changed after it was written"), "{e}");
    std::fs::write(ck.join("checkpoint.json"), &header).unwrap();
    // A truncated model record.
    let model = std::fs::read(ck.join("model.mpk")).unwrap();
    std::fs::write(ck.join("model.mpk"), &model[..model.len() - 100]).unwrap();
    let (code, e) = run_code(bin().arg("eval").arg("--checkpoint").arg(&ck));
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("model.mpk is truncated or corrupt"), "{e}");
    std::fs::write(ck.join("model.mpk"), &model).unwrap();

    // A finished run resumed at its end (as after a kill following the last checkpoint) does not
    // log its final evaluation twice.
    let (code, e) = resume(&[]);
    assert_eq!(code, Some(0), "{e}");
    let log = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains("\"type\":\"eval\"") && l.contains("\"step\":2,")).count(),
        1,
        "{log}"
    );
    // A log that cannot be read stops the resume and is left as it was.
    let mut bytes = log.into_bytes();
    bytes[3] = 0xff;
    std::fs::write(a.join("metrics.jsonl"), &bytes).unwrap();
    let (code, e) = resume(&["solver.max_iter=4"]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("metrics.jsonl line 1") && e.contains("invalid UTF-8"), "{e}");
    assert_eq!(std::fs::read(a.join("metrics.jsonl")).unwrap(), bytes);
}

#[test]
fn bad_sizes_and_arguments_are_errors_not_panics() {
    for set in [
        "model.decoder.hidden_dim=0",
        "model.decoder.ffn_dim=0",
        "model.pixel_decoder.ffn_dim=0",
        "model.pixel_decoder.num_points=0",
        "model.decoder.num_queries=4000000000",
    ] {
        let (code, e) = run_code(bin().args(["info", "--set", set]));
        let key = set.split('=').next().unwrap();
        assert_eq!(code, Some(1), "{set}: {e}");
        assert!(e.contains(key), "{set}: {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, e) = run_code(bin().args(["synth", "--size", "100000", "--images", "1", "--out"]).arg(dir.path()));
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("100000×100000") && e.contains("limit"), "{e}");
    let (code, e) =
        run_code(bin().args(["predict", "--checkpoint", "x", "--input", "y", "--output", "z", "--min-score", "-5"]));
    assert_eq!(code, Some(2), "{e}");
    assert!(e.contains("-5 is outside 0..=1"), "{e}");
    // A data path with a quote and a backslash in it reaches the reader unchanged.
    let odd = dir.path().join("a\"b\\c");
    let (code, e) = run_code(bin().args(["synth", "--images", "2", "--size", "32", "--out"]).arg(&odd));
    assert_eq!(code, Some(0), "{e}");
    let out = bin()
        .args(["data-info", "--data"])
        .arg(odd.join("instances.json"))
        .arg("--images")
        .arg(odd.join("images"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("images: 2"));
}

#[test]
fn import_refuses_to_overwrite_a_checkpoint_without_force() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf_tiny");
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let import = |force: bool| {
        let mut cmd = bin();
        cmd.args(["import", "--from", "hf"])
            .arg(fixtures.join("model.safetensors"))
            .arg("--config")
            .arg(fixtures.join("mpf.toml"))
            .arg("--output")
            .arg(&ck);
        if force {
            cmd.arg("--force");
        }
        run_code(&mut cmd)
    };
    assert_eq!(import(false).0, Some(0));
    let (code, e) = import(false);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("already holds a checkpoint") && e.contains("--force"), "{e}");
    assert_eq!(import(true).0, Some(0));
}

#[test]
fn output_into_a_closed_pipe_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .args(["synth", "--images", "2", "--size", "32", "--out"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the program prints (as `mpf-train synth … | head -0` would).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(101), "panicked: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// `ablation --scale smoke` end to end: every (variant, seed) trains and is analysed, the results
/// have one row per variant with the seeds' spread and the paired difference, a second invocation
/// skips finished runs and resumes an interrupted one, and another config for the same folder is
/// refused.
#[test]
fn ablation_smoke_runs_skips_resumes_and_refuses_a_changed_grid() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("abl");
    let ablation = |extra: &[&str]| {
        let mut c = bin();
        c.current_dir(&root)
            .args(["ablation", "--grid", "table10", "--scale", "smoke", "--seeds", "2", "--jobs", "2", "--out"])
            .arg(&out)
            .args(extra);
        run(&mut c)
    };
    let (ok, stdout, stderr) = ablation(&[]);
    assert!(ok, "{stdout}\n{stderr}");
    let grid = out.join("table10");
    for f in ["results.md", "results.json", "ap.png", "util.png", "miou_l.png"] {
        assert!(grid.join(f).exists(), "{f} missing");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(grid.join("results.json")).unwrap()).unwrap();
    let names: Vec<&str> = v["variants"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Mask2Former", "fixed matching", "layer-consistency loss", "MP-Former"]);
    assert_eq!(v["runs"].as_array().unwrap().len(), 8);
    for row in v["variants"].as_array().unwrap() {
        assert_eq!(row["seeds"], serde_json::json!([0, 1]), "{}", row["name"]);
        let ap = &row["spread"]["AP"];
        assert!(ap["min"].as_f64().unwrap() <= ap["median"].as_f64().unwrap());
        assert!(ap["median"].as_f64().unwrap() <= ap["max"].as_f64().unwrap());
        // 9 decoder layers: Util^i and mIoU-L^i per layer; AP measured twice (steps 12 and 24).
        assert_eq!(row["util_layers"].as_array().unwrap().len(), 9);
        assert_eq!(row["curve"].as_array().unwrap().len(), 2);
    }
    // Paired difference to the first row: seeds compared, and the reference has none of its own.
    assert_eq!(v["variants"][3]["delta"]["AP"]["n"], 2);
    assert!(v["variants"][0]["delta"]["AP"]["median"].as_f64().unwrap() == 0.0);
    let md = std::fs::read_to_string(grid.join("results.md")).unwrap();
    assert!(md.contains("| MP-Former |") && md.contains("## Verdict"), "{md}");

    // Interrupt one run: its final checkpoint and done record are gone, the step-12 one is kept.
    let run_dir = grid.join("mp-former/seed_1");
    std::fs::remove_file(run_dir.join("done.json")).unwrap();
    std::fs::remove_dir_all(run_dir.join("checkpoints/step_00000024")).unwrap();
    let (ok, stdout, stderr) = ablation(&[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(stdout.matches("finished earlier").count(), 7, "{stdout}");
    let done: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("done.json")).unwrap()).unwrap();
    assert_eq!(done["resumed"], true);
    assert!(run_dir.join("checkpoints/step_00000024/checkpoint.json").exists());

    // Other steps for the same folder: refused before anything runs, naming the run folder.
    let (ok, _, stderr) = ablation(&["--steps", "30"]);
    assert!(!ok);
    assert!(stderr.contains("mask2former/seed_0") && stderr.contains("another config"), "{stderr}");
}
