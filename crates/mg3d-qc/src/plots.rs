//! Plots drawn with plotters' SVG backend (text is left to the browser, so no fonts are needed):
//! horizontal (stacked) bars with named categories, a histogram and line charts.
//! Each function returns an [`Image`] ready to embed, or a note when there is nothing to draw.

use plotters::prelude::*;

use crate::html::Image;

/// Fill colours of stacked segments and lines, in order.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0x3b, 0x6e, 0xa8),
    RGBColor(0xe8, 0xa3, 0x3d),
    RGBColor(0x5a, 0xa0, 0x5a),
    RGBColor(0xc8, 0x4b, 0x4b),
    RGBColor(0x8c, 0x6b, 0xb1),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x4b, 0xa8, 0xb3),
    RGBColor(0x55, 0x55, 0x55),
];

const FONT: &str = "sans-serif";

fn err(e: impl std::fmt::Display) -> String {
    format!("plot failed: {e}")
}

/// One bar of a horizontal bar chart: a category name and its stacked segment lengths.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Category name (y-axis label).
    pub name: String,
    /// Segment lengths, stacked left to right in [`PALETTE`] order.
    pub values: Vec<f64>,
}

impl Bar {
    /// A bar with one segment.
    pub fn single(name: &str, value: f64) -> Bar {
        Bar {
            name: name.to_string(),
            values: vec![value],
        }
    }
}

/// An axis tick label: whole numbers without decimals, others with up to 6 decimals, trailing
/// zeros trimmed ("2", "0.695").
pub fn tick(v: &f64) -> String {
    if !v.is_finite() {
        return String::new();
    }
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// How many ticks to ask plotters for on an axis up to `max` so that integer data gets integer
/// steps (plotters picks the finest 1/2/5 step giving at most this many).
fn integer_ticks(max: f64) -> usize {
    (max.ceil().max(1.0) as usize + 1).min(10)
}

/// Whether every value is a whole number (counts).
fn all_integer<'a>(values: impl IntoIterator<Item = &'a f64>) -> bool {
    values
        .into_iter()
        .all(|v| !v.is_finite() || v.fract() == 0.0)
}

/// Pixel width of `text` at `size`: plotters' naive estimate for SVG, widened by a fifth since
/// browsers' sans-serif fonts run wider.
fn text_width(text: &str, size: f64) -> u32 {
    (1.2 * size / 1.24 / 1.24 * 0.7 * text.chars().count() as f64).ceil() as u32
}

