//! The `entities` stage: entities.parquet, labels.parquet and a CT-RATE-shaped wide label CSV.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Builder, StringBuilder};
use mg3d_core::rows::{ClausesRow, EntitiesRow, LabelsRow, ReportsRow, SectionsRow, SentencesRow};
use mg3d_core::stage::{InputDecl, ParamDef, Params, Stage, StageContext, StageError};
use mg3d_core::table::{Row, TableSchema, TableWriter, read_rows, write_columns};
use serde_json::{Value, json};

use crate::ReportError;
use crate::entities::{
    DEFAULT_ANATOMY, DEFAULT_CONTEXT, DEFAULT_FINDINGS, EntityType, Extractor, aggregate,
};

pub use mg3d_core::labels::CT_RATE_LABELS;

/// The `extractor` column: these rules, version 1.
const EXTRACTOR: &str = "mg3d-rules/1";

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
        std::fs::read_to_string(path).map_err(|source| {
            ReportError::Io {
                path: path.into(),
                source,
            }
            .into()
        })
    }
}

fn extractor(p: &EntitiesParams) -> Result<Extractor, StageError> {
    Ok(Extractor::new(
        &load(&p.findings_lexicon, DEFAULT_FINDINGS)?,
        &load(&p.anatomy_lexicon, DEFAULT_ANATOMY)?,
        &load(&p.context_rules, DEFAULT_CONTEXT)?,
    )?)
}

/// Section texts by report_id, then section.
type SectionTexts = BTreeMap<String, BTreeMap<String, String>>;
/// Section texts, and each report's key.
type Texts = (SectionTexts, BTreeMap<String, String>);

fn load_texts(dir: &Path) -> Result<Texts, StageError> {
    let mut texts = SectionTexts::new();
    for r in read_rows::<SectionsRow>(&dir.join("sections.parquet"))? {
        texts
            .entry(r.report_id)
            .or_default()
            .insert(r.section, r.text);
    }
    let keys = read_rows::<ReportsRow>(&dir.join("reports.parquet"))?
        .into_iter()
        .map(|r| (r.report_id, r.report_key))
        .collect();
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
    let mut sents: BTreeMap<SentKey, SentSpan> = BTreeMap::new();
    for r in read_rows::<SentencesRow>(&dir.join("sentences.parquet"))? {
        if sections.contains(&r.section) {
            sents.insert(
                (r.report_id, r.section, r.sent_idx),
                (r.char_start as usize, r.char_end as usize, vec![]),
            );
        }
    }
    for c in read_rows::<ClausesRow>(&dir.join("clauses.parquet"))? {
        if let Some(s) = sents.get_mut(&(c.report_id, c.section, c.sent_idx)) {
            let base = s.0;
            s.2.push(c.char_start as usize - base..c.char_end as usize - base);
        }
    }
    Ok(sents)
}

/// One report's sentences (of the configured sections) with their spans, in reading order.
type ReportSentences = Vec<(SentKey, SentSpan)>;

/// The sentences grouped by report (in report id order).
fn by_report(sents: BTreeMap<SentKey, SentSpan>) -> Vec<(String, ReportSentences)> {
    let mut out: Vec<(String, ReportSentences)> = Vec::new();
    for (k, v) in sents {
        match out.last_mut() {
            Some((id, list)) if *id == k.0 => list.push((k, v)),
            _ => out.push((k.0.clone(), vec![(k, v)])),
        }
    }
    out
}

