//! The `curate` stage: view -> policies and rules -> corpus.parquet, excluded.parquet and the
//! corpus card (corpus_card.md + corpus_card.json).

use std::collections::BTreeMap;
use std::path::Path;

use mg3d_core::ids::{SPLITS, split_of};
use mg3d_core::labels::CT_RATE_LABELS;
use mg3d_core::rows::{CorpusRow, ExcludedRow};
use mg3d_core::stage::{InputDecl, ParamDef, Params, Stage, StageContext, StageError};
use mg3d_core::table::write_rows;
use polars::prelude::*;
use serde_json::{Value, json};

use crate::CurateError;
use crate::select::{Policies, Reconstruction, Selection, check_rules, select};
use crate::view::{ViewInputs, build_view, label_column, view_columns};

/// The `curate` stage.
pub struct CurateStage;

mg3d_core::stage_params! {
    /// The parameters of the stage, declared once: `mg3d stages` lists them from here.
    pub(crate) struct CurateParams {
        /// SQL boolean expressions over the curate view, applied in order (null = excluded)
        rules: Vec<String> = json!([]),
        /// exclude reports without a volume
        require_volume: bool = json!(true),
        /// exclude volumes without a report
        require_report: bool = json!(true),
        /// minimum findings + impression characters (0 = off)
        min_report_chars: i64 = json!(0),
        /// exclude volumes with the same voxel content hash as a lower volume id
        dedupe_volumes: bool = json!(true),
        /// exclude reports with the same text as a lower report id
        dedupe_reports: bool = json!(true),
        /// one reconstruction per study: all | thinnest | first
        reconstruction: String = json!("all"),
        /// train, val, test ratios of the by-patient split (seeded by the pipeline seed)
        split_ratios: Vec<f64> = json!([0.8, 0.1, 0.1]),
    }
}

impl CurateParams {
    fn policies(&self) -> Result<Policies, CurateError> {
        Ok(Policies {
            require_volume: self.require_volume,
            require_report: self.require_report,
            min_report_chars: self.min_report_chars,
            dedupe_volumes: self.dedupe_volumes,
            dedupe_reports: self.dedupe_reports,
            reconstruction: Reconstruction::parse(&self.reconstruction)?,
        })
    }
    fn ratios(&self) -> Result<[f64; 3], CurateError> {
        match self.split_ratios.as_slice() {
            [a, b, c] if *a >= 0.0 && *b >= 0.0 && *c >= 0.0 && a + b + c > 0.0 => Ok([*a, *b, *c]),
            _ => Err(CurateError::Params(
                "split_ratios must be three non-negative numbers [train, val, test]".into(),
            )),
        }
    }
}

fn strs(df: &DataFrame, name: &str) -> Result<Vec<Option<String>>, StageError> {
    Ok(crate::select::str_col(df, name)?)
}

fn f64s(df: &DataFrame, name: &str) -> Result<Vec<Option<f64>>, StageError> {
    Ok(crate::select::f64_col(df, name)?)
}

fn histogram(values: &[f64], edges: &[f64], unit: &str) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    let mut lo = f64::NEG_INFINITY;
    for &e in edges {
        let c = values.iter().filter(|&&v| v > lo && v <= e).count();
        let name = if lo.is_infinite() {
            format!("<= {e} {unit}")
        } else {
            format!("({lo}, {e}] {unit}")
        };
        out.push((name, c));
        lo = e;
    }
    out.push((
        format!("> {lo} {unit}"),
        values.iter().filter(|&&v| v > lo).count(),
    ));
    out
}

fn bar(n: usize, max: usize) -> String {
    let w = if max == 0 { 0 } else { (n * 30).div_ceil(max) };
    "#".repeat(w)
}

/// Per CT-RATE label, how many selected pairs have it present, absent, uncertain or unmentioned.
fn label_prevalence(view: &DataFrame, rows: &[usize]) -> Result<Vec<Value>, StageError> {
    let mut prevalence = Vec::new();
    for l in CT_RATE_LABELS {
        let vals = f64s(view, &label_column(l))?;
        let (mut pos, mut neg, mut unc, mut none) = (0, 0, 0, 0);
        for &r in rows {
            match vals[r] {
                Some(1.0) => pos += 1,
                Some(0.0) => neg += 1,
                Some(_) => unc += 1,
                None => none += 1,
            }
        }
        prevalence.push(json!({"label": l, "present": pos, "absent": neg, "uncertain": unc, "not_mentioned": none}));
    }
    Ok(prevalence)
}

/// excluded.parquet: each excluded row with the rule that excluded it. `ids` are the view's
/// patient, study, volume and report id columns.
fn write_excluded(
    out: &Path,
    sel: &Selection,
    ids: [&[Option<String>]; 4],
) -> Result<(), StageError> {
    let [pid, sid, vid, rid] = ids;
    let rows: Vec<ExcludedRow> = sel
        .excluded
        .iter()
        .map(|e| ExcludedRow {
            patient_id: pid[e.row].clone(),
            study_id: sid[e.row].clone(),
            volume_id: vid[e.row].clone(),
            report_id: rid[e.row].clone(),
            rule_index: e.rule_index as i32,
            rule: e.rule.clone(),
            detail: e.detail.clone(),
        })
        .collect();
    write_rows(&out.join("excluded.parquet"), &rows)?;
    Ok(())
}

