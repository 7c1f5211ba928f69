//! The `synth` pipeline stage.

use std::path::PathBuf;

use mg3d_core::stage::{ParamDef, Params, Stage, StageContext, StageError};
use serde_json::{Value, json};

use crate::report::{DEFAULT_TEMPLATES, Templates};
use crate::{SynthConfig, SynthError, generate};

/// Stage kind `synth`: writes the synthetic corpus into the stage's output directory.
pub struct SynthStage;

mg3d_core::stage_params! {
    /// The parameters of the stage, declared once: `mg3d stages` lists them from here.
    pub(crate) struct SynthParams {
        /// number of patients
        patients: u32 = json!(SynthConfig::default().patients),
        /// seed; -1 uses the pipeline seed
        seed: i64 = json!(-1),
        /// also write the fault cases
        faults: bool = json!(false),
        /// share of patients as DICOM
        dicom_fraction: f64 = json!(SynthConfig::default().dicom_fraction),
        /// prevalence of each drawn finding
        prevalence: f64 = json!(SynthConfig::default().prevalence),
        /// per-finding prevalence overrides
        prevalence_by_finding: std::collections::BTreeMap<String, f64> = json!({}),
        /// share of scans with 2 reconstructions
        second_recon_fraction: f64 = json!(SynthConfig::default().second_recon_fraction),
        /// share of DICOM series written as one Enhanced CT multi-frame object
        enhanced_fraction: f64 = json!(SynthConfig::default().enhanced_fraction),
        /// [min, max] pixel spacing
        in_plane_spacing_mm: [f64; 2] = json!(SynthConfig::default().in_plane_spacing_mm),
        /// [min, max] slice spacing
        slice_spacing_mm: [f64; 2] = json!(SynthConfig::default().slice_spacing_mm),
        /// [min, max] body width
        body_width_mm: [f64; 2] = json!(SynthConfig::default().body_width_mm),
        /// [min, max] scanned length
        z_extent_mm: [f64; 2] = json!(SynthConfig::default().z_extent_mm),
        /// volumes of the CTRG-Chest-shaped set (ctrg/annotation.json + JPEG slice folders)
        ctrg_patients: u32 = json!(0),
        /// report template file; empty = configs/synth/reports.toml (embedded)
        templates: String = json!(""),
    }
}

fn templates_text(path: &str) -> Result<String, StageError> {
    if path.is_empty() {
        Ok(DEFAULT_TEMPLATES.to_string())
    } else {
        std::fs::read_to_string(PathBuf::from(path)).map_err(|source| {
            SynthError::TemplatesFile {
                path: path.to_string(),
                source,
            }
            .into()
        })
    }
}

impl Stage for SynthStage {
    fn kind(&self) -> &'static str {
        "synth"
    }
    fn code_version(&self) -> &'static str {
        "4"
    }
    fn uses_seed(&self) -> bool {
        // The pipeline seed is the default of the `seed` param.
        true
    }
    fn describe(&self) -> &'static str {
        "synthetic chest-CT corpus (DICOM, NIfTI, CT-RATE reports/labels/metadata, a CTRG-Chest-shaped set) with ground truth"
    }
    fn params(&self) -> Vec<ParamDef> {
        SynthParams::defs()
    }
    fn sources_fingerprint(&self, params: &Params) -> Result<Option<String>, StageError> {
        let p: SynthParams = params.parse()?;
        if p.templates.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            blake3::hash(templates_text(&p.templates)?.as_bytes())
                .to_hex()
                .to_string(),
        ))
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: SynthParams = ctx.params.parse()?;
        let cfg = SynthConfig {
            patients: p.patients,
            seed: if p.seed < 0 { ctx.seed } else { p.seed as u64 },
            faults: p.faults,
            dicom_fraction: p.dicom_fraction,
            prevalence: p.prevalence,
            prevalence_by_finding: p.prevalence_by_finding,
            second_recon_fraction: p.second_recon_fraction,
            enhanced_fraction: p.enhanced_fraction,
            in_plane_spacing_mm: p.in_plane_spacing_mm,
            slice_spacing_mm: p.slice_spacing_mm,
            body_width_mm: p.body_width_mm,
            z_extent_mm: p.z_extent_mm,
            ctrg_patients: p.ctrg_patients,
        };
        let templates =
            Templates::parse(&templates_text(&p.templates)?).map_err(SynthError::from)?;
        let s = generate(&cfg, &templates, &ctx.out_dir)?;
        Ok(serde_json::to_value(s).unwrap())
    }
}
