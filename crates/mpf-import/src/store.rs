//! Host-side tensors read from a `.safetensors` file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::ImportError;

/// A host tensor: shape and row-major f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, converted to f32.
    pub data: Vec<f32>,
}

/// All float tensors of one file, by key (integer tensors, e.g. `num_batches_tracked`, are kept
/// with their values converted to f32 so that they count as present).
#[derive(Debug, Clone)]
pub struct TensorStore {
    /// The file they came from.
    pub path: PathBuf,
    /// Tensors by key.
    pub tensors: BTreeMap<String, HostTensor>,
    /// Keys of the tensors stored with an integer dtype (their values are converted to f32 above;
    /// the loader refuses them for float parameters, which every mpf parameter is).
    pub integer: BTreeSet<String>,
}

impl TensorStore {
    /// Reads every tensor of a `.safetensors` file (F32, F16, BF16, F64, I64, I32).
    pub fn from_safetensors(path: &Path) -> Result<Self, ImportError> {
        let bytes = std::fs::read(path).map_err(|source| ImportError::Read { path: path.into(), source })?;
        let fmt = |message: String| ImportError::Format { path: path.into(), message };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| fmt(format!("not a safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        let mut integer = BTreeSet::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            if matches!(view.dtype(), Dtype::I64 | Dtype::I32) {
                integer.insert(name.clone());
            }
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                Dtype::F64 => {
                    raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
                }
                Dtype::F16 => raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                Dtype::BF16 => raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                Dtype::I64 => {
                    raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
                }
                Dtype::I32 => {
                    raw.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect()
                }
                other => return Err(fmt(format!("tensor `{name}` has unsupported dtype {other:?}"))),
            };
            tensors.insert(name, HostTensor { shape: view.shape().to_vec(), data });
        }
        Ok(Self { path: path.into(), tensors, integer })
    }

    /// Reads every tensor of a PyTorch `torch.save` checkpoint (a state dict; a top-level
    /// `state_dict` or `model` entry is looked into) through Burn's store.
    pub fn from_pytorch(path: &Path) -> Result<Self, ImportError> {
        let fmt = |message: String| ImportError::Format { path: path.into(), message };
        let reader = burn_store::pytorch::PytorchReader::new(path)
            .or_else(|_| burn_store::pytorch::PytorchReader::with_top_level_key(path, "state_dict"))
            .or_else(|_| burn_store::pytorch::PytorchReader::with_top_level_key(path, "model"))
            .map_err(|e| fmt(format!("not a readable PyTorch checkpoint: {e}")))?;
        Self::from_reader(path, reader)
    }

    fn from_reader(path: &Path, reader: burn_store::pytorch::PytorchReader) -> Result<Self, ImportError> {
        let fmt = |message: String| ImportError::Format { path: path.into(), message };
        let mut tensors = BTreeMap::new();
        let mut integer = BTreeSet::new();
        for (name, snap) in reader.into_tensors() {
            let data = snap.to_data().map_err(|e| fmt(format!("tensor `{name}`: {e:?}")))?;
            if !data.dtype.is_float() {
                integer.insert(name.clone());
            }
            let shape = data.shape.to_vec();
            let data = data.convert::<f32>().to_vec::<f32>().map_err(|e| fmt(format!("tensor `{name}`: {e:?}")))?;
            tensors.insert(name, HostTensor { shape, data });
        }
        Ok(Self { path: path.into(), tensors, integer })
    }
}

impl TensorStore {
    /// Reads a detectron2 / Mask2Former / MP-Former checkpoint: a `torch.save` file (the `model`
    /// entry of detectron2's checkpointer dict, or a bare state dict) through Burn's store, or a
    /// detectron2 model-zoo `.pkl` (a pickled dict whose `model` entry, or the dict itself, maps
    /// names to numpy arrays) through the `repugnant-pickle` parser.
    pub fn from_detectron2(path: &Path) -> Result<Self, ImportError> {
        let bytes = std::fs::read(path).map_err(|source| ImportError::Read { path: path.into(), source })?;
        if bytes.starts_with(b"PK\x03\x04") {
            return Self::from_pytorch_entry(path, "model");
        }
        match crate::pickle::numpy_state_dict(&bytes) {
            Ok(tensors) => {
                let mut store = Self { path: path.into(), tensors: BTreeMap::new(), integer: BTreeSet::new() };
                for (name, (t, is_int)) in tensors {
                    if is_int {
                        store.integer.insert(name.clone());
                    }
                    store.tensors.insert(name, t);
                }
                Ok(store)
            }
            // A legacy (pre-zip) torch.save file is a pickle with persistent storage ids.
            Err(e) if e.contains("persistent") => Self::from_pytorch_entry(path, "model"),
            Err(e) => Err(ImportError::Format { path: path.into(), message: e }),
        }
    }

    /// [`Self::from_pytorch`], looking into the top-level `entry` first.
    fn from_pytorch_entry(path: &Path, entry: &str) -> Result<Self, ImportError> {
        match burn_store::pytorch::PytorchReader::with_top_level_key(path, entry) {
            Ok(reader) => Self::from_reader(path, reader),
            Err(_) => Self::from_pytorch(path),
        }
    }
}
