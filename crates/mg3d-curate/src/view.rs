//! The joined view curate rules are written against: one row per candidate volume–report pair
//! (volumes full-outer-joined to reports by report key), with preprocessing facts and the 18
//! CT-RATE labels as columns.

use std::path::Path;

use mg3d_core::labels::CT_RATE_LABELS;
use polars::prelude::*;

use crate::CurateError;

/// Fixed columns of the view and their meaning (labels are added by [`view_columns`]).
pub const FIXED_COLUMNS: &[(&str, &str)] = &[
    (
        "volume_id",
        "volume pseudonym (null for a report without a volume)",
    ),
    ("patient_id", "patient pseudonym"),
    ("study_id", "study pseudonym"),
    (
        "report_key",
        "pseudonym of the source report id (CT-RATE VolumeName) joining volumes and reports",
    ),
    ("source_kind", "dicom | nifti"),
    ("modality", "DICOM modality (CT)"),
    ("n_files", "source files of the volume"),
    ("dim_i", "voxels along i"),
    ("dim_j", "voxels along j"),
    ("dim_k", "voxels along k (slices)"),
    ("spacing_i_mm", "voxel spacing along i (mm)"),
    ("spacing_j_mm", "voxel spacing along j (mm)"),
    (
        "slice_spacing_mm",
        "spacing between slices (mm), from sorted positions",
    ),
    (
        "slice_thickness_mm",
        "DICOM SliceThickness (mm), null when not recorded",
    ),
    ("sex", "patient sex (M/F/O), null when unknown"),
    ("age_bucket", "age bucket, null when unknown"),
    ("manufacturer", "scanner manufacturer"),
    ("kernel", "reconstruction kernel"),
    ("hu_applied", "how HU were obtained (ingest's hu_applied)"),
    ("hu_min", "minimum HU"),
    ("hu_max", "maximum HU"),
    ("volume_hash", "content hash of the HU voxels and geometry"),
    ("n_warnings", "ingest warnings of the volume"),
    (
        "preprocessed",
        "true when the preprocess stage produced the volume",
    ),
    (
        "foreground_fraction",
        "preprocessed body fraction (null without preprocess)",
    ),
    (
        "report_id",
        "report pseudonym (null for a volume without a report)",
    ),
    ("findings_chars", "characters in the findings section"),
    ("impression_chars", "characters in the impression section"),
    ("report_chars", "findings_chars + impression_chars"),
    ("n_sentences", "sentences in the report"),
    (
        "n_clauses",
        "clauses (MG-3D's sentence grain) in the report",
    ),
    ("report_hash", "sha256 of the report text"),
    ("has_volume", "the pair has a volume"),
    ("has_report", "the pair has a report"),
];

/// `label_<snake case>` column name of a CT-RATE label.
pub fn label_column(label: &str) -> String {
    let mut s = String::from("label_");
    for w in label.split_whitespace() {
        if !s.ends_with('_') {
            s.push('_');
        }
        s.push_str(&w.to_lowercase());
    }
    s
}

/// Every column of the view with its meaning.
pub fn view_columns() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = FIXED_COLUMNS
        .iter()
        .map(|(n, m)| (n.to_string(), m.to_string()))
        .collect();
    for l in CT_RATE_LABELS {
        v.push((
            label_column(l),
            format!("{l}: 1 present, 0 absent, -1 uncertain, null not mentioned"),
        ));
    }
    v
}

pub(crate) fn pl(what: impl std::fmt::Display) -> impl Fn(PolarsError) -> CurateError {
    move |e| CurateError::Input(format!("{what}: {e}"))
}

/// Lazily scans a parquet file.
pub fn scan(path: &Path) -> Result<LazyFrame, CurateError> {
    let s = path
        .to_str()
        .ok_or_else(|| CurateError::Input(format!("{}: path is not UTF-8", path.display())))?;
    if !path.is_file() {
        return Err(CurateError::Input(format!(
            "{}: missing; rerun the stage that writes it",
            path.display()
        )));
    }
    LazyFrame::scan_parquet(PlRefPath::from(s), ScanArgsParquet::default())
        .map_err(pl(path.display()))
}

