//! The training-speed reformulations against the generic compositions they replace, forward and
//! gradient, on flex and (with the `wgpu` feature) on wgpu:
//!
//! - deformable attention as one row gather (`ms_deform_attn_gather`) against per-level
//!   `grid_sample` (`ms_deform_attn_core`), gradients with respect to the values, the sampling
//!   locations and the attention weights;
//! - the losses' point sampling as a gather of bilinear corners (`gather_points`) against
//!   `grid_sample` (`point_sample`), gradient with respect to the mask logits.

mod common;

use burn::backend::Autodiff;
use burn::prelude::*;
use common::{host, max_abs_diff};
use mpformer::criterion::points::{Corners, Point, gather_points, point_sample};
use mpformer::model::deform_attn::{ms_deform_attn_core, ms_deform_attn_gather};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn tensor<B: Backend, const D: usize>(v: &[f32], shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [v.len()]), device).reshape(shape)
}

fn random(n: usize, lo: f32, hi: f32, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| lo + (hi - lo) * rng.random::<f32>()).collect()
}

/// Forward and the three gradients of both forms; returns the worst difference.
fn deform_attn_parity<B: Backend>(device: &B::Device) -> f32 {
    type A<B> = Autodiff<B>;
    let shapes = [[4usize, 6usize], [2, 3], [1, 2]];
    let (b, m, dh, lq, l, p) = (2, 2, 3, 7, 3, 2);
    let s: usize = shapes.iter().map(|[h, w]| h * w).sum();
    let mut rng = StdRng::seed_from_u64(5);
    let value = random(b * s * m * dh, -1.0, 1.0, &mut rng);
    // Locations spill outside [0, 1] to exercise the zero padding.
    let loc = random(b * lq * m * l * p * 2, -0.25, 1.25, &mut rng);
    let wts = random(b * lq * m * l * p, 0.0, 1.0, &mut rng);
    let up = random(b * lq * m * dh, -1.0, 1.0, &mut rng);
    let run = |gather: bool| {
        let v = tensor::<A<B>, 4>(&value, [b, s, m, dh], device).require_grad();
        let lo = tensor::<A<B>, 6>(&loc, [b, lq, m, l, p, 2], device).require_grad();
        let w = tensor::<A<B>, 5>(&wts, [b, lq, m, l, p], device).require_grad();
        let out = if gather {
            ms_deform_attn_gather(v.clone(), &shapes, lo.clone(), w.clone())
        } else {
            ms_deform_attn_core(v.clone(), &shapes, lo.clone(), w.clone())
        };
        let grads = (out.clone() * tensor::<A<B>, 3>(&up, [b, lq, m * dh], device)).sum().backward();
        [host(out), host(v.grad(&grads).unwrap()), host(lo.grad(&grads).unwrap()), host(w.grad(&grads).unwrap())]
    };
    let (ours, reference) = (run(true), run(false));
    let names = ["output", "d value", "d locations", "d weights"];
    let mut worst = 0f32;
    for ((a, r), name) in ours.iter().zip(&reference).zip(names) {
        let d = max_abs_diff(a, r);
        assert!(d < 1e-4, "{name} differs by {d}");
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
    eprintln!("flex: deformable attention worst Δ {d:e}, point gather worst Δ {p:e}");
}

#[cfg(feature = "wgpu")]
#[test]
fn gather_forms_match_grid_sample_on_wgpu() {
    let device = burn::backend::wgpu::WgpuDevice::default();
    let d = deform_attn_parity::<burn::backend::Wgpu>(&device);
    let p = point_gather_parity::<burn::backend::Wgpu>(&device);
    eprintln!("wgpu: deformable attention worst Δ {d:e}, point gather worst Δ {p:e}");
}
