//! The experiment YAML schema: one file describes a grid of cells
//! `method x cfg x caption x seed` (minus `exclude` entries), plus the model, the diffrep and
//! the sampler settings shared by every cell.
//!
//! **YAML crate: `serde_norway`.** `serde_yaml` is archived upstream; its two maintained forks,
//! `serde_norway` 0.9 and `serde_yaml_ng` 0.10, behaved identically on our malformed-file
//! probes (same messages, same line/column for unknown fields, wrong types, tabs, duplicate
//! keys, unclosed flow sequences; both parse a 9 MB file in ~0.6 s). `serde_norway` is the
//! drop-in one: the same API and `Value` type as `serde_yaml` 0.9, which most examples and
//! users know, so switching to the other fork (or back) is a one-line change.
//!
//! Every error names the file, the line and the column (serde_norway's location of the node)
//! and, for enumerations and unknown keys, the allowed values. Checks beyond types (empty
//! lists, ranges, non-finite numbers, method settings) run inside deserialisation so that
//! they, too, carry a location.
//!
//! Overrides `key=value`, `key.sub=value`, `methods.1.lr=0.01` (Hydra style) are applied to
//! the parsed document; the value is read as YAML (`cfg=[0,3]`, `seeds=0..8`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_norway::Value;

use crate::diffusion::{CfgConvention, RepaintConfig};
use crate::methods::{DiffrepSpec, MethodSpec};
use crate::models::AnalyticConfig;

/// Experiment files are small; caption lists belong in a JSON file.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The whole experiment file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    /// Names the results folder `<outputs.dir>/<name>/`: letters, digits, `_`, `-`, `.`.
    #[serde(deserialize_with = "de_name")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub model: ModelSpec,
    /// One entry per method row of the table.
    #[serde(deserialize_with = "de_methods")]
    pub methods: Vec<MethodEntry>,
    #[serde(deserialize_with = "de_diffrep")]
    pub diffrep: DiffrepSpec,
    #[serde(default, deserialize_with = "de_sampler")]
    pub sampler: SamplerSpec,
    /// Classifier-free guidance scales.
    #[serde(deserialize_with = "de_cfg")]
    pub cfg: Vec<f64>,
    /// A list `[0, 1, 2]` or a range `"0..4"` / `"0..=3"`.
    pub seeds: Seeds,
    #[serde(deserialize_with = "de_captions")]
    pub captions: CaptionsSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<Exclude>,
    /// Scores a report computes over the cells (recorded; `ddrep score` decides what it computes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metric>,
    #[serde(default)]
    pub outputs: OutputsSpec,
    #[serde(default)]
    pub device: DeviceKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum ModelSpec {
    /// The embedded analytic prior; an empty `captions` list means "the experiment's captions".
    Analytic(AnalyticConfig),
    Sd15(Sd15Spec),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Sd15Spec {
    /// A diffusers SD1.5 folder; absent: the `DDREP_SD15` environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<PathBuf>,
    /// Weights and activations of the model: f32, or f16 / bf16 with `device: cuda` (the
    /// sampler stays in f32). Part of the cell keys when not f32.
    #[serde(default, skip_serializing_if = "is_f32")]
    pub precision: crate::models::sd15::precision::Precision,
}

fn is_f32(p: &crate::models::sd15::precision::Precision) -> bool {
    *p == crate::models::sd15::precision::Precision::F32
}

/// A method row: a method with its settings, an optional label (default: the method's name)
/// and a seed offset (the paper's "baseline" reference is the reference at other seeds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seed_offset: u64,
    #[serde(flatten)]
    pub spec: MethodSpec,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl MethodEntry {
    pub fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| self.spec.name().to_string())
    }
}