/// A horizontal bar chart, first bar on top; bars with several values are stacked, `series`
/// naming the segments in a legend (no legend for a single series). `x_desc` labels the axis;
/// `x_max` fixes its end (e.g. 1 for AUC), else it fits the longest bar.
pub fn hbar(
    title: &str,
    bars: &[Bar],
    series: &[&str],
    x_desc: &str,
    x_max: Option<f64>,
) -> Result<Image, String> {
    if bars.is_empty() {
        return Err(format!("{title}: nothing to plot"));
    }
    let n = bars.len();
    let legend = series.len() > 1;
    let label_w = bars
        .iter()
        .map(|b| text_width(&b.name, 13.0))
        .max()
        .unwrap_or(0)
        .clamp(40, 320)
        + 14;
    let (w, h) = (760u32, 70 + 22 * n as u32 + if legend { 24 } else { 0 });
    let total = |b: &Bar| b.values.iter().filter(|v| v.is_finite()).sum::<f64>();
    let longest = bars.iter().map(total).fold(0.0f64, f64::max);
    let xmax = match x_max {
        Some(m) if m > 0.0 => m,
        _ if longest > 0.0 => longest * 1.05,
        _ => 1.0,
    };
    let integer = all_integer(bars.iter().flat_map(|b| &b.values));
    let x_ticks = if integer { integer_ticks(xmax) } else { 10 };
    let x_label = |x: &f64| {
        if integer && x.fract() != 0.0 {
            String::new()
        } else {
            tick(x)
        }
    };
    let names: Vec<&str> = bars.iter().map(|b| b.name.as_str()).collect();
    // Bar k is centred on y = n - 1 - k, so integer ticks name the bars.
    let label = |y: &f64| {
        let r = y.round();
        if (y - r).abs() > 1e-6 || r < 0.0 {
            return String::new();
        }
        n.checked_sub(1 + r as usize)
            .and_then(|k| names.get(k))
            .map(|s| s.to_string())
            .unwrap_or_default()
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 16))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(label_w)
            .build_cartesian_2d(0f64..xmax, -0.5f64..n as f64 - 0.5)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(TRANSPARENT)
            .y_labels(n)
            .y_label_formatter(&label)
            .x_labels(x_ticks)
            .x_label_formatter(&x_label)
            .x_desc(x_desc)
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        let mut rects = Vec::new();
        for (k, b) in bars.iter().enumerate() {
            let y = (n - 1 - k) as f64;
            let mut x0 = 0.0;
            for (s, v) in b.values.iter().enumerate() {
                if !v.is_finite() || *v <= 0.0 {
                    continue;
                }
                let x1 = (x0 + v).min(xmax);
                let color = PALETTE[s % PALETTE.len()];
                rects.push(Rectangle::new(
                    [(x0, y - 0.36), (x1, y + 0.36)],
                    color.filled(),
                ));
                x0 = x1;
            }
        }
        chart.draw_series(rects).map_err(err)?;
        if legend {
            for (s, name) in series.iter().enumerate() {
                let color = PALETTE[s % PALETTE.len()];
                chart
                    .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
                    .map_err(err)?
                    .label(*name)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font((FONT, 12))
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(Image::svg(svg, title, (w, h)))
}

/// A histogram of integer values given as (value, count) pairs: one bar per value from 0 to the
/// largest when that is at most `max_bins` values, else `max_bins` equal-width bins.
pub fn int_histogram(
    title: &str,
    counts: &[(i64, u64)],
    x_desc: &str,
    y_desc: &str,
    max_bins: usize,
) -> Result<Image, String> {
    let bins = bin_counts(counts, max_bins.max(1));
    if bins.is_empty() {
        return Err(format!("{title}: nothing to plot"));
    }
    let (w, h) = (560u32, 320u32);
    let lo = bins.first().map(|b| b.0).unwrap_or(0.0);
    let hi = bins.last().map(|b| b.1).unwrap_or(1.0);
    let ymax = bins.iter().map(|b| b.2).max().unwrap_or(1).max(1) as f64 * 1.08;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(lo..hi, 0f64..ymax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(integer_ticks(hi - lo))
            .y_labels(integer_ticks(ymax))
            .x_label_formatter(&|v: &f64| {
                if v.fract() == 0.0 {
                    tick(v)
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&tick)
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(bins.iter().map(|&(a, b, c)| {
                let mut r = Rectangle::new([(a, 0.0), (b, c as f64)], PALETTE[0].filled());
                r.set_margin(0, 0, 1, 1);
                r
            }))
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(Image::svg(svg, title, (w, h)))
}

/// Bins (value, count) pairs into (lower edge, upper edge, count): unit bins centred on each
/// value from min(0, smallest) to the largest, or `max_bins` equal bins when that is too many.
pub fn bin_counts(counts: &[(i64, u64)], max_bins: usize) -> Vec<(f64, f64, u64)> {
    let Some(max) = counts.iter().map(|c| c.0).max() else {
        return Vec::new();
    };
    let min = counts.iter().map(|c| c.0).min().unwrap_or(0).min(0);
    let span = (max - min + 1) as usize;
    if span <= max_bins {
        let mut out: Vec<(f64, f64, u64)> = (min..=max)
            .map(|v| (v as f64 - 0.5, v as f64 + 0.5, 0))
            .collect();
        for &(v, c) in counts {
            out[(v - min) as usize].2 += c;
        }
        return out;
    }
    let width = span.div_ceil(max_bins) as i64;
    let nb = span.div_ceil(width as usize);
    let mut out: Vec<(f64, f64, u64)> = (0..nb as i64)
        .map(|b| {
            let a = min + b * width;
            (a as f64 - 0.5, (a + width) as f64 - 0.5, 0)
        })
        .collect();
    for &(v, c) in counts {
        out[((v - min) / width) as usize].2 += c;
    }
    out
}

/// A line chart of one or more named series of (x, y) points; non-finite points are skipped.
pub fn lines(
    title: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    x_desc: &str,
    size: (u32, u32),
) -> Result<Image, String> {
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    if pts.is_empty() {
        return Err(format!("{title}: no finite values to plot"));
    }
    let (x0, x1) = padded(pts.iter().map(|p| p.0), 0.0);
    let (y0, y1) = padded(pts.iter().map(|p| p.1), 0.05);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 15))
            .margin(8)
            .x_label_area_size(34)
            .y_label_area_size(52)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        let x_ticks = if all_integer(pts.iter().map(|p| &p.0)) {
            integer_ticks(x1 - x0).max(2)
        } else {
            10
        };
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .x_labels(x_ticks)
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .label_style((FONT, 11))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(err)?;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let finite = points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite());
            let drawn = chart
                .draw_series(LineSeries::new(finite, color.stroke_width(2)))
                .map_err(err)?;
            if series.len() > 1 {
                drawn.label(*name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
                });
            }
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font((FONT, 11))
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(Image::svg(svg, title, size))
}

