//! Per-patient generation and the corpus-level files (CSVs, truth).

use std::fs;
use std::path::Path;

use mg3d_core::rows::TruthFindingsRow;
use mg3d_core::table::write_rows;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::catalog::{CT_RATE_LABELS, RENDERED};
use crate::dicom_out::{SeriesIdentity, SliceSpec, Syntax, uid, write_slice};
use crate::geometry::{Encoding, Grid, PatientPosition};
use crate::nifti_out::{header_for, write_i16};
use crate::phantom::{Phantom, PhantomSpec};
use crate::report::{EntityTruth, Statement, Templates, write_report};
use crate::{SynthConfig, SynthError, SynthSummary, rng_for, statements_for};

/// Geometry and encoding truth of one written volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeTruth {
    /// CT-RATE VolumeName.
    pub volume_name: String,
    /// Patient number.
    pub patient: u32,
    /// "dicom" or "nifti".
    pub format: String,
    /// Relative path: the series folder or the NIfTI file.
    pub path: String,
    /// DICOM PatientPosition.
    pub position: String,
    /// Voxel grid shape (i = columns, j = rows, k = slices sorted along the slice normal).
    pub shape: [usize; 3],
    /// Spacing (i, j, k) in mm.
    pub spacing: [f64; 3],
    /// Voxel (i, j, k) -> RAS mm, row-major 4x4.
    pub affine_ras: [[f64; 4]; 4],
    /// Rescale slope of the stored values.
    pub slope: f64,
    /// Rescale intercept of the stored values.
    pub intercept: f64,
    /// Signed storage.
    pub signed: bool,
    /// DICOM transfer syntax UID.
    pub transfer_syntax: Option<String>,
    /// NIfTI variant: "raw" (stored values, rescale in the metadata CSV), "hu" (already HU; the CSV
    /// still lists the rescale, which must not be applied again), "header_scaled" (scl_slope/scl_inter).
    pub nifti_variant: Option<String>,
    /// DICOM: instance numbers increase with k ("ascending") or decrease ("descending").
    pub instance_order: Option<String>,
    /// DICOM: file names are random rather than IMG0001.dcm.
    pub shuffled_names: Option<bool>,
    /// SeriesInstanceUID (DICOM).
    pub series_uid: Option<String>,
    /// Minimum HU.
    pub hu_min: i16,
    /// Maximum HU.
    pub hu_max: i16,
    /// Mean HU.
    pub hu_mean: f64,
    /// blake3 of the HU voxels as little-endian int16 in (k, j, i) order.
    pub hu_blake3: String,
    /// sha256 of the same bytes (for checks from Python's hashlib).
    pub hu_sha256: String,
}

/// Everything one patient contributes.
#[derive(Debug, Default)]
pub(crate) struct PatientOutput {
    pub volumes: Vec<VolumeTruth>,
    pub reports: Vec<[Vec<u8>; 5]>,
    pub labels: Vec<(String, [u8; 18])>,
    pub entities: Vec<EntityTruth>,
    pub findings: Vec<TruthFindingsRow>,
    pub metadata: Vec<Vec<String>>,
    pub accession: Vec<[String; 4]>,
    pub patient_truth: Option<serde_json::Value>,
    pub dicom_files: u32,
    pub voxels: u64,
}

pub(crate) fn uni(rng: &mut ChaCha8Rng, r: [f64; 2]) -> f64 {
    r[0] + (r[1] - r[0]) * rng.random::<f64>()
}

