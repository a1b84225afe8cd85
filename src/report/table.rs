//! Table 1's layout: one block per compared method, rows PSNR / SSIM / LPIPS, columns CFG
//! scales, `mean ± std` (population std) over the scored cells; as CSV, Markdown, LaTeX
//! (booktabs) and HTML. For the `table1` experiment the paper's values
//! (`experiments/paper_table1.csv`) are shown beside ours.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, bail, Result};

use super::data::{cfg_text, csv_field, distinct_cfgs, split_csv_line, KidRow, Metric, MetricRow};
use crate::metrics::mean_std;

/// The paper's Table 1 as checked in (`experiments/paper_table1.csv`).
pub const PAPER_TABLE1_CSV: &str = include_str!("../../experiments/paper_table1.csv");
/// Where the paper's numbers come from, for captions.
pub const PAPER_SOURCE: &str = "paper, Table 1 (Appendix C)";

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub n: usize,
    pub mean: f64,
    pub std: f64,
}

impl Stat {
    pub fn of(v: &[f64]) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        let (mean, std) = mean_std(v);
        Some(Stat { n: v.len(), mean, std })
    }
    /// `29.712 ± 4.231`: three decimals, as in the paper.
    pub fn text(&self) -> String {
        format!("{:.3} ± {:.3}", self.mean, self.std)
    }
}

/// One row of the paper's table.
#[derive(Clone, Debug, PartialEq)]
pub struct PaperValue {
    pub method: String,
    pub compared_with: String,
    pub metric: Metric,
    pub cfg: f64,
    pub mean: f64,
    pub std: f64,
}

/// Parses `paper_table1.csv` (`#` lines are comments).
pub fn parse_paper(text: &str) -> Result<Vec<PaperValue>> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    let (_, head) = lines.next().ok_or_else(|| anyhow!("paper_table1.csv is empty"))?;
    if head.trim() != "method,compared_with,metric,cfg,mean,std" {
        bail!("paper_table1.csv: unexpected header `{head}`");
    }
    let mut out = Vec::new();
    for (i, l) in lines {
        let f = split_csv_line(l)?;
        let bad = || anyhow!("paper_table1.csv line {}: `{l}`", i + 1);
        if f.len() != 6 {
            return Err(bad());
        }
        let metric = Metric::ALL.into_iter().find(|m| m.key() == f[2]).ok_or_else(bad)?;
        out.push(PaperValue {
            method: f[0].clone(),
            compared_with: f[1].clone(),
            metric,
            cfg: f[3].parse().map_err(|_| bad())?,
            mean: f[4].parse().map_err(|_| bad())?,
            std: f[5].parse().map_err(|_| bad())?,
        });
    }
    Ok(out)
}

/// One compared method: per metric, per CFG column.
#[derive(Clone, Debug)]
pub struct Block {
    pub label: String,
    pub ours: Vec<(Metric, Vec<Option<Stat>>)>,
    /// The paper's values for this method, when shown.
    pub paper: Option<Vec<(Metric, Vec<Option<Stat>>)>>,
}

#[derive(Clone, Debug)]
pub struct Table {
    pub cfgs: Vec<f64>,
    pub reference: String,
    pub blocks: Vec<Block>,
}

impl Table {
    /// Blocks in `order` (labels not in it follow, sorted); `paper` values are matched by
    /// method label and CFG.
    pub fn build(rows: &[MetricRow], order: &[String], reference: &str, paper: Option<&[PaperValue]>) -> Table {
        let mut cfgs = distinct_cfgs(rows.iter().map(|r| r.cfg));
        if let Some(p) = paper {
            // The paper's columns stay visible even where we have no cells yet.
            cfgs = distinct_cfgs(cfgs.into_iter().chain(p.iter().map(|v| v.cfg)));
        }
        let mut groups: BTreeMap<&str, BTreeMap<(Metric, u64), Vec<f64>>> = BTreeMap::new();
        for r in rows {
            let g = groups.entry(&r.label).or_default();
            for m in Metric::ALL {
                let e = g.entry((m, r.cfg.to_bits())).or_default();
                if let Some(v) = r.metric(m) {
                    e.push(v);
                }
            }
        }
        let labels = ordered_labels(groups.keys().map(|s| s.to_string()), order);
        let blocks = labels
            .into_iter()
            .map(|label| {
                let g = &groups[label.as_str()];
                let ours = Metric::ALL.iter().map(|&m| (m, cfgs.iter().map(|c| g.get(&(m, c.to_bits())).and_then(|v| Stat::of(v))).collect())).collect();
                let paper = paper.and_then(|p| {
                    let mine: Vec<&PaperValue> = p.iter().filter(|v| v.method == label).collect();
                    (!mine.is_empty()).then(|| {
                        Metric::ALL
                            .iter()
                            .map(|&m| (m, cfgs.iter().map(|c| mine.iter().find(|v| v.metric == m && v.cfg == *c).map(|v| Stat { n: 0, mean: v.mean, std: v.std })).collect()))
                            .collect()
                    })
                });
                Block { label, ours, paper }
            })
            .collect();
        Table { cfgs, reference: reference.to_string(), blocks }
    }

