//! The montage: axial, coronal and sagittal mid-slices of a few preprocessed volumes, windowed to
//! grayscale PNGs in radiological display (patient right on the viewer's left, anterior and
//! superior up; sagittal with anterior on the left), each next to its report's findings.

use std::collections::BTreeMap;
use std::path::Path;

use mg3d_core::labels::CT_RATE_LABELS;
use mg3d_core::rows::{CorpusRow, EntitiesRow, LabelsRow, PreprocessedRow};
use mg3d_volume::Volume;

use crate::html::{Html, Image, escape};
use crate::inputs::{Inputs, Part, file_name, scrub};

/// A slice orientation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Perpendicular to S: rows anterior to posterior, columns right to left.
    Axial,
    /// Perpendicular to A: rows superior to inferior, columns right to left.
    Coronal,
    /// Perpendicular to R: rows superior to inferior, columns anterior to posterior.
    Sagittal,
}

impl View {
    /// The three views, in display order.
    pub const ALL: [View; 3] = [View::Axial, View::Coronal, View::Sagittal];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            View::Axial => "axial",
            View::Coronal => "coronal",
            View::Sagittal => "sagittal",
        }
    }

    /// World (RAS) axes: (slice normal, rows, columns). Rows and columns run from the largest
    /// world coordinate to the smallest.
    fn world_axes(self) -> (usize, usize, usize) {
        match self {
            View::Axial => (2, 1, 0),
            View::Coronal => (1, 2, 0),
            View::Sagittal => (0, 2, 1),
        }
    }
}

/// An 8-bit grayscale image, row-major, with the physical size of its pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `width * height` gray levels.
    pub pixels: Vec<u8>,
    /// Pixel size in mm: (along a row, along a column).
    pub pixel_mm: (f64, f64),
}

/// Maps HU to a gray level: `lo` and below black, `hi` and above white.
pub fn gray(hu: f32, (lo, hi): (f64, f64)) -> u8 {
    let t = ((hu as f64 - lo) / (hi - lo).max(1e-9)).clamp(0.0, 1.0);
    if t.is_nan() {
        0
    } else {
        (t * 255.0).round() as u8
    }
}

/// The middle slice of `v` in `view`, windowed to `window` (HU). Works for any axis order: voxel
/// axes are matched to world axes by the affine.
pub fn mid_slice(v: &Volume, view: View, window: (f64, f64)) -> Result<Slice, String> {
    if v.affine.iter().flatten().any(|x| !x.is_finite()) {
        return Err("affine has non-finite values".into());
    }
    if v.dims.iter().product::<usize>() != v.data.len() || v.data.is_empty() {
        return Err("voxel count does not match the dimensions".into());
    }
    let map = mg3d_volume::axis_map(&v.affine);
    let spacing = v.spacing();
    // For each world axis: the voxel axis along it and whether voxel order runs with it.
    let mut voxel_of = [(0usize, true); 3];
    for (axis, &(world, sign)) in map.iter().enumerate() {
        voxel_of[world] = (axis, sign >= 0.0);
    }
    let (normal, row_w, col_w) = view.world_axes();
    let (na, _) = voxel_of[normal];
    let (ra, r_up) = voxel_of[row_w];
    let (ca, c_up) = voxel_of[col_w];
    let (height, width) = (v.dims[ra], v.dims[ca]);
    // Display runs from the largest world coordinate down.
    let along = |n: usize, p: usize, up: bool| if up { n - 1 - p } else { p };
    let mut pixels = Vec::with_capacity(width * height);
    let mut idx = [0usize; 3];
    idx[na] = v.dims[na] / 2;
    for r in 0..height {
        idx[ra] = along(height, r, r_up);
        for c in 0..width {
            idx[ca] = along(width, c, c_up);
            let at = idx[0] + v.dims[0] * (idx[1] + v.dims[1] * idx[2]);
            pixels.push(gray(v.data[at], window));
        }
    }
    Ok(Slice {
        width,
        height,
        pixels,
        pixel_mm: (spacing[ca], spacing[ra]),
    })
}