/// PHI-like identity of a synthetic patient.
pub(crate) fn identity(
    rng: &mut ChaCha8Rng,
    pid: u32,
    recon: u32,
    series_salt: &str,
) -> SeriesIdentity {
    const GIVEN: [&str; 8] = [
        "JANE", "JOHN", "MARIA", "AHMET", "ELIF", "PETER", "SOFIA", "KENJI",
    ];
    const FAMILY: [&str; 8] = [
        "DOE", "ROE", "YILMAZ", "MULLER", "ROSSI", "SMITH", "TANAKA", "NOVAK",
    ];
    let mrn = format!("MRN{:07}", rng.random_range(0..10_000_000u32));
    let year = rng.random_range(1935..2005);
    let sex = if rng.random_bool(0.5) { "F" } else { "M" };
    let study_date = format!(
        "2024{:02}{:02}",
        rng.random_range(1..13),
        rng.random_range(1..29)
    );
    let accession = format!("ACC{:08}", rng.random_range(0..100_000_000u32));
    let study_uid = uid(&[series_salt, "study", &pid.to_string()]);
    SeriesIdentity {
        patient_name: format!(
            "{}^{}^{}",
            FAMILY[rng.random_range(0..8)],
            GIVEN[rng.random_range(0..8)],
            pid
        ),
        patient_id: mrn,
        birth_date: format!(
            "{year}{:02}{:02}",
            rng.random_range(1..13),
            rng.random_range(1..29)
        ),
        sex: sex.into(),
        age: format!("{:03}Y", 2024 - year),
        accession,
        institution: "Synthetic General Hospital".into(),
        study_date,
        frame_uid: uid(&[series_salt, "frame", &pid.to_string()]),
        series_uid: uid(&[series_salt, "series", &pid.to_string(), &recon.to_string()]),
        study_uid,
        series_number: recon,
        description: "CHEST NON-CONTRAST".into(),
        kernel: ["B30f", "B70f", "STANDARD", "LUNG"][rng.random_range(0..4)].into(),
    }
}

struct HuStats {
    min: i16,
    max: i16,
    mean: f64,
    blake3: String,
    sha256: String,
}

fn hu_stats(hu: &[i16]) -> HuStats {
    use sha2::Digest;
    let bytes: Vec<u8> = hu.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mean = hu.iter().map(|&v| v as f64).sum::<f64>() / hu.len().max(1) as f64;
    HuStats {
        min: *hu.iter().min().unwrap_or(&0),
        max: *hu.iter().max().unwrap_or(&0),
        mean: (mean * 1000.0).round() / 1000.0,
        blake3: blake3::hash(&bytes).to_hex().to_string(),
        sha256: sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    }
}

/// How a DICOM series is written.
pub(crate) struct DicomPlan {
    /// One Enhanced CT object holding every frame, instead of one file per slice.
    pub enhanced: bool,
    pub syntax: Syntax,
    pub encoding: Encoding,
    pub ascending: bool,
    pub shuffled: bool,
}

