//! The `reports` stage: CT-RATE report CSVs (or CSV/JSONL with a column mapping) into
//! `reports.parquet`, `sections.parquet`, `sentences.parquet`, `clauses.parquet` and
//! `rejects.parquet`. Malformed rows, non-UTF-8 bytes, empty reports and duplicate ids are rejects
//! with reasons; a bad row never stops the run.

use std::collections::BTreeMap;
use std::path::Path;

use mg3d_core::rows::{ClausesRow, RejectsRow, ReportsRow, SectionsRow, SentencesRow};
use mg3d_core::stage::{ParamDef, Stage, StageContext, StageError};
use mg3d_core::table::write_rows;
use serde_json::{Value, json};

use crate::ReportError;
use crate::text::{clauses, sentences};

/// Section names in report order.
pub const SECTIONS: [&str; 4] = ["clinical", "technique", "findings", "impression"];

/// Stage kind `reports`.
pub struct ReportsStage;

mg3d_core::stage_params! {
    /// The parameters of the stage, declared once: `mg3d stages` lists them from here.
    pub(crate) struct ReportsParams {
        /// report files (.csv or .jsonl); @stage/path = an input's output
        files: Vec<String> = json!([]),
        /// column holding the report id that volumes join on
        id_column: String = json!("VolumeName"),
        /// section -> column (CT-RATE defaults)
        section_columns: BTreeMap<String, String> = json!({"clinical": "ClinicalInformation_EN", "technique": "Technique_EN", "findings": "Findings_EN", "impression": "Impressions_EN"}),
        /// texts that mean an empty section
        empty_markers: Vec<String> = json!(["Not given.", "Not given", "N/A"]),
        /// CTRG-Chest annotation JSON files: report = findings, result = impression, keyed as
        /// ingest keys the volume; an id listed again (val = test in the released files) is
        /// read once and reported
        ctrg_annotations: Vec<String> = json!([]),
    }
}

/// One parsed report.
#[derive(Debug, Clone)]
pub struct Report {
    /// Source id (e.g. VolumeName).
    pub key: String,
    /// Source label (files[i]).
    pub source: String,
    /// Data row (1-based).
    pub row: i64,
    /// Section name -> text (empty sections absent).
    pub sections: BTreeMap<&'static str, String>,
}

/// A rejected row.
#[derive(Debug, Clone)]
pub struct RowReject {
    /// Source label.
    pub source: String,
    /// Data row (1-based) or 0 for the file.
    pub row: i64,
    /// Id when readable.
    pub key: Option<String>,
    /// Reason code.
    pub reason: &'static str,
    /// Message.
    pub message: String,
}

fn is_empty(s: &str, markers: &[String]) -> bool {
    let t = s.trim();
    t.is_empty() || markers.iter().any(|m| m.eq_ignore_ascii_case(t))
}

/// A data row: its number and its fields, or why it cannot be read.
type RawRow = (i64, Result<BTreeMap<String, String>, RowReject>);
/// Makes a row's reject: (row, id if known, reason, message).
type RejectFn<'a> = dyn Fn(i64, Option<String>, &'static str, String) -> RowReject + 'a;

/// The rows of a JSONL file (one object per line; non-string values as their JSON text).
fn jsonl_rows(path: &Path, rej: &RejectFn) -> Result<Vec<RawRow>, ReportError> {
    let mut rows: Vec<RawRow> = Vec::new();
    let bytes = std::fs::read(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let n = i as i64 + 1;
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let r = match std::str::from_utf8(line) {
            Err(e) => Err(rej(
                n,
                None,
                "report_not_utf8",
                format!("line {n}: invalid UTF-8 at byte {}", e.valid_up_to()),
            )),
            Ok(s) => match serde_json::from_str::<serde_json::Map<String, Value>>(s) {
                Ok(m) => Ok(m
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k,
                            v.as_str().map(|s| s.to_string()).unwrap_or_else(|| {
                                if v.is_null() {
                                    String::new()
                                } else {
                                    v.to_string()
                                }
                            }),
                        )
                    })
                    .collect()),
                Err(e) => Err(rej(n, None, "report_malformed", format!("line {n}: {e}"))),
            },
        };
        rows.push((n, r));
    }
    Ok(rows)
}

