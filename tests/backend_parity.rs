//! The same tiny model (same weights) gives the same outputs on flex and on wgpu (lavapipe in CI).
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::{Flex, Wgpu};
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use common::*;

#[test]
fn flex_and_wgpu_agree_on_every_prediction() {
    let flex_dev = Default::default();
    let (cfg, model) = tiny_model::<Flex>(&flex_dev, 0);
    // Same weights on both backends: serialise the flex record and load it on wgpu.
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = Recorder::<Flex>::record(&recorder, model.clone().into_record(), ()).unwrap();
    let wgpu_dev = burn::backend::wgpu::WgpuDevice::default();
    let record = Recorder::<Wgpu>::load(&recorder, bytes, &wgpu_dev).unwrap();
    let wmodel = cfg.model.init::<Wgpu>(&wgpu_dev).unwrap().load_record(record);

    let x = host(input::<Flex>(2, 64, 96, &flex_dev));
    let xf = Tensor::<Flex, 1>::from_data(TensorData::new(x.clone(), [x.len()]), &flex_dev).reshape([2, 3, 64, 96]);
    let xw = Tensor::<Wgpu, 1>::from_data(TensorData::new(x.clone(), [x.len()]), &wgpu_dev).reshape([2, 3, 64, 96]);
    let a = model.forward(xf);
    let b = wmodel.forward(xw);
    let mut worst = 0f32;
    for (i, (pa, pb)) in a.predictions.iter().zip(&b.predictions).enumerate() {
        let dc = max_abs_diff(&host(pa.class_logits.clone()), &host(pb.class_logits.clone()));
        let dm = max_abs_diff(&host(pa.mask_logits.clone()), &host(pb.mask_logits.clone()));
        assert!(dc < 1e-4 && dm < 1e-4, "prediction {i}: class Δ {dc}, mask Δ {dm}");
        worst = worst.max(dc).max(dm);
    }
    eprintln!("flex vs wgpu, worst max-abs difference over 10 predictions: {worst:e}");
}