/// Writes a DICOM series of `hu` on `grid` into `out/rel`, returning its truth and file count.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_series(
    out: &Path,
    rel: &str,
    volume_name: &str,
    pid: u32,
    id: &SeriesIdentity,
    grid: &Grid,
    pos: PatientPosition,
    plan: &DicomPlan,
    hu: &[i16],
    gantry_tilt: f64,
) -> Result<(VolumeTruth, u32), SynthError> {
    let dir = out.join(rel);
    fs::create_dir_all(&dir)?;
    if plan.enhanced {
        // Frames stored in acquisition order (or shuffled): readers must sort by position.
        let mut order: Vec<usize> = if plan.ascending {
            (0..grid.slices).collect()
        } else {
            (0..grid.slices).rev().collect()
        };
        if plan.shuffled {
            order.sort_by_key(|k| {
                blake3::hash(format!("{}{k}", id.series_uid).as_bytes())
                    .to_hex()
                    .to_string()
            });
        }
        crate::dicom_out::write_enhanced(
            &dir.join("ENHANCED.dcm"),
            id,
            grid,
            pos,
            plan.encoding,
            hu,
            &order,
        )?;
    }
    let plane = grid.cols * grid.rows;
    for k in (0..grid.slices).filter(|_| !plan.enhanced) {
        let inst = if plan.ascending {
            k as u32 + 1
        } else {
            (grid.slices - k) as u32
        };
        let sop_uid = uid(&[&id.series_uid, "sop", &k.to_string()]);
        let name = if plan.shuffled {
            format!("{}.dcm", &blake3::hash(sop_uid.as_bytes()).to_hex()[..12])
        } else {
            format!("IMG{inst:04}.dcm")
        };
        let spec = SliceSpec {
            k,
            instance_number: inst,
            hu: &hu[k * plane..(k + 1) * plane],
            sop_uid,
            gantry_tilt,
        };
        write_slice(
            &dir.join(name),
            id,
            grid,
            pos,
            plan.encoding,
            plan.syntax,
            &spec,
        )?;
    }
    let st = hu_stats(hu);
    Ok((
        VolumeTruth {
            volume_name: volume_name.to_string(),
            patient: pid,
            format: "dicom".into(),
            path: rel.to_string(),
            position: pos.code().into(),
            shape: [grid.cols, grid.rows, grid.slices],
            spacing: [grid.dx, grid.dy, grid.dz],
            affine_ras: grid.affine_ras(),
            slope: plan.encoding.slope,
            intercept: plan.encoding.intercept,
            signed: plan.encoding.signed,
            transfer_syntax: Some(
                if plan.enhanced {
                    Syntax::ExplicitLE.uid()
                } else {
                    plan.syntax.uid()
                }
                .to_string(),
            ),
            nifti_variant: None,
            instance_order: Some(
                if plan.enhanced {
                    "enhanced"
                } else if plan.ascending {
                    "ascending"
                } else {
                    "descending"
                }
                .into(),
            ),
            shuffled_names: Some(plan.shuffled),
            series_uid: Some(id.series_uid.clone()),
            hu_min: st.min,
            hu_max: st.max,
            hu_mean: st.mean,
            hu_blake3: st.blake3,
            hu_sha256: st.sha256,
        },
        if plan.enhanced { 1 } else { grid.slices as u32 },
    ))
}

/// Writes a CT-RATE-style NIfTI of `hu`, returning its truth and its metadata CSV row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_nifti_volume(
    out: &Path,
    volume_name: &str,
    pid: u32,
    grid: &Grid,
    pos: PatientPosition,
    enc: Encoding,
    variant: &str,
    hu: &[i16],
    sex: &str,
    age: &str,
) -> Result<(VolumeTruth, Vec<String>), SynthError> {
    let rel = format!("nifti/{volume_name}");
    let path = out.join(&rel);
    fs::create_dir_all(path.parent().unwrap())?;
    let affine = grid.affine_ras();
    let spacing = [grid.dx, grid.dy, grid.dz];
    let (data, scl): (Vec<i16>, Option<(f64, f64)>) = match variant {
        "hu" => (hu.to_vec(), None),
        "raw" => (hu.iter().map(|&h| enc.store(h) as i16).collect(), None),
        _ => (
            hu.iter().map(|&h| enc.store(h) as i16).collect(),
            Some((enc.slope, enc.intercept)),
        ),
    };
    write_i16(
        &path,
        data,
        [grid.cols, grid.rows, grid.slices],
        &header_for(&affine, spacing, scl),
    )?;
    let st = hu_stats(hu);
    let ipp = grid.slice_position(0);
    let f = crate::dicom_out::ds;
    let row = vec![
        volume_name.to_string(),
        "mg3d-synth".into(),
        "Phantom CT".into(),
        sex.to_string(),
        age.to_string(),
        grid.rows.to_string(),
        grid.cols.to_string(),
        f(grid.dz),
        format!("[{}, {}]", f(grid.dx), f(grid.dy)),
        f(grid.dz),
        format!("[{}, {}, {}]", f(ipp[0]), f(ipp[1]), f(ipp[2])),
        format!(
            "[{}, {}, {}, {}, {}, {}]",
            f(grid.row_dir[0]),
            f(grid.row_dir[1]),
            f(grid.row_dir[2]),
            f(grid.col_dir[0]),
            f(grid.col_dir[1]),
            f(grid.col_dir[2])
        ),
        f(enc.intercept),
        f(enc.slope),
        "HU".into(),
        grid.slices.to_string(),
        pos.code().into(),
    ];
    Ok((
        VolumeTruth {
            volume_name: volume_name.to_string(),
            patient: pid,
            format: "nifti".into(),
            path: rel,
            position: pos.code().into(),
            shape: [grid.cols, grid.rows, grid.slices],
            spacing,
            affine_ras: affine,
            slope: enc.slope,
            intercept: enc.intercept,
            signed: true,
            transfer_syntax: None,
            nifti_variant: Some(variant.to_string()),
            instance_order: None,
            shuffled_names: None,
            series_uid: None,
            hu_min: st.min,
            hu_max: st.max,
            hu_mean: st.mean,
            hu_blake3: st.blake3,
            hu_sha256: st.sha256,
        },
        row,
    ))
}

