//! The static `report/index.html`: tables, plots, grids and every cell with its provenance;
//! relative links only, all text HTML-escaped. `check_links` verifies that every relative
//! `href` / `src` of a page names an existing file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::data::{cfg_text, CellInfo, MetricRow};
use super::table::html_escape as esc;

/// Everything the page shows.
pub struct Gallery<'a> {
    pub experiment: String,
    pub description: String,
    pub reference: String,
    /// Table 1 (empty: the grid has no metrics.csv).
    pub table_html: String,
    /// Links relative to report/ (label, href).
    pub data_links: Vec<(String, String)>,
    /// (title, png, svg) relative to report/.
    pub plots: Vec<(String, String, String)>,
    /// (title, png) relative to report/.
    pub grids: Vec<(String, String)>,
    /// Tables built from the cells alone (consistency, diversity), after Table 1.
    pub tables: Vec<TableSection>,
    /// Further figure groups (heading, [(title, png)]): panorama / turntable strips, diversity grids.
    pub figures: Vec<(String, Vec<(String, String)>)>,
    pub cells: &'a [CellInfo],
    pub rows: &'a [MetricRow],
    /// Notes such as metrics that `ddrep score` could not compute.
    pub notes: Vec<String>,
}

/// A table section: `<h2 id>`, links to its files, and the table's HTML.
pub struct TableSection {
    pub id: String,
    pub title: String,
    pub links: Vec<(String, String)>,
    pub html: String,
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;max-width:1400px;color:#222}\
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:left}\
table.metrics td{text-align:right;font-variant-numeric:tabular-nums}\
figure{display:inline-block;margin:8px;vertical-align:top}figure img{max-width:640px;border:1px solid #ddd}\
img.thumb{width:64px;height:64px;image-rendering:pixelated}img.strip{height:64px;image-rendering:pixelated}code{font-size:12px}.note{color:#a40}";

fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

pub fn render(g: &Gallery) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>ddrep report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>ddrep report: {}</h1>\n",
        esc(&g.experiment),
        esc(&g.experiment)
    );
    if !g.description.is_empty() {
        let _ = writeln!(s, "<p>{}</p>", esc(&g.description));
    }
    if g.rows.is_empty() {
        let _ = writeln!(s, "<p>{} cells; no metrics.csv (the grid has no reference cells to score against): tables and figures from the cells alone.</p>", g.cells.len());
    } else {
        let _ = writeln!(s, "<p>{} cells; metrics compare each cell with the <b>{}</b> cell of the same CFG, caption and seed.</p>", g.cells.len(), esc(&g.reference));
    }
    for n in &g.notes {
        let _ = writeln!(s, "<p class=\"note\">{}</p>", esc(n));
    }
    let link_line = |s: &mut String, links: &[(String, String)]| {
        if !links.is_empty() {
            s.push_str("<p>");
            let l: Vec<String> = links.iter().map(|(t, h)| format!("<a href=\"{}\">{}</a>", esc(h), esc(t))).collect();
            s.push_str(&l.join(" · "));
            s.push_str("</p>\n");
        }
    };
    if !g.table_html.is_empty() {
        s.push_str("<h2 id=\"tables\">Table 1 layout</h2>\n");
        link_line(&mut s, &g.data_links);
        s.push_str(&g.table_html);
    } else {
        link_line(&mut s, &g.data_links);
    }
    for t in &g.tables {
        let _ = writeln!(s, "<h2 id=\"{}\">{}</h2>", esc(&t.id), esc(&t.title));
        link_line(&mut s, &t.links);
        s.push_str(&t.html);
    }
    if !g.plots.is_empty() {
        s.push_str("<h2 id=\"plots\">Plots</h2>\n");
        for (t, png, svg) in &g.plots {
            let _ = writeln!(
                s,
                "<figure><a href=\"{0}\"><img src=\"{0}\" alt=\"{1}\"></a><figcaption>{1}: <a href=\"{0}\">PNG</a> · <a href=\"{2}\">SVG</a></figcaption></figure>",
                esc(png),
                esc(t),
                esc(svg)
            );
        }
    }
    if !g.grids.is_empty() {
        s.push_str("<h2 id=\"grids\">Image grids (rows: methods, columns: CFG)</h2>\n");
        for (t, png) in &g.grids {
            let _ = writeln!(s, "<figure><a href=\"{0}\"><img src=\"{0}\" alt=\"{1}\" loading=\"lazy\"></a><figcaption>{1}</figcaption></figure>", esc(png), esc(t));
        }
    }
    for (heading, figs) in &g.figures {
        let _ = writeln!(s, "<h2>{}</h2>", esc(heading));
        for (t, png) in figs {
            let _ = writeln!(s, "<figure><a href=\"{0}\"><img src=\"{0}\" alt=\"{1}\" loading=\"lazy\"></a><figcaption>{1}</figcaption></figure>", esc(png), esc(t));
        }
    }
    let scored = !g.rows.is_empty();
    let multiview = g.cells.iter().any(|c| c.multiview);
    s.push_str("<h2 id=\"cells\">Cells and provenance</h2>\n<table>\n<tr><th>image</th><th>cell</th><th>label</th><th>CFG</th><th>seed</th><th>caption</th>");
    if scored {
        s.push_str("<th>PSNR</th><th>SSIM</th><th>LPIPS</th>");
    }
    if multiview {
        s.push_str("<th>views / turntable</th><th>final overlap</th><th>final residual</th>");
    }
    s.push_str("<th>git commit</th><th>weights sha256</th><th>NFE</th><th>wall s</th></tr>\n");
    let num = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
    for c in g.cells {
        let dir = format!("../cells/{}", c.id);
        let row = g.rows.iter().find(|r| r.cell == c.id);
        let weights = if c.weights.is_empty() {
            format!("none ({})", if c.model.is_empty() { "no weight files" } else { &c.model })
        } else {
            c.weights.iter().map(|(f, h)| format!("<span title=\"{}\">{}{}</span>", esc(h), if f.is_empty() { String::new() } else { format!("{}: ", esc(f)) }, esc(short(h)))).collect::<Vec<_>>().join("<br>")
        };
        let mut extra = String::new();
        if scored {
            let _ = write!(extra, "<td>{}</td><td>{}</td><td>{}</td>", num(row.and_then(|r| r.psnr)), num(row.and_then(|r| r.ssim)), num(row.and_then(|r| r.lpips)));
        }
        if multiview {
            let mut media = Vec::new();
            if c.has_file("views.png") {
                media.push(format!("<a href=\"{dir}/views.png\">views.png</a>", dir = esc(&dir)));
            }
            if c.has_file("turntable.png") {
                media.push(format!("<a href=\"{dir}/turntable.png\">turntable.png</a>", dir = esc(&dir)));
            }
            if c.has_file("turntable.gif") {
                media.push(format!("<a href=\"{dir}/turntable.gif\"><img class=\"thumb\" src=\"{dir}/turntable.gif\" alt=\"turntable of {label}\" loading=\"lazy\"></a>", dir = esc(&dir), label = esc(&c.label)));
            }
            let f = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
            let _ = write!(extra, "<td>{}</td><td>{}</td><td>{}</td>", media.join(" "), f(c.final_overlap), f(c.final_residual));
        }
        // Wide multiview images (panoramas) keep their aspect ratio.
        let thumb = if c.multiview { "strip" } else { "thumb" };
        let _ = writeln!(
            s,
            "<tr id=\"cell-{id}\"><td><a href=\"{dir}/image.png\"><img class=\"{thumb}\" src=\"{dir}/image.png\" alt=\"{label}\" loading=\"lazy\"></a></td><td><a href=\"{dir}/cell.json\"><code title=\"{id}\">{sid}</code></a></td><td>{label}</td><td>{cfg}</td><td>{seed}</td><td>{cap}</td>{extra}<td><code>{commit}</code></td><td>{weights}</td><td>{nfe}</td><td>{wall}</td></tr>",
            id = esc(&c.id),
            sid = esc(short(&c.id)),
            dir = esc(&dir),
            label = esc(&c.label),
            cfg = esc(&cfg_text(c.cfg)),
            seed = c.seed,
            cap = esc(&c.caption),
            commit = esc(short(&c.git_commit)),
            nfe = c.nfe.map(|n| n.to_string()).unwrap_or_default(),
            wall = c.wall_seconds.map(|w| format!("{w:.1}")).unwrap_or_default(),
        );
    }
    s.push_str("</table>\n");
    // Counts images that finished loading but are broken, for headless checks (tools/gallery_check.sh).
    s.push_str("<script>window.addEventListener('load',function(){var b=0;for(var i of document.images){if(i.complete&&i.naturalWidth===0)b++;}document.body.setAttribute('data-broken-images',String(b));});</script>\n</body>\n</html>\n");
    s
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every `href` / `src` attribute value of an HTML page (entities decoded).
pub fn links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lower = html.to_ascii_lowercase();
    for attr in ["href", "src"] {
        let mut from = 0;
        while let Some(p) = lower[from..].find(attr) {
            let start = from + p;
            from = start + attr.len();
            let before = lower[..start].chars().last();
            if !before.is_some_and(|c| c.is_whitespace()) {
                continue;
            }
            let rest = &html[from..];
            let rest_t = rest.trim_start();
            let Some(after_eq) = rest_t.strip_prefix('=') else { continue };
            let v = after_eq.trim_start();
            let value = match v.chars().next() {
                Some(q @ ('"' | '\'')) => v[1..].split(q).next().unwrap_or(""),
                _ => v.split(|c: char| c.is_whitespace() || c == '>').next().unwrap_or(""),
            };
            out.push(unescape(value));
        }
    }
    out
}

/// A link that leaves the folder tree (`http:`, `data:`, `mailto:`, `#anchor`) is not checked.
fn is_external(l: &str) -> bool {
    if l.is_empty() || l.starts_with('#') || l.starts_with("//") {
        return true;
    }
    let scheme: String = l.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')).collect();
    !scheme.is_empty() && l[scheme.len()..].starts_with(':') && scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

/// Problems with the links of `page`: absolute paths, and relative ones naming no file.
pub fn check_links(page: &Path) -> Result<Vec<String>> {
    let html = std::fs::read_to_string(page).with_context(|| format!("cannot read {}: run ddrep report first", page.display()))?;
    let dir = page.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let mut bad = Vec::new();
    for l in links(&html) {
        if is_external(&l) {
            continue;
        }
        if l.starts_with('/') || l.starts_with('\\') {
            bad.push(format!("{l}: not a relative link"));
            continue;
        }
        let path = l.split(['#', '?']).next().unwrap_or("");
        let target = dir.join(percent_decode(path));
        if !target.exists() {
            bad.push(format!("{l}: no such file {}", target.display()));
        }
    }
    bad.sort();
    bad.dedup();
    Ok(bad)
}