/// The rows of a CSV file, read as bytes so a non-UTF-8 field rejects only its row.
fn csv_rows(path: &Path, id_col: &str, rej: &RejectFn) -> Result<Vec<RawRow>, ReportError> {
    let mut rows: Vec<RawRow> = Vec::new();
    let csv_err = |source| ReportError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(csv_err)?;
    let headers: Vec<String> = rdr
        .byte_headers()
        .map_err(csv_err)?
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim_start_matches('\u{feff}')
                .to_string()
        })
        .collect();
    for (i, rec) in rdr.byte_records().enumerate() {
        let n = i as i64 + 1;
        let r = match rec {
            Err(e) => Err(rej(n, None, "report_malformed", format!("row {n}: {e}"))),
            Ok(rec) if rec.len() != headers.len() => Err(rej(
                n,
                None,
                "report_malformed",
                format!(
                    "row {n}: {} fields, header has {}",
                    rec.len(),
                    headers.len()
                ),
            )),
            Ok(rec) => {
                let mut m = BTreeMap::new();
                let mut err = None;
                for (h, f) in headers.iter().zip(rec.iter()) {
                    match std::str::from_utf8(f) {
                        Ok(s) => {
                            m.insert(h.clone(), s.to_string());
                        }
                        Err(e) => {
                            err = Some(format!(
                                "row {n}, column {h}: invalid UTF-8 at byte {}",
                                e.valid_up_to()
                            ))
                        }
                    }
                }
                match err {
                    Some(msg) => Err(rej(n, m.get(id_col).cloned(), "report_not_utf8", msg)),
                    None => Ok(m),
                }
            }
        };
        rows.push((n, r));
    }
    Ok(rows)
}

/// Reads a CSV (bytes, so non-UTF-8 fields are caught per row) or JSONL file.
pub fn read_reports(
    path: &Path,
    source: &str,
    id_col: &str,
    section_cols: &BTreeMap<String, String>,
    markers: &[String],
) -> Result<(Vec<Report>, Vec<RowReject>), ReportError> {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    let rej = |row: i64, key: Option<String>, reason: &'static str, message: String| RowReject {
        source: source.to_string(),
        row,
        key,
        reason,
        message,
    };
    let jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json");
    let rows = if jsonl {
        jsonl_rows(path, &rej)?
    } else {
        csv_rows(path, id_col, &rej)?
    };
    for (n, r) in rows {
        let m = match r {
            Ok(m) => m,
            Err(e) => {
                bad.push(e);
                continue;
            }
        };
        let Some(key) = m
            .get(id_col)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
        else {
            bad.push(rej(
                n,
                None,
                "report_no_id",
                format!("row {n}: no {id_col}"),
            ));
            continue;
        };
        let mut sections = BTreeMap::new();
        for name in SECTIONS {
            if let Some(col) = section_cols.get(name)
                && let Some(t) = m.get(col)
                && !is_empty(t, markers)
            {
                sections.insert(name, t.clone());
            }
        }
        if !sections.contains_key("findings") && !sections.contains_key("impression") {
            bad.push(rej(
                n,
                Some(key),
                "report_empty",
                format!("row {n}: no findings or impression text"),
            ));
            continue;
        }
        ok.push(Report {
            key,
            source: source.to_string(),
            row: n,
            sections,
        });
    }
    Ok((ok, bad))
}

/// Segmented report: (section, sentence ranges, clause ranges per sentence).
pub type Segmented = Vec<(
    &'static str,
    Vec<(std::ops::Range<usize>, Vec<std::ops::Range<usize>>)>,
)>;

/// Splits every section into sentences and (for findings and impression) clauses.
pub fn segment(r: &Report) -> Segmented {
    SECTIONS
        .iter()
        .filter_map(|&s| r.sections.get(s).map(|t| (s, t)))
        .map(|(s, t)| {
            let sents = sentences(t)
                .into_iter()
                .map(|sr| {
                    let cl = if s == "findings" || s == "impression" {
                        clauses(t, sr.clone())
                    } else {
                        vec![]
                    };
                    (sr, cl)
                })
                .collect();
            (s, sents)
        })
        .collect()
}