/// Settings shared by the DDIM-based methods (reference, ddrep); a method's own value wins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SamplerSpec {
    /// DDIM steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<f64>,
    /// RePaint schedule (ddrep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repaint: Option<RepaintConfig>,
    #[serde(default)]
    pub cfg_convention: CfgConvention,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionsSpec {
    /// Captions written out in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<Vec<String>>,
    /// Captions from COCO's `captions_val2017.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coco: Option<CocoSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CocoSpec {
    /// Path of `captions_val2017.json`; absent: `DDREP_COCO_CAPTIONS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub select: Selection,
    /// How many captions.
    pub first: usize,
}

/// Which captions count as "the first N".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Ascending annotation id (the paper's "first 100 captions").
    #[default]
    ByAnnotationId,
    /// Ascending image id, then annotation id (all captions of the first images).
    ByImageId,
}

/// Cells to leave out: every given field must match (method is the entry's label).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exclude {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cfg: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Psnr,
    Ssim,
    Lpips,
    Kid,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsSpec {
    /// Results root; cells go to `<dir>/<name>/cells/<sha256>/`.
    #[serde(default = "d_results")]
    pub dir: PathBuf,
}

fn d_results() -> PathBuf {
    PathBuf::from("results")
}

impl Default for OutputsSpec {
    fn default() -> Self {
        Self { dir: d_results() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    #[default]
    Cpu,
    Cuda,
}

/// Seeds: a non-empty list of distinct numbers, written as a list or a range string.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Seeds(pub Vec<u64>);

impl<'de> Deserialize<'de> for Seeds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Seeds;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of seeds like [0, 1, 2] or a range like \"0..4\" or \"0..=3\"")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seeds, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<u64>()? {
                    v.push(s);
                }
                check_seeds(v).map_err(de::Error::custom)
            }
            fn visit_u64<E: de::Error>(self, s: u64) -> Result<Seeds, E> {
                Ok(Seeds(vec![s]))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Seeds, E> {
                parse_range(s).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn check_seeds(v: Vec<u64>) -> Result<Seeds, String> {
    if v.is_empty() {
        return Err("the list is empty; give at least one seed".into());
    }
    let set: BTreeSet<_> = v.iter().collect();
    if set.len() != v.len() {
        return Err(format!("{v:?} lists a seed twice"));
    }
    Ok(Seeds(v))
}

/// `"a..b"` (b excluded) or `"a..=b"`.
fn parse_range(s: &str) -> Result<Seeds, String> {
    let bad = || format!("bad range \"{s}\"; expected \"START..END\" (END excluded) or \"START..=LAST\" with START <= END, e.g. \"0..4\"");
    let (a, b, incl) = if let Some((a, b)) = s.split_once("..=") {
        (a, b, true)
    } else if let Some((a, b)) = s.split_once("..") {
        (a, b, false)
    } else {
        return Err(bad());
    };
    let (a, b): (u64, u64) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    let end = if incl { b.checked_add(1).ok_or_else(bad)? } else { b };
    if end <= a {
        return Err(format!("range \"{s}\" is empty; END must exceed START"));
    }
    // A grid holds at most this many cells in all (crate::limits), so no more seeds either.
    if end - a > crate::limits::MAX_GRID_CELLS as u64 {
        return Err(format!("range \"{s}\" has {} seeds; at most {}", end - a, crate::limits::MAX_GRID_CELLS));
    }
    check_seeds((a..end).collect())
}

fn de_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let ok = !s.is_empty() && !s.starts_with('.') && s.len() <= 100 && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !ok {
        return Err(de::Error::custom(format!("name: \"{s}\" cannot name a results folder; use 1-100 letters, digits, '_', '-' or '.', not starting with '.'")));
    }
    Ok(s)
}

fn de_cfg<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let v = Vec::<f64>::deserialize(d)?;
    if v.is_empty() {
        return Err(de::Error::custom("cfg: the list is empty; give at least one guidance scale, e.g. [0, 3, 10]"));
    }
    if let Some(w) = v.iter().find(|w| !w.is_finite()) {
        return Err(de::Error::custom(format!("cfg: {w} is not a finite number")));
    }
    for (i, w) in v.iter().enumerate() {
        if v[..i].contains(w) {
            return Err(de::Error::custom(format!("cfg: {w} is listed twice")));
        }
    }
    Ok(v)
}

