//! The training-speed reformulations against the generic compositions they replace, forward and
//! gradient, on flex and (with the `wgpu` feature) on wgpu:
//!
//! - deformable attention as one row gather (`SamplingForm::Gather`) against per-level
//!   `grid_sample` (`SamplingForm::GridSample`), gradients with respect to the query, the values
//!   and all four projections;
//! - the losses' point sampling as a gather of bilinear corners (`gather_points`) against
//!   `grid_sample` (`point_sample`), gradient with respect to the mask logits.

mod common;

use burn::backend::Autodiff;
use burn::module::Param;
use burn::prelude::*;
use common::{host, max_abs_diff};
use mpformer::criterion::points::{Corners, Point, gather_points, point_sample};
use mpformer::model::deform_attn::{MSDeformAttnConfig, ReferenceGrid, SamplingForm};
use mpformer::model::pixel_decoder::reference_points;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn tensor<B: Backend, const D: usize>(v: &[f32], shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [v.len()]), device).reshape(shape)
}

fn random(n: usize, lo: f32, hi: f32, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| lo + (hi - lo) * rng.random::<f32>()).collect()
}

/// The deformable attention module in its gather and `grid_sample` forms: output and the
/// gradients of the query, the values and every projection; returns the worst difference.
fn deform_attn_parity<B: Backend>(device: &B::Device) -> f32 {
    type A<B> = Autodiff<B>;
    let shapes = [[4usize, 6usize], [2, 3], [1, 2]];
    let (b, d, m, l, p) = (2, 12, 2, 3, 2);
    let s: usize = shapes.iter().map(|[h, w]| h * w).sum();
    let mut rng = StdRng::seed_from_u64(5);
    let mut attn = MSDeformAttnConfig::new()
        .with_d_model(d)
        .with_n_heads(m)
        .with_n_levels(l)
        .with_n_points(p)
        .init::<A<B>>(device);
    // Random projections everywhere (the initial sampling and attention weights are zero), large
    // enough that samples spill outside the levels (zero padding).
    let param = |n: usize, shape: [usize; 2], scale: f32, rng: &mut StdRng| {
        Param::from_tensor(tensor::<A<B>, 2>(&random(n, -scale, scale, rng), shape, device))
    };
    attn.sampling_offsets.weight = param(d * m * l * p * 2, [d, m * l * p * 2], 1.5, &mut rng);
    attn.attention_weights.weight = param(d * m * l * p, [d, m * l * p], 1.0, &mut rng);
    attn.value_proj.weight = param(d * d, [d, d], 0.5, &mut rng);
    attn.output_proj.weight = param(d * d, [d, d], 0.5, &mut rng);
    let query = random(b * s * d, -1.0, 1.0, &mut rng);
    let input = random(b * s * d, -1.0, 1.0, &mut rng);
    let up = random(b * s * d, -1.0, 1.0, &mut rng);
    let grid = ReferenceGrid::new(&reference_points(&shapes), b, &shapes, m, p, device);
    let run = |form: SamplingForm| {
        let q = tensor::<A<B>, 3>(&query, [b, s, d], device).require_grad();
        let v = tensor::<A<B>, 3>(&input, [b, s, d], device).require_grad();
        let out = attn.forward_with(q.clone(), &grid, v.clone(), form);
        let g = (out.clone() * tensor::<A<B>, 3>(&up, [b, s, d], device)).sum().backward();
        let pg = |w: &Param<Tensor<A<B>, 2>>| host(w.grad(&g).unwrap());
        [
            host(out),
            host(q.grad(&g).unwrap()),
            host(v.grad(&g).unwrap()),
            pg(&attn.sampling_offsets.weight),
            pg(&attn.attention_weights.weight),
            pg(&attn.value_proj.weight),
            pg(&attn.output_proj.weight),
        ]
    };
    let (ours, reference) = (run(SamplingForm::Gather), run(SamplingForm::GridSample));
    let names =
        ["output", "d query", "d values", "d sampling_offsets", "d attention_weights", "d value_proj", "d output_proj"];
    let mut worst = 0f32;
    for ((a, r), name) in ours.iter().zip(&reference).zip(names) {
        let scale = r.iter().fold(1f32, |acc, v| acc.max(v.abs()));
        let d = max_abs_diff(a, r) / scale;
        assert!(d < 1e-4, "{name} differs by {d} (relative to its largest entry)");
        worst = worst.max(d);
    }
    worst
}

fn point_gather_parity<B: Backend>(device: &B::Device) -> f32 {
    type A<B> = Autodiff<B>;
    let (r, h, w, p) = (3, 6, 5, 30);
    let mut rng = StdRng::seed_from_u64(6);
    let values = random(r * h * w, -3.0, 3.0, &mut rng);
    let points: Vec<Vec<Point>> = (0..r)
        .map(|_| (0..p).map(|_| [rng.random::<f32>() * 1.3 - 0.15, rng.random::<f32>() * 1.3 - 0.15]).collect())
        .collect();
    let up = random(r * p, -1.0, 1.0, &mut rng);
    let x = tensor::<A<B>, 2>(&values, [r, h * w], device).require_grad();
    let mut corners = Corners::default();
    for row in &points {
        corners.push_row(h, w, row);
    }
    let ours = gather_points(x.clone(), &corners, p);
    let g = (ours.clone() * tensor::<A<B>, 2>(&up, [r, p], device)).sum().backward();
    let (ours, g) = (host(ours), host(x.grad(&g).unwrap()));
    let y = tensor::<A<B>, 4>(&values, [r, 1, h, w], device).require_grad();
    let coords: Vec<f32> = points.iter().flatten().flat_map(|q| q.to_vec()).collect();
    let reference = point_sample(y.clone(), tensor::<A<B>, 3>(&coords, [r, p, 2], device)).reshape([r, p]);
    let gr = (reference.clone() * tensor::<A<B>, 2>(&up, [r, p], device)).sum().backward();
    let (reference, gr) = (host(reference), host(y.grad(&gr).unwrap()));
    let (d, dg) = (max_abs_diff(&ours, &reference), max_abs_diff(&g, &gr));
    assert!(d < 1e-5 && dg < 1e-5, "point gather: forward Δ {d}, gradient Δ {dg}");
    d.max(dg)
}

#[test]
fn gather_forms_match_grid_sample_on_flex() {
    let device = Default::default();
    let d = deform_attn_parity::<burn::backend::Flex>(&device);
    let p = point_gather_parity::<burn::backend::Flex>(&device);
    eprintln!("flex: deformable attention worst relative Δ {d:e}, point gather worst Δ {p:e}");
}

#[cfg(feature = "wgpu")]
#[test]
fn gather_forms_match_grid_sample_on_wgpu() {
    let device = burn::backend::wgpu::WgpuDevice::default();
    let d = deform_attn_parity::<burn::backend::Wgpu>(&device);
    let p = point_gather_parity::<burn::backend::Wgpu>(&device);
    eprintln!("wgpu: deformable attention worst relative Δ {d:e}, point gather worst Δ {p:e}");
}
