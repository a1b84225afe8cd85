//! Writing results: PNG images, safetensors files and JSON records, each written to a
//! temporary file and renamed into place so a crash never leaves a half-written file.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};

use crate::diffrep::NamedTensor;

/// The commit this binary was built from (`-dirty` if the tree had changes).
pub const GIT_COMMIT: &str = env!("DDREP_GIT_COMMIT");
pub const CRATE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// ddrep's cache folder (weight-file hashes; GPU kernel autotune picks): `$DDREP_CACHE_DIR`,
/// else `$XDG_CACHE_HOME/ddrep`, else `~/.cache/ddrep`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DDREP_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("ddrep"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("ddrep"))
}

/// Writes `bytes` to `path` atomically (temporary sibling, flushed to disk, then rename), so
/// that neither a kill nor a machine crash (a cluster node lost mid-grid) leaves a truncated
/// file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    let written = write()
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|()| fs::rename(&tmp, path).with_context(|| format!("cannot write {} (moving {} there)", path.display(), tmp.display())));
    if written.is_err() {
        // Leave no half-written temporary behind; the target is untouched either way.
        let _ = fs::remove_file(&tmp);
    }
    sync_dir(dir);
    written
}

/// Flushes a directory's entries (a rename into it) to disk. Best effort: some filesystems
/// refuse to sync a directory, and a failure here loses nothing a kill would not.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes the temporaries of [`write_atomic`] in `dir` whose process has died (killed between
/// writing and renaming). Linux only, where a live process id shows in `/proc`; elsewhere
/// nothing is removed.
pub fn sweep_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")).and_then(|(_, pid)| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !process_alive(u64::from(pid)) && e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Linux: whether process `pid` exists and is not a zombie (killed, not yet reaped by its
/// parent: it writes nothing more); elsewhere, without `/proc`, assumed alive.
pub fn process_alive(pid: u64) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last ')' (comm may hold spaces and parens).
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// Creates an output directory, refusing a path that exists as a file.
pub fn ensure_out_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() && !dir.is_dir() {
        bail!("output path {} exists and is not a directory", dir.display());
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create output directory {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

/// Writes f32 tensors as a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[NamedTensor]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| Ok((t.name.clone(), TensorView::new(Dtype::F32, t.shape.clone(), b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let out = safetensors::serialize(views, None)?;
    write_atomic(path, &out)
}

/// Maps values in `[-1, 1]` to 8-bit, clamping.
pub fn to_u8(v: f32) -> u8 {
    (((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round()) as u8
}

/// Encodes one `[C, H, W]` image in `[-1, 1]` as PNG bytes: 1 channel grey, 3 RGB; 4 channels
/// (latents without a decoder) show their first three as RGB.
pub fn png_bytes(chw: &[f32], shape: [usize; 3]) -> Result<Vec<u8>> {
    let [c, h, w] = shape;
    if chw.len() != c * h * w {
        bail!("image data has {} values, shape {:?} needs {}", chw.len(), shape, c * h * w);
    }
    let plane = h * w;
    let mut buf = Vec::with_capacity(plane * 3);
    for i in 0..plane {
        for ch in 0..3 {
            let src = if c >= 3 { ch } else { 0 };
            buf.push(to_u8(chw[src * plane + i]));
        }
    }
    let img = image::RgbImage::from_raw(w as u32, h as u32, buf).context("image buffer size")?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

pub fn write_png(path: &Path, chw: &[f32], shape: [usize; 3]) -> Result<()> {
    write_atomic(path, &png_bytes(chw, shape)?)
}

/// Tiles `[C, H, W]` images into a grid with `cols` columns and a 2-pixel gap, each image
/// enlarged `zoom` times (nearest neighbour), as one PNG.
pub fn write_grid_png(path: &Path, images: &[Vec<f32>], shape: [usize; 3], cols: usize, zoom: usize) -> Result<()> {
    let [c, h0, w0] = shape;
    let zoom = zoom.max(1);
    let (h, w) = (h0 * zoom, w0 * zoom);
    let cols = cols.max(1);
    let rows = images.len().div_ceil(cols);
    let gap = 2;
    let (gw, gh) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
    let mut canvas = vec![-1.0f32; 3 * gh * gw];
    for (k, img) in images.iter().enumerate() {
        let (r, col) = (k / cols, k % cols);
        for ch in 0..3 {
            let src = if c >= 3 { ch } else { 0 };
            for y in 0..h {
                for x in 0..w {
                    canvas[ch * gh * gw + (gap + r * (h + gap) + y) * gw + gap + col * (w + gap) + x] =
                        img[src * h0 * w0 + (y / zoom) * w0 + x / zoom];
                }
            }
        }
    }
    write_png(path, &canvas, [3, gh, gw])
}

/// Encodes `[C, H, W]` frames in `[-1, 1]` (mapped as [`png_bytes`]) as an endlessly looping
/// animated GIF, `delay_ms` per frame, each pixel repeated `zoom` x `zoom` times.
pub fn gif_bytes(frames: &[Vec<f32>], shape: [usize; 3], zoom: usize, delay_ms: u32) -> Result<Vec<u8>> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let [c, h0, w0] = shape;
    let zoom = zoom.max(1);
    let (h, w) = (h0 * zoom, w0 * zoom);
    if frames.is_empty() {
        bail!("an animation needs at least one frame");
    }
    let plane = h * w;
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut out, 10);
        enc.set_repeat(Repeat::Infinite)?;
        for (k, f) in frames.iter().enumerate() {
            if f.len() != c * h0 * w0 {
                bail!("frame {k} has {} values, shape {shape:?} needs {}", f.len(), c * h0 * w0);
            }
            let mut buf = Vec::with_capacity(plane * 4);
            for i in 0..plane {
                let src_px = (i / w / zoom) * w0 + (i % w) / zoom;
                for ch in 0..3 {
                    let src = if c >= 3 { ch } else { 0 };
                    buf.push(to_u8(f[src * h0 * w0 + src_px]));
                }
                buf.push(255);
            }
            let img = image::RgbaImage::from_raw(w as u32, h as u32, buf).context("frame buffer size")?;
            enc.encode_frame(image::Frame::from_parts(img, 0, 0, image::Delay::from_numer_denom_ms(delay_ms, 1)))?;
        }
    }
    Ok(out)
}
