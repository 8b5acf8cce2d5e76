//! Parameter initialisation helpers that reproduce the PyTorch / detectron2 conventions the
//! reference uses, on top of Burn's [`Initializer`].

use burn::module::{Initializer, Param};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

/// How a linear layer's weight and bias start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinearInit {
    /// PyTorch `nn.Linear` default: weight and bias `U(±1/√fan_in)`.
    Torch,
    /// `xavier_uniform_` (gain 1) weight, bias `0` (attention projections, MSDeformAttn value/output).
    XavierZeroBias,
    /// `xavier_uniform_` weight, bias left at the PyTorch default `U(±1/√fan_in)` (the decoder's
    /// `_reset_parameters` only touches parameters with more than one dimension).
    XavierTorchBias,
    /// `U(±bound)` weight, bias `0`: one slice of a packed matrix initialised as a whole.
    UniformZeroBias(f64),
    /// Weight and bias both `0` (MSDeformAttn attention-weight projection).
    Zeros,
}

/// Builds a [`Linear`] layer `d_in → d_out` with the given initialisation.
pub fn linear<B: Backend>(d_in: usize, d_out: usize, init: LinearInit, device: &B::Device) -> Linear<B> {
    let torch_bound = 1.0 / (d_in as f64).sqrt();
    let (weight_init, bias_init) = match init {
        LinearInit::Torch => (
            Initializer::Uniform { min: -torch_bound, max: torch_bound },
            Initializer::Uniform { min: -torch_bound, max: torch_bound },
        ),
        LinearInit::XavierZeroBias => (Initializer::XavierUniform { gain: 1.0 }, Initializer::Zeros),
        LinearInit::XavierTorchBias => {
            (Initializer::XavierUniform { gain: 1.0 }, Initializer::Uniform { min: -torch_bound, max: torch_bound })
        }
        LinearInit::UniformZeroBias(b) => (Initializer::Uniform { min: -b, max: b }, Initializer::Zeros),
        LinearInit::Zeros => (Initializer::Zeros, Initializer::Zeros),
    };
    let mut layer = LinearConfig::new(d_in, d_out).with_initializer(weight_init).init(device);
    layer.bias = Some(bias_init.init_with([d_out], Some(d_in), Some(d_out), device));
    layer
}

/// A `[rows, cols]` embedding table drawn from `N(0, 1)` (PyTorch `nn.Embedding` default).
pub fn embedding<B: Backend>(rows: usize, cols: usize, device: &B::Device) -> Param<Tensor<B, 2>> {
    Initializer::Normal { mean: 0.0, std: 1.0 }.init([rows, cols], device)
}

/// detectron2 `c2_xavier_fill`: `kaiming_uniform_(a=1)` = `U(±√(3/fan_in))`, bias 0.
pub fn c2_xavier() -> Initializer {
    Initializer::KaimingUniform { gain: 1.0, fan_out_only: false }
}

/// detectron2 `c2_msra_fill` / torchvision ResNet conv init: `kaiming_normal_(fan_out, relu)`.
pub fn c2_msra() -> Initializer {
    Initializer::KaimingNormal { gain: 2f64.sqrt(), fan_out_only: true }
}

/// Sets a conv's bias (if any) to zero, keeping its parameter id and whether it is trained
/// (`zeros_like` alone would give a constant that autodiff never updates).
pub fn zero_conv_bias<B: Backend>(conv: burn::nn::conv::Conv2d<B>) -> burn::nn::conv::Conv2d<B> {
    let mut conv = conv;
    if let Some(bias) = conv.bias.take() {
        conv.bias = Some(bias.map(|t| {
            let trained = t.is_require_grad();
            let zeros = t.zeros_like();
            if trained { zeros.require_grad() } else { zeros }
        }));
    }
    conv
}
