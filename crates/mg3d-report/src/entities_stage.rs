//! The `entities` stage: entities.parquet, labels.parquet and a CT-RATE-shaped wide label CSV.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int32Array, RecordBatch, StringArray};
use mg3d_core::stage::{InputDecl, ParamDef, Params, Stage, StageContext, StageError};
use mg3d_core::table::{TableSchema, read_table, write_columns};
use rayon::prelude::*;
use serde_json::{Value, json};

use crate::entities::{
    DEFAULT_ANATOMY, DEFAULT_CONTEXT, DEFAULT_FINDINGS, EntityType, Extractor, aggregate,
};

pub use mg3d_core::labels::CT_RATE_LABELS;

/// Stage kind `entities`.
pub struct EntitiesStage;

mg3d_core::stage_params! {
    /// The parameters of the stage, declared once: `mg3d stages` lists them from here.
    pub(crate) struct EntitiesParams {
        /// findings lexicon TOML (empty = configs/lexicon/findings.toml, built in)
        findings_lexicon: String = json!(""),
        /// anatomy lexicon TOML (empty = configs/lexicon/anatomy.toml)
        anatomy_lexicon: String = json!(""),
        /// ConText rules TOML (empty = configs/context.toml)
        context_rules: String = json!(""),
        /// sections to read
        sections: Vec<String> = json!(["findings", "impression"]),
    }
}

fn load(path: &str, default: &str) -> Result<String, StageError> {
    if path.is_empty() {
        Ok(default.to_string())
    } else {
        std::fs::read_to_string(path).map_err(|e| StageError::ctx(path, e))
    }
}

fn extractor(p: &EntitiesParams) -> Result<Extractor, StageError> {
    Extractor::new(
        &load(&p.findings_lexicon, DEFAULT_FINDINGS)?,
        &load(&p.anatomy_lexicon, DEFAULT_ANATOMY)?,
        &load(&p.context_rules, DEFAULT_CONTEXT)?,
    )
    .map_err(StageError::msg)
}

struct Row {
    report: String,
    section: String,
    sent: i32,
    idx: i32,
    a: i32,
    b: i32,
    surface: String,
    norm: String,
    label: Option<String>,
    etype: &'static str,
    assertion: &'static str,
    trigger: Option<String>,
    historical: bool,
    hypothetical: bool,
    laterality: Option<String>,
    size: Option<f64>,
    severity: Option<String>,
    located_at: Option<i32>,
}

fn col<T: 'static + Clone>(b: &RecordBatch, n: &str) -> T {
    b.column_by_name(n)
        .unwrap()
        .as_any()
        .downcast_ref::<T>()
        .unwrap()
        .clone()
}

fn write(path: &Path, table: &str, cols: Vec<ArrayRef>) -> Result<(), StageError> {
    write_columns(path, &TableSchema::get(table)?, cols)?;
    Ok(())
}

/// Section texts by (report_id, section), and each report's key.
type Texts = (BTreeMap<(String, String), String>, BTreeMap<String, String>);

fn load_texts(dir: &Path) -> Result<Texts, StageError> {
    let mut texts: BTreeMap<(String, String), String> = BTreeMap::new();
    for b in read_table(
        &dir.join("sections.parquet"),
        &TableSchema::get("sections")?,
    )? {
        let (id, sec, t) = (
            col::<StringArray>(&b, "report_id"),
            col::<StringArray>(&b, "section"),
            col::<StringArray>(&b, "text"),
        );
        for r in 0..b.num_rows() {
            texts.insert(
                (id.value(r).to_string(), sec.value(r).to_string()),
                t.value(r).to_string(),
            );
        }
    }
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for b in read_table(&dir.join("reports.parquet"), &TableSchema::get("reports")?)? {
        let (id, k) = (
            col::<StringArray>(&b, "report_id"),
            col::<StringArray>(&b, "report_key"),
        );
        for r in 0..b.num_rows() {
            keys.insert(id.value(r).to_string(), k.value(r).to_string());
        }
    }
    Ok((texts, keys))
}

/// A sentence: (report_id, section, sentence index).
type SentKey = (String, String, i32);
/// A sentence's byte span in its section and its clauses' spans relative to the sentence.
type SentSpan = (usize, usize, Vec<std::ops::Range<usize>>);