/// Columns of metadata/train_metadata.csv.
pub(crate) const METADATA_COLUMNS: [&str; 17] = [
    "VolumeName",
    "Manufacturer",
    "ManufacturerModelName",
    "PatientSex",
    "PatientAge",
    "Rows",
    "Columns",
    "SliceThickness",
    "XYSpacing",
    "ZSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "NumberofSlices",
    "PatientPosition",
];

pub(crate) fn pick_position(rng: &mut ChaCha8Rng) -> PatientPosition {
    let r: f64 = rng.random();
    if r < 0.55 {
        PatientPosition::HFS
    } else if r < 0.7 {
        PatientPosition::FFS
    } else if r < 0.85 {
        PatientPosition::HFP
    } else {
        PatientPosition::FFP
    }
}

pub(crate) fn pick_syntax(rng: &mut ChaCha8Rng) -> Syntax {
    let r: f64 = rng.random();
    if r < 0.5 {
        Syntax::ExplicitLE
    } else if r < 0.7 {
        Syntax::ImplicitLE
    } else {
        Syntax::RleLossless
    }
}

/// A square field of view (mm) holding the body and the table.
pub(crate) fn field_of_view(ph: &Phantom) -> f64 {
    (2.0 * ph.a * 1.12).max(2.0 * (ph.b * 1.16 + 14.0))
}

/// A phantom in position `pos` with its findings drawn, and what its report says of each label.
pub(crate) fn draw_patient(
    cfg: &SynthConfig,
    pos: PatientPosition,
    rng: &mut ChaCha8Rng,
) -> (Phantom, Vec<Statement>) {
    let spec = PhantomSpec {
        body_width_mm: cfg.body_width_mm,
        z_extent_mm: cfg.z_extent_mm,
        posture: pos.posture(),
    };
    let mut ph = Phantom::new(&spec, rng);
    draw_findings(cfg, &mut ph, rng);
    let statements = statements_for(&ph.findings, rng);
    (ph, statements)
}

/// Draws each rendered finding with its prevalence (15% of them subtle).
fn draw_findings(cfg: &SynthConfig, ph: &mut Phantom, rng: &mut ChaCha8Rng) {
    for label in RENDERED {
        let p = cfg
            .prevalence_by_finding
            .get(label)
            .copied()
            .unwrap_or(cfg.prevalence);
        if rng.random_bool(p) {
            let subtle = rng.random_bool(0.15);
            ph.add_finding(label, subtle, rng);
        }
    }
}

/// The patient's report, once per volume: report rows, label vectors, entity and finding truth.
fn add_report_rows(
    o: &mut PatientOutput,
    volume_names: &[String],
    report: &crate::report::Report,
    statements: &[Statement],
    patient_source_id: &str,
) {
    for (vn, vt) in volume_names.iter().zip(&o.volumes.clone()) {
        o.reports.push([
            vn.clone().into_bytes(),
            report.clinical.clone().into_bytes(),
            report.technique.clone().into_bytes(),
            report.findings.clone().into_bytes(),
            report.impressions.clone().into_bytes(),
        ]);
        o.labels.push((vn.clone(), label_vector(statements)));
        for e in &report.entities {
            o.entities.push(EntityTruth {
                volume_name: vn.clone(),
                ..e.clone()
            });
        }
        o.findings
            .extend(finding_rows(patient_source_id, vn, statements, vt));
    }
}

