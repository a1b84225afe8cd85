//! Image grids: rows = methods, columns = CFG scales (or seeds), one grid per caption x seed
//! (or caption x CFG), with the caption above and row / column labels drawn by `plotters` onto
//! the composed image. Tiles keep their aspect ratio (wide panorama and turntable strips).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use image::imageops::FilterType;
use image::{Rgb, RgbImage};
use plotters::prelude::*;

use super::data::cfg_text;

/// Column headings of CFG scales: `CFG 3`.
pub fn cfg_cols(cfgs: &[f64]) -> Vec<String> {
    cfgs.iter().map(|w| format!("CFG {}", cfg_text(*w))).collect()
}

/// One grid: `tiles[row][col]` is the cell image path (None: no finished cell there).
pub struct GridSpec {
    pub caption: String,
    pub subtitle: String,
    pub rows: Vec<String>,
    /// Column headings (`CFG 3`, `seed 0`).
    pub cols: Vec<String>,
    pub tiles: Vec<Vec<Option<PathBuf>>>,
}

const GAP: u32 = 4;
const MARGIN: u32 = 12;
const FONT: &str = "sans-serif";

/// Side of a tile: small images are enlarged by an integer factor (nearest neighbour, so
/// pixels stay visible), large ones shrunk to at most 256 px.
fn tile_side(w: u32) -> u32 {
    if w >= 256 {
        256
    } else if w >= 128 {
        w
    } else {
        w * 128_u32.div_ceil(w.max(1))
    }
}

/// Most pixels of a non-square tile: wide strips are shrunk to this width / height.
const STRIP_MAX_W: u32 = 768;
const STRIP_MAX_H: u32 = 256;

/// `(width, height)` of a tile for a `w x h` image: squares as [`tile_side`]; other shapes keep
/// their aspect ratio, enlarged by an integer factor while under 128 px high (and within
/// [`STRIP_MAX_W`]), or shrunk to fit `STRIP_MAX_W x STRIP_MAX_H`.
fn tile_size(w: u32, h: u32) -> (u32, u32) {
    let (w, h) = (w.max(1), h.max(1));
    if w == h {
        let s = tile_side(w);
        return (s, s);
    }
    let k = (128 / h).min(STRIP_MAX_W / w);
    if k >= 2 {
        return (w * k, h * k);
    }
    let scale = (STRIP_MAX_W as f64 / w as f64).min(STRIP_MAX_H as f64 / h as f64).min(1.0);
    (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1))
}

fn load_tile(path: &Path, (tw, th): (u32, u32)) -> Result<RgbImage> {
    let img = image::open(path).with_context(|| format!("cannot read {}", path.display()))?.to_rgb8();
    if img.width() == tw && img.height() == th {
        return Ok(img);
    }
    let filter = if img.width() < tw { FilterType::Nearest } else { FilterType::Triangle };
    Ok(image::imageops::resize(&img, tw, th, filter))
}

/// Greedy word wrap to `max_chars` per line.
fn wrap(text: &str, max_chars: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for w in text.split_whitespace() {
        if !cur.is_empty() && cur.chars().count() + 1 + w.chars().count() > max_chars {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(w);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Renders one grid to a PNG at `out`.
pub fn write_grid(out: &Path, g: &GridSpec) -> Result<()> {
    // Tile size from the first image (cells of one experiment share a shape).
    let first = g.tiles.iter().flatten().flatten().next().ok_or_else(|| anyhow!("grid {}: no finished cells", out.display()))?;
    let (w0, h0) = image::image_dimensions(first).with_context(|| format!("cannot read {}", first.display()))?;
    let (tw, th) = tile_size(w0, h0);
    let label_w = (g.rows.iter().map(|r| r.chars().count()).max().unwrap_or(4) as u32 * 10 + 20).clamp(90, 260);
    let grid_w = g.cols.len() as u32 * (tw + GAP);
    let width = MARGIN * 2 + label_w + grid_w;
    let max_chars = ((width - 2 * MARGIN) / 10).max(20) as usize;
    let caption_lines = wrap(&g.caption, max_chars);
    let line_h = 24;
    let head_h = line_h * (caption_lines.len() as u32 + 1) + 8;
    let col_head_h = 28;
    let height = MARGIN * 2 + head_h + col_head_h + g.rows.len() as u32 * (th + GAP);

    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let x0 = MARGIN + label_w;
    let y0 = MARGIN + head_h + col_head_h;
    let mut missing = Vec::new();
    for (r, row) in g.tiles.iter().enumerate() {
        for (c, t) in row.iter().enumerate() {
            let (x, y) = (x0 + c as u32 * (tw + GAP), y0 + r as u32 * (th + GAP));
            match t {
                Some(p) => image::imageops::replace(&mut canvas, &load_tile(p, (tw, th))?, x as i64, y as i64),
                None => {
                    image::imageops::replace(&mut canvas, &RgbImage::from_pixel(tw, th, Rgb([225, 225, 225])), x as i64, y as i64);
                    missing.push((x, y));
                }
            }
        }
    }

    let mut buf = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        let e = |e: plotters::drawing::DrawingAreaErrorKind<_>| anyhow!("grid {}: drawing text: {e} (needs a sans-serif font: fontconfig, freetype, fonts-dejavu-core)", out.display());
        let title = TextStyle::from((FONT, 20).into_font()).color(&BLACK);
        let small = TextStyle::from((FONT, 16).into_font()).color(&RGBColor(60, 60, 60));
        let label = TextStyle::from((FONT, 18).into_font().style(FontStyle::Bold)).color(&BLACK);
        for (i, l) in caption_lines.iter().enumerate() {
            root.draw_text(l, &title, (MARGIN as i32, (MARGIN + i as u32 * line_h) as i32)).map_err(e)?;
        }
        root.draw_text(&g.subtitle, &small, (MARGIN as i32, (MARGIN + caption_lines.len() as u32 * line_h + 2) as i32)).map_err(e)?;
        for (c, t) in g.cols.iter().enumerate() {
            let (text_w, _) = root.estimate_text_size(t, &label).map_err(e)?;
            let cx = x0 + c as u32 * (tw + GAP) + tw / 2;
            root.draw_text(t, &label, (cx as i32 - text_w as i32 / 2, (MARGIN + head_h + 2) as i32)).map_err(e)?;
        }
        for (r, name) in g.rows.iter().enumerate() {
            let (_, text_h) = root.estimate_text_size(name, &label).map_err(e)?;
            let cy = y0 + r as u32 * (th + GAP) + th / 2;
            root.draw_text(name, &label, (MARGIN as i32, cy as i32 - text_h as i32 / 2)).map_err(e)?;
        }
        for (x, y) in missing {
            root.draw_text("not run", &small, (x as i32 + 8, (y + th / 2) as i32 - 8)).map_err(e)?;
        }
        root.present().map_err(e)?;
    }
    image::save_buffer(out, &buf, width, height, image::ExtendedColorType::Rgb8).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}