/// The sentences of the configured `sections`, with their clauses.
fn load_sentences(
    dir: &Path,
    sections: &[String],
) -> Result<BTreeMap<SentKey, SentSpan>, StageError> {
    let mut sents: BTreeMap<SentKey, (usize, usize, Vec<std::ops::Range<usize>>)> = BTreeMap::new();
    for b in read_table(
        &dir.join("sentences.parquet"),
        &TableSchema::get("sentences")?,
    )? {
        let (id, sec, si, a, e) = (
            col::<StringArray>(&b, "report_id"),
            col::<StringArray>(&b, "section"),
            col::<Int32Array>(&b, "sent_idx"),
            col::<Int32Array>(&b, "char_start"),
            col::<Int32Array>(&b, "char_end"),
        );
        for r in 0..b.num_rows() {
            if sections.iter().any(|s| s == sec.value(r)) {
                sents.insert(
                    (
                        id.value(r).to_string(),
                        sec.value(r).to_string(),
                        si.value(r),
                    ),
                    (a.value(r) as usize, e.value(r) as usize, vec![]),
                );
            }
        }
    }
    for b in read_table(&dir.join("clauses.parquet"), &TableSchema::get("clauses")?)? {
        let (id, sec, si, a, e) = (
            col::<StringArray>(&b, "report_id"),
            col::<StringArray>(&b, "section"),
            col::<Int32Array>(&b, "sent_idx"),
            col::<Int32Array>(&b, "char_start"),
            col::<Int32Array>(&b, "char_end"),
        );
        for r in 0..b.num_rows() {
            if let Some(s) = sents.get_mut(&(
                id.value(r).to_string(),
                sec.value(r).to_string(),
                si.value(r),
            )) {
                let base = s.0;
                s.2.push(a.value(r) as usize - base..e.value(r) as usize - base);
            }
        }
    }
    Ok(sents)
}

/// The entities of every sentence (in parallel), numbered per report; `located_at` becomes a
/// report-level entity index.
fn extract_rows(
    x: &Extractor,
    texts: &BTreeMap<(String, String), String>,
    sents: &BTreeMap<SentKey, SentSpan>,
) -> Vec<Row> {
    let work: Vec<(&SentKey, &SentSpan)> = sents.iter().collect();
    let per_sentence: Vec<Vec<Row>> = work
        .par_iter()
        .map(|((id, sec, si), (a, e, cls))| {
            let text = &texts[&(id.clone(), sec.clone())];
            let s = &text[*a..*e];
            let whole = std::iter::once(0..s.len()).collect::<Vec<_>>();
            let cls = if cls.is_empty() { whole } else { cls.clone() };
            x.extract(s, &cls)
                .into_iter()
                .map(|en| Row {
                    report: id.clone(),
                    section: sec.clone(),
                    sent: *si,
                    idx: 0,
                    a: (a + en.span.start) as i32,
                    b: (a + en.span.end) as i32,
                    surface: s[en.span.clone()].to_string(),
                    norm: en.norm,
                    label: en.label,
                    etype: if en.etype == EntityType::Anatomy {
                        "ANATOMY"
                    } else {
                        "OBSERVATION"
                    },
                    assertion: en.assertion,
                    trigger: en.trigger,
                    historical: en.historical,
                    hypothetical: en.hypothetical,
                    laterality: en.laterality,
                    size: en.size_mm,
                    severity: en.severity,
                    located_at: en.located_at.map(|i| i as i32),
                })
                .collect()
        })
        .collect();
    // Number entities per report; located_at becomes a report-level ent_idx.
    let mut rows: Vec<Row> = Vec::new();
    let mut next: BTreeMap<String, i32> = BTreeMap::new();
    for sent_rows in per_sentence {
        let base = *next
            .get(sent_rows.first().map(|r| r.report.as_str()).unwrap_or(""))
            .unwrap_or(&0);
        let n = sent_rows.len() as i32;
        for (k, mut r) in sent_rows.into_iter().enumerate() {
            r.idx = base + k as i32;
            r.located_at = r.located_at.map(|l| base + l);
            next.insert(r.report.clone(), base + n);
            rows.push(r);
        }
    }
    rows
}

/// entities.parquet.
fn write_entities(out: &Path, rows: &[Row]) -> Result<(), StageError> {
    let s = |f: &dyn Fn(&Row) -> Option<String>| {
        Arc::new(rows.iter().map(f).collect::<StringArray>()) as ArrayRef
    };
    let i = |f: &dyn Fn(&Row) -> Option<i32>| {
        Arc::new(rows.iter().map(f).collect::<Int32Array>()) as ArrayRef
    };
    let bo = |f: &dyn Fn(&Row) -> bool| {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<BooleanArray>()) as ArrayRef
    };
    write(
        &out.join("entities.parquet"),
        "entities",
        vec![
            s(&|r| Some(r.report.clone())),
            s(&|r| Some(r.section.clone())),
            i(&|r| Some(r.sent)),
            i(&|r| Some(r.idx)),
            i(&|r| Some(r.a)),
            i(&|r| Some(r.b)),
            s(&|r| Some(r.surface.clone())),
            s(&|r| Some(r.norm.clone())),
            s(&|r| r.label.clone()),
            s(&|r| Some(r.etype.to_string())),
            s(&|r| Some(r.assertion.to_string())),
            s(&|r| r.trigger.clone()),
            bo(&|r| r.historical),
            bo(&|r| r.hypothetical),
            s(&|r| r.laterality.clone()),
            Arc::new(rows.iter().map(|r| r.size).collect::<Float64Array>()),
            s(&|r| r.severity.clone()),
            i(&|r| r.located_at),
            s(&|_| Some("mg3d-rules/1".to_string())),
        ],
    )?;
    Ok(())
}