/// The range of `values` widened by `pad` of its span on each side (a unit range around a
/// single value).
fn padded(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        return (lo - 0.5, hi + 0.5);
    }
    let d = (hi - lo) * pad;
    (lo - d, hi + d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svg_text(img: &Image) -> String {
        String::from_utf8(img.bytes.clone()).unwrap()
    }

    #[test]
    fn hbar_draws_escaped_labels_and_a_legend() {
        let bars = vec![
            Bar {
                name: "rule: x <= 3".into(),
                values: vec![2.0, 1.0],
            },
            Bar {
                name: "Lung nodule".into(),
                values: vec![0.0, 4.0],
            },
        ];
        let img = hbar(
            "Title & more",
            &bars,
            &["present", "uncertain"],
            "reports",
            None,
        )
        .unwrap();
        let s = svg_text(&img);
        assert!(s.starts_with("<svg"), "{}", &s[..80]);
        assert!(s.contains("rule: x &lt;= 3"));
        assert!(s.contains("Lung nodule"));
        assert!(s.contains("uncertain"));
        assert!(s.contains("Title &amp; more"));
        assert_eq!(img.mime, "image/svg+xml");
        // Deterministic: the same input gives the same bytes.
        let again = hbar(
            "Title & more",
            &bars,
            &["present", "uncertain"],
            "reports",
            None,
        )
        .unwrap();
        assert_eq!(img, again);
        assert!(hbar("empty", &[], &[], "", None).is_err());
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(&2.0), "2");
        assert_eq!(tick(&0.695), "0.695");
        assert_eq!(tick(&(0.1 + 0.2)), "0.3");
        assert_eq!(tick(&-0.0), "0");
        assert_eq!(tick(&f64::NAN), "");
        assert_eq!(integer_ticks(2.1), 4);
        assert_eq!(integer_ticks(500.0), 10);
    }

    #[test]
    fn histogram_bins_are_unit_or_equal_width() {
        let b = bin_counts(&[(2, 4), (4, 1), (0, 36)], 40);
        assert_eq!(b.len(), 5);
        assert_eq!(b[0], (-0.5, 0.5, 36));
        assert_eq!(b[2], (1.5, 2.5, 4));
        assert_eq!(b[4], (3.5, 4.5, 1));
        let b = bin_counts(&[(0, 1), (99, 2), (50, 3)], 10);
        assert_eq!(b.len(), 10);
        assert_eq!(b.iter().map(|x| x.2).sum::<u64>(), 6);
        assert_eq!(b[9].2, 2);
        assert!(bin_counts(&[], 10).is_empty());
        let img = int_histogram("degrees", &[(0, 3), (2, 1)], "degree", "nodes", 40).unwrap();
        assert!(svg_text(&img).contains("degree"));
    }

    #[test]
    fn lines_skip_non_finite_points_and_accept_one_point() {
        let img = lines(
            "loss",
            &[("mim", vec![(1.0, 2.0), (2.0, f64::NAN), (3.0, 1.0)])],
            "step",
            (300, 200),
        )
        .unwrap();
        assert!(svg_text(&img).contains("<polyline") || svg_text(&img).contains("<path"));
        assert!(lines("one", &[("a", vec![(1.0, 5.0)])], "step", (300, 200)).is_ok());
        assert!(lines("none", &[("a", vec![(1.0, f64::NAN)])], "step", (300, 200)).is_err());
    }
}
