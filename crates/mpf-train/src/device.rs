//! Run-time choice among the backends compiled in by cargo features (`flex`, `wgpu`, `cuda`).
//!
//! Commands are written once as a [`BackendTask`] generic over `B: Backend`; [`dispatch`] picks the
//! concrete backend from a `--device` string. Training also takes a list of devices of one
//! backend ([`DeviceList`], [`MultiDeviceTask`], [`dispatch_many`]), one data-parallel replica
//! each.

use std::fmt;
use std::str::FromStr;

use burn::prelude::Backend;

/// A device string: `flex`, `wgpu`, `wgpu:N`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// Pure-Rust CPU backend (feature `flex`, default).
    Flex,
    /// WebGPU/Vulkan/Metal backend (feature `wgpu`): `None` is the default adapter
    /// (`CUBECL_WGPU_DEFAULT_DEVICE` picks it), `Some(N)` the `N`-th discrete GPU.
    Wgpu(Option<usize>),
    /// CUDA GPU `N` (feature `cuda`).
    Cuda(usize),
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Flex => write!(f, "flex"),
            DeviceChoice::Wgpu(None) => write!(f, "wgpu"),
            DeviceChoice::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Errors choosing a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Not a known device string.
    #[error("unknown device `{0}`: expected flex, wgpu, wgpu:N, cuda or cuda:N")]
    Unknown(String),
    /// A device list that is empty, mixes backends or has a bad count.
    #[error("bad device list `{list}`: {reason}")]
    List {
        /// The list as given.
        list: String,
        /// What is wrong with it.
        reason: String,
    },
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
            "wgpu" => Ok(Self::Wgpu(None)),
            "cuda" => Ok(Self::Cuda(0)),
            _ => {
                let index = |prefix: &str| s.strip_prefix(prefix).and_then(|n| n.parse::<usize>().ok());
                index("cuda:")
                    .map(Self::Cuda)
                    .or_else(|| index("wgpu:").map(|i| Self::Wgpu(Some(i))))
                    .ok_or_else(|| DeviceError::Unknown(s.into()))
            }
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
        DeviceChoice::Wgpu(_index) => {
            #[cfg(feature = "wgpu")]
            return Ok(task.run::<burn::backend::Wgpu>(wgpu_device(_index), &name));
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

#[cfg(feature = "wgpu")]
fn wgpu_device(index: Option<usize>) -> burn::backend::wgpu::WgpuDevice {
    use burn::backend::wgpu::WgpuDevice;
    index.map_or(WgpuDevice::default(), WgpuDevice::DiscreteGpu)
}

/// A `--devices` list: one or more devices of one backend, one data-parallel replica each.
///
/// Written as a comma-separated list (`cuda:0,cuda:1`, `wgpu:0,wgpu:1`) or as `NAME×N` (also
/// `NAME*N`): the first `N` devices of that backend (`cuda×4` is `cuda:0` … `cuda:3`;
/// `flex×2` is two CPU replicas, sharing the CPU's threads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList(pub Vec<DeviceChoice>);

impl DeviceList {
    /// The backend of the list (its first device).
    pub fn first(&self) -> DeviceChoice {
        self.0[0]
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a parsed list holds a device.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "{}", names.join(","))
    }
}

impl FromStr for DeviceList {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| DeviceError::List { list: s.into(), reason };
        let mut devices = Vec::new();
        for item in s.split(',').map(str::trim) {
            match item.split_once(['×', '*']) {
                Some((name, count)) => {
                    let n: usize = count
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| bad(format!("`{count}` in `{item}` is not a positive count")))?;
                    let d: DeviceChoice = name.parse()?;
                    devices.extend((0..n).map(|i| match d {
                        DeviceChoice::Flex => DeviceChoice::Flex,
                        DeviceChoice::Wgpu(_) => DeviceChoice::Wgpu(Some(i)),
                        DeviceChoice::Cuda(_) => DeviceChoice::Cuda(i),
                    }));
                }
                None => devices.push(item.parse()?),
            }
        }
        if devices.is_empty() {
            return Err(bad("no device".into()));
        }
        let kind = std::mem::discriminant(&devices[0]);
        if devices.iter().any(|d| std::mem::discriminant(d) != kind) {
            return Err(bad("all devices must use one backend".into()));
        }
        Ok(Self(devices))
    }
}