/// The corpus card as Markdown (the same facts as corpus_card.json).
#[allow(clippy::too_many_arguments)]
fn card_markdown(
    card: &Value,
    sel: &Selection,
    p: &CurateParams,
    seed: u64,
    ratios: &[f64; 3],
    split_sizes: &BTreeMap<&str, Value>,
    prevalence: &[Value],
    hists: [(&str, &Vec<(String, usize)>); 2],
) -> String {
    let corpus_key = card["corpus_key"].as_str().unwrap_or("");
    let mut md = String::new();
    md.push_str("# Corpus card\n\n");
    md.push_str(&format!(
        "Corpus key `{corpus_key}`: {} volume–report pairs from {} patients.\n\n",
        card["selected_pairs"], card["selected_patients"]
    ));
    md.push_str("## Sources\n\n| input | table | blake3 | bytes |\n|---|---|---|---|\n");
    if let Some(obj) = card["sources"].as_object() {
        for (k, v) in obj {
            md.push_str(&format!(
                "| {} | {} | `{}` | {} |\n",
                v["stage"].as_str().unwrap_or(""),
                k,
                v["blake3"].as_str().unwrap_or(""),
                v["bytes"]
            ));
        }
    }
    md.push_str("\n## Selection, in order\n\n| # | rule | remaining |\n|---|---|---|\n");
    for (i, (r, n)) in sel.counts.iter().enumerate() {
        md.push_str(&format!("| {i} | `{r}` | {n} |\n"));
    }
    md.push_str(&format!(
        "\nSQL rules (polars SQL over the view documented in docs/ARCHITECTURE.md): {}\n",
        if p.rules.is_empty() {
            "none".to_string()
        } else {
            p.rules
                .iter()
                .map(|r| format!("`{r}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    md.push_str(&format!(
        "\n## Splits (by patient, seed {seed}, ratios {ratios:?})\n\n| split | pairs | patients |\n|---|---|---|\n"
    ));
    for s in SPLITS {
        md.push_str(&format!(
            "| {s} | {} | {} |\n",
            split_sizes[s]["pairs"], split_sizes[s]["patients"]
        ));
    }
    md.push_str("\n## Label prevalence (selected pairs)\n\n| label | present | absent | uncertain | not mentioned |\n|---|---|---|---|---|\n");
    for v in prevalence {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            v["label"].as_str().unwrap_or(""),
            v["present"],
            v["absent"],
            v["uncertain"],
            v["not_mentioned"]
        ));
    }
    for (title, h) in hists {
        let max = h.iter().map(|x| x.1).max().unwrap_or(0);
        md.push_str(&format!("\n## {title}\n\n```\n"));
        for (b, c) in h {
            md.push_str(&format!("{b:>22} {c:>6} {}\n", bar(*c, max)));
        }
        md.push_str("```\n");
    }
    md
}

/// Writes the outputs for a selection. Returns the card as JSON.
#[allow(clippy::too_many_arguments)]
fn write_outputs(
    out: &Path,
    view: &DataFrame,
    sel: &Selection,
    p: &CurateParams,
    seed: u64,
    sources: Value,
    corpus_key: &str,
) -> Result<Value, StageError> {
    let (pid, sid, vid, rid, key) = (
        strs(view, "patient_id")?,
        strs(view, "study_id")?,
        strs(view, "volume_id")?,
        strs(view, "report_id")?,
        strs(view, "report_key")?,
    );
    let spacing = f64s(view, "slice_spacing_mm")?;
    let dim_k = f64s(view, "dim_k")?;
    let ratios = p.ratios()?;
    let rows = &sel.selected;
    let text = |v: &[Option<String>], r: usize| v[r].clone().unwrap_or_default();
    let corpus: Vec<CorpusRow> = rows
        .iter()
        .map(|&r| CorpusRow {
            patient_id: text(&pid, r),
            study_id: text(&sid, r),
            volume_id: text(&vid, r),
            report_id: text(&rid, r),
            report_key: text(&key, r),
            split: split_of(seed, ratios, &text(&pid, r)).to_string(),
            slice_spacing_mm: spacing[r],
        })
        .collect();
    write_rows(&out.join("corpus.parquet"), &corpus)?;
    write_excluded(out, sel, [&pid, &sid, &vid, &rid])?;
    let ex = &sel.excluded;

    // The card.
    let mut by_rule: BTreeMap<&str, usize> = BTreeMap::new();
    for e in ex {
        *by_rule.entry(e.rule.as_str()).or_default() += 1;
    }
    let prevalence = label_prevalence(view, rows)?;
    let mut split_sizes = BTreeMap::new();
    for s in SPLITS {
        let in_split = || corpus.iter().filter(|c| c.split == s);
        let pairs = in_split().count();
        let mut pats: Vec<&String> = in_split().map(|c| &c.patient_id).collect();
        pats.sort();
        pats.dedup();
        split_sizes.insert(s, json!({"pairs": pairs, "patients": pats.len()}));
    }
    let sp: Vec<f64> = rows.iter().filter_map(|&r| spacing[r]).collect();
    let dk: Vec<f64> = rows.iter().filter_map(|&r| dim_k[r]).collect();
    let spacing_hist = histogram(&sp, &[0.75, 1.0, 1.5, 2.5, 5.0], "mm");
    let slices_hist = histogram(&dk, &[64.0, 128.0, 256.0, 512.0], "slices");
    let mut uniq: Vec<&String> = corpus.iter().map(|c| &c.patient_id).collect();
    uniq.sort();
    uniq.dedup();
    let card = json!({
        "corpus_key": corpus_key,
        "sources": sources,
        "rules": p.rules,
        "policies": {
            "require_volume": p.require_volume,
            "require_report": p.require_report,
            "min_report_chars": p.min_report_chars,
            "dedupe_volumes": p.dedupe_volumes,
            "dedupe_reports": p.dedupe_reports,
            "reconstruction": p.reconstruction,
        },
        "counts_after_each_rule": sel.counts.iter().map(|(r, n)| json!({"rule": r, "remaining": n})).collect::<Vec<_>>(),
        "excluded_by_rule": by_rule,
        "selected_pairs": rows.len(),
        "selected_patients": uniq.len(),
        "split_ratios": ratios,
        "split_seed": seed,
        "splits": split_sizes,
        "label_prevalence": prevalence,
        "slice_spacing_histogram": spacing_hist.iter().map(|(b, c)| json!({"bin": b, "count": c})).collect::<Vec<_>>(),
        "slices_histogram": slices_hist.iter().map(|(b, c)| json!({"bin": b, "count": c})).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&card).map_err(|e| StageError::ctx("card", e))?;
    std::fs::write(out.join("corpus_card.json"), text + "\n")?;

    let md = card_markdown(
        &card,
        sel,
        p,
        seed,
        &ratios,
        &split_sizes,
        &prevalence,
        [
            ("Slice spacing", &spacing_hist),
            ("Slices per volume", &slices_hist),
        ],
    );
    std::fs::write(out.join("corpus_card.md"), md)?;
    Ok(card)
}

impl Stage for CurateStage {
    fn kind(&self) -> &'static str {
        "curate"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn describe(&self) -> &'static str {
        "select volume–report pairs by SQL rules and policies -> corpus.parquet, excluded.parquet, corpus card"
    }
    fn params(&self) -> Vec<ParamDef> {
        CurateParams::defs()
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![
            InputDecl {
                kind: "ingest",
                required: true,
            },
            InputDecl {
                kind: "reports",
                required: true,
            },
            InputDecl {
                kind: "preprocess",
                required: false,
            },
            InputDecl {
                kind: "entities",
                required: false,
            },
        ]
    }
    fn uses_seed(&self) -> bool {
        true
    }
    fn check_params(&self, params: &Params) -> Result<(), StageError> {
        let p: CurateParams = params.parse()?;
        p.policies()?;
        p.ratios()?;
        let valid: Vec<String> = view_columns().into_iter().map(|(n, _)| n).collect();
        Ok(check_rules(&p.rules, &valid)?)
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: CurateParams = ctx.params.parse()?;
        let pol = p.policies()?;
        let ingest = ctx.input("ingest")?;
        let reports = ctx.input("reports")?;
        let preprocess = ctx.input("preprocess").ok();
        let entities = ctx.input("entities").ok();
        let view = build_view(&ViewInputs {
            ingest,
            reports,
            preprocess,
            entities,
        })?
        .collect()
        .map_err(CurateError::View)?;
        let sel = select(&view, &p.rules, &pol)?;
        // Sources: every table the view read, by content.
        let mut sources = serde_json::Map::new();
        let mut key = blake3::Hasher::new();
        key.update(ctx.params.canonical().as_bytes());
        key.update(&ctx.seed.to_le_bytes());
        let mut tables: Vec<(&str, &Path, &str)> = vec![
            ("ingest", ingest, "volumes.parquet"),
            ("reports", reports, "reports.parquet"),
        ];
        if let Some(d) = preprocess {
            tables.push(("preprocess", d, "preprocessed.parquet"));
        }
        if let Some(d) = entities {
            tables.push(("entities", d, "labels.parquet"));
        }
        for (stage, dir, file) in tables {
            let d = mg3d_core::fsutil::hash_file(&dir.join(file))?;
            key.update(file.as_bytes());
            key.update(d.blake3.as_bytes());
            sources.insert(
                file.to_string(),
                json!({"stage": stage, "blake3": d.blake3, "bytes": d.bytes}),
            );
        }
        let corpus_key = key.finalize().to_hex()[..16].to_string();
        let card = write_outputs(
            &ctx.out_dir,
            &view,
            &sel,
            &p,
            ctx.seed,
            Value::Object(sources),
            &corpus_key,
        )?;
        Ok(json!({
            "candidates": view.height(),
            "selected": sel.selected.len(),
            "excluded": sel.excluded.len(),
            "patients": card["selected_patients"],
        }))
    }
}