/// labels.parquet and predicted_labels.csv: per report and CT-RATE label, the aggregate of its
/// observation mentions (historical and hypothetical ones excluded). Returns the positive reports
/// per label.
fn write_labels(
    out: &Path,
    rows: &[Row],
    keys: &BTreeMap<String, String>,
) -> Result<BTreeMap<&'static str, usize>, StageError> {
    // Labels: aggregate observation assertions per report x label (historical/hypothetical excluded).
    let mut mentions: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.etype == "OBSERVATION" && !r.hypothetical)
    {
        if let Some(l) = &r.label {
            mentions
                .entry((r.report.clone(), l.clone()))
                .or_default()
                .push(r.assertion);
        }
    }
    let (mut l_id, mut l_key, mut l_label, mut l_val, mut l_n) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut csv = String::from("VolumeName");
    for l in CT_RATE_LABELS {
        csv.push(',');
        csv.push_str(l);
    }
    csv.push('\n');
    let mut positives: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, key) in keys {
        csv.push_str(key);
        for l in CT_RATE_LABELS {
            let m = mentions
                .get(&(id.clone(), l.to_string()))
                .cloned()
                .unwrap_or_default();
            let v = aggregate(&m);
            if v == Some(1) {
                *positives.entry(l).or_default() += 1;
            }
            l_id.push(id.clone());
            l_key.push(key.clone());
            l_label.push(l.to_string());
            l_val.push(v);
            l_n.push(m.len() as i32);
            csv.push(',');
            if let Some(v) = v {
                csv.push_str(&v.to_string());
            }
        }
        csv.push('\n');
    }
    let n = l_id.len();
    write(
        &out.join("labels.parquet"),
        "labels",
        vec![
            Arc::new(StringArray::from(l_id)),
            Arc::new(StringArray::from(l_key)),
            Arc::new(StringArray::from(l_label)),
            Arc::new(Int32Array::from(l_val)),
            Arc::new(Int32Array::from(l_n)),
            Arc::new(StringArray::from(vec!["rule"; n])),
        ],
    )?;
    std::fs::write(out.join("predicted_labels.csv"), csv)?;
    Ok(positives)
}

impl Stage for EntitiesStage {
    fn kind(&self) -> &'static str {
        "entities"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn describe(&self) -> &'static str {
        "lexicon + ConText entities with assertion -> entities.parquet, labels.parquet, labels CSV (CT-RATE shape)"
    }
    fn params(&self) -> Vec<ParamDef> {
        EntitiesParams::defs()
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![InputDecl {
            kind: "reports",
            required: true,
        }]
    }
    fn sources_fingerprint(&self, params: &Params) -> Result<Option<String>, StageError> {
        let p: EntitiesParams = params.parse()?;
        let mut h = blake3::Hasher::new();
        for (f, d) in [
            (&p.findings_lexicon, DEFAULT_FINDINGS),
            (&p.anatomy_lexicon, DEFAULT_ANATOMY),
            (&p.context_rules, DEFAULT_CONTEXT),
        ] {
            h.update(load(f, d)?.as_bytes());
        }
        h.update(crate::entities::DEFAULT_MODIFIERS.as_bytes());
        Ok(Some(h.finalize().to_hex().to_string()))
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: EntitiesParams = ctx.params.parse()?;
        let x = extractor(&p)?;
        let dir = ctx.input("reports")?;
        let (texts, keys) = load_texts(dir)?;
        // Sentences with their clauses (relative to the sentence).
        let sents = load_sentences(dir, &p.sections)?;
        let rows = extract_rows(&x, &texts, &sents);
        write_entities(&ctx.out_dir, &rows)?;
        let positives = write_labels(&ctx.out_dir, &rows, &keys)?;
        let obs = rows.iter().filter(|r| r.etype == "OBSERVATION").count();
        Ok(
            json!({"entities": rows.len(), "observations": obs, "reports": keys.len(), "positive_reports_by_label": positives}),
        )
    }
}