    fn has_paper(&self) -> bool {
        self.blocks.iter().any(|b| b.paper.is_some())
    }

    /// Long format: one line per method x metric x CFG.
    pub fn to_csv(&self) -> String {
        let paper = self.has_paper();
        let mut s = String::from("method,compared_with,metric,cfg,n,ours_mean,ours_std");
        if paper {
            s.push_str(",paper_mean,paper_std");
        }
        s.push('\n');
        let num = |x: Option<f64>| x.map(|v| format!("{v:.6}")).unwrap_or_default();
        for b in &self.blocks {
            for (k, (m, cols)) in b.ours.iter().enumerate() {
                for (j, c) in self.cfgs.iter().enumerate() {
                    let o = cols[j];
                    let _ = write!(s, "{},{},{},{},{},{},{}", csv_field(&b.label), csv_field(&self.reference), m.key(), cfg_text(*c), o.map(|o| o.n).unwrap_or(0), num(o.map(|o| o.mean)), num(o.map(|o| o.std)));
                    if paper {
                        let p = b.paper.as_ref().and_then(|p| p[k].1[j]);
                        let _ = write!(s, ",{},{}", num(p.map(|p| p.mean)), num(p.map(|p| p.std)));
                    }
                    s.push('\n');
                }
            }
        }
        s
    }

    /// Rows of one block: `(row name, cells)`; with paper values, ours and the paper's alternate.
    fn rows(&self, b: &Block) -> Vec<(String, Vec<String>)> {
        let cell = |s: &Option<Stat>| s.map(|s| s.text()).unwrap_or_else(|| "n/a".into());
        let mut out = Vec::new();
        for (k, (m, cols)) in b.ours.iter().enumerate() {
            let arrow = if m.higher_is_better() { "↑" } else { "↓" };
            match &b.paper {
                Some(p) => {
                    out.push((format!("{} {arrow} (ours)", m.name()), cols.iter().map(cell).collect()));
                    out.push((format!("{} {arrow} (paper)", m.name()), p[k].1.iter().map(cell).collect()));
                }
                None => out.push((format!("{} {arrow}", m.name()), cols.iter().map(cell).collect())),
            }
        }
        out
    }