/// Where the view's tables come from.
pub struct ViewInputs<'a> {
    /// ingest output (volumes.parquet).
    pub ingest: &'a Path,
    /// reports output (reports.parquet).
    pub reports: &'a Path,
    /// preprocess output (preprocessed.parquet), optional.
    pub preprocess: Option<&'a Path>,
    /// entities output (labels.parquet), optional.
    pub entities: Option<&'a Path>,
}

/// Builds the view, sorted by (volume_id, report_id) with nulls last, so row order is stable.
pub fn build_view(inp: &ViewInputs) -> Result<LazyFrame, CurateError> {
    let vols = scan(&inp.ingest.join("volumes.parquet"))?.select([
        col("volume_id"),
        col("patient_id"),
        col("study_id"),
        col("report_key"),
        col("source_kind"),
        col("modality"),
        col("n_files"),
        col("dims").arr().get(lit(0), false).alias("dim_i"),
        col("dims").arr().get(lit(1), false).alias("dim_j"),
        col("dims").arr().get(lit(2), false).alias("dim_k"),
        col("spacing_mm")
            .arr()
            .get(lit(0), false)
            .alias("spacing_i_mm"),
        col("spacing_mm")
            .arr()
            .get(lit(1), false)
            .alias("spacing_j_mm"),
        col("spacing_mm")
            .arr()
            .get(lit(2), false)
            .alias("slice_spacing_mm"),
        col("slice_thickness_mm"),
        col("sex"),
        col("age_bucket"),
        col("manufacturer"),
        col("kernel"),
        col("hu_applied"),
        col("hu_min"),
        col("hu_max"),
        col("content_hash").alias("volume_hash"),
        col("warnings")
            .list()
            .len()
            .cast(DataType::Int32)
            .alias("n_warnings"),
        lit(true).alias("has_volume"),
    ]);
    let vols = match inp.preprocess {
        Some(d) => vols.join(
            scan(&d.join("preprocessed.parquet"))?.select([
                col("volume_id").alias("pp_volume_id"),
                lit(true).alias("preprocessed"),
                col("foreground_fraction"),
            ]),
            [col("volume_id")],
            [col("pp_volume_id")],
            JoinArgs::new(JoinType::Left),
        ),
        None => vols.with_columns([
            lit(NULL).cast(DataType::Boolean).alias("preprocessed"),
            lit(NULL)
                .cast(DataType::Float64)
                .alias("foreground_fraction"),
        ]),
    }
    .with_column(col("preprocessed").fill_null(lit(false)));
    let mut reps = scan(&inp.reports.join("reports.parquet"))?.select([
        col("report_id"),
        col("report_key").alias("r_report_key"),
        col("findings_chars"),
        col("impression_chars"),
        (col("findings_chars") + col("impression_chars")).alias("report_chars"),
        col("n_sentences"),
        col("n_clauses"),
        col("text_sha256").alias("report_hash"),
        lit(true).alias("has_report"),
    ]);
    if let Some(d) = inp.entities {
        let labels = scan(&d.join("labels.parquet"))?;
        for l in CT_RATE_LABELS {
            let name = label_column(l);
            let one = labels.clone().filter(col("label").eq(lit(l))).select([
                col("report_id").alias("l_report_id"),
                col("value").alias(name.as_str()),
            ]);
            reps = reps.join(
                one,
                [col("report_id")],
                [col("l_report_id")],
                JoinArgs::new(JoinType::Left),
            );
        }
    } else {
        for l in CT_RATE_LABELS {
            reps = reps.with_column(lit(NULL).cast(DataType::Int32).alias(label_column(l)));
        }
    }
    let joined = vols
        .join(
            reps,
            [col("report_key")],
            [col("r_report_key")],
            JoinArgs::new(JoinType::Full).with_coalesce(JoinCoalesce::CoalesceColumns),
        )
        .with_columns([
            col("has_volume").fill_null(lit(false)),
            col("has_report").fill_null(lit(false)),
        ]);
    let names: Vec<Expr> = view_columns()
        .iter()
        .map(|(n, _)| col(n.as_str()))
        .collect();
    Ok(joined.select(names).sort(
        ["volume_id", "report_id"],
        SortMultipleOptions::default().with_nulls_last(true),
    ))
}