fn de_diffrep<'de, D: Deserializer<'de>>(d: D) -> Result<DiffrepSpec, D::Error> {
    let spec = DiffrepSpec::deserialize(d)?;
    spec.validate().map_err(|e| de::Error::custom(format!("diffrep: {e}")))?;
    Ok(spec)
}

fn de_methods<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<MethodEntry>, D::Error> {
    let v = Vec::<MethodEntry>::deserialize(d)?;
    if v.is_empty() {
        return Err(de::Error::custom("methods: the list is empty; give at least one of: reference, ddrep, sjc, sds"));
    }
    let mut seen = BTreeSet::new();
    for (i, m) in v.iter().enumerate() {
        validate_method(&m.spec).map_err(|e| de::Error::custom(format!("methods[{i}] ({}): {e}", m.spec.name())))?;
        if !seen.insert(m.label()) {
            return Err(de::Error::custom(format!("methods[{i}]: label '{}' is used twice; give each entry its own `label`", m.label())));
        }
    }
    Ok(v)
}

/// Range checks of a method's settings.
pub fn validate_method(spec: &MethodSpec) -> Result<()> {
    let eta_ok = |eta: f64| eta.is_finite() && (0.0..=1.0).contains(&eta);
    match spec {
        MethodSpec::Ddrep(c) => {
            c.validate()?;
            crate::diffusion::repaint::chain_moves(c.steps, c.repaint)?;
        }
        MethodSpec::Reference(c) => {
            if c.steps == 0 {
                bail!("steps must be at least 1");
            }
            if !eta_ok(c.eta) {
                bail!("eta must be in [0, 1], got {}", c.eta);
            }
        }
        MethodSpec::Sjc(c) => {
            if c.iters == 0 || !(c.lr.is_finite() && c.lr > 0.0) {
                bail!("iters must be at least 1 and lr positive (got iters {}, lr {})", c.iters, c.lr);
            }
            crate::limits::at_most("iters", c.iters, crate::limits::MAX_ITERATIONS)?;
        }
        MethodSpec::Sds(c) => {
            if c.iters == 0 || !(c.lr.is_finite() && c.lr > 0.0) {
                bail!("iters must be at least 1 and lr positive (got iters {}, lr {})", c.iters, c.lr);
            }
            crate::limits::at_most("iters", c.iters, crate::limits::MAX_ITERATIONS)?;
            // NaN fails every comparison, so it is refused too.
            if !(0.0 <= c.t_min && c.t_min <= c.t_max && c.t_max <= 1.0) {
                bail!("sds needs 0 <= t_min <= t_max <= 1, got {} and {}", c.t_min, c.t_max);
            }
        }
    }
    Ok(())
}

fn de_captions<'de, D: Deserializer<'de>>(d: D) -> Result<CaptionsSpec, D::Error> {
    let c = CaptionsSpec::deserialize(d)?;
    c.check().map_err(de::Error::custom)?;
    Ok(c)
}

fn de_sampler<'de, D: Deserializer<'de>>(d: D) -> Result<SamplerSpec, D::Error> {
    let s = SamplerSpec::deserialize(d)?;
    check_sampler(&s).map_err(de::Error::custom)?;
    Ok(s)
}

fn check_sampler(s: &SamplerSpec) -> Result<()> {
    if s.steps == Some(0) {
        bail!("sampler.steps must be at least 1");
    }
    if let Some(eta) = s.eta {
        if !(eta.is_finite() && (0.0..=1.0).contains(&eta)) {
            bail!("sampler.eta must be in [0, 1], got {eta}");
        }
    }
    Ok(())
}