/// Work that runs on one or more devices of any backend.
pub trait MultiDeviceTask {
    /// What the task returns.
    type Output;
    /// Runs on backend `B` and `devices` (at least one); `names` are the device strings.
    fn run<B: Backend>(self, devices: Vec<B::Device>, names: Vec<String>) -> Self::Output;
}

/// Runs `task` on the devices of `list`, on their backend.
pub fn dispatch_many<T: MultiDeviceTask>(list: &DeviceList, task: T) -> Result<T::Output, DeviceError> {
    let names: Vec<String> = list.0.iter().map(ToString::to_string).collect();
    let choice = list.first();
    let missing =
        |feature| DeviceError::NotCompiled { device: choice, feature, compiled: compiled_backends().join(", ") };
    match choice {
        DeviceChoice::Flex => {
            #[cfg(feature = "flex")]
            return Ok(task.run::<burn::backend::Flex>(list.0.iter().map(|_| Default::default()).collect(), names));
            #[cfg(not(feature = "flex"))]
            return Err(missing("flex"));
        }
        DeviceChoice::Wgpu(_) => {
            #[cfg(feature = "wgpu")]
            return Ok(task.run::<burn::backend::Wgpu>(
                list.0
                    .iter()
                    .map(|d| match d {
                        DeviceChoice::Wgpu(i) => wgpu_device(*i),
                        _ => unreachable!("one backend per list"),
                    })
                    .collect(),
                names,
            ));
            #[cfg(not(feature = "wgpu"))]
            return Err(missing("wgpu"));
        }
        DeviceChoice::Cuda(_) => {
            #[cfg(feature = "cuda")]
            return Ok(task.run::<burn::backend::Cuda>(
                list.0
                    .iter()
                    .map(|d| match d {
                        DeviceChoice::Cuda(i) => burn::backend::cuda::CudaDevice::new(*i),
                        _ => unreachable!("one backend per list"),
                    })
                    .collect(),
                names,
            ));
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
        assert_eq!("wgpu:1".parse::<DeviceChoice>().unwrap(), DeviceChoice::Wgpu(Some(1)));
    }

    #[test]
    fn parses_device_lists() {
        let list = |s: &str| s.parse::<DeviceList>().map(|l| l.0);
        assert_eq!(list("flex").unwrap(), vec![DeviceChoice::Flex]);
        assert_eq!(list("flex×2").unwrap(), vec![DeviceChoice::Flex; 2]);
        assert_eq!(list("flex*3").unwrap().len(), 3);
        assert_eq!(list("cuda:0, cuda:1").unwrap(), vec![DeviceChoice::Cuda(0), DeviceChoice::Cuda(1)]);
        assert_eq!(list("cuda×2").unwrap(), vec![DeviceChoice::Cuda(0), DeviceChoice::Cuda(1)]);
        assert_eq!(list("wgpu×2").unwrap(), vec![DeviceChoice::Wgpu(Some(0)), DeviceChoice::Wgpu(Some(1))]);
        assert_eq!("cuda:0,cuda:1".parse::<DeviceList>().unwrap().to_string(), "cuda:0,cuda:1");
        let e = list("flex,cuda:0").unwrap_err().to_string();
        assert!(e.contains("one backend"), "{e}");
        let e = list("flex×0").unwrap_err().to_string();
        assert!(e.contains("positive count"), "{e}");
        assert!(list("tpu×2").unwrap_err().to_string().contains("tpu"));
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