    fn n_text(&self, b: &Block) -> String {
        let ns: Vec<usize> = b.ours[0].1.iter().map(|s| s.map(|s| s.n).unwrap_or(0)).collect();
        let all_same = ns.windows(2).all(|w| w[0] == w[1]);
        if all_same {
            format!("{} cells per CFG", ns.first().copied().unwrap_or(0))
        } else {
            format!("cells per CFG: {}", ns.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "))
        }
    }

    pub fn to_markdown(&self, title: &str) -> String {
        let mut s = format!("# {}\n\nmean ± std over cells (population std); n/a: not available.\n", title);
        if self.has_paper() {
            let _ = writeln!(s, "(ours): this run; (paper): {PAPER_SOURCE}, transcribed in experiments/paper_table1.csv.");
        }
        for b in &self.blocks {
            let _ = write!(s, "\n## {} vs {}\n\n{}\n\n| metric | {} |\n|---|{}\n", b.label, self.reference, self.n_text(b), self.cfgs.iter().map(|c| format!("CFG {}", cfg_text(*c))).collect::<Vec<_>>().join(" | "), "---|".repeat(self.cfgs.len()));
            for (name, cells) in self.rows(b) {
                let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
            }
        }
        s
    }

    pub fn to_latex(&self, caption: &str) -> String {
        let n = self.cfgs.len();
        let mut s = String::from("% Generated by `ddrep report`; needs \\usepackage{booktabs}.\n\\begin{table}[t]\n\\centering\n");
        let _ = writeln!(s, "\\caption{{{}}}", latex_escape(caption));
        let _ = writeln!(s, "\\begin{{tabular}}{{l{}}}\n\\toprule", "c".repeat(n));
        let _ = writeln!(s, " & \\multicolumn{{{n}}}{{c}}{{CFG scale}} \\\\\n\\cmidrule(lr){{2-{}}}", n + 1);
        let _ = writeln!(s, "Metric & {} \\\\", self.cfgs.iter().map(|c| cfg_text(*c)).collect::<Vec<_>>().join(" & "));
        for b in &self.blocks {
            let _ = writeln!(s, "\\midrule\n\\multicolumn{{{}}}{{l}}{{\\textit{{{} vs {}}}}} \\\\", n + 1, latex_escape(&b.label), latex_escape(&self.reference));
            for (name, cells) in self.rows(b) {
                let name = latex_escape(&name).replace('↑', "$\\uparrow$").replace('↓', "$\\downarrow$");
                let cells: Vec<String> = cells.iter().map(|c| if c == "n/a" { "--".into() } else { format!("${}$", c.replace('±', "\\pm")) }).collect();
                let _ = writeln!(s, "{name} & {} \\\\", cells.join(" & "));
            }
        }
        s.push_str("\\bottomrule\n\\end{tabular}\n\\end{table}\n");
        s
    }

    pub fn to_html(&self) -> String {
        let mut s = String::new();
        for b in &self.blocks {
            let _ = write!(s, "<h3>{} vs {}</h3>\n<p>{}</p>\n<table class=\"metrics\">\n<tr><th>metric</th>", html_escape(&b.label), html_escape(&self.reference), html_escape(&self.n_text(b)));
            for c in &self.cfgs {
                let _ = write!(s, "<th>CFG {}</th>", html_escape(&cfg_text(*c)));
            }
            s.push_str("</tr>\n");
            for (name, cells) in self.rows(b) {
                let _ = write!(s, "<tr><th>{}</th>", html_escape(&name));
                for c in cells {
                    let _ = write!(s, "<td>{}</td>", html_escape(&c));
                }
                s.push_str("</tr>\n");
            }
            s.push_str("</table>\n");
        }
        s
    }
}

/// `order` first (those present), then the rest sorted.
pub fn ordered_labels(present: impl IntoIterator<Item = String>, order: &[String]) -> Vec<String> {
    let present: Vec<String> = present.into_iter().collect();
    let mut out: Vec<String> = order.iter().filter(|l| present.contains(l)).cloned().collect();
    let mut rest: Vec<String> = present.into_iter().filter(|l| !order.contains(l)).collect();
    rest.sort();
    rest.dedup();
    out.extend(rest);
    out.dedup();
    out
}

/// KID vs the baseline-seed set: rows = labels, columns = CFG (Markdown).
pub fn kid_markdown(kid: &[KidRow], order: &[String], baseline: &str) -> String {
    let cfgs = distinct_cfgs(kid.iter().map(|k| k.cfg));
    let labels = ordered_labels(kid.iter().map(|k| k.label.clone()), order);
    let mut s = format!("\n## KID vs the {baseline} set (mean ± std over subsets)\n\n| method | {} |\n|---|{}\n", cfgs.iter().map(|c| format!("CFG {}", cfg_text(*c))).collect::<Vec<_>>().join(" | "), "---|".repeat(cfgs.len()));
    for l in labels {
        let cells: Vec<String> = cfgs
            .iter()
            .map(|c| match kid.iter().find(|k| k.label == l && k.cfg == *c) {
                Some(KidRow { kid_mean: Some(m), kid_std, n, .. }) => format!("{m:.4} ± {:.4} (n={n})", kid_std.unwrap_or(0.0)),
                _ => "n/a".into(),
            })
            .collect();
        let _ = writeln!(s, "| {l} | {} |", cells.join(" | "));
    }
    s
}

pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

pub fn latex_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                o.push('\\');
                o.push(c);
            }
            '~' => o.push_str("\\textasciitilde{}"),
            '^' => o.push_str("\\textasciicircum{}"),
            c => o.push(c),
        }
    }
    o
}

/// Writes `table1.{csv,md,tex}` into `dir`.
pub fn write_tables(dir: &Path, t: &Table, kid_md: Option<&str>, title: &str) -> Result<()> {
    let mut md = t.to_markdown(title);
    if let Some(k) = kid_md {
        md.push_str(k);
    }
    crate::io::write_atomic(&dir.join("table1.csv"), t.to_csv().as_bytes())?;
    crate::io::write_atomic(&dir.join("table1.md"), md.as_bytes())?;
    crate::io::write_atomic(&dir.join("table1.tex"), t.to_latex(title).as_bytes())?;
    Ok(())
}