impl CaptionsSpec {
    fn check(&self) -> Result<()> {
        match (&self.inline, &self.coco) {
            (Some(_), Some(_)) => bail!("captions: give either `inline` or `coco`, not both"),
            (None, None) => bail!("captions: give `inline: [..]` or `coco: {{first: N}}`"),
            (Some(v), None) if v.is_empty() => bail!("captions.inline: the list is empty"),
            (Some(v), None) => {
                if v.iter().any(|c| c.trim().is_empty()) {
                    bail!("captions.inline: a caption is empty");
                }
                Ok(())
            }
            (None, Some(c)) if c.first == 0 => bail!("captions.coco.first must be at least 1"),
            (None, Some(_)) => Ok(()),
        }
    }
}

/// The parser's message without the " at line L column C" it appends (`located` says where).
fn bare_message(e: &serde_norway::Error) -> String {
    let m = match e.location() {
        Some(l) => e.to_string().replacen(&format!(" at line {} column {}", l.line(), l.column()), "", 1),
        None => e.to_string(),
    };
    plain_words(m)
}

/// serde_norway's words for a number or list where a name (`cfg_convention: literal`,
/// `device: cpu`, a metric) belongs are its own type's name; say what the user must write.
fn plain_words(m: String) -> String {
    m.replace("expected a Value::Tagged enum", "expected a name")
}

/// A parse or validation error with its place in the file.
fn located(path: &Path, text: &str, e: &serde_norway::Error) -> anyhow::Error {
    match e.location() {
        Some(l) => {
            let mut m = bare_message(e);
            let (mut line_no, mut col) = (l.line(), l.column());
            // Checks run on a whole list report the enclosing mapping's start; point at the key.
            if let Some(key) = leading_key(&m) {
                let starts: Vec<usize> = text
                    .lines()
                    .enumerate()
                    .filter(|(_, t)| t.strip_prefix(key.as_str()).is_some_and(|r| r.trim_start().starts_with(':')))
                    .map(|(i, _)| i + 1)
                    .collect();
                let pick = if m.starts_with("duplicate field") { starts.get(1) } else { starts.first() };
                if let Some(&n) = pick.filter(|&&n| n > line_no) {
                    (line_no, col) = (n, 1);
                }
            }
            let line = text.lines().nth(line_no.saturating_sub(1)).unwrap_or("");
            if line.contains('\t') {
                m.push_str(" (this line has a tab: YAML indents with spaces only)");
            }
            anyhow::anyhow!("{}:{}:{}: {}", path.display(), line_no, col, m)
        }
        None => anyhow::anyhow!("{}: {}", path.display(), bare_message(e)),
    }
}

/// The top-level key a message is about: `cfg: ..`, `methods[1]: ..`, "duplicate field `cfg`".
fn leading_key(m: &str) -> Option<String> {
    if let Some(r) = m.strip_prefix("duplicate field `") {
        return r.split('`').next().map(str::to_string);
    }
    let k: String = m.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
    let rest = &m[k.len()..];
    (!k.is_empty() && (rest.starts_with(':') || rest.starts_with('[') || rest.starts_with('.'))).then_some(k)
}

