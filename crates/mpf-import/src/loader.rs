//! The module walk that writes source tensors into mpf parameters.

use std::collections::BTreeSet;
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use mpf_model::Mask2Former;
use mpf_model::backbone::{Backbone, BackboneKind};

use crate::store::{HostTensor, TensorStore};
use crate::{ImportError, SourceKey, Transform, detectron2, hf, torchvision};

/// Where the weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Hugging Face transformers `Mask2FormerForUniversalSegmentation` (`.safetensors`): the
    /// whole model.
    HuggingFace,
    /// A torchvision ResNet state dict (`.pth`, read with Burn's store): the backbone only; the
    /// rest of the model keeps its current weights.
    Torchvision,
    /// An original Mask2Former or MP-Former checkpoint (detectron2 names): a model-zoo `.pkl`
    /// (pickled numpy arrays) or a `torch.save` `.pth`; the whole model, and MP-Former's label
    /// embedding in [`ImportReport::label_embedding`].
    Detectron2,
}

impl Source {
    /// The name used on the command line and in checkpoint notes.
    pub fn name(self) -> &'static str {
        match self {
            Source::HuggingFace => "hf",
            Source::Torchvision => "torchvision",
            Source::Detectron2 => "detectron2",
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    /// Parameters written.
    pub loaded: usize,
    /// Source entries accepted without use (bookkeeping such as `num_batches_tracked`).
    pub ignored: Vec<String>,
    /// MP-Former's `[K, d]` label embedding of the mask-piloted queries, when the file holds one
    /// (detectron2 MP-Former checkpoints); a training-only part the caller may keep.
    pub label_embedding: Option<HostTensor>,
}

/// The backbone a checkpoint holds, told by its tensor names (`None` when it has neither).
pub fn detect_backbone(store: &TensorStore, source: Source) -> Option<BackboneKind> {
    let has = |prefix: &str| store.tensors.keys().any(|k| k.starts_with(prefix));
    let (swin, resnet) = match source {
        Source::HuggingFace => (
            "model.pixel_level_module.encoder.embeddings.patch_embeddings",
            "model.pixel_level_module.encoder.embedder",
        ),
        Source::Detectron2 => ("backbone.patch_embed", "backbone.stem"),
        Source::Torchvision => ("patch_embed", "conv1"),
    };
    if has(swin) {
        Some(BackboneKind::Swin)
    } else if has(resnet) {
        Some(BackboneKind::Resnet)
    } else {
        None
    }
}

fn kind_of<B: Backend>(model: &Mask2Former<B>) -> BackboneKind {
    match model.backbone {
        Backbone::ResNet(_) => BackboneKind::Resnet,
        Backbone::Swin(_) => BackboneKind::Swin,
    }
}

/// Refuses a file whose backbone is not the model's, with the config keys to change.
fn check_backbone<B: Backend>(model: &Mask2Former<B>, store: &TensorStore, source: Source) -> Result<(), ImportError> {
    let name = |k: BackboneKind| if k == BackboneKind::Swin { "Swin" } else { "ResNet" };
    match detect_backbone(store, source) {
        Some(found) if found != kind_of(model) => Err(ImportError::Mismatch {
            path: store.path.clone(),
            problems: vec![format!(
                "backbone: the file holds a {} backbone, the config describes a {} one (set `model.backbone.kind = \"{}\"` and its sizes{})",
                name(found),
                name(kind_of(model)),
                if found == BackboneKind::Swin { "swin" } else { "resnet" },
                if source == Source::HuggingFace { ", or let `import --write-config` write the config" } else { "" }
            )],
        }),
        _ => Ok(()),
    }
}

/// Dotted field path of every float parameter of `module`, in visit order (enum variant names
/// left out).
pub fn param_paths<B: Backend, M: Module<B>>(module: &M) -> Vec<String> {
    mpf_model::model::param_shapes(module).into_iter().map(|(path, _)| path).collect()
}

fn join(stack: &[String]) -> String {
    stack.iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>().join(".")
}

struct Loader<'a, B: Backend> {
    store: &'a TensorStore,
    table: fn(&str) -> Option<SourceKey>,
    device: B::Device,
    stack: Vec<String>,
    used: BTreeSet<String>,
    problems: Vec<String>,
    loaded: usize,
}

/// Applies `transform` to `src`; returns the shape and values for an mpf parameter.
fn transformed(src: &HostTensor, transform: Transform) -> Result<HostTensor, String> {
    let transpose = |shape: &[usize], data: &[f32]| {
        let (r, c) = (shape[0], shape[1]);
        let mut out = vec![0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = data[i * c + j];
            }
        }
        HostTensor { shape: vec![c, r], data: out }
    };
    match transform {
        Transform::Identity => Ok(src.clone()),
        Transform::Transpose if src.shape.len() == 2 => Ok(transpose(&src.shape, &src.data)),
        Transform::Transpose => Err(format!("expected a matrix, found shape {:?}", src.shape)),
        Transform::PackedChunk(i) => {
            let rows = src.shape[0];
            if !rows.is_multiple_of(3) {
                return Err(format!("packed projection has {rows} rows, not a multiple of 3"));
            }
            let n = rows / 3;
            let width: usize = src.shape[1..].iter().product();
            let data = src.data[i * n * width..(i + 1) * n * width].to_vec();
            let mut shape = src.shape.clone();
            shape[0] = n;
            let chunk = HostTensor { shape, data };
            Ok(if chunk.shape.len() == 2 { transpose(&chunk.shape, &chunk.data) } else { chunk })
        }
    }
}