/// How a DICOM series is written: transfer syntax, slice order, Enhanced CT or not.
fn dicom_plan(cfg: &SynthConfig, encoding: Encoding, rng: &mut ChaCha8Rng) -> DicomPlan {
    DicomPlan {
        syntax: pick_syntax(rng),
        encoding,
        ascending: rng.random_bool(0.5),
        shuffled: rng.random_bool(0.3),
        enhanced: rng.random_bool(cfg.enhanced_fraction),
    }
}

/// How a NIfTI volume stores intensities: raw stored values (40%), HU (40%) or scaled in the
/// header (20%).
fn nifti_variant(rng: &mut ChaCha8Rng) -> &'static str {
    let r: f64 = rng.random();
    if r < 0.4 {
        "raw"
    } else if r < 0.8 {
        "hu"
    } else {
        "header_scaled"
    }
}

/// Generates one patient.
pub(crate) fn make_patient(
    cfg: &SynthConfig,
    templates: &Templates,
    out: &Path,
    pid: u32,
) -> Result<PatientOutput, SynthError> {
    let mut rng = rng_for(cfg.seed, "patient", pid as u64);
    let is_dicom = rng.random_bool(cfg.dicom_fraction);
    let pos = pick_position(&mut rng);
    let (ph, statements) = draw_patient(cfg, pos, &mut rng);
    let n_recon = if rng.random_bool(cfg.second_recon_fraction) {
        2
    } else {
        1
    };
    let dx = (uni(&mut rng, cfg.in_plane_spacing_mm) * 1000.0).round() / 1000.0;
    let fov = field_of_view(&ph);
    let mut o = PatientOutput::default();
    let mut first_dz = 0.0;
    let id0 = identity(&mut rng, pid, 1, &format!("seed{}", cfg.seed));
    let mut volume_names = Vec::new();
    for recon in 1..=n_recon {
        let dz = (uni(&mut rng, cfg.slice_spacing_mm) * 100.0).round() / 100.0;
        if recon == 1 {
            first_dz = dz;
        }
        let shift = [uni(&mut rng, [-8.0, 8.0]), uni(&mut rng, [-8.0, 8.0]), 0.0];
        let grid = Grid::axial(pos, dx, dz, [fov, fov], ph.len * 0.96, shift);
        let hu = crate::geometry::render(&ph, &grid, rng.random());
        o.voxels += hu.len() as u64;
        let volume_name = format!("train_{pid}_a_{recon}.nii.gz");
        let enc = Encoding::VARIANTS[rng.random_range(0..Encoding::VARIANTS.len())];
        if is_dicom {
            let mut id = id0.clone();
            id.series_uid = uid(&[
                &format!("seed{}", cfg.seed),
                "series",
                &pid.to_string(),
                &recon.to_string(),
            ]);
            id.series_number = recon;
            if recon == 2 {
                id.kernel = "B70f".into();
            }
            let plan = dicom_plan(cfg, enc, &mut rng);
            let rel = format!(
                "dicom/{}/{}_{}/series_{recon}",
                id.patient_id, id.study_date, id.accession
            );
            let (t, files) = write_series(
                out,
                &rel,
                &volume_name,
                pid,
                &id,
                &grid,
                pos,
                &plan,
                &hu,
                0.0,
            )?;
            o.dicom_files += files;
            o.accession.push([
                id.accession.clone(),
                id.study_uid.clone(),
                id.series_uid.clone(),
                volume_name.clone(),
            ]);
            o.volumes.push(t);
        } else {
            let variant = nifti_variant(&mut rng);
            let (t, row) = write_nifti_volume(
                out,
                &volume_name,
                pid,
                &grid,
                pos,
                enc,
                variant,
                &hu,
                &id0.sex,
                &id0.age,
            )?;
            o.metadata.push(row);
            o.volumes.push(t);
        }
        volume_names.push(volume_name);
    }
    let report = write_report(templates, &statements, first_dz, &mut rng)?;
    let patient_source_id = if is_dicom {
        id0.patient_id.clone()
    } else {
        format!("train_{pid}")
    };
    add_report_rows(
        &mut o,
        &volume_names,
        &report,
        &statements,
        &patient_source_id,
    );
    o.patient_truth = Some(serde_json::json!({
        "patient": pid,
        "format": if is_dicom { "dicom" } else { "nifti" },
        "patient_source_id": patient_source_id,
        "phi": if is_dicom { serde_json::to_value(&id0).unwrap() } else { serde_json::Value::Null },
        "volumes": volume_names,
    }));
    Ok(o)
}

