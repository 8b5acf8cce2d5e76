//! Data-parallel training: two replicas of batch 2 step exactly like one device of batch 4 (to
//! float tolerance), with and without mask piloting; a run resumes on another device count; a
//! batch that does not split is refused; a multi-node run is refused (Burn 0.21's global
//! collective hangs, see `mpf_train::parallel::MULTI_NODE_BLOCKED`), and the two-process check
//! that will replace the refusal is kept, ignored, below.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use burn::backend::flex::{Flex, FlexDevice};
use burn::module::Module;
use burn::prelude::*;
use mpf_data::config::training_indices;
use mpf_data::loader::{Loader, plan};
use mpf_train::checkpoint;
use mpf_train::config::{self, ExperimentConfig};
use mpf_train::device::BackendTask;
use mpf_train::train::{TrainTask, open_data};

/// Largest difference allowed between a weight of the two-replica run and of the one-device run
/// after 5 AdamW steps at a rate of at most 1e-4. Summation order differs (the replicas' mean of
/// two half-batch gradients against one whole-batch gradient); measured: 1.2e-7 to 2.9e-7. Two
/// replicas that started from different initial weights (a bug this test caught while being
/// written) differed by 6e-3.
const TOL: f32 = 2e-6;

fn config_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(rel)
}

/// A five-step run of a very small model on 64-px synthetic shapes, total batch 4.
fn micro(base: &str, extra: &[String]) -> ExperimentConfig {
    let mut sets: Vec<String> = [
        "data.synthetic_size=64",
        "data.crop_size=[64, 64]",
        "data.synthetic_train=16",
        "data.synthetic_val=2",
        "data.batch_size=4",
        "data.workers=1",
        "solver.max_iter=5",
        "solver.warmup_iters=2",
        "model.decoder.num_layers=2",
        "pilot.piloted_layers=[0, 1]",
        "model.pixel_decoder.encoder_layers=1",
        "loss.num_points=128",
        "train.log_period=1",
        "train.eval_period=0",
        "train.checkpoint_period=5",
        "train.eval_images=2",
        "train.overlays=0",
        "test.detections_per_image=5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.extend(extra.iter().cloned());
    config::load(Some(&config_path(base)), &sets).unwrap()
}

fn task(cfg: &ExperimentConfig, out: &Path) -> TrainTask {
    TrainTask { config: cfg.clone(), output: out.to_path_buf(), resume: None, init: None, progress: false, nodes: None }
}

fn weights(run: &Path, cfg: &ExperimentConfig) -> Vec<Vec<f32>> {
    let dir = run.join(format!("checkpoints/step_{:08}", cfg.solver.max_iter));
    let model = checkpoint::load::<Flex>(&dir, cfg, &FlexDevice).unwrap();
    struct Collect(Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor<Flex> for Collect {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<Flex, D>>) {
            self.0.push(p.val().into_data().convert::<f32>().to_vec().unwrap());
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

/// Largest weight difference between two runs' final checkpoints.
fn max_diff(a: &Path, b: &Path, cfg: &ExperimentConfig) -> f32 {
    let (wa, wb) = (weights(a, cfg), weights(b, cfg));
    assert_eq!(wa.len(), wb.len());

    let d = wa.iter().zip(&wb).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max);
    eprintln!("largest weight difference {d:e}");
    d
}

/// The logged training losses of a run.
fn train_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

/// Whether, at every step of `cfg`, each of `world` shards holds an image with the batch's
/// largest object count: MP groups are laid out per replica (the group size is the replica's
/// largest count, padding slots take part in the MP queries' self-attention and class loss), so
/// only then can a piloted run match one device.
fn shards_share_the_group_size(cfg: &ExperimentConfig, world: usize) -> bool {
    let (train, _) = open_data(cfg).unwrap();
    let indices = training_indices(train.as_ref());
    let steps = cfg.solver.max_iter * cfg.solver.accumulate as u64;
    let batches = Loader::new(
        train,
        plan(&indices, cfg.data.batch_size, cfg.seed, 0, steps),
        cfg.data.train_augment(),
        cfg.input.size_divisibility,
        cfg.seed,
        1,
        2,
    );
    batches.map(|b| b.unwrap()).all(|b| {
        let counts: Vec<usize> = b.objects.iter().map(Vec::len).collect();
        let max = counts.iter().copied().max().unwrap_or(0);
        counts.chunks(counts.len() / world).all(|shard| shard.iter().copied().max() == Some(max))
    })
}

/// One device of batch 4 and two replicas of batch 2 (threads, in this process).
fn one_and_two(cfg: &ExperimentConfig, dir: &Path) -> (PathBuf, PathBuf) {
    let (one, two) = (dir.join("one"), dir.join("two"));
    task(cfg, &one).run::<Flex>(FlexDevice, "flex").unwrap();
    let report = task(cfg, &two)
        .run_replicated::<Flex>(vec![FlexDevice; 2], vec!["flex".into(), "flex".into()])
        .unwrap()
        .expect("replica 0 reports");
    assert_eq!(report.final_step, 5);
    (one, two)
}

#[test]
fn two_replicas_of_batch_2_equal_one_device_of_batch_4() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = micro("synthetic/tiny_mask2former.toml", &[]);
    let (one, two) = one_and_two(&cfg, dir.path());
    let d = max_diff(&one, &two, &cfg);
    assert!(d < TOL, "two replicas differ from one device by {d}");
    // The logged loss is the whole batch's: the replicas' mean equals one device's.
    for (a, b) in train_losses(&one).iter().zip(train_losses(&two)) {
        assert!((a - b).abs() < 1e-4 * a.abs(), "{a} vs {b}");
    }
    // Replica 0 alone wrote the run folder; every line says how many replicas ran.
    let log = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
    assert!(log.lines().filter(|l| l.contains("\"train\"")).all(|l| l.contains("\"replicas\":2")), "{log}");
}

/// A COCO instance set of 20 synthetic images that keeps exactly two objects per image (the other
/// shapes stay in the pixels as background; images with fewer are left out), read without
/// augmentation: every shard then has the batch's largest object count. Returns the `--set`s.
fn two_objects_per_image(dir: &Path) -> Vec<String> {
    mpf_data::synth::write(dir, mpf_data::synth::SynthStyle::Cluttered, 20, 3, 64).unwrap();
    let path = dir.join("instances.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut per_image = std::collections::HashMap::<u64, usize>::new();
    let anns: Vec<serde_json::Value> = v["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            let n = per_image.entry(a["image_id"].as_u64().unwrap()).or_default();
            *n += 1;
            *n <= 2
        })
        .cloned()
        .collect();
    let keep = |id: u64| per_image.get(&id).is_some_and(|&n| n >= 2);
    v["annotations"] = anns.into_iter().filter(|a| keep(a["image_id"].as_u64().unwrap())).collect();
    let images: Vec<serde_json::Value> =
        v["images"].as_array().unwrap().iter().filter(|i| keep(i["id"].as_u64().unwrap())).cloned().collect();
    assert!(images.len() >= 12, "{} images with two objects", images.len());
    v["images"] = images.into();
    std::fs::write(&path, v.to_string()).unwrap();
    let q = |p: PathBuf| format!("{:?}", p.to_string_lossy());
    vec![
        "data.format=\"coco\"".into(),
        format!("data.train_annotations={}", q(path.clone())),
        format!("data.train_images={}", q(dir.join("images"))),
        format!("data.val_annotations={}", q(path)),
        format!("data.val_images={}", q(dir.join("images"))),
        "data.augment=\"none\"".into(),
    ]
}

/// The piloted micro config on [`two_objects_per_image`]: label noise, point noise and the MP
/// class loss on, two fixed groups.
fn piloted(dir: &Path) -> ExperimentConfig {
    let mut sets = two_objects_per_image(dir);
    sets.extend(["pilot.group_rule=\"fixed\"".to_string(), "pilot.groups=2".into()]);
    let cfg = micro("synthetic/tiny_mpformer_paper_noise.toml", &sets);
    assert!(cfg.pilot.enabled && cfg.pilot.label_noise_ratio > 0.0 && cfg.pilot.class_loss);
    assert!(shards_share_the_group_size(&cfg, 2));
    cfg
}

#[test]
fn two_replicas_equal_one_device_with_mask_piloting() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = piloted(&dir.path().join("data"));
    let (one, two) = one_and_two(&cfg, dir.path());
    let d = max_diff(&one, &two, &cfg);
    assert!(d < TOL, "two piloted replicas differ from one device by {d}");
}

#[test]
fn a_two_replica_run_resumes_on_one_device() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = micro("synthetic/tiny_mask2former.toml", &["train.checkpoint_period=3".into()]);
    let (one, two) = one_and_two(&cfg, dir.path());
    // Continue the two-replica run from its step-3 checkpoint on one device.
    let resumed = dir.path().join("resumed");
    let t = TrainTask { resume: Some(two.join("checkpoints/step_00000003")), ..task(&cfg, &resumed) };
    let r = t.run::<Flex>(FlexDevice, "flex").unwrap();
    assert_eq!((r.start_step, r.final_step), (3, 5));
    let d = max_diff(&one, &resumed, &cfg);
    assert!(d < TOL, "resumed on one device: {d}");
}