/// Encodes a slice as an 8-bit grayscale PNG (deterministic bytes).
pub fn encode_png(s: &Slice) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, s.width as u32, s.height as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(&s.pixels).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// One volume chosen for the montage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// Volume pseudonym.
    pub volume_id: String,
    /// Its report, when the corpus links one.
    pub report_id: Option<String>,
    /// Its split in the corpus.
    pub split: Option<String>,
    /// Present labels of the report (ranks the choice).
    pub n_present: usize,
}

/// Chooses up to `n` distinct volumes: most present labels first, then by volume and report id.
pub fn pick_volumes(mut candidates: Vec<Pick>, n: usize) -> Vec<Pick> {
    candidates.sort_by(|a, b| {
        (b.n_present, &a.volume_id, &a.report_id).cmp(&(a.n_present, &b.volume_id, &b.report_id))
    });
    let mut seen = std::collections::BTreeSet::new();
    candidates
        .into_iter()
        .filter(|p| seen.insert(p.volume_id.clone()))
        .take(n)
        .collect()
}

/// What a report states: its positive and uncertain labels, and its asserted findings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Findings {
    /// (label, 1 present | -1 uncertain), in CT-RATE label order.
    pub labels: Vec<(String, i64)>,
    /// Observation mentions that are present or uncertain, described, in report order.
    pub mentions: Vec<String>,
}

/// Per report: labels with value 1 or -1, in CT-RATE label order.
pub fn labels_by_report(rows: &[LabelsRow]) -> BTreeMap<String, Vec<(String, i64)>> {
    let mut out: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for r in rows {
        if let Some(v @ (1 | -1)) = r.value {
            out.entry(r.report_id.clone())
                .or_default()
                .push((r.label.clone(), v as i64));
        }
    }
    let rank = |l: &str| CT_RATE_LABELS.iter().position(|x| *x == l).unwrap_or(99);
    for v in out.values_mut() {
        v.sort_by(|a, b| (rank(&a.0), &a.0).cmp(&(rank(&b.0), &b.0)));
    }
    out
}

/// The present or uncertain (not hypothetical) observation mentions of `reports`, described as
/// `surface (assertion, laterality, severity, size)`, in (report, entity) order, duplicates dropped.
pub fn mentions_of(
    entities: &[EntitiesRow],
    reports: &std::collections::BTreeSet<&str>,
) -> BTreeMap<String, Vec<String>> {
    let mut rows: Vec<(&str, i32, String)> = Vec::new();
    for e in entities {
        if !reports.contains(e.report_id.as_str())
            || e.r#type != "OBSERVATION"
            || !matches!(e.assertion.as_str(), "present" | "uncertain")
            || e.hypothetical
        {
            continue;
        }
        let mut attrs = vec![e.assertion.clone()];
        attrs.extend(e.laterality.clone());
        attrs.extend(e.severity.clone());
        if let Some(mm) = e.size_mm.filter(|x| x.is_finite()) {
            attrs.push(format!("{mm} mm"));
        }
        let text = format!("{} ({})", e.surface, attrs.join(", "));
        rows.push((&e.report_id, e.ent_idx, text));
    }
    rows.sort();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (r, _, text) in rows {
        let v = out.entry(r.to_string()).or_default();
        if !v.contains(&text) {
            v.push(text);
        }
    }
    out
}

/// The montage options.
#[derive(Debug, Clone, PartialEq)]
pub struct MontageOptions {
    /// Volumes shown.
    pub volumes: usize,
    /// Display window (HU).
    pub window: (f64, f64),
    /// Findings listed per volume.
    pub max_findings: usize,
    /// Longest displayed side of a slice (CSS px).
    pub max_px: u32,
}

