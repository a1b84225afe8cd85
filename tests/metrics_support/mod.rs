//! Shared helpers of the metric parity tests: fixture loading and the splitmix64 weight rule.
#![allow(dead_code)]

use std::path::PathBuf;

use ddrep::metrics::TensorStore;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics")
}

pub fn load_json(name: &str) -> Value {
    let p = fixture_dir().join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// A fixture number: JSON number or "inf"/"-inf"/"nan"; `None` for an error object.
pub fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            "nan" => Some(f64::NAN),
            _ => panic!("bad number string {s}"),
        },
        _ => None,
    }
}

pub fn nums(v: &Value) -> Option<Vec<f64>> {
    v.as_array().map(|a| a.iter().map(|x| num(x).expect("number")).collect())
}

/// Tensors of a fixture safetensors file: name -> (shape, values as f32; U8 converted).
pub struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    pub fn open(name: &str) -> Self {
        let p = fixture_dir().join(name);
        Self { bytes: std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())) }
    }
    pub fn get(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let v = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let raw = v.data();
        let data = match v.dtype() {
            Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::U8 => raw.iter().map(|&b| b as f32).collect(),
            d => panic!("{name}: dtype {d:?}"),
        };
        (v.shape().to_vec(), data)
    }
    pub fn get_u8(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let v = st.tensor(name).unwrap();
        assert_eq!(v.dtype(), Dtype::U8);
        (v.shape().to_vec(), v.data().to_vec())
    }
}

pub fn shape4(s: &[usize]) -> [usize; 4] {
    [s[0], s[1], s[2], s[3]]
}

/// `|a-b| <= rel*|b| + rel*max|b|`; returns the worst `|a-b| / max|b|`.
pub fn check_rel(what: &str, a: &[f32], b: &[f32], rel: f64) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let maxb = b.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
    let mut worst = 0.0f64;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let d = (x as f64 - y as f64).abs();
        assert!(d <= rel * (y as f64).abs() + rel * maxb, "{what}[{i}]: {x} vs {y} (max|b| {maxb})");
        worst = worst.max(if maxb > 0.0 { d / maxb } else { d });
    }
    worst
}

// ---------------------------------------------------------------- weight rule (splitmix64)

pub fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in s.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The rule's values for one tensor: `center + scale * v`, `v` from splitmix64 output `i`.
pub fn rule_values(seed: u64, name: &str, numel: usize, center: f32, scale: f32) -> Vec<f32> {
    let key = seed ^ fnv1a64(name);
    (0..numel as u64)
        .map(|i| {
            let mut z = key.wrapping_add((i + 1).wrapping_mul(0x9E3779B97F4A7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 * (1.0f32 / 16777216.0);
            let v = u * 2.0f32 - 1.0f32;
            let p = scale * v; // separate roundings: no FMA
            center + std::hint::black_box(p)
        })
        .collect()
}

fn bits(v: &Value) -> f32 {
    let s = v.as_str().unwrap().trim_start_matches("0x");
    f32::from_bits(u32::from_str_radix(s, 16).unwrap())
}

/// Generates the `alexnet` or `inception` section of `weights_rule.json` into a store, checking
/// every tensor's sha256 and the canonical sha256. Returns the store.
pub fn rule_store(section: &str) -> TensorStore {
    let rule = load_json("weights_rule.json");
    let sec = &rule[section];
    let seed = sec["seed"].as_u64().unwrap();
    let mut store = TensorStore::new(format!("weights_rule.json#{section}"));
    let mut canonical = Sha256::new();
    for t in sec["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let shape: Vec<usize> = t["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        let numel = shape.iter().product();
        let vals = rule_values(seed, name, numel, bits(&t["center_bits"]), bits(&t["scale_bits"]));
        let mut bytes = Vec::with_capacity(numel * 4);
        for v in &vals {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let sha = hex::encode(Sha256::digest(&bytes));
        assert_eq!(sha, t["sha256_f32le"].as_str().unwrap(), "{section} tensor {name}: rule sha256");
        canonical.update(&bytes);
        store.insert(name, shape, vals).unwrap();
    }
    assert_eq!(hex::encode(canonical.finalize()), sec["canonical_sha256"].as_str().unwrap(), "{section}: canonical sha256");
    store
}
