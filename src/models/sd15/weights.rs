//! Safetensors weights: memory-mapped files, fp32/fp16/bf16 -> f32 tensors, and a `Loader`
//! that the model constructors pull named tensors from.
//!
//! The loader records every tensor a constructor asks for (name and shape). That one list is
//! used three ways: to check a file (all problems reported at once, not the first), to count
//! parameters of a full-size config without allocating it (`Loader::spec`), and to fill a
//! model with random weights (`Loader::random`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::{backend::Backend, Distribution, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

/// One tensor entry of a safetensors file.
struct Entry {
    /// The key as written in the file (old VAE names, no `text_model.` prefix...).
    key: String,
    dtype: Dtype,
    shape: Vec<usize>,
    range: (usize, usize),
}

/// A memory-mapped safetensors file, keyed by canonical (current diffusers) names.
pub struct WeightFile {
    pub path: PathBuf,
    mmap: Mmap,
    entries: BTreeMap<String, Entry>,
}

impl WeightFile {
    /// Maps `path` and reads its header; `canon` maps file keys to the names the model uses.
    pub fn open(path: &Path, canon: impl Fn(&str) -> String) -> Result<Self> {
        Self::open_with_remedy(path, canon, "restore it from the model download")
    }

    /// As `open`, for files that are not model downloads (latents, features): `remedy` is
    /// what the error tells the user to do.
    pub fn open_with_remedy(path: &Path, canon: impl Fn(&str) -> String, remedy: &str) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| anyhow!("cannot open {} ({e}): {remedy}", path.display()))?;
        // SAFETY: read-only mapping; a file changed underneath us is a user error, as in
        // every mmap-based loader (safetensors, candle, burn-store).
        let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        let (header_len, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            anyhow!("{} is truncated or not a safetensors file ({e:?}): {remedy}", path.display())
        })?;
        let base = 8 + header_len;
        let mut entries = BTreeMap::new();
        for (key, info) in meta.tensors() {
            let (a, b) = info.data_offsets;
            entries.entry(canon(&key)).or_insert(Entry {
                key: key.clone(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                range: (base + a, base + b),
            });
        }
        Ok(Self { path: path.to_path_buf(), mmap, entries })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// A tensor by (canonical) name as f32 values and its shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let e = self.entries.get(name).ok_or_else(|| anyhow!("{}: no tensor {name}", self.path.display()))?;
        let v = self.read_f32(e).map_err(|m| anyhow!("{}: {name}: {m}", self.path.display()))?;
        Ok((v, e.shape.clone()))
    }

    /// The tensor's values as f32, or an error naming its dtype.
    fn read_f32(&self, e: &Entry) -> std::result::Result<Vec<f32>, String> {
        let bytes = &self.mmap[e.range.0..e.range.1];
        let v: Vec<f32> = match e.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::F64 => bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            other => return Err(format!("dtype {other:?}, expected F32, F16, BF16 or F64")),
        };
        // A damaged file would otherwise surface only as a NaN denoiser output, far from here.
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(format!("element {i} is {} (NaN or inf; f64 values beyond f32's range count too)", v[i]));
        }
        Ok(v)
    }
}

enum Source {
    /// Shapes only: constructors get 1-element placeholders (parameter counts, checks).
    Spec,
    File(WeightFile),
    /// Random weights (N(0, 1/fan_in), norms 1, biases 0) for architecture tests.
    Random,
}

/// Hands named tensors to model constructors and collects everything that went wrong.
pub struct Loader<B: Backend> {
    /// Part name used in messages, e.g. `unet`.
    part: String,
    source: Source,
    device: B::Device,
    expected: Vec<(String, Vec<usize>)>,
    problems: Vec<String>,
    used: BTreeSet<String>,
    /// `DDREP_GPU_CONV`, read once per part: how GPU backends run convs, or the one-line
    /// error for an unknown value (reported by `finish`).
    gpu_conv: std::result::Result<super::layers::GpuConv, String>,
    /// `DDREP_GPU_ATTENTION`, read once per part, the same way.
    gpu_attention: std::result::Result<super::layers::GpuAttention, String>,
    /// `DDREP_GPU_MATMUL`, read once per part, the same way.
    gpu_matmul: std::result::Result<super::layers::GpuMatmul, String>,
}

