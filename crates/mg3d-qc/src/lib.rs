//! mg3d-qc: the `qc` stage, one self-contained QC page, `qc/index.html`, from whatever upstream
//! outputs the pipeline gives it (no libtorch: it reads tables and files only).
//!
//! Sections: counts per stage, rejects by reason (and curate's exclusions by rule), label
//! prevalence, a montage of preprocessed mid-slices next to their report's findings, the graph's
//! degree histogram, training loss curves per objective and the evaluation table. Plots are SVG
//! drawn with plotters, slices PNG; every image is embedded as a data URI, so the page has no
//! external reference and opens offline. A missing or unreadable input becomes a visible note in
//! its section, never a failed stage. The page is a pure function of the inputs and params (no
//! timestamps, no absolute paths, stable ordering), so the same inputs give the same bytes.
//!
//! Modules: [`inputs`] (reading tables and JSON), [`html`] (escaping, tables, images, the page),
//! [`plots`] (plotters SVG charts), [`montage`] (slices and findings), [`sections`] (the rest).

pub mod html;
pub mod inputs;
pub mod montage;
pub mod plots;
pub mod sections;

use mg3d_core::stage::{InputDecl, ParamDef, Stage, StageContext, StageError, StageInput};
use serde_json::{Value, json};

use html::{Section, page};
use inputs::Inputs;
use montage::MontageOptions;

/// The page's path inside the stage output.
pub const PAGE: &str = "qc/index.html";

/// The input kinds the page reads; all optional (an absent one is a note on the page).
pub const INPUT_KINDS: [&str; 10] = [
    "ingest",
    "preprocess",
    "reports",
    "entities",
    "tokens",
    "graph",
    "curate",
    "shards",
    "train",
    "eval",
];

/// The `qc` stage (the QC page).
pub struct QcStage;

mg3d_core::stage_params! {
    /// The parameters of the stage, declared once: `mg3d stages` lists them from here.
    pub(crate) struct QcParams {
        /// preprocessed volumes shown as axial/coronal/sagittal mid-slices (most present labels first)
        montage_volumes: i64 = json!(4),
        /// display window [low, high] in HU of the montage (default: lung window)
        montage_window: Vec<f64> = json!([-1350.0, 150.0]),
        /// findings listed beside each montage volume
        montage_findings: i64 = json!(12),
    }
}

/// What the page shows, from the stage params.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOptions {
    /// Montage settings.
    pub montage: MontageOptions,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            montage: MontageOptions {
                volumes: 4,
                window: (-1350.0, 150.0),
                max_findings: 12,
                max_px: 200,
            },
        }
    }
}

impl ReportOptions {
    fn from_params(p: &QcParams) -> Result<ReportOptions, StageError> {
        let [lo, hi] = p.montage_window[..] else {
            return Err(StageError::msg("montage_window must be [low, high] in HU"));
        };
        let ordered = lo.is_finite() && hi.is_finite() && lo < hi;
        if !ordered || p.montage_volumes < 0 || p.montage_findings < 0 {
            return Err(StageError::msg(
                "montage_window needs low < high; montage_volumes and montage_findings must be >= 0",
            ));
        }
        let mut o = ReportOptions::default();
        o.montage.volumes = p.montage_volumes as usize;
        o.montage.window = (lo, hi);
        o.montage.max_findings = p.montage_findings as usize;
        Ok(o)
    }
}

/// The rendered page and what it holds.
#[derive(Debug, Clone)]
pub struct Page {
    /// The HTML document.
    pub html: String,
    /// Embedded images.
    pub images: usize,
    /// Notes about missing or unreadable data.
    pub notes: usize,
    /// Section ids, in page order.
    pub sections: Vec<&'static str>,
}

/// Builds the QC page from upstream outputs (any subset of [`INPUT_KINDS`]).
pub fn build_page(stages: &[StageInput], o: &ReportOptions) -> Page {
    let inputs = Inputs::new(stages);
    let sections = vec![
        Section {
            id: "counts",
            title: "Counts per stage",
            content: sections::counts(&inputs),
        },
        Section {
            id: "rejects",
            title: "Rejects by reason",
            content: sections::rejects(&inputs),
        },
        Section {
            id: "labels",
            title: "Label prevalence",
            content: sections::labels(&inputs),
        },
        Section {
            id: "montage",
            title: "Volumes and their findings",
            content: montage::section(&inputs, &o.montage),
        },
        Section {
            id: "graph",
            title: "Cross-patient graph",
            content: sections::graph(&inputs),
        },
        Section {
            id: "losses",
            title: "Training losses",
            content: sections::losses(&inputs),
        },
        Section {
            id: "eval",
            title: "Evaluation",
            content: sections::eval(&inputs),
        },
    ];
    let names: Vec<String> = inputs
        .all()
        .iter()
        .map(|s| {
            if s.name == s.kind {
                s.name.clone()
            } else {
                format!("{} ({})", s.name, s.kind)
            }
        })
        .collect();
    let intro = if names.is_empty() {
        "Quality control of an mg3d pipeline run. This stage has no inputs.".to_string()
    } else {
        format!(
            "Quality control of an mg3d pipeline run, from the outputs of: {}.",
            names.join(", ")
        )
    };
    let html = page("mg3d QC report", &intro, &sections);
    Page {
        images: sections.iter().map(|s| s.content.images).sum(),
        notes: sections.iter().map(|s| s.content.notes).sum(),
        sections: sections.iter().map(|s| s.id).collect(),
        html,
    }
}

impl Stage for QcStage {
    fn kind(&self) -> &'static str {
        "qc"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn describe(&self) -> &'static str {
        "QC page (qc/index.html): counts, rejects, label prevalence, slice montage with findings, graph degrees, loss curves, evaluation"
    }
    fn params(&self) -> Vec<ParamDef> {
        QcParams::defs()
    }
    fn inputs(&self) -> Vec<InputDecl> {
        INPUT_KINDS
            .iter()
            .map(|&kind| InputDecl {
                kind,
                required: false,
            })
            .collect()
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: QcParams = ctx.params.parse()?;
        let o = ReportOptions::from_params(&p)?;
        let page = build_page(&ctx.inputs, &o);
        ctx.check_cancelled()?;
        let path = ctx.out_dir.join(PAGE);
        std::fs::create_dir_all(path.parent().expect("qc/"))?;
        std::fs::write(&path, page.html.as_bytes()).map_err(|e| StageError::ctx(PAGE, e))?;
        Ok(json!({
            "page": PAGE,
            "bytes": page.html.len(),
            "images": page.images,
            "notes": page.notes,
        }))
    }
}