impl Stage for ReportsStage {
    fn kind(&self) -> &'static str {
        "reports"
    }
    fn code_version(&self) -> &'static str {
        // 3: a hard line wrap no longer ends a sentence.
        "3"
    }
    fn describe(&self) -> &'static str {
        "report CSV/JSONL -> reports, sections, sentences, clauses (exact byte offsets), rejects"
    }
    fn partitioned(&self) -> bool {
        true
    }
    fn params(&self) -> Vec<ParamDef> {
        ReportsParams::defs()
    }
    fn inputs(&self) -> Vec<mg3d_core::InputDecl> {
        vec![mg3d_core::InputDecl {
            kind: "synth",
            required: false,
        }]
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: ReportsParams = ctx.params.parse()?;
        if let Some(bad) = p
            .section_columns
            .keys()
            .find(|k| !SECTIONS.contains(&k.as_str()))
        {
            return Err(ReportError::UnknownSection(bad.clone()).into());
        }
        let (reports, mut rejects) = read_all(ctx, &p)?;
        let tables = segment_all(ctx, reports, &mut rejects)?;
        if ctx.is_partition() {
            return Ok(Value::Null);
        }
        let (n_reports, n_sent, n_cl) = tables.write(&ctx.out_dir)?;
        let (n, by_reason) = write_rejects(ctx, rejects)?;
        Ok(
            json!({"reports": n_reports, "sentences": n_sent, "clauses": n_cl, "rejects": n, "rejects_by_reason": by_reason}),
        )
    }
}

/// The reports of a CTRG annotation file (`source` names it): each id once, its later listings
/// and entries without text rejected.
fn read_ctrg(
    path: &Path,
    source: &str,
    p: &ReportsParams,
) -> Result<(Vec<Report>, Vec<RowReject>), StageError> {
    use mg3d_core::ctrg::{read_annotation, source_key};
    let (entries, repeats) = read_annotation(path).map_err(StageError::wrap)?;
    let mut bad: Vec<RowReject> = repeats
        .iter()
        .map(|r| {
            let (reason, message) = r.reject();
            RowReject {
                source: source.to_string(),
                row: r.entry.position as i64 + 1,
                key: Some(source_key(&r.entry.id)),
                reason,
                message,
            }
        })
        .collect();
    let mut ok = Vec::new();
    for e in entries {
        let row = e.position as i64 + 1;
        let sections: BTreeMap<&'static str, String> =
            [("findings", e.report), ("impression", e.result)]
                .into_iter()
                .filter(|(_, t)| !is_empty(t, &p.empty_markers))
                .collect();
        let key = source_key(&e.id);
        if sections.is_empty() {
            bad.push(RowReject {
                source: source.to_string(),
                row,
                key: Some(key),
                reason: "report_empty",
                message: format!("entry {row}: no report or result text"),
            });
        } else {
            ok.push(Report {
                key,
                source: source.to_string(),
                row,
                sections,
            });
        }
    }
    Ok((ok, bad))
}

/// Every row of every file: the reports, and the rows rejected (unreadable, no id, empty, and
/// every row of a duplicated id, since which text is right is unknowable), sorted by id.
fn read_all(
    ctx: &StageContext,
    p: &ReportsParams,
) -> Result<(Vec<Report>, Vec<RowReject>), StageError> {
    let mut reports = Vec::new();
    let mut rejects = Vec::new();
    for (i, f) in p.files.iter().enumerate() {
        let path = ctx.resolve(f)?;
        let (ok, bad) = read_reports(
            &path,
            &format!("files[{i}]"),
            &p.id_column,
            &p.section_columns,
            &p.empty_markers,
        )?;
        reports.extend(ok);
        rejects.extend(bad);
    }
    for (i, f) in p.ctrg_annotations.iter().enumerate() {
        let (ok, bad) = read_ctrg(&ctx.resolve(f)?, &format!("ctrg_annotations[{i}]"), p)?;
        reports.extend(ok);
        rejects.extend(bad);
    }
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for r in &reports {
        *count.entry(r.key.clone()).or_default() += 1;
    }
    let (dups, mut reports): (Vec<Report>, Vec<Report>) =
        reports.into_iter().partition(|r| count[&r.key] > 1);
    for r in dups {
        rejects.push(RowReject {
            source: r.source.clone(),
            row: r.row,
            key: Some(r.key.clone()),
            reason: "report_duplicate_id",
            message: format!("row {}: id appears {} times", r.row, count[&r.key]),
        });
    }
    reports.sort_by(|a, b| a.key.cmp(&b.key));
    Ok((reports, rejects))
}

