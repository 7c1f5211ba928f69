//! The `synth` pipeline stage.

use std::path::PathBuf;

use mg3d_core::stage::{ParamDef, ParamType, Params, Stage, StageContext, StageError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::report::{DEFAULT_TEMPLATES, Templates};
use crate::{SynthConfig, generate};

/// Stage kind `synth`: writes the synthetic corpus into the stage's output directory.
pub struct SynthStage;

#[derive(Deserialize)]
struct P {
    patients: u32,
    seed: i64,
    faults: bool,
    dicom_fraction: f64,
    prevalence: f64,
    prevalence_by_finding: std::collections::BTreeMap<String, f64>,
    second_recon_fraction: f64,
    enhanced_fraction: f64,
    in_plane_spacing_mm: [f64; 2],
    slice_spacing_mm: [f64; 2],
    body_width_mm: [f64; 2],
    z_extent_mm: [f64; 2],
    templates: String,
}

fn templates_text(path: &str) -> Result<String, StageError> {
    if path.is_empty() {
        Ok(DEFAULT_TEMPLATES.to_string())
    } else {
        std::fs::read_to_string(PathBuf::from(path))
            .map_err(|e| StageError::ctx(format!("templates file {path}"), e))
    }
}

impl Stage for SynthStage {
    fn kind(&self) -> &'static str {
        "synth"
    }
    fn code_version(&self) -> &'static str {
        "3"
    }
    fn uses_seed(&self) -> bool {
        // The pipeline seed is the default of the `seed` param.
        true
    }
    fn describe(&self) -> &'static str {
        "synthetic chest-CT corpus (DICOM, NIfTI, CT-RATE reports/labels/metadata) with ground truth"
    }
    fn params(&self) -> Vec<ParamDef> {
        let d = SynthConfig::default();
        vec![
            ParamDef::new(
                "patients",
                ParamType::Int,
                json!(d.patients),
                "number of patients",
            ),
            ParamDef::new(
                "seed",
                ParamType::Int,
                json!(-1),
                "seed; -1 uses the pipeline seed",
            ),
            ParamDef::new(
                "faults",
                ParamType::Bool,
                json!(false),
                "also write the fault cases",
            ),
            ParamDef::new(
                "dicom_fraction",
                ParamType::Float,
                json!(d.dicom_fraction),
                "share of patients as DICOM",
            ),
            ParamDef::new(
                "prevalence",
                ParamType::Float,
                json!(d.prevalence),
                "prevalence of each drawn finding",
            ),
            ParamDef::new(
                "prevalence_by_finding",
                ParamType::Table,
                json!({}),
                "per-finding prevalence overrides",
            ),
            ParamDef::new(
                "second_recon_fraction",
                ParamType::Float,
                json!(d.second_recon_fraction),
                "share of scans with 2 reconstructions",
            ),
            ParamDef::new(
                "enhanced_fraction",
                ParamType::Float,
                json!(d.enhanced_fraction),
                "share of DICOM series written as one Enhanced CT multi-frame object",
            ),
            ParamDef::new(
                "in_plane_spacing_mm",
                ParamType::List,
                json!(d.in_plane_spacing_mm),
                "[min, max] pixel spacing",
            ),
            ParamDef::new(
                "slice_spacing_mm",
                ParamType::List,
                json!(d.slice_spacing_mm),
                "[min, max] slice spacing",
            ),
            ParamDef::new(
                "body_width_mm",
                ParamType::List,
                json!(d.body_width_mm),
                "[min, max] body width",
            ),
            ParamDef::new(
                "z_extent_mm",
                ParamType::List,
                json!(d.z_extent_mm),
                "[min, max] scanned length",
            ),
            ParamDef::new(
                "templates",
                ParamType::Str,
                json!(""),
                "report template file; empty = configs/synth/reports.toml (embedded)",
            ),
        ]
    }
    fn sources_fingerprint(&self, params: &Params) -> Result<Option<String>, StageError> {
        let p: P = params.parse()?;
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
        let p: P = ctx.params.parse()?;
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
        };
        let templates = Templates::parse(&templates_text(&p.templates)?)
            .map_err(|e| StageError::msg(format!("report templates: {e}")))?;
        let s =
            generate(&cfg, &templates, &ctx.out_dir).map_err(|e| StageError::msg(e.to_string()))?;
        Ok(serde_json::to_value(s).unwrap())
    }
}