impl<B: Backend> ModuleMapper<B> for Loader<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.push(if container_type.starts_with("Enum:") { String::new() } else { name.into() });
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = join(&self.stack);
        let (id, old, mapper) = param.consume();
        let expected = old.dims().to_vec();
        let keep = |old: Tensor<B, D>| Param::from_mapped_value(id, old, mapper.clone());
        let Some(src_key) = (self.table)(&path) else {
            self.problems.push(format!("missing: no source key for parameter `{path}` {expected:?}"));
            return keep(old);
        };
        let Some(src) = self.store.tensors.get(&src_key.name) else {
            self.problems.push(format!("missing: `{}` (for `{path}`, shape {expected:?})", src_key.name));
            return keep(old);
        };
        self.used.insert(src_key.name.clone());
        if self.store.integer.contains(&src_key.name) {
            self.problems.push(format!(
                "integer: `{}` is stored with an integer dtype, `{path}` is a float parameter",
                src_key.name
            ));
            return keep(old);
        }
        if let Some(i) = src.data.iter().position(|v| !v.is_finite()) {
            let bad = src.data.iter().filter(|v| !v.is_finite()).count();
            self.problems.push(format!(
                "non-finite: `{}` (for `{path}`) holds {bad} NaN or infinite value(s), the first at flat index {i} ({})",
                src_key.name, src.data[i]
            ));
            return keep(old);
        }
        let t = match transformed(src, src_key.transform) {
            Ok(t) => t,
            Err(e) => {
                self.problems.push(format!("misshaped: `{}` for `{path}`: {e}", src_key.name));
                return keep(old);
            }
        };
        if t.shape != expected {
            self.problems.push(format!(
                "misshaped: `{}` has shape {:?} (as mpf lays it out: {:?}), `{path}` needs {expected:?}",
                src_key.name, src.shape, t.shape
            ));
            return keep(old);
        }
        let require_grad = old.is_require_grad();
        let new = Tensor::<B, D>::from_data(TensorData::new(t.data, t.shape), &self.device);
        let new = if require_grad { new.require_grad() } else { new };
        self.loaded += 1;
        Param::from_mapped_value(id, new, mapper)
    }
}

/// Loads `path` into `model`. Fails, listing every problem, unless each parameter that the source
/// covers finds a tensor of its shape and each tensor of the file is used (bookkeeping entries and
/// classification heads excepted).
pub fn import<B: Backend>(
    model: Mask2Former<B>,
    path: &Path,
    source: Source,
    device: &B::Device,
) -> Result<(Mask2Former<B>, ImportReport), ImportError> {
    match source {
        Source::HuggingFace => {
            let store = TensorStore::from_safetensors(path)?;
            check_backbone(&model, &store, source)?;
            load_into(model, &store, hf::hf_key, hf::ignorable, device)
        }
        Source::Detectron2 => {
            let mut store = TensorStore::from_detectron2(path)?;
            check_backbone(&model, &store, source)?;
            let label_embedding = store.tensors.remove(detectron2::LABEL_ENC);
            let (model, report) = load_into(model, &store, detectron2::detectron2_key, detectron2::ignorable, device)?;
            Ok((model, ImportReport { label_embedding, ..report }))
        }
        Source::Torchvision => {
            let store = TensorStore::from_pytorch(path)?;
            check_backbone(&model, &store, source)?;
            let mut model = model;
            let (backbone, report) =
                load_into(model.backbone, &store, torchvision::torchvision_key, torchvision::ignorable, device)?;
            model.backbone = backbone;
            Ok((model, report))
        }
    }
}

/// Writes the tensors of `store` into every float parameter of `module`, as `table` maps them.
pub fn load_into<B: Backend, M: Module<B>>(
    module: M,
    store: &TensorStore,
    table: fn(&str) -> Option<SourceKey>,
    ignorable: fn(&str) -> bool,
    device: &B::Device,
) -> Result<(M, ImportReport), ImportError> {
    let mut loader = Loader {
        store,
        table,
        device: device.clone(),
        stack: Vec::new(),
        used: BTreeSet::new(),
        problems: Vec::new(),
        loaded: 0,
    };
    let module = module.map(&mut loader);
    let mut ignored = Vec::new();
    for key in store.tensors.keys() {
        if !loader.used.contains(key) {
            if ignorable(key) {
                ignored.push(key.clone());
            } else {
                loader
                    .problems
                    .push(format!("unexpected: `{key}` {:?} is not used by the model", store.tensors[key].shape));
            }
        }
    }
    if !loader.problems.is_empty() {
        return Err(ImportError::Mismatch { path: store.path.clone(), problems: loader.problems });
    }
    Ok((module, ImportReport { loaded: loader.loaded, ignored, label_embedding: None }))
}