/// The 18 CT-RATE labels: 1 where the finding is drawn in the voxels.
pub(crate) fn label_vector(statements: &[Statement]) -> [u8; 18] {
    let mut v = [0u8; 18];
    for s in statements {
        if s.finding.is_some() {
            let i = CT_RATE_LABELS
                .iter()
                .position(|l| *l == s.label)
                .expect("label");
            v[i] = 1;
        }
    }
    v
}

fn finding_rows(
    patient: &str,
    volume_name: &str,
    statements: &[Statement],
    vt: &VolumeTruth,
) -> Vec<TruthFindingsRow> {
    statements
        .iter()
        .map(|s| {
            let f = s.finding.as_ref();
            TruthFindingsRow {
                patient_source_id: patient.to_string(),
                volume_name: volume_name.to_string(),
                finding: s.label.clone(),
                assertion: s.assertion.as_str().to_string(),
                rendered: f.is_some(),
                region: f.map(|f| f.region.clone()),
                laterality: f.and_then(|f| f.side.map(|s| s.word().to_string())),
                size_mm: f.and_then(|f| f.size_mm),
                center_ras_mm: f.and_then(|f| f.center_lps).map(|c| {
                    let _ = vt;
                    [-c[0], -c[1], c[2]]
                }),
            }
        })
        .collect()
}

/// A fault case and what the pipeline should say about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FaultTruth {
    /// Fault name (e.g. "missing_slice").
    pub fault: String,
    /// Relative path of the bad input (file or folder), or the report CSV for report faults.
    pub path: String,
    /// VolumeName involved, if any.
    pub volume_name: Option<String>,
    /// Stage that should notice: "ingest", "reports" or "curate".
    pub stage: String,
    /// Expected reason code in that stage's rejects (or "accepted" when the input must be used).
    pub expected: String,
    /// Free-text explanation.
    pub note: String,
}

/// Accumulates the corpus-level files.
pub(crate) struct CorpusWriter {
    out: std::path::PathBuf,
    pub parts: Vec<PatientOutput>,
    pub faults: Vec<FaultTruth>,
    pub fault_reports: Vec<[Vec<u8>; 5]>,
}

fn csv_field(f: &[u8]) -> Vec<u8> {
    if f.iter()
        .any(|&c| c == b',' || c == b'"' || c == b'\n' || c == b'\r')
    {
        let mut o = vec![b'"'];
        for &c in f {
            if c == b'"' {
                o.push(b'"');
            }
            o.push(c);
        }
        o.push(b'"');
        o
    } else {
        f.to_vec()
    }
}

fn csv_line(fields: &[Vec<u8>], out: &mut Vec<u8>) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend(csv_field(f));
    }
    out.push(b'\n');
}

fn jsonl<T: Serialize>(rows: impl Iterator<Item = T>) -> Vec<u8> {
    let mut o = Vec::new();
    for r in rows {
        o.extend(serde_json::to_vec(&r).unwrap());
        o.push(b'\n');
    }
    o
}

impl CorpusWriter {
    pub fn new(out: &Path) -> Result<Self, SynthError> {
        for d in ["reports", "labels", "metadata", "truth"] {
            fs::create_dir_all(out.join(d))?;
        }
        Ok(CorpusWriter {
            out: out.to_path_buf(),
            parts: vec![],
            faults: vec![],
            fault_reports: vec![],
        })
    }

