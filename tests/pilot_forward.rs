//! The MP-Former training forward on the shipped tiny configs: the MP part is laid out as the
//! config says, every prediction carries `P + Q` queries, and flex and wgpu (lavapipe in CI) agree
//! given the same weights and the same host-side noise streams.

mod common;

use burn::backend::Flex;
use burn::prelude::*;
use common::*;
use mpformer::pilot::forward::{GtObjects, MpFormer, PilotStreams, PilotedOutput};
use mpformer::pilot::masks::BinaryMask;
use mpformer::train::config::ExperimentConfig;

fn rect(h: usize, w: usize, y0: usize, x0: usize, y1: usize, x1: usize) -> BinaryMask {
    let data = (0..h * w).map(|i| (y0..y1).contains(&(i / w)) && (x0..x1).contains(&(i % w))).collect();
    BinaryMask { height: h, width: w, data }
}

/// Two images of 64×96: three objects and one object.
fn gt() -> Vec<GtObjects> {
    vec![
        GtObjects {
            labels: vec![0, 3, 4],
            masks: vec![rect(64, 96, 0, 0, 20, 30), rect(64, 96, 30, 40, 60, 90), rect(64, 96, 10, 50, 14, 95)],
        },
        GtObjects { labels: vec![2], masks: vec![rect(64, 96, 8, 8, 56, 40)] },
    ]
}

fn mp_net<B: Backend>(cfg: &ExperimentConfig, device: &B::Device) -> MpFormer<B> {
    B::seed(device, cfg.seed);
    MpFormer::new(cfg.model.init::<B>(device).unwrap(), &cfg.pilot, device)
}

fn run<B: Backend>(cfg: &ExperimentConfig, net: &MpFormer<B>, device: &B::Device) -> PilotedOutput<B> {
    let x = host(input::<Flex>(2, 64, 96, &Default::default()));
    let x = Tensor::<B, 1>::from_data(TensorData::new(x.clone(), [x.len()]), device).reshape([2, 3, 64, 96]);
    net.forward_train(x, &gt(), &cfg.pilot, &mut PilotStreams::for_step(cfg.seed, 0))
}

#[test]
fn shipped_mp_configs_run_a_training_forward() {
    let device = Default::default();
    // (config, groups): fixed 1 group; the dynamic rule gives ⌊20 / 3⌋ = 6 groups of 3 slots.
    for (rel, groups) in [
        ("synthetic/tiny_mpformer.toml", 1),
        ("synthetic/tiny_mpformer_paper_noise.toml", 1),
        ("synthetic/tiny_mpformer_dynamic.toml", 6),
    ] {
        let cfg = load(rel);
        assert!(cfg.pilot.enabled && !cfg.model.decoder.use_query_pos_embed, "{rel}");
        let net = mp_net::<Flex>(&cfg, &device);
        let out = run(&cfg, &net, &device);
        let layout = out.layout.as_ref().expect("the batch has objects");
        assert_eq!((layout.num_groups, layout.group_size), (groups, 3), "{rel}");
        let p = groups * 3;
        assert_eq!(out.output.predictions.len(), 10);
        for (mp, matching) in out.split() {
            assert_eq!(mp.unwrap().mask_logits.dims(), [2, p, 16, 24], "{rel}");
            assert_eq!(matching.class_logits.dims(), [2, cfg.model.decoder.num_queries, 6], "{rel}");
        }
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn mp_training_forward_agrees_on_flex_and_wgpu() {
    use burn::backend::Wgpu;
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};

    let cfg = load("synthetic/tiny_mpformer_paper_noise.toml");
    let flex_dev = Default::default();
    let net = mp_net::<Flex>(&cfg, &flex_dev);
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = Recorder::<Flex>::record(&recorder, net.clone().into_record(), ()).unwrap();
    let wgpu_dev = burn::backend::wgpu::WgpuDevice::default();
    let record = Recorder::<Wgpu>::load(&recorder, bytes, &wgpu_dev).unwrap();
    let wnet = mp_net::<Wgpu>(&cfg, &wgpu_dev).load_record(record);

    let (a, b) = (run(&cfg, &net, &flex_dev), run(&cfg, &wnet, &wgpu_dev));
    assert_eq!(a.layout, b.layout, "host-side layout and label noise are backend-independent");
    let mut worst = 0f32;
    for (i, (pa, pb)) in a.output.predictions.iter().zip(&b.output.predictions).enumerate() {
        let dc = max_abs_diff(&host(pa.class_logits.clone()), &host(pb.class_logits.clone()));
        let dm = max_abs_diff(&host(pa.mask_logits.clone()), &host(pb.mask_logits.clone()));
        assert!(dc < 1e-4 && dm < 1e-4, "prediction {i}: class Δ {dc}, mask Δ {dm}");
        worst = worst.max(dc).max(dm);
    }
    eprintln!("MP training forward, flex vs wgpu, worst max-abs difference: {worst:e}");
}