/// The montage section.
pub fn section(inputs: &Inputs, o: &MontageOptions) -> Html {
    let mut h = Html::default();
    h.para(&format!(
        "Mid-slices of up to {} preprocessed volumes (window {} to {} HU; patient right on the \
         viewer's left), chosen by most present labels, then volume id; beside them the labels \
         and findings their report states.",
        o.volumes, o.window.0, o.window.1
    ));
    let files = match preprocessed_files(inputs) {
        Ok(f) => f,
        Err(e) => {
            h.note(&format!("montage unavailable: {e}"));
            return h;
        }
    };
    let labels = inputs
        .rows::<LabelsRow>("entities", "labels.parquet")
        .map(|t| labels_by_report(&t));
    if let Err(e) = &labels {
        h.note(&format!("labels unavailable: {e}"));
    }
    let labels = labels.unwrap_or_default();
    let picks = match candidates(inputs, &labels) {
        Ok(c) => pick_volumes(c, o.volumes),
        Err(e) => {
            h.note(&format!(
                "no corpus to link volumes and reports ({e}); showing preprocessed volumes by id"
            ));
            let c = files
                .keys()
                .map(|v| Pick {
                    volume_id: v.clone(),
                    report_id: None,
                    split: None,
                    n_present: 0,
                })
                .collect();
            pick_volumes(c, o.volumes)
        }
    };
    if picks.is_empty() {
        h.note("no volumes to show");
        return h;
    }
    let wanted = picks
        .iter()
        .filter_map(|p| p.report_id.as_deref())
        .collect();
    let mentions = inputs
        .rows::<EntitiesRow>("entities", "entities.parquet")
        .map(|t| mentions_of(&t, &wanted));
    if let Err(e) = &mentions {
        h.note(&format!("findings unavailable: {e}"));
    }
    let mentions = mentions.unwrap_or_default();
    let pre = inputs
        .dir("preprocess")
        .expect("checked by preprocessed_files");
    for p in &picks {
        let f = Findings {
            labels: report_lookup(&labels, p),
            mentions: report_lookup(&mentions, p),
        };
        h.append(card(pre, files.get(&p.volume_id), p, &f, o));
    }
    h
}

fn report_lookup<T: Clone>(m: &BTreeMap<String, Vec<T>>, p: &Pick) -> Vec<T> {
    p.report_id
        .as_ref()
        .and_then(|r| m.get(r))
        .cloned()
        .unwrap_or_default()
}

/// volume_id -> file (relative to the preprocess output) from preprocessed.parquet.
fn preprocessed_files(inputs: &Inputs) -> Part<BTreeMap<String, String>> {
    Ok(inputs
        .rows::<PreprocessedRow>("preprocess", "preprocessed.parquet")?
        .into_iter()
        .map(|r| (r.volume_id, r.file))
        .collect())
}

/// Corpus pairs as montage candidates.
fn candidates(inputs: &Inputs, labels: &BTreeMap<String, Vec<(String, i64)>>) -> Part<Vec<Pick>> {
    Ok(inputs
        .rows::<CorpusRow>("curate", "corpus.parquet")?
        .into_iter()
        .map(|c| Pick {
            n_present: labels
                .get(&c.report_id)
                .map(|l| l.iter().filter(|x| x.1 == 1).count())
                .unwrap_or(0),
            volume_id: c.volume_id,
            report_id: Some(c.report_id),
            split: Some(c.split),
        })
        .collect())
}

/// One volume's card: its three views and its findings.
fn card(pre_dir: &Path, file: Option<&String>, p: &Pick, f: &Findings, o: &MontageOptions) -> Html {
    let mut h = Html::default();
    h.raw("<div class=\"card\">\n<div class=\"views\">\n");
    let geometry = match file {
        None => {
            h.note(&format!(
                "volume {} is not in preprocessed.parquet",
                p.volume_id
            ));
            None
        }
        Some(file) => match views(&pre_dir.join(file), p, o) {
            Ok((imgs, geometry)) => {
                for (view, img) in View::ALL.iter().zip(imgs) {
                    h.raw("<figure>");
                    h.image(&img);
                    h.raw(&format!(
                        "<figcaption>{}</figcaption></figure>\n",
                        view.name()
                    ));
                }
                Some(geometry)
            }
            Err(e) => {
                h.note(&format!(
                    "{} could not be drawn: {e}",
                    file_name(Path::new(file))
                ));
                None
            }
        },
    };
    h.raw("</div>\n");
    h.raw(&findings_html(p, f, geometry.as_deref(), o.max_findings));
    h.raw("</div>\n");
    h
}