/// Each report with its sentences and clauses, one item of the store per report (keyed by its
/// pseudonym, digest of its row and text). One report's failure is that report's reject, never
/// the stage's; the panic's message is dropped because it may quote the report.
fn segment_all(
    ctx: &StageContext,
    reports: Vec<Report>,
    rejects: &mut Vec<RowReject>,
) -> Result<TextTables, StageError> {
    // Each report with its pseudonym, the id of its item.
    let named: Vec<(String, &Report)> = reports
        .iter()
        .map(|r| (ctx.pseudonym("report", &r.key), r))
        .collect();
    let segmented: Vec<Option<Option<TextTables>>> = ctx.map_items(
        &named,
        "reports",
        |(id, r)| {
            let mut h = blake3::Hasher::new();
            for part in [r.source.as_str(), &r.row.to_string()]
                .into_iter()
                .chain(r.sections.iter().flat_map(|(k, v)| [*k, v.as_str()]))
            {
                h.update(part.as_bytes());
                h.update(&[0]);
            }
            (id.clone(), h.finalize().to_hex().to_string())
        },
        |(id, r)| {
            Ok(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut t = TextTables::default();
                t.add(id.clone(), r, &segment(r));
                t
            }))
            .ok())
        },
    )?;
    let mut parts = Vec::with_capacity(segmented.len());
    for (r, seg) in reports.into_iter().zip(segmented) {
        match seg {
            None => {}
            Some(Some(t)) => parts.push(t),
            Some(None) => rejects.push(RowReject {
                source: r.source.clone(),
                row: r.row,
                key: Some(r.key.clone()),
                reason: "report_internal_error",
                message: format!(
                    "row {}: segmenting this report hit an internal error (a bug in mg3d; please report it)",
                    r.row
                ),
            }),
        }
    }
    Ok(TextTables::concat(parts))
}

/// The rows of reports.parquet, sections.parquet, sentences.parquet and clauses.parquet, filled
/// report by report (one report's rows are an item of the store).
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct TextTables {
    reports: Vec<ReportsRow>,
    sections: Vec<SectionsRow>,
    sentences: Vec<SentencesRow>,
    clauses: Vec<ClausesRow>,
}

impl TextTables {
    /// The rows of all `parts`, in order (each table sized once: growing 170K rows by doubling
    /// cost more than segmenting them).
    fn concat(parts: Vec<TextTables>) -> TextTables {
        let n = |f: fn(&TextTables) -> usize| parts.iter().map(f).sum::<usize>();
        let mut all = TextTables {
            reports: Vec::with_capacity(n(|t| t.reports.len())),
            sections: Vec::with_capacity(n(|t| t.sections.len())),
            sentences: Vec::with_capacity(n(|t| t.sentences.len())),
            clauses: Vec::with_capacity(n(|t| t.clauses.len())),
        };
        for t in parts {
            all.reports.extend(t.reports);
            all.sections.extend(t.sections);
            all.sentences.extend(t.sentences);
            all.clauses.extend(t.clauses);
        }
        all
    }