    pub fn add(&mut self, p: PatientOutput) {
        self.parts.push(p);
    }

    pub fn finish(self, cfg: &SynthConfig) -> Result<SynthSummary, SynthError> {
        let out = &self.out;
        let mut s = SynthSummary {
            patients: cfg.patients,
            faults: self.faults.len() as u32,
            ..Default::default()
        };
        let mut reports = Vec::new();
        csv_line(
            &[
                "VolumeName",
                "ClinicalInformation_EN",
                "Technique_EN",
                "Findings_EN",
                "Impressions_EN",
            ]
            .map(|s| s.as_bytes().to_vec()),
            &mut reports,
        );
        let mut labels = Vec::new();
        let header: Vec<Vec<u8>> = std::iter::once("VolumeName")
            .chain(CT_RATE_LABELS)
            .map(|s| s.as_bytes().to_vec())
            .collect();
        csv_line(&header, &mut labels);
        let mut meta = Vec::new();
        csv_line(&METADATA_COLUMNS.map(|s| s.as_bytes().to_vec()), &mut meta);
        let mut acc = Vec::new();
        csv_line(
            &[
                "AccessionNumber",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "VolumeName",
            ]
            .map(|s| s.as_bytes().to_vec()),
            &mut acc,
        );
        for p in &self.parts {
            for r in &p.reports {
                csv_line(r, &mut reports);
            }
            for (vn, l) in &p.labels {
                let mut row = vec![vn.as_bytes().to_vec()];
                row.extend(l.iter().map(|v| v.to_string().into_bytes()));
                csv_line(&row, &mut labels);
            }
            for m in &p.metadata {
                csv_line(
                    &m.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>(),
                    &mut meta,
                );
            }
            for a in &p.accession {
                csv_line(
                    &a.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>(),
                    &mut acc,
                );
            }
            s.reports += p.reports.len() as u32;
            s.dicom_files += p.dicom_files;
            s.voxels += p.voxels;
            if p.patient_truth.is_some() {
                s.volumes += p.volumes.len() as u32;
            }
            for v in &p.volumes {
                if v.format == "dicom" {
                    s.dicom_series += 1;
                } else {
                    s.nifti_files += 1;
                }
            }
            for f in &p.findings {
                if f.rendered && f.volume_name.ends_with("_1.nii.gz") {
                    *s.findings.entry(f.finding.clone()).or_default() += 1;
                }
            }
        }
        for r in &self.fault_reports {
            csv_line(r, &mut reports);
        }
        s.reports += self.fault_reports.len() as u32;
        fs::write(out.join("reports/train_reports.csv"), reports)?;
        fs::write(out.join("labels/train_predicted_labels.csv"), labels)?;
        fs::write(out.join("metadata/train_metadata.csv"), meta)?;
        fs::write(out.join("reports/accession_map.csv"), acc)?;
        fs::write(
            out.join("truth/entities.jsonl"),
            jsonl(self.parts.iter().flat_map(|p| p.entities.iter())),
        )?;
        fs::write(
            out.join("truth/geometry.jsonl"),
            jsonl(self.parts.iter().flat_map(|p| p.volumes.iter())),
        )?;
        fs::write(
            out.join("truth/patients.jsonl"),
            jsonl(self.parts.iter().filter_map(|p| p.patient_truth.as_ref())),
        )?;
        fs::write(out.join("truth/faults.jsonl"), jsonl(self.faults.iter()))?;
        let findings: Vec<TruthFindingsRow> = self
            .parts
            .iter()
            .flat_map(|p| p.findings.iter().cloned())
            .collect();
        write_rows(&out.join("truth/truth_findings.parquet"), &findings)?;
        let mut summary_json =
            serde_json::to_vec_pretty(&serde_json::json!({ "summary": &s, "config": cfg }))
                .unwrap();
        summary_json.push(b'\n');
        fs::write(out.join("synth.json"), summary_json)?;
        Ok(s)
    }
}
