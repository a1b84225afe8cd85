//! Named f32 weight tensors on the host, read from safetensors (or a legacy torch `.pth`).

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use super::{MetricError, MetricResult};

/// One host tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Named host tensors (f32), the common input of the LPIPS and Inception loaders.
#[derive(Clone, Debug, Default)]
pub struct TensorStore {
    /// Where the tensors came from, for error messages.
    pub source: String,
    tensors: BTreeMap<String, HostTensor>,
}

impl TensorStore {
    pub fn new(source: impl Into<String>) -> Self {
        Self { source: source.into(), tensors: BTreeMap::new() }
    }

    /// Adds (or replaces) a tensor; errors if `data` does not fill `shape`.
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> MetricResult<()> {
        let name = name.into();
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(MetricError::DataLength { what: format!("tensor {name}"), shape, expected: n, got: data.len() });
        }
        self.tensors.insert(name, HostTensor { shape, data });
        Ok(())
    }

    /// Reads every F32/F16/BF16/F64 tensor of a safetensors file (converted to f32).
    pub fn from_safetensors_file(path: impl AsRef<Path>) -> MetricResult<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| MetricError::Weights(format!("cannot read {}: {e}", path.display())))?;
        Self::from_safetensors_bytes(&bytes, path.display().to_string())
    }

    /// Parses safetensors bytes; `source` names them in error messages.
    pub fn from_safetensors_bytes(bytes: &[u8], source: impl Into<String>) -> MetricResult<Self> {
        let source = source.into();
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| MetricError::Weights(format!("{source}: not a safetensors file: {e}")))?;
        let mut store = Self::new(source.clone());
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                Dtype::F64 => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
                Dtype::F16 => raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                Dtype::BF16 => raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                _ => continue, // integer tensors (e.g. num_batches_tracked) are not weights
            };
            store.insert(name, view.shape().to_vec(), data)?;
        }
        Ok(store)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensor `name`, checked against `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> MetricResult<&HostTensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| MetricError::Weights(format!("{}: missing tensor '{name}'", self.source)))?;
        if t.shape != shape {
            return Err(MetricError::Weights(format!(
                "{}: tensor '{name}' has shape {:?}, expected {shape:?}",
                self.source, t.shape
            )));
        }
        Ok(t)
    }

    /// The tensor `name` (checked against `shape`) on `device`.
    pub fn tensor<B: Backend, const D: usize>(&self, name: &str, shape: [usize; D], device: &B::Device) -> MetricResult<Tensor<B, D>> {
        let t = self.get(name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(t.data.clone(), shape), device))
    }
}