    /// Adds one report (pseudonym `id`) with its sections, sentences and clauses.
    fn add(&mut self, id: String, r: &Report, seg: &Segmented) {
        let (mut ns, mut nc) = (0i32, 0i32);
        for (sec, sents) in seg {
            let text = &r.sections[sec];
            self.sections.push(SectionsRow {
                report_id: id.clone(),
                section: sec.to_string(),
                text: text.clone(),
            });
            for (sr, cls) in sents {
                self.sentences.push(SentencesRow {
                    report_id: id.clone(),
                    section: sec.to_string(),
                    sent_idx: ns,
                    char_start: sr.start as i32,
                    char_end: sr.end as i32,
                    text: text[sr.clone()].to_string(),
                });
                for c in cls {
                    self.clauses.push(ClausesRow {
                        report_id: id.clone(),
                        section: sec.to_string(),
                        sent_idx: ns,
                        clause_idx: nc,
                        char_start: c.start as i32,
                        char_end: c.end as i32,
                        text: text[c.clone()].to_string(),
                    });
                    nc += 1;
                }
                ns += 1;
            }
        }
        let joined: Vec<&str> = SECTIONS
            .iter()
            .map(|s| r.sections.get(s).map(|t| t.as_str()).unwrap_or(""))
            .collect();
        let chars = |s: &str| r.sections.get(s).map(|t| t.len()).unwrap_or(0) as i32;
        self.reports.push(ReportsRow {
            // The source id itself never leaves the stage: report_key is its pseudonym, the same
            // one ingest gives volumes.report_key, so the two still join.
            report_key: id.clone(),
            report_id: id,
            source: r.source.clone(),
            row: r.row,
            n_sections: r.sections.len() as i32,
            n_sentences: ns,
            n_clauses: nc,
            findings_chars: chars("findings"),
            impression_chars: chars("impression"),
            text_sha256: blake3::hash(joined.join("\n").as_bytes())
                .to_hex()
                .to_string(),
        });
    }

    /// Writes the four tables; returns the numbers of reports, sentences and clauses.
    fn write(self, out: &Path) -> Result<(usize, usize, usize), StageError> {
        let counts = (self.reports.len(), self.sentences.len(), self.clauses.len());
        // Each table is dropped once written, so the next one's Arrow copy fits where it was.
        let TextTables {
            reports,
            sections,
            sentences,
            clauses,
        } = self;
        write_rows(&out.join("reports.parquet"), &reports)?;
        drop(reports);
        write_rows(&out.join("sections.parquet"), &sections)?;
        drop(sections);
        write_rows(&out.join("sentences.parquet"), &sentences)?;
        drop(sentences);
        write_rows(&out.join("clauses.parquet"), &clauses)?;
        Ok(counts)
    }
}

/// rejects.parquet, sorted; a report is named by its pseudonym, never its source id. Returns the
/// count and the count per reason.
fn write_rejects(
    ctx: &StageContext,
    mut rejects: Vec<RowReject>,
) -> Result<(usize, BTreeMap<&'static str, usize>), StageError> {
    rejects.sort_by(|a, b| (&a.source, a.row, a.reason).cmp(&(&b.source, b.row, b.reason)));
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rejects {
        *by_reason.entry(r.reason).or_default() += 1;
    }
    let rows: Vec<RejectsRow> = rejects
        .iter()
        .map(|r| RejectsRow {
            stage: "reports".into(),
            source_root: r.source.clone(),
            path: format!("row {}", r.row),
            path_ref: ctx.pseudonym("path", &format!("{}/row {}", r.source, r.row)),
            level: "row".into(),
            n_files: 1,
            reason: r.reason.to_string(),
            message: match &r.key {
                Some(k) => format!("{} (report {})", r.message, ctx.pseudonym("report", k)),
                None => r.message.clone(),
            },
        })
        .collect();
    write_rows(&ctx.out_dir.join("rejects.parquet"), &rows)?;
    Ok((rows.len(), by_reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_with_a_column_mapping_and_bad_rows() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.jsonl");
        std::fs::write(
            &p,
            b"{\"acc\": \"A1\", \"body\": \"No effusion. Small nodule.\", \"imp\": \"Nodule.\"}\n\
              {\"acc\": \"A2\", \"body\": \"N/A\"}\n\
              {broken\n\
              {\"acc\": \"A3\", \"body\": \"Bad \xff byte.\"}\n",
        )
        .unwrap();
        let cols: BTreeMap<String, String> = [
            ("findings".to_string(), "body".to_string()),
            ("impression".to_string(), "imp".to_string()),
        ]
        .into();
        let (ok, bad) = read_reports(&p, "files[0]", "acc", &cols, &["N/A".to_string()]).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].key, "A1");
        assert_eq!(ok[0].sections["impression"], "Nodule.");
        let reasons: Vec<&str> = bad.iter().map(|b| b.reason).collect();
        assert_eq!(
            reasons,
            ["report_empty", "report_malformed", "report_not_utf8"]
        );
    }
}