/// Reads a volume and draws its three views at a common mm scale. Returns the images and a
/// geometry line (voxels and spacing).
fn views(path: &Path, p: &Pick, o: &MontageOptions) -> Result<(Vec<Image>, String), String> {
    let (v, _) =
        mg3d_volume::nifti_io::read_nifti(path, false).map_err(|e| scrub(&e.to_string(), path))?;
    let slices: Vec<Slice> = View::ALL
        .iter()
        .map(|&view| mid_slice(&v, view, o.window))
        .collect::<Result<_, _>>()?;
    let extent = slices
        .iter()
        .flat_map(|s| {
            [
                s.width as f64 * s.pixel_mm.0,
                s.height as f64 * s.pixel_mm.1,
            ]
        })
        .fold(0.0f64, f64::max)
        .max(1e-6);
    let scale = o.max_px as f64 / extent;
    let mut imgs = Vec::new();
    for (view, s) in View::ALL.iter().zip(&slices) {
        let size = (
            ((s.width as f64 * s.pixel_mm.0 * scale).round() as u32).max(1),
            ((s.height as f64 * s.pixel_mm.1 * scale).round() as u32).max(1),
        );
        let alt = format!("{} mid-slice of volume {}", view.name(), p.volume_id);
        imgs.push(Image::png(encode_png(s)?, &alt, size));
    }
    let sp = v.spacing();
    let geometry = format!(
        "{}×{}×{} voxels at {}×{}×{} mm ({})",
        v.dims[0],
        v.dims[1],
        v.dims[2],
        round3(sp[0]),
        round3(sp[1]),
        round3(sp[2]),
        v.axcodes()
    );
    Ok((imgs, geometry))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The findings column of a card.
pub fn findings_html(p: &Pick, f: &Findings, geometry: Option<&str>, max: usize) -> String {
    let mut s = String::from("<div class=\"findings\">\n");
    s.push_str(&format!(
        "<h4>volume <code>{}</code></h4>\n<p>",
        escape(&p.volume_id)
    ));
    match &p.report_id {
        Some(r) => s.push_str(&format!("report <code>{}</code>", escape(r))),
        None => s.push_str("no linked report"),
    }
    if let Some(split) = &p.split {
        s.push_str(&format!(" · split {}", escape(split)));
    }
    if let Some(g) = geometry {
        s.push_str(&format!("<br>{}", escape(g)));
    }
    s.push_str("</p>\n");
    if p.report_id.is_some() {
        s.push_str("<p>Labels: ");
        if f.labels.is_empty() {
            s.push_str("none present or uncertain");
        }
        for (l, v) in &f.labels {
            let (class, mark) = if *v == 1 {
                ("present", "")
            } else {
                ("uncertain", "?")
            };
            s.push_str(&format!(
                "<span class=\"chip {class}\">{}{mark}</span>",
                escape(l)
            ));
        }
        s.push_str("</p>\n");
        if f.mentions.is_empty() {
            s.push_str("<p>No present or uncertain findings extracted.</p>\n");
        } else {
            s.push_str("<p>Findings stated:</p>\n<ul>\n");
            for m in f.mentions.iter().take(max) {
                s.push_str(&format!("<li>{}</li>\n", escape(m)));
            }
            if f.mentions.len() > max {
                s.push_str(&format!("<li>… {} more</li>\n", f.mentions.len() - max));
            }
            s.push_str("</ul>\n");
        }
    }
    s.push_str("</div>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4 (i) × 3 (j) × 2 (k) volume whose value encodes its voxel index: 100 k + 10 j + i.
    fn indexed(affine: [[f64; 4]; 4]) -> Volume {
        let mut data = Vec::new();
        for k in 0..2 {
            for j in 0..3 {
                for i in 0..4 {
                    data.push((100 * k + 10 * j + i) as f32);
                }
            }
        }
        Volume {
            dims: [4, 3, 2],
            data,
            affine,
        }
    }

    const RAS: [[f64; 4]; 4] = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 2.0, 0.0, 0.0],
        [0.0, 0.0, 3.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];

    #[test]
    fn views_are_radiological_for_ras_volumes() {
        let v = indexed(RAS);
        let w = (0.0, 255.0);
        // Axial at k = 1: top row is the most anterior j (2), first column the most right i (3).
        let a = mid_slice(&v, View::Axial, w).unwrap();
        assert_eq!((a.width, a.height, a.pixel_mm), (4, 3, (1.0, 2.0)));
        assert_eq!(&a.pixels[..4], &[123, 122, 121, 120]);
        assert_eq!(a.pixels[8], 103);
        // Coronal at j = 1: top row the most superior k (1).
        let c = mid_slice(&v, View::Coronal, w).unwrap();
        assert_eq!((c.width, c.height, c.pixel_mm), (4, 2, (1.0, 3.0)));
        assert_eq!(c.pixels, vec![113, 112, 111, 110, 13, 12, 11, 10]);
        // Sagittal at i = 2: columns anterior (j = 2) to posterior.
        let s = mid_slice(&v, View::Sagittal, w).unwrap();
        assert_eq!((s.width, s.height, s.pixel_mm), (3, 2, (2.0, 3.0)));
        assert_eq!(s.pixels, vec![122, 112, 102, 22, 12, 2]);
    }

    #[test]
    fn flipped_axes_give_the_same_picture() {
        // i runs to the left (L): the same anatomy stored mirrored must display the same.
        let mut lps = RAS;
        lps[0][0] = -1.0;
        let a = mid_slice(&indexed(lps), View::Axial, (0.0, 255.0)).unwrap();
        assert_eq!(&a.pixels[..4], &[120, 121, 122, 123]);
    }

    #[test]
    fn window_and_png_are_exact() {
        assert_eq!(gray(-2000.0, (-1000.0, 1000.0)), 0);
        assert_eq!(gray(0.0, (-1000.0, 1000.0)), 128);
        assert_eq!(gray(5000.0, (-1000.0, 1000.0)), 255);
        assert_eq!(gray(f32::NAN, (-1000.0, 1000.0)), 0);
        let s = Slice {
            width: 2,
            height: 1,
            pixels: vec![0, 255],
            pixel_mm: (1.0, 1.0),
        };
        let png = encode_png(&s).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let dec = png::Decoder::new(std::io::Cursor::new(png.clone()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        r.next_frame(&mut buf).unwrap();
        assert_eq!(&buf[..2], &[0, 255]);
        assert_eq!(png, encode_png(&s).unwrap());
    }

    #[test]
    fn picks_prefer_findings_then_ids() {
        let p = |v: &str, n| Pick {
            volume_id: v.into(),
            report_id: Some(format!("r{v}")),
            split: None,
            n_present: n,
        };
        let got = pick_volumes(
            vec![p("c", 1), p("a", 0), p("b", 1), p("b", 1), p("d", 3)],
            3,
        );
        let ids: Vec<&str> = got.iter().map(|p| p.volume_id.as_str()).collect();
        assert_eq!(ids, ["d", "b", "c"]);
    }

    #[test]
    fn findings_are_escaped_and_capped() {
        let p = Pick {
            volume_id: "v<1>".into(),
            report_id: Some("r1".into()),
            split: Some("train".into()),
            n_present: 1,
        };
        let f = Findings {
            labels: vec![("Lung nodule".into(), 1), ("Emphysema".into(), -1)],
            mentions: vec!["a <b>".into(), "c".into(), "d".into()],
        };
        let s = findings_html(&p, &f, Some("1×1×1"), 2);
        assert!(s.contains("v&lt;1&gt;"));
        assert!(s.contains("<span class=\"chip present\">Lung nodule</span>"));
        assert!(s.contains("<span class=\"chip uncertain\">Emphysema?</span>"));
        assert!(s.contains("<li>a &lt;b&gt;</li>"));
        assert!(s.contains("… 1 more"));
    }
}
