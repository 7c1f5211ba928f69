//! mg3d-synth: a synthetic chest-CT corpus with known truth.
//!
//! Per patient: a phantom in HU with findings drawn in ([`phantom`]), one or two reconstructions
//! written either as a DICOM series ([`dicom_out`]) or as a CT-RATE-style NIfTI with a metadata CSV
//! row ([`nifti_out`]), a CT-RATE-format report written from the truth ([`report`]), and the truth
//! itself: labels, entity spans, geometry, and with `faults` the expected reject reason per bad input.
//!
//! Output layout (under the output directory):
//! ```text
//! dicom/<MRN>/<date>_<accession>/series_<n>/*.dcm   DICOM series (folder names carry PHI, as real archives do)
//! nifti/train_<pid>_a_<recon>.nii.gz                CT-RATE-style volumes
//! metadata/train_metadata.csv                       CT-RATE metadata for the NIfTI volumes
//! reports/train_reports.csv                         CT-RATE reports (VolumeName, ClinicalInformation_EN, ...)
//! reports/accession_map.csv                         RIS export: AccessionNumber, StudyInstanceUID, SeriesInstanceUID -> VolumeName
//! labels/train_predicted_labels.csv                 VolumeName + the 18 CT-RATE labels (1 = drawn in the voxels)
//! truth/entities.jsonl                              entity spans per report section
//! truth/geometry.jsonl                              per volume: shape, spacing, RAS affine, encoding, HU digest
//! truth/patients.jsonl                              the PHI-like source identifiers (to test that none leak)
//! truth/faults.jsonl                                with faults: each bad input and the reason code ingest/reports should give
//! truth/truth_findings.parquet                      table `truth_findings` (schemas/truth_findings.json)
//! synth.json                                        summary and the config used
//! ```

#![allow(clippy::needless_range_loop)] // matrix and voxel code reads better with indices

pub mod catalog;
pub mod ctrg;
pub mod dicom_out;
pub mod error;
mod faults;
pub mod geometry;
pub mod nifti_out;
pub mod phantom;
pub mod report;
mod stage;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use error::{SynthError, TemplateError};
pub use stage::SynthStage;
pub use writer::VolumeTruth;

use crate::catalog::RENDERED;
use crate::report::{Assertion, Statement, Templates};

/// What to generate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    /// Number of patients.
    pub patients: u32,
    /// Seed: the same seed gives byte-identical output.
    pub seed: u64,
    /// Also write the fault cases (bad inputs with expected reject reasons).
    pub faults: bool,
    /// Share of patients written as DICOM series (the rest as NIfTI).
    pub dicom_fraction: f64,
    /// Prevalence of each drawn finding.
    pub prevalence: f64,
    /// Per-finding prevalence overrides (CT-RATE label -> probability).
    #[serde(default)]
    pub prevalence_by_finding: BTreeMap<String, f64>,
    /// Share of scans with a second reconstruction (another slice spacing and kernel).
    pub second_recon_fraction: f64,
    /// Share of DICOM series written as one Enhanced CT multi-frame object.
    #[serde(default = "default_enhanced")]
    pub enhanced_fraction: f64,
    /// In-plane pixel spacing range, mm.
    pub in_plane_spacing_mm: [f64; 2],
    /// Slice spacing range, mm.
    pub slice_spacing_mm: [f64; 2],
    /// Body width range, mm (adult chests are 280-360).
    pub body_width_mm: [f64; 2],
    /// Scanned length range, mm.
    pub z_extent_mm: [f64; 2],
    /// Volumes of the CTRG-Chest-shaped set (`ctrg/`, see [`ctrg`]); 0 writes none.
    #[serde(default)]
    pub ctrg_patients: u32,
}

fn default_enhanced() -> f64 {
    0.15
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            patients: 20,
            seed: 0,
            faults: false,
            dicom_fraction: 0.5,
            prevalence: 0.25,
            prevalence_by_finding: BTreeMap::new(),
            second_recon_fraction: 0.2,
            enhanced_fraction: default_enhanced(),
            in_plane_spacing_mm: [0.5, 1.0],
            slice_spacing_mm: [0.6, 5.0],
            body_width_mm: [280.0, 360.0],
            z_extent_mm: [250.0, 320.0],
            ctrg_patients: 0,
        }
    }
}