/// What one report's entities depend on: its sentences' sections, numbers, spans, clause spans
/// and text.
fn report_digest(texts: &SectionTexts, sents: &ReportSentences) -> String {
    let mut h = blake3::Hasher::new();
    for ((id, sec, si), (a, e, cls)) in sents {
        let text = &texts[id][sec][*a..*e];
        h.update(format!("{sec}|{si}|{a}|{e}|{cls:?}|{}|", text.len()).as_bytes());
        h.update(text.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// The entities of one report's sentences, numbered within the report; `located_at` becomes a
/// report-level entity index.
fn extract_report(
    x: &Extractor,
    texts: &SectionTexts,
    sents: &ReportSentences,
) -> Vec<EntitiesRow> {
    let mut rows: Vec<EntitiesRow> = Vec::new();
    for ((id, sec, si), (a, e, cls)) in sents {
        let text = &texts[id][sec];
        let s = &text[*a..*e];
        // A sentence without clauses is one clause.
        let whole = 0..s.len();
        let cls = if cls.is_empty() {
            std::slice::from_ref(&whole)
        } else {
            cls
        };
        let base = rows.len() as i32;
        for (k, en) in x.extract(s, cls).into_iter().enumerate() {
            rows.push(EntitiesRow {
                report_id: id.clone(),
                section: sec.clone(),
                sent_idx: *si,
                ent_idx: base + k as i32,
                char_start: (a + en.span.start) as i32,
                char_end: (a + en.span.end) as i32,
                surface: s[en.span.clone()].to_string(),
                norm_term: en.norm,
                label: en.label,
                r#type: if en.etype == EntityType::Anatomy {
                    "ANATOMY"
                } else {
                    "OBSERVATION"
                }
                .into(),
                assertion: en.assertion.into(),
                trigger_text: en.trigger,
                historical: en.historical,
                hypothetical: en.hypothetical,
                laterality: en.laterality,
                size_mm: en.size_mm,
                severity: en.severity,
                located_at: en.located_at.map(|i| base + i as i32),
                extractor: EXTRACTOR.into(),
            });
        }
    }
    rows
}

/// entities.parquet from each report's rows, in batches of about `BATCH_ROWS` rows (one batch
/// of all 200K rows of 10,000 reports doubled the stage's memory). Returns the row count.
fn write_entities(
    path: &Path,
    per_report: Vec<Option<Vec<EntitiesRow>>>,
) -> Result<usize, StageError> {
    const BATCH_ROWS: usize = 16 * 1024;
    let mut w = TableWriter::create(path, &TableSchema::get(EntitiesRow::TABLE)?)?;
    let (mut n, mut batch) = (0, Vec::with_capacity(BATCH_ROWS));
    for rows in per_report.into_iter().flatten() {
        n += rows.len();
        batch.extend(rows);
        if batch.len() >= BATCH_ROWS {
            w.write_rows(&batch)?;
            batch.clear();
        }
    }
    w.write_rows(&batch)?;
    w.finish()?;
    Ok(n)
}

/// labels.parquet and predicted_labels.csv: per report and CT-RATE label, the aggregate of its
/// observation mentions (historical and hypothetical ones excluded). Returns the positive reports
/// per label. The columns are built directly (180K rows for 10,000 reports: rows of owned strings
/// through serde_arrow took a fifth of the stage).
fn write_labels<'a>(
    out: &Path,
    rows: impl Iterator<Item = &'a EntitiesRow>,
    keys: &BTreeMap<String, String>,
) -> Result<BTreeMap<&'static str, usize>, StageError> {
    const N: usize = CT_RATE_LABELS.len();
    let mut mentions: HashMap<&str, [Vec<&str>; N]> = HashMap::new();
    for r in rows.filter(|r| r.r#type == "OBSERVATION" && !r.hypothetical) {
        let Some(l) = r.label.as_deref() else {
            continue;
        };
        if let Some(k) = CT_RATE_LABELS.iter().position(|x| *x == l) {
            mentions
                .entry(&r.report_id)
                .or_insert_with(|| std::array::from_fn(|_| Vec::new()))[k]
                .push(&r.assertion);
        }
    }
    let n = keys.len() * N;
    let mut col_id = StringBuilder::with_capacity(n, n * 64);
    let mut col_key = StringBuilder::with_capacity(n, n * 64);
    let mut col_label = StringBuilder::with_capacity(n, n * 24);
    let mut col_value = Int32Builder::with_capacity(n);
    let mut col_mentions = Int32Builder::with_capacity(n);
    let mut col_source = StringBuilder::with_capacity(n, n * 4);
    let mut csv = String::with_capacity(keys.len() * 128);
    csv.push_str("VolumeName");
    for l in CT_RATE_LABELS {
        csv.push(',');
        csv.push_str(l);
    }
    csv.push('\n');
    let mut positives: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, key) in keys {
        csv.push_str(key);
        let of_report = mentions.get(id.as_str());
        for (k, l) in CT_RATE_LABELS.iter().enumerate() {
            let m = of_report.map_or(&[][..], |m| m[k].as_slice());
            let v = aggregate(m);
            if v == Some(1) {
                *positives.entry(l).or_default() += 1;
            }
            col_id.append_value(id);
            col_key.append_value(key);
            col_label.append_value(l);
            col_value.append_option(v);
            col_mentions.append_value(m.len() as i32);
            col_source.append_value("rule");
            csv.push(',');
            if let Some(v) = v {
                csv.push_str(&v.to_string());
            }
        }
        csv.push('\n');
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(col_id.finish()),
        Arc::new(col_key.finish()),
        Arc::new(col_label.finish()),
        Arc::new(col_value.finish()),
        Arc::new(col_mentions.finish()),
        Arc::new(col_source.finish()),
    ];
    write_columns(
        &out.join("labels.parquet"),
        &TableSchema::get(LabelsRow::TABLE)?,
        columns,
    )?;
    std::fs::write(out.join("predicted_labels.csv"), csv)?;
    Ok(positives)
}

impl Stage for EntitiesStage {
    fn kind(&self) -> &'static str {
        "entities"
    }
    fn code_version(&self) -> &'static str {
        // 2: node qualifiers, lemmas, headers, cause hedges, "?" (the lexicons are sources).
        "2"
    }
    fn describe(&self) -> &'static str {
        "lexicon + ConText entities with assertion -> entities.parquet, labels.parquet, labels CSV (CT-RATE shape)"
    }
    fn partitioned(&self) -> bool {
        true
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
        let reports = by_report(load_sentences(dir, &p.sections)?);
        // The lexicons' and rules' content (their paths are params, not what they hold).
        let rules = self.sources_fingerprint(ctx.params)?.unwrap_or_default();
        let per_report = ctx.map_items(
            &reports,
            "reports",
            |(id, sents)| {
                (
                    id.clone(),
                    format!("{rules}|{}", report_digest(&texts, sents)),
                )
            },
            |(_, sents)| Ok(extract_report(&x, &texts, sents)),
        )?;
        if ctx.is_partition() {
            return Ok(Value::Null);
        }
        let rows = || per_report.iter().flatten().flatten();
        let positives = write_labels(&ctx.out_dir, rows(), &keys)?;
        let obs = rows().filter(|r| r.r#type == "OBSERVATION").count();
        let n = write_entities(&ctx.out_dir.join("entities.parquet"), per_report)?;
        Ok(
            json!({"entities": n, "observations": obs, "reports": keys.len(), "positive_reports_by_label": positives}),
        )
    }
}
