//! Captions for a grid: written inline, or the first N of MS-COCO 2017 val
//! (`captions_val2017.json`) by annotation id (the paper's "first 100 captions") or by image
//! id. Captions are `str.strip()`ped, as in the reference lists.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::schema::{CaptionsSpec, CocoSpec, Selection};

pub const COCO_ENV: &str = "DDREP_COCO_CAPTIONS";

/// One caption of the grid, with its COCO ids when it came from COCO.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Caption {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<u64>,
}

#[derive(Deserialize)]
struct CocoFile {
    annotations: Vec<CocoAnnotation>,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    id: u64,
    image_id: u64,
    caption: String,
}

const HOW_TO_GET: &str = "get it from http://images.cocodataset.org/annotations/annotations_trainval2017.zip (annotations/captions_val2017.json) and give its path as captions.coco.path or in DDREP_COCO_CAPTIONS";

/// The path of `captions_val2017.json`: the YAML's, else `DDREP_COCO_CAPTIONS`.
pub fn coco_path(spec: &CocoSpec) -> Result<PathBuf> {
    let p = match &spec.path {
        Some(p) => p.clone(),
        None => match std::env::var_os(COCO_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => bail!("the COCO captions file is not configured: {HOW_TO_GET}"),
        },
    };
    if !p.is_file() {
        bail!("COCO captions file {} does not exist: {HOW_TO_GET}", p.display());
    }
    Ok(p)
}

/// The first `n` captions of a COCO captions file under `select`.
pub fn read_coco(path: &Path, select: Selection, n: usize) -> Result<Vec<Caption>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read COCO captions file {}", path.display()))?;
    let file: CocoFile = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a COCO captions file (expected {{\"annotations\": [{{\"id\", \"image_id\", \"caption\"}}, ..]}})", path.display()))?;
    let mut anns = file.annotations;
    // Ids order the selection and key the cells: two annotations with one id would make "the
    // first N" ambiguous.
    let mut seen = std::collections::HashSet::with_capacity(anns.len());
    if let Some(a) = anns.iter().find(|a| !seen.insert(a.id)) {
        bail!("{}: annotation id {} appears more than once: the file is damaged; restore it ({HOW_TO_GET})", path.display(), a.id);
    }
    match select {
        Selection::ByAnnotationId => anns.sort_by_key(|a| a.id),
        Selection::ByImageId => anns.sort_by_key(|a| (a.image_id, a.id)),
    }
    if anns.len() < n {
        bail!("{} has {} captions; the experiment asks for the first {n}", path.display(), anns.len());
    }
    let caps: Vec<Caption> = anns.into_iter().take(n).map(|a| Caption { text: a.caption.trim().to_string(), id: Some(a.id), image_id: Some(a.image_id) }).collect();
    // As inline captions: an empty prompt is unconditional sampling, not a caption.
    if let Some(c) = caps.iter().find(|c| c.text.is_empty()) {
        bail!("{}: annotation id {} has an empty caption: fix the file or select other captions", path.display(), c.id.unwrap_or_default());
    }
    Ok(caps)
}

/// The grid's captions.
pub fn resolve(spec: &CaptionsSpec) -> Result<Vec<Caption>> {
    let caps = match (&spec.inline, &spec.coco) {
        (Some(v), _) => v.iter().map(|t| Caption { text: t.trim().to_string(), id: None, image_id: None }).collect(),
        (None, Some(c)) => read_coco(&coco_path(c)?, c.select, c.first)?,
        (None, None) => bail!("no captions given"),
    };
    Ok(caps)
}