impl SynthConfig {
    /// Checks ranges; the error is a [`SynthError::Config`] whose message names the field.
    pub fn validate(&self) -> Result<(), SynthError> {
        let range = |name: &str, r: [f64; 2], lo: f64, hi: f64| {
            if !(r[0] > 0.0 && r[0] <= r[1] && r[0] >= lo && r[1] <= hi) {
                Err(SynthError::Config(format!(
                    "{name} must be [min, max] with {lo} <= min <= max <= {hi}, got {r:?}"
                )))
            } else {
                Ok(())
            }
        };
        range("in_plane_spacing_mm", self.in_plane_spacing_mm, 0.1, 5.0)?;
        range("slice_spacing_mm", self.slice_spacing_mm, 0.1, 10.0)?;
        range("body_width_mm", self.body_width_mm, 40.0, 600.0)?;
        range("z_extent_mm", self.z_extent_mm, 20.0, 800.0)?;
        for (name, p) in [
            ("dicom_fraction", self.dicom_fraction),
            ("prevalence", self.prevalence),
            ("second_recon_fraction", self.second_recon_fraction),
            ("enhanced_fraction", self.enhanced_fraction),
        ]
        .into_iter()
        .chain(
            self.prevalence_by_finding
                .iter()
                .map(|(k, v)| (k.as_str(), *v)),
        ) {
            if !(0.0..=1.0).contains(&p) {
                return Err(SynthError::Config(format!(
                    "{name} must be within [0, 1], got {p}"
                )));
            }
        }
        for k in self.prevalence_by_finding.keys() {
            if !RENDERED.contains(&k.as_str()) {
                return Err(SynthError::Config(format!(
                    "prevalence_by_finding: {k:?} is not a drawn finding; use one of: {}",
                    RENDERED.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// Counts of what was generated.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SynthSummary {
    /// Patients.
    pub patients: u32,
    /// Volumes (reconstructions), faults excluded.
    pub volumes: u32,
    /// DICOM series.
    pub dicom_series: u32,
    /// DICOM files.
    pub dicom_files: u32,
    /// NIfTI files.
    pub nifti_files: u32,
    /// Report rows.
    pub reports: u32,
    /// Fault cases written.
    pub faults: u32,
    /// Voxels rendered.
    pub voxels: u64,
    /// Present findings drawn, per label.
    pub findings: BTreeMap<String, u32>,
}

/// A seeded RNG for one purpose, independent of the order things are generated in.
pub(crate) fn rng_for(seed: u64, what: &str, i: u64) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(what.as_bytes());
    h.update(&i.to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// Decides what each report says about each drawn label, given which were drawn and how subtly.
pub(crate) fn statements_for(
    drawn: &[phantom::RenderedFinding],
    rng: &mut ChaCha8Rng,
) -> Vec<Statement> {
    let mut out = Vec::new();
    for label in RENDERED {
        if let Some(f) = drawn.iter().find(|f| f.label == label) {
            let hedge = f.subtle && rng.random_bool(0.7);
            out.push(Statement {
                label: label.to_string(),
                assertion: if hedge {
                    Assertion::Uncertain
                } else {
                    Assertion::Present
                },
                finding: Some(f.clone()),
            });
        } else {
            let r: f64 = rng.random();
            if r < 0.5 {
                out.push(Statement {
                    label: label.to_string(),
                    assertion: Assertion::Absent,
                    finding: None,
                });
            } else if r < 0.56 {
                out.push(Statement {
                    label: label.to_string(),
                    assertion: Assertion::Uncertain,
                    finding: None,
                });
            }
        }
    }
    out
}

/// Generates the corpus into `out` (which must exist and be empty).
pub fn generate(
    cfg: &SynthConfig,
    templates: &Templates,
    out: &Path,
) -> Result<SynthSummary, SynthError> {
    cfg.validate()?;
    let mut w = writer::CorpusWriter::new(out)?;
    let patients: Vec<writer::PatientOutput> = (1..=cfg.patients)
        .into_par_iter()
        .map(|pid| writer::make_patient(cfg, templates, out, pid))
        .collect::<Result<_, _>>()?;
    for p in patients {
        w.add(p);
    }
    if cfg.faults {
        faults::write_faults(cfg, templates, out, &mut w)?;
    }
    ctrg::write_ctrg(cfg, templates, out)?;
    w.finish(cfg)
}

/// Reports only (no volumes), for text benchmarks at scale: `n` CT-RATE-format report rows drawn
/// like the corpus' (same findings, placement and templates), written as a CT-RATE reports CSV.
pub fn write_reports_only(
    n: u32,
    seed: u64,
    templates: &Templates,
    path: &Path,
) -> Result<(), SynthError> {
    use crate::phantom::{Phantom, PhantomSpec, Posture};
    let cfg = SynthConfig {
        seed,
        ..Default::default()
    };
    let rows: Vec<String> = (1..=n)
        .into_par_iter()
        .map(|pid| {
            let mut rng = rng_for(cfg.seed, "report-only", pid as u64);
            let spec = PhantomSpec {
                body_width_mm: cfg.body_width_mm,
                z_extent_mm: cfg.z_extent_mm,
                posture: Posture::Supine,
            };
            let mut ph = Phantom::new(&spec, &mut rng);
            for label in RENDERED {
                if rng.random_bool(cfg.prevalence) {
                    let subtle = rng.random_bool(0.15);
                    ph.add_finding(label, subtle, &mut rng);
                }
            }
            let st = statements_for(&ph.findings, &mut rng);
            let r = report::write_report(templates, &st, 1.5, &mut rng)?;
            let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            Ok(format!(
                "train_{pid}_a_1.nii.gz,{},{},{},{}\n",
                q(&r.clinical),
                q(&r.technique),
                q(&r.findings),
                q(&r.impressions)
            ))
        })
        .collect::<Result<_, SynthError>>()?;
    let mut out =
        String::from("VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n");
    for r in rows {
        out.push_str(&r);
    }
    std::fs::write(path, out)?;
    Ok(())
}