#[test]
fn a_batch_that_does_not_split_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = micro("synthetic/tiny_mask2former.toml", &["data.batch_size=3".into()]);
    let e = task(&cfg, dir.path())
        .run_replicated::<Flex>(vec![FlexDevice; 2], vec!["flex".into(), "flex".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("data.batch_size") && e.contains("2 replicas"), "{e}");
    assert!(!dir.path().join("checkpoints").exists(), "nothing written");
}

/// A free TCP port on localhost (released before use; the tests bind right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn node(cfg: &Path, out: &Path, rank: u32, coordinator: u16, own: u16, extra: &[String]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mpf-train"));
    cmd.args(["train", "--device", "flex", "--nodes", "2", "--node-rank", &rank.to_string()])
        .arg("--coordinator")
        .arg(format!("ws://127.0.0.1:{coordinator}"))
        .arg("--node-address")
        .arg(format!("ws://127.0.0.1:{own}"))
        .arg("--config")
        .arg(cfg)
        .arg("--output")
        .arg(out);
    for s in extra {
        cmd.arg("--set").arg(s);
    }
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    cmd.spawn().unwrap()
}

#[test]
fn a_multi_node_run_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = micro("synthetic/tiny_mask2former.toml", &[]);
    let config_file = dir.path().join("m2f.toml");
    std::fs::write(&config_file, cfg.to_toml().unwrap()).unwrap();
    let out = node(&config_file, &dir.path().join("run"), 0, free_port(), free_port(), &[]).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("multi-node") && stderr.contains("sync.rs") && stderr.contains("--devices"), "{stderr}");
    // Flags are checked first, naming the one at fault.
    let mut bad = Command::new(env!("CARGO_BIN_EXE_mpf-train"));
    let out = bad.args(["train", "--nodes", "2", "--node-rank", "0"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--coordinator"));
}

/// The multi-node check, for when Burn's global collective completes more than one operation and
/// the nodes are joined again (see `MULTI_NODE_BLOCKED`): two processes over localhost step like
/// one device. Refused today (see above).
#[test]
#[ignore = "Burn 0.21's global collective hangs from its second operation (parallel::MULTI_NODE_BLOCKED)"]
fn two_processes_over_localhost_equal_one_device() {
    let dir = tempfile::tempdir().unwrap();
    let piloted = piloted(&dir.path().join("data"));
    for (name, cfg) in [("m2f", micro("synthetic/tiny_mask2former.toml", &[])), ("mp", piloted)] {
        let config_file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config_file, cfg.to_toml().unwrap()).unwrap();
        let one = dir.path().join(format!("{name}_one"));
        task(&cfg, &one).run::<Flex>(FlexDevice, "flex").unwrap();
        let (c, p0, p1) = (free_port(), free_port(), free_port());
        let two = dir.path().join(format!("{name}_nodes"));
        let n0 = node(&config_file, &two, 0, c, p0, &[]);
        let n1 = node(&config_file, &dir.path().join(format!("{name}_node1")), 1, c, p1, &[]);
        let (o0, o1) = (n0.wait_with_output().unwrap(), n1.wait_with_output().unwrap());
        let text = |o: &std::process::Output| {
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
        };
        assert!(o0.status.success(), "node 0: {}", text(&o0));
        assert!(o1.status.success(), "node 1: {}", text(&o1));
        assert!(text(&o1).contains("node 0 holds the run folder"), "{}", text(&o1));
        assert!(!dir.path().join(format!("{name}_node1/checkpoints")).exists(), "node 1 writes nothing");
        let d = max_diff(&one, &two, &cfg);
        assert!(d < TOL, "{name}: two nodes differ from one device by {d}");
    }
}
