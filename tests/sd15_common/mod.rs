//! Helpers shared by the `sd15_*` tests: fixture paths, expected tensors, the error metric.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, ElementConversion, Tensor, TensorData};
use ddrep::backend::Cpu;
use ddrep::models::sd15::weights::WeightFile;

pub type B = Cpu;

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd15_tiny").join(rel)
}

pub fn model_dir() -> PathBuf {
    fixture("model")
}

/// Copies a folder tree (a fixture model to edit or delete in a test).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// An expected-output file, read with the crate's own safetensors reader.
pub struct Expected {
    file: WeightFile,
}

impl Expected {
    pub fn open(name: &str) -> Self {
        Self { file: WeightFile::open(&fixture(&format!("expected/{name}")), str::to_string).unwrap() }
    }

    pub fn get<const D: usize>(&self, name: &str) -> Tensor<B, D> {
        self.file
            .tensor_f32(name)
            .map(|(v, shape)| {
                let shape: [usize; D] = shape.try_into().unwrap_or_else(|s| panic!("{name}: rank {s:?} != {D}"));
                Tensor::from_data(TensorData::new(v, shape), &Default::default())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }
}

/// The parity metric: `max|a - b| / max|b|` (b = reference).
pub fn rel_err<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let diff: f32 = (a - b.clone()).abs().max().into_scalar().elem();
    let scale: f32 = b.abs().max().into_scalar().elem();
    diff as f64 / scale as f64
}

/// Asserts the parity metric is below `tol` and prints it.
pub fn check<Bk: Backend, const D: usize>(what: &str, a: Tensor<Bk, D>, b: Tensor<Bk, D>, tol: f64) -> f64 {
    let e = rel_err(a, b);
    println!("{what}: max|a-b|/max|b| = {e:.3e}");
    assert!(e < tol, "{what}: relative error {e:.3e} >= {tol:.0e}");
    e
}