impl<B: Backend> Loader<B> {
    pub fn from_file(part: &str, file: WeightFile, device: &B::Device) -> Self {
        Self::new(part, Source::File(file), device)
    }

    pub fn spec(part: &str, device: &B::Device) -> Self {
        Self::new(part, Source::Spec, device)
    }

    pub fn random(part: &str, device: &B::Device) -> Self {
        Self::new(part, Source::Random, device)
    }

    fn new(part: &str, source: Source, device: &B::Device) -> Self {
        Self {
            part: part.to_string(),
            source,
            device: device.clone(),
            expected: Vec::new(),
            problems: Vec::new(),
            used: BTreeSet::new(),
            gpu_conv: super::layers::gpu_conv(),
            gpu_attention: super::layers::gpu_attention(),
            gpu_matmul: super::layers::gpu_matmul(),
        }
    }

    /// The tensor `name` with the given shape. On any problem it is recorded, and a
    /// placeholder is returned so that construction goes on and finds the other problems.
    pub fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Tensor<B, D> {
        self.expected.push((name.to_string(), shape.to_vec()));
        match self.fetch(name, &shape) {
            Ok(Some(v)) => Tensor::from_data(TensorData::new(v, shape), &self.device),
            Ok(None) => self.placeholder_or_random(name, shape),
            Err(msg) => {
                self.problems.push(format!("{}.{name}: {msg}", self.part));
                Tensor::zeros([1; D], &self.device)
            }
        }
    }

    /// A PyTorch Linear weight `[out, inp]`, returned transposed (`[inp, out]`, contiguous)
    /// for `x @ W`.
    pub fn linear_weight(&mut self, name: &str, out: usize, inp: usize) -> Tensor<B, 2> {
        self.expected.push((name.to_string(), vec![out, inp]));
        match self.fetch(name, &[out, inp]) {
            Ok(Some(v)) => {
                let mut t = vec![0f32; v.len()];
                for o in 0..out {
                    for i in 0..inp {
                        t[i * out + o] = v[o * inp + i];
                    }
                }
                Tensor::from_data(TensorData::new(t, [inp, out]), &self.device)
            }
            Ok(None) => self.placeholder_or_random(name, [out, inp]).transpose(),
            Err(msg) => {
                self.problems.push(format!("{}.{name}: {msg}", self.part));
                Tensor::zeros([1, 1], &self.device)
            }
        }
    }

    /// `Ok(None)` when there is no file (spec or random mode).
    fn fetch(&mut self, name: &str, shape: &[usize]) -> std::result::Result<Option<Vec<f32>>, String> {
        let Source::File(file) = &self.source else { return Ok(None) };
        let Some(e) = file.entries.get(name) else { return Err("missing".into()) };
        self.used.insert(name.to_string());
        // Old VAE attention weights may be stored as 1x1 convs [out, in, 1, 1].
        let squeezed = shape.len() == 2 && e.shape.len() == 4 && e.shape[2..] == [1, 1] && e.shape[..2] == *shape;
        if e.shape != shape && !squeezed {
            return Err(format!("expected {shape:?}, found {:?}", e.shape));
        }
        file.read_f32(e).map(Some)
    }