/// Reads, checks and returns an experiment file with `overrides` (`key.sub=value`) applied
/// and the sampler defaults merged into the methods.
pub fn load(path: &Path, overrides: &[String]) -> Result<ExperimentFile> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read experiment file {}", path.display()))?;
    if meta.is_dir() {
        bail!("{} is a folder; pass an experiment YAML file", path.display());
    }
    if meta.len() > MAX_FILE_BYTES {
        bail!(
            "{}: {:.1} MB is too large for an experiment file (limit {} KiB); put long caption lists in a COCO-format JSON file",
            path.display(),
            meta.len() as f64 / 1e6,
            MAX_FILE_BYTES / 1024
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read experiment file {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{}: not UTF-8 text (byte {})", path.display(), e.utf8_error().valid_up_to()))?;
    // Editors on Windows may start the file with a byte-order mark, which YAML would read as
    // part of the first key.
    parse(path, text.strip_prefix('\u{feff}').unwrap_or(&text), overrides)
}

/// `load` on text already read; `path` only names the file in messages.
pub fn parse(path: &Path, text: &str, overrides: &[String]) -> Result<ExperimentFile> {
    if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        bail!("{}: the file is empty; an experiment needs name, model, methods, diffrep, cfg, seeds and captions", path.display());
    }
    // The file as written, for errors with line and column.
    let direct: std::result::Result<ExperimentFile, _> = serde_norway::from_str(text);
    let direct = match direct {
        Ok(f) => f,
        Err(e) if overrides.is_empty() => return Err(located(path, text, &e)),
        Err(e) => {
            // An override may supply what the file lacks. If the file's error survives them,
            // say it once, with its line and column; else the overrides' own error.
            return with_overrides(path, text, overrides).map_err(|e2| {
                let after = format!("{e2:#}");
                match after.strip_prefix(&format!("{}{}: ", path.display(), overrides_note(overrides))) {
                    Some(raw) if bare_message(&e).ends_with(raw) => located(path, text, &e),
                    _ => e2,
                }
            });
        }
    };
    check(path, &direct)?;
    with_overrides(path, text, overrides)
}

fn check(path: &Path, f: &ExperimentFile) -> Result<()> {
    let labels: Vec<String> = f.methods.iter().map(|m| m.label()).collect();
    for (i, m) in f.methods.iter().enumerate() {
        f.diffrep.check_method(&m.spec).map_err(|e| anyhow::anyhow!("{}: methods[{i}] ({}): {e}", path.display(), m.label()))?;
    }
    for (i, x) in f.exclude.iter().enumerate() {
        if x.method.is_none() && x.cfg.is_none() && x.seed.is_none() && x.caption.is_none() {
            bail!("{}: exclude[{i}] is empty and would match every cell; give method, cfg, seed or caption", path.display());
        }
        if let Some(m) = &x.method {
            if !labels.contains(m) {
                bail!("{}: exclude[{i}].method '{m}' is not a method label (labels: {})", path.display(), labels.join(", "));
            }
        }
        if let Some(w) = x.cfg {
            if !f.cfg.contains(&w) {
                bail!("{}: exclude[{i}].cfg {w} is not in cfg {:?}", path.display(), f.cfg);
            }
        }
    }
    Ok(())
}

/// What error messages add after the file name when overrides were applied.
fn overrides_note(overrides: &[String]) -> String {
    if overrides.is_empty() {
        String::new()
    } else {
        format!(" (after overrides {})", overrides.join(" "))
    }
}

fn with_overrides(path: &Path, text: &str, overrides: &[String]) -> Result<ExperimentFile> {
    let mut doc: Value = serde_norway::from_str(text).map_err(|e| located(path, text, &e))?;
    for o in overrides {
        apply_override(&mut doc, o).with_context(|| format!("override `{o}`"))?;
    }
    merge_sampler(&mut doc);
    let ctx = overrides_note(overrides);
    variant_names_are_strings(&doc).map_err(|e| anyhow::anyhow!("{}{ctx}: {e}", path.display()))?;
    let f: ExperimentFile = serde_norway::from_value(doc).map_err(|e| anyhow::anyhow!("{}{ctx}: {}", path.display(), plain_words(e.to_string())))?;
    // check()'s errors start with the file name; the overrides go at the end.
    check(path, &f).map_err(|e| anyhow::anyhow!("{e:#}{ctx}"))?;
    Ok(f)
}

/// The keys that pick a variant inside a method entry (`method`, and `kind` of its solver)
/// must be names. serde reads a method entry through a buffer (its `method` key sits beside
/// `label` and `seed_offset`), and there an integer picks a variant by position: `method: 2`
/// would run SDS and `kind: 1` the closed-form solver, with no error.
fn variant_names_are_strings(doc: &Value) -> std::result::Result<(), String> {
    let Some(Value::Sequence(methods)) = doc.get("methods") else { return Ok(()) };
    fn walk(v: &Value, at: &str) -> std::result::Result<(), String> {
        match v {
            Value::Mapping(m) => m.iter().try_for_each(|(k, v)| {
                let key = k.as_str().map(str::to_string).unwrap_or_else(|| format!("{k:?}"));
                let here = format!("{at}.{key}");
                if matches!(key.as_str(), "method" | "kind") && !v.is_string() {
                    let names = if key == "method" { "reference, ddrep, sjc, sds" } else { "adam, exact, transpose" };
                    return Err(format!("{here} must be a name (one of: {names}), got {}", yaml_scalar(v)));
                }
                walk(v, &here)
            }),
            Value::Sequence(s) => s.iter().enumerate().try_for_each(|(i, v)| walk(v, &format!("{at}.{i}"))),
            _ => Ok(()),
        }
    }
    methods.iter().enumerate().try_for_each(|(i, m)| walk(m, &format!("methods[{i}]")))
}

/// A YAML value in one line, for messages.
fn yaml_scalar(v: &Value) -> String {
    serde_norway::to_string(v).map(|s| s.trim_end().replace('\n', " ")).unwrap_or_else(|_| format!("{v:?}"))
}

/// Sets `key.sub.2.x = value` in a YAML document; the value is parsed as YAML.
pub fn apply_override(doc: &mut Value, o: &str) -> Result<()> {
    let Some((key, val)) = o.split_once('=') else {
        bail!("expected KEY=VALUE, e.g. cfg=[0,3] or methods.1.iters=500");
    };
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|s| s.is_empty()) {
        bail!("bad key '{key}'; write keys as a.b.c (list items by index: methods.0.steps)");
    }
    let value: Value = serde_norway::from_str(val).with_context(|| format!("cannot read '{val}' as a YAML value"))?;
    let mut cur = doc;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let so_far = parts[..i].join(".");
        cur = match cur {
            Value::Mapping(m) => {
                let k = Value::String(part.to_string());
                if last {
                    m.insert(k, value);
                    return Ok(());
                }
                if !m.contains_key(&k) {
                    m.insert(k.clone(), Value::Mapping(Default::default()));
                }
                m.get_mut(&k).unwrap()
            }
            Value::Sequence(s) => {
                let n = s.len();
                let idx: usize = part.parse().map_err(|_| anyhow::anyhow!("'{so_far}' is a list; index it with a number 0..{}", n.saturating_sub(1)))?;
                if idx >= n {
                    bail!("'{so_far}' has {n} entries; index {idx} is out of range (0..{})", n.saturating_sub(1));
                }
                if last {
                    s[idx] = value;
                    return Ok(());
                }
                &mut s[idx]
            }
            Value::Null if i == 0 => bail!("the document is empty"),
            _ => bail!("'{so_far}' is a single value, not a mapping or list; cannot set '{part}' in it"),
        };
    }
    Ok(())
}

/// Copies `sampler.steps/eta/repaint` into the reference and ddrep entries that do not set
/// them.
fn merge_sampler(doc: &mut Value) {
    let Some(sampler) = doc.get("sampler").cloned() else { return };
    let Some(methods) = doc.get_mut("methods").and_then(|m| m.as_sequence_mut()) else { return };
    for m in methods.iter_mut() {
        let name = m.get("method").and_then(|v| v.as_str()).unwrap_or("").to_string();
        let keys: &[&str] = match name.as_str() {
            "ddrep" => &["steps", "eta", "repaint"],
            "reference" => &["steps", "eta"],
            _ => &[],
        };
        let Some(map) = m.as_mapping_mut() else { continue };
        for k in keys {
            if let Some(v) = sampler.get(*k) {
                let key = Value::String(k.to_string());
                if !map.contains_key(&key) && !v.is_null() {
                    map.insert(key, v.clone());
                }
            }
        }
    }
}

/// The file as YAML (round trip: `parse(to_yaml(f)) == f`).
pub fn to_yaml(f: &ExperimentFile) -> Result<String> {
    Ok(serde_norway::to_string(f)?)
}
