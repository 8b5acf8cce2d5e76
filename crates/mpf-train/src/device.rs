//! Run-time choice among the backends compiled in by cargo features (`flex`, `wgpu`, `cuda`).
//!
//! Commands are written once as a [`BackendTask`] generic over `B: Backend`; [`dispatch`] picks the
//! concrete backend from a `--device` string.

use std::fmt;
use std::str::FromStr;

use burn::prelude::Backend;

/// A device string: `flex`, `wgpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// Pure-Rust CPU backend (feature `flex`, default).
    Flex,
    /// WebGPU/Vulkan/Metal backend (feature `wgpu`); `CUBECL_WGPU_DEFAULT_DEVICE` picks the adapter.
    Wgpu,
    /// CUDA GPU `N` (feature `cuda`).
    Cuda(usize),
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Flex => write!(f, "flex"),
            DeviceChoice::Wgpu => write!(f, "wgpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Errors choosing a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Not a known device string.
    #[error("unknown device `{0}`: expected flex, wgpu, cuda or cuda:N")]
    Unknown(String),
    /// A known backend that this binary was built without.
    #[error("device `{device}` needs the cargo feature `{feature}`; this build has: {compiled}")]
    NotCompiled {
        /// The requested device.
        device: DeviceChoice,
        /// The feature to enable.
        feature: &'static str,
        /// The backends compiled in.
        compiled: String,
    },
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flex" | "cpu" => Ok(Self::Flex),
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Unknown(s.into())),
        }
    }
}

/// The backends this binary was built with.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "flex") {
        v.push("flex");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

/// Work that runs on any backend.
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Runs on backend `B` and `device`; `name` is the device string for reports.
    fn run<B: Backend>(self, device: B::Device, name: &str) -> Self::Output;
}

/// Runs `task` on the backend selected by `choice`.
pub fn dispatch<T: BackendTask>(choice: DeviceChoice, task: T) -> Result<T::Output, DeviceError> {
    let name = choice.to_string();
    let missing =
        |feature| DeviceError::NotCompiled { device: choice, feature, compiled: compiled_backends().join(", ") };
    match choice {
        DeviceChoice::Flex => {
            #[cfg(feature = "flex")]
            return Ok(task.run::<burn::backend::Flex>(Default::default(), &name));
            #[cfg(not(feature = "flex"))]
            return Err(missing("flex"));
        }
        DeviceChoice::Wgpu => {
            #[cfg(feature = "wgpu")]
            return Ok(task.run::<burn::backend::Wgpu>(burn::backend::wgpu::WgpuDevice::default(), &name));
            #[cfg(not(feature = "wgpu"))]
            return Err(missing("wgpu"));
        }
        DeviceChoice::Cuda(_index) => {
            #[cfg(feature = "cuda")]
            return Ok(task.run::<burn::backend::Cuda>(burn::backend::cuda::CudaDevice::new(_index), &name));
            #[cfg(not(feature = "cuda"))]
            return Err(missing("cuda"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_strings() {
        assert_eq!("flex".parse::<DeviceChoice>().unwrap(), DeviceChoice::Flex);
        assert_eq!("cuda:3".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(3));
        assert_eq!("cuda".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(0));
        assert!("tpu".parse::<DeviceChoice>().unwrap_err().to_string().contains("tpu"));
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_backend_names_the_feature() {
        struct Nothing;
        impl BackendTask for Nothing {
            type Output = ();
            fn run<B: Backend>(self, _: B::Device, _: &str) {}
        }
        let e = dispatch(DeviceChoice::Cuda(0), Nothing).unwrap_err().to_string();
        assert!(e.contains("feature `cuda`"), "{e}");
    }
}