    fn placeholder_or_random<const D: usize>(&self, name: &str, shape: [usize; D]) -> Tensor<B, D> {
        match self.source {
            Source::Random if D >= 2 => {
                let fan_in: usize = shape[1..].iter().product();
                let std = 1.0 / (fan_in as f64).sqrt();
                Tensor::random(shape, Distribution::Normal(0.0, std), &self.device)
            }
            Source::Random if name.contains("norm") => Tensor::ones(shape, &self.device),
            Source::Random => Tensor::zeros(shape, &self.device),
            _ => Tensor::zeros([1; D], &self.device),
        }
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// How `DDREP_GPU_CONV` asks GPU backends to run convolutions (an unknown value reads as
    /// the default here and is an error in `finish`).
    pub fn gpu_conv(&self) -> super::layers::GpuConv {
        self.gpu_conv.clone().unwrap_or_default()
    }

    /// How `DDREP_GPU_ATTENTION` asks GPU backends to run unmasked attention (an unknown value
    /// reads as the default here and is an error in `finish`).
    fn gpu_attention(&self) -> super::layers::GpuAttention {
        self.gpu_attention.clone().unwrap_or_default()
    }

    /// How `DDREP_GPU_MATMUL` asks GPU backends to run the linear layers' and the blocked
    /// attention's matmuls (an unknown value reads as the default here and is an error in
    /// `finish`).
    pub fn gpu_matmul(&self) -> super::layers::GpuMatmul {
        self.gpu_matmul.clone().unwrap_or_default()
    }

    /// The GPU routines of attention layers: `DDREP_GPU_ATTENTION` and `DDREP_GPU_MATMUL`.
    pub fn attention_kernels(&self) -> super::layers::AttentionKernels {
        super::layers::AttentionKernels { attention: self.gpu_attention(), matmul: self.gpu_matmul() }
    }

    /// Every tensor asked for so far, with its expected shape.
    pub fn expected(&self) -> &[(String, Vec<usize>)] {
        &self.expected
    }

    /// Number of parameters the model asked for (computed from shapes, nothing allocated).
    pub fn num_params(&self) -> usize {
        self.expected.iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// File keys the model never asked for.
    pub fn unused(&self) -> Vec<String> {
        match &self.source {
            Source::File(f) => {
                f.entries.iter().filter(|(k, _)| !self.used.contains(*k)).map(|(_, e)| e.key.clone()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Ends loading: one error listing every missing, mis-shaped or mistyped tensor (and, when
    /// `strict`, every extra one), or Ok.
    pub fn finish(self, strict: bool) -> Result<()> {
        // DDREP_GPU_OPS is read once per process where it is used, not kept per part.
        let gpu_ops = super::layers::gpu_ops().err();
        if let Some(e) = [self.gpu_conv.as_ref().err(), self.gpu_attention.as_ref().err(), self.gpu_matmul.as_ref().err(), gpu_ops.as_ref()].into_iter().flatten().next() {
            bail!("{e}");
        }
        let mut problems = self.problems.clone();
        let mut fixes = Vec::new();
        if problems.iter().any(|p| p.contains(": dtype ")) {
            fixes.push("save the weights as float32/float16/bfloat16 (e.g. diffusers save_pretrained)".to_string());
        }
        if problems.iter().any(|p| !p.contains(": dtype ")) {
            fixes.push(format!("use the weights that belong to {}/config.json (same model, same version)", self.part));
        }
        if strict {
            let extra = self.unused();
            if !extra.is_empty() {
                fixes.push("remove the extra tensors or load without --strict".to_string());
            }
            problems.extend(extra.into_iter().map(|k| format!("{}.{k}: not used by the model (--strict)", self.part)));
        }
        if problems.is_empty() {
            return Ok(());
        }
        let file = match &self.source {
            Source::File(f) => f.path.display().to_string(),
            _ => self.part.clone(),
        };
        bail!("{file}: {} tensor problem(s): {}. Fix: {}", problems.len(), problems.join("; "), fixes.join("; "))
    }
}

/// The sha256 of a file, cached by (path, size, mtime) in memory and in
/// `<cache dir>/sha256.json`, since hashing the 3.4 GB UNet takes seconds.
pub fn sha256_cached(path: &Path) -> Result<String> {
    static MEMO: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);
    let meta = std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let key = format!("{}|{}|{}", abs.display(), meta.len(), mtime);

    if let Some(h) = MEMO.lock().unwrap().get_or_insert_with(HashMap::new).get(&key) {
        return Ok(h.clone());
    }
    let disk = crate::io::cache_dir().map(|d| d.join("sha256.json"));
    let mut table: HashMap<String, String> = disk
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let hash = match table.get(&key) {
        Some(h) => h.clone(),
        None => {
            let mut hasher = Sha256::new();
            let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            std::io::copy(&mut f, &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
            let h = hex::encode(hasher.finalize());
            table.insert(key.clone(), h.clone());
            // Best effort: a read-only home only costs a re-hash next run.
            if let Some(p) = &disk {
                let _ = std::fs::create_dir_all(p.parent().unwrap());
                let tmp = p.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, serde_json::to_string(&table).unwrap_or_default()).is_ok() {
                    let _ = std::fs::rename(&tmp, p);
                }
            }
            h
        }
    };
    MEMO.lock().unwrap().get_or_insert_with(HashMap::new).insert(key, hash.clone());
    Ok(hash)
}
