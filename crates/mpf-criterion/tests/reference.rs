//! The criterion against committed SciPy / PyTorch fixtures
//! (`scripts/fixtures/make_criterion_fixtures.sh` made them).

use burn::backend::Flex;
use burn::prelude::*;
use mpf_criterion::losses::{dice, sigmoid_bce, weighted_cross_entropy};
use mpf_criterion::matcher::{MatchStats, MatchTarget, MatcherWeights, assign, cost_matrices};
use mpf_criterion::points::{Point, point_sample, sample_plane};
use mpf_model::mask::BinaryMask;
use mpf_model::testing::max_abs_diff as max_diff;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!("{}/../../tests/fixtures/criterion/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn tensor<const D: usize>(v: &Value, shape: [usize; D]) -> Tensor<Flex, D> {
    let data = floats(v);
    let n = data.len();
    Tensor::<Flex, 1>::from_data(TensorData::new(data, [n]), &Default::default()).reshape(shape)
}

#[test]
fn assignments_equal_scipy_linear_sum_assignment() {
    let f = fixture("lsap.json");
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (rows, cols) = (case["rows"].as_u64().unwrap() as usize, case["cols"].as_u64().unwrap() as usize);
        let cost = floats(&case["cost"]);
        let mut stats = MatchStats::default();
        let got = assign(&cost, rows, cols, &mut stats).unwrap();
        let expect: Vec<(usize, usize)> =
            case["assignment"].as_array().unwrap().iter().map(|p| (usizes(p)[0], usizes(p)[1])).collect();
        assert_eq!(got, expect, "{name}: same pairs as SciPy, ties broken the same way");
        let total: f64 = got.iter().map(|&(r, c)| cost[r * cols + c] as f64).sum();
        assert!((total - case["total"].as_f64().unwrap()).abs() < 1e-9, "{name}");
    }
}

#[test]
fn point_sample_equals_torch_grid_sample() {
    let f = &fixture("losses.json")["point_sample"];
    let s = usizes(&f["image_shape"]);
    let c = usizes(&f["coords_shape"]);
    let img = tensor(&f["image"], [s[0], s[1], s[2], s[3]]);
    let coords = tensor(&f["coords"], [c[0], c[1], c[2]]);
    let got: Vec<f32> = point_sample(img, coords).into_data().to_vec().unwrap();
    let d = max_diff(&got, &floats(&f["out"]));
    assert!(d < 1e-5, "max |Δ| {d}");
    // The host sampler (losses' GT labels and importance sampling) gives the same values.
    let (plane, pts) = (floats(&f["image"]), floats(&f["coords"]));
    let (n, ch, h, w, p) = (s[0], s[1], s[2], s[3], c[1]);
    let mut host = Vec::new();
    for i in 0..n {
        for k in 0..ch {
            let map = &plane[(i * ch + k) * h * w..(i * ch + k + 1) * h * w];
            host.extend((0..p).map(|j| sample_plane(map, h, w, [pts[(i * p + j) * 2], pts[(i * p + j) * 2 + 1]])));
        }
    }
    let d = max_diff(&host, &floats(&f["out"]));
    assert!(d < 1e-5, "host sampler: max |Δ| {d}");
}

#[test]
fn losses_equal_pytorch() {
    let f = fixture("losses.json");
    let ce = &f["cross_entropy"];
    let s = usizes(&ce["shape"]);
    let got = weighted_cross_entropy(
        tensor(&ce["logits"], [s[0], s[1]]),
        &usizes(&ce["targets"]),
        ce["no_object_weight"].as_f64().unwrap(),
    )
    .into_scalar();
    assert!((got - ce["loss"].as_f64().unwrap() as f32).abs() < 1e-5, "ce {got}");

    let bd = &f["bce_dice"];
    let s = usizes(&bd["shape"]);
    let (x, t) = (tensor(&bd["logits"], [s[0], s[1]]), tensor(&bd["targets"], [s[0], s[1]]));
    let n = bd["num_masks"].as_f64().unwrap();
    let bce = sigmoid_bce(x.clone(), t.clone(), n).into_scalar();
    let dc = dice(x, t, n).into_scalar();
    assert!((bce - bd["bce"].as_f64().unwrap() as f32).abs() < 1e-5, "bce {bce}");
    assert!((dc - bd["dice"].as_f64().unwrap() as f32).abs() < 1e-5, "dice {dc}");
}

#[test]
fn matcher_cost_equals_pytorch() {
    let f = &fixture("losses.json")["matcher_cost"];
    let u = |k: &str| f[k].as_u64().unwrap() as usize;
    let (q, g, k1, m, gs, p) = (u("q"), u("g"), u("k1"), u("mask_size"), u("gt_size"), u("p"));
    let w = MatcherWeights { class: 2.0, mask: 5.0, dice: 5.0, num_points: p };
    let gt = floats(&f["gt_masks"]);
    let masks: Vec<BinaryMask> = (0..g)
        .map(|i| BinaryMask {
            height: gs,
            width: gs,
            data: gt[i * gs * gs..(i + 1) * gs * gs].iter().map(|&v| v > 0.5).collect(),
        })
        .collect();
    let pts = floats(&f["points"]);
    let points: Vec<Point> = (0..p).map(|j| [pts[2 * j], pts[2 * j + 1]]).collect();
    let labels = usizes(&f["labels"]);
    let target = MatchTarget { labels: &labels, masks: &masks, points: &points };
    let cost = cost_matrices(
        &[tensor(&f["class_logits"], [1, q, k1])],
        &[tensor(&f["mask_logits"], [1, q, m, m])],
        &[target],
        &w,
    )
    .unwrap();
    let d = max_diff(&cost[0][0], &floats(&f["cost"]));
    assert!(d < 1e-5, "max |Δ| {d}");
}
