//! Line plots with error bars against the CFG scale (KID, PSNR, SSIM, LPIPS per method), as
//! PNG and SVG with `plotters`. Text is drawn with the system's sans-serif font (font-kit:
//! fontconfig + freetype); without one, drawing fails with an error rather than silently
//! leaving the labels out.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// One method's points: per CFG column, `(mean, half-width of the error bar)`.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<Option<(f64, f64)>>,
}

/// A plot of values per categorical CFG column.
#[derive(Clone, Debug)]
pub struct PlotSpec {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    /// Tick label of each column.
    pub x_ticks: Vec<String>,
    pub series: Vec<Series>,
}

pub const SIZE: (u32, u32) = (900, 560);

/// Colour of the `i`-th series (matplotlib's tab10).
pub fn color(i: usize) -> RGBColor {
    const TAB10: [(u8, u8, u8); 10] =
        [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)];
    let (r, g, b) = TAB10[i % TAB10.len()];
    RGBColor(r, g, b)
}

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {e} (plot text needs a sans-serif font: install fontconfig, freetype and fonts-dejavu-core)")
}

/// `[lo, hi]` of every bar end, padded; a flat or empty range gets a unit height.
fn y_range(spec: &PlotSpec) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in &spec.series {
        for &(m, e) in s.points.iter().flatten() {
            lo = lo.min(m - e);
            hi = hi.max(m + e);
        }
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let d = if lo.abs() > 1e-12 { lo.abs() * 0.1 } else { 1.0 };
        return (lo - d, hi + d);
    }
    // Headroom for the legend (upper right) so that it does not cover the points.
    let legend = spec.series.iter().filter(|s| !s.label.is_empty()).count() as f64;
    let pad = 0.08 * (hi - lo);
    (lo - pad, hi + pad + (hi - lo) * 0.075 * legend)
}

/// Draws `spec` on any plotters backend.
pub fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, spec: &PlotSpec) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err("plot background"))?;
    let n = spec.x_ticks.len().max(1);
    let (y0, y1) = y_range(spec);
    let mut chart = ChartBuilder::on(root)
        .caption(&spec.title, ("sans-serif", 26).into_font())
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), y0..y1)
        .map_err(err("plot axes"))?;
    let ticks = spec.x_ticks.clone();
    let fmt_x = move |x: &f64| -> String {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < ticks.len() {
            ticks[i as usize].clone()
        } else {
            String::new()
        }
    };
    let span = y1 - y0;
    let fmt_y = move |y: &f64| -> String {
        if span >= 10.0 {
            format!("{y:.0}")
        } else if span >= 1.0 {
            format!("{y:.1}")
        } else if span >= 0.01 {
            format!("{y:.3}")
        } else {
            format!("{y:.2e}")
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 1)
        .x_label_formatter(&fmt_x)
        .y_label_formatter(&fmt_y)
        .x_desc(&spec.x_desc)
        .y_desc(&spec.y_desc)
        .axis_desc_style(("sans-serif", 20))
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(err("plot mesh"))?;
    let m = spec.series.len();
    for (k, s) in spec.series.iter().enumerate() {
        let c = color(k);
        // Series side by side within a column so their error bars do not hide each other.
        let dx = if m > 1 { (k as f64 - (m as f64 - 1.0) / 2.0) * (0.3 / m as f64) } else { 0.0 };
        let pts: Vec<(f64, f64, f64)> = s.points.iter().enumerate().filter_map(|(i, p)| p.map(|(v, e)| (i as f64 + dx, v, e))).collect();
        // Lines only join neighbouring columns that both have a value.
        let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut prev: Option<usize> = None;
        for (i, p) in s.points.iter().enumerate() {
            if let Some((v, _)) = p {
                if prev != Some(i.wrapping_sub(1)) || runs.is_empty() {
                    runs.push(Vec::new());
                }
                runs.last_mut().unwrap().push((i as f64 + dx, *v));
                prev = Some(i);
            }
        }
        for r in runs {
            chart.draw_series(LineSeries::new(r, c.stroke_width(2))).map_err(err("plot line"))?;
        }
        chart
            .draw_series(pts.iter().map(|&(x, v, e)| ErrorBar::new_vertical(x, v - e, v, v + e, c.stroke_width(2), 10)))
            .map_err(err("plot error bars"))?;
        let ann = chart.draw_series(pts.iter().map(|&(x, v, _)| Circle::new((x, v), 4, c.filled()))).map_err(err("plot markers"))?;
        if !s.label.is_empty() {
            ann.label(&s.label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
        }
    }
    if spec.series.iter().any(|s| !s.label.is_empty()) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 18))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err("plot legend"))?;
    }
    root.present().map_err(err("plot output"))?;
    Ok(())
}

/// Writes `spec` as `<stem>.png` and `<stem>.svg`.
pub fn write_plot(stem: &Path, spec: &PlotSpec) -> Result<()> {
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    {
        let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
        draw(&root, spec).map_err(|e| anyhow!("{}: {e}", png.display()))?;
    }
    {
        let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
        draw(&root, spec).map_err(|e| anyhow!("{}: {e}", svg.display()))?;
    }
    Ok(())
}
