//! Selection: built-in policies and SQL rules applied in order to the view; every candidate that is
//! not selected is excluded by exactly one rule, the first that rejects it.
//!
//! Order: `require_volume`, `require_report`, `min_report_chars`, the pipeline's SQL rules in
//! order, then on what is left `dedupe_volumes`, `dedupe_reports` and `reconstruction`.

use std::collections::BTreeMap;

use polars::prelude::*;
use polars::sql::sql_expr;

use crate::CurateError;
use crate::view::pl;

/// One reconstruction per scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconstruction {
    /// Keep every reconstruction.
    All,
    /// Keep the thinnest (smallest slice spacing; ties: lowest volume id) per study.
    Thinnest,
    /// Keep the lowest volume id per study (stable, arbitrary).
    First,
}

impl Reconstruction {
    /// Parses `all` / `thinnest` / `first`.
    pub fn parse(s: &str) -> Result<Self, CurateError> {
        match s {
            "all" => Ok(Self::All),
            "thinnest" => Ok(Self::Thinnest),
            "first" => Ok(Self::First),
            _ => Err(CurateError::Params(format!(
                "reconstruction must be all, thinnest or first, not {s:?}"
            ))),
        }
    }
}

/// Built-in policies.
#[derive(Debug, Clone)]
pub struct Policies {
    /// Exclude reports without a volume.
    pub require_volume: bool,
    /// Exclude volumes without a report.
    pub require_report: bool,
    /// Minimum findings + impression characters (0 = off).
    pub min_report_chars: i64,
    /// Exclude volumes whose content hash equals an earlier (lower id) volume's.
    pub dedupe_volumes: bool,
    /// Exclude reports whose text equals an earlier (lower id) report's.
    pub dedupe_reports: bool,
    /// One reconstruction per study.
    pub reconstruction: Reconstruction,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            require_volume: true,
            require_report: true,
            min_report_chars: 0,
            dedupe_volumes: true,
            dedupe_reports: true,
            reconstruction: Reconstruction::All,
        }
    }
}

/// Why a row was excluded.
#[derive(Debug, Clone, PartialEq)]
pub struct Exclusion {
    /// Row in the view.
    pub row: usize,
    /// Position of the rule in the applied order.
    pub rule_index: usize,
    /// Rule name (`require_report`, `rule: <sql>`, `dedupe_volumes`, ...).
    pub rule: String,
    /// Detail (e.g. which volume it duplicates).
    pub detail: String,
}

/// The result of applying the rules.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Selected rows, ascending.
    pub selected: Vec<usize>,
    /// Excluded rows with their first excluding rule, by row.
    pub excluded: Vec<Exclusion>,
    /// (rule, rows remaining after it), in order, starting with ("candidates", n).
    pub counts: Vec<(String, usize)>,
}

/// Columns a SQL rule reads; errors when it does not parse.
pub fn rule_columns(rule: &str) -> Result<Vec<String>, CurateError> {
    let e = sql_expr(rule).map_err(|source| CurateError::RuleSyntax {
        rule: rule.to_string(),
        source,
    })?;
    let mut cols: Vec<String> = e
        .meta()
        .root_names()
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    cols.sort();
    cols.dedup();
    Ok(cols)
}

/// Checks that every rule parses and names only columns in `valid`.
pub fn check_rules(rules: &[String], valid: &[String]) -> Result<(), CurateError> {
    for r in rules {
        for c in rule_columns(r)? {
            if !valid.contains(&c) {
                return Err(CurateError::UnknownColumn {
                    rule: r.clone(),
                    column: c,
                    valid: valid.to_vec(),
                });
            }
        }
    }
    Ok(())
}

pub(crate) fn str_col(df: &DataFrame, name: &str) -> Result<Vec<Option<String>>, CurateError> {
    let c = df.column(name).map_err(pl(name))?;
    let c = c.cast(&DataType::String).map_err(pl(name))?;
    Ok(c.str()
        .map_err(pl(name))?
        .iter()
        .map(|o| o.map(str::to_string))
        .collect())
}

pub(crate) fn f64_col(df: &DataFrame, name: &str) -> Result<Vec<Option<f64>>, CurateError> {
    let c = df.column(name).map_err(pl(name))?;
    let c = c.cast(&DataType::Float64).map_err(pl(name))?;
    Ok(c.f64().map_err(pl(name))?.iter().collect())
}

fn bool_col(df: &DataFrame, name: &str) -> Result<Vec<bool>, CurateError> {
    let c = df.column(name).map_err(pl(name))?;
    let c = c.cast(&DataType::Boolean).map_err(pl(name))?;
    Ok(c.bool()
        .map_err(pl(name))?
        .iter()
        .map(|o| o.unwrap_or(false))
        .collect())
}

/// The rows still selected, and the exclusions and counts so far.
struct Sieve {
    alive: Vec<bool>,
    out: Selection,
    rule_index: usize,
}

impl Sieve {
    /// Applies one rule: every selected row for which `exclude` gives a reason is excluded.
    fn apply(&mut self, name: &str, exclude: &dyn Fn(usize) -> Option<String>) {
        for (r, a) in self.alive.iter_mut().enumerate() {
            if *a && let Some(detail) = exclude(r) {
                *a = false;
                self.out.excluded.push(Exclusion {
                    row: r,
                    rule_index: self.rule_index,
                    rule: name.to_string(),
                    detail,
                });
            }
        }
        self.out
            .counts
            .push((name.to_string(), self.alive.iter().filter(|&&a| a).count()));
        self.rule_index += 1;
    }
}

/// Excludes repeated report texts: the same text within one study is one report (CT-RATE
/// repeats a study's report for each reconstruction); across studies, the study of the lowest
/// report id with the text keeps it.
fn dedupe_reports(view: &DataFrame, sv: &mut Sieve) -> Result<(), CurateError> {
    let n = view.height();
    let rep_id = str_col(view, "report_id")?;
    let study = str_col(view, "study_id")?;
    // CT-RATE repeats a study's report for each reconstruction: the same text within one study
    // is one report. Across studies, the study of the lowest report id with the text keeps it.
    let hash = str_col(view, "report_hash")?;
    let group = |r: usize| -> Option<&str> { study[r].as_deref().or(rep_id[r].as_deref()) };
    let mut first: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for r in 0..n {
        if let (true, Some(h), Some(id), Some(g)) = (sv.alive[r], &hash[r], &rep_id[r], group(r)) {
            let e = first.entry(h.as_str()).or_insert((id.as_str(), g));
            if id.as_str() < e.0 {
                *e = (id.as_str(), g);
            }
        }
    }
    sv.apply("dedupe_reports", &|r| {
        let (h, g) = (hash[r].as_deref()?, group(r)?);
        let (keep, keep_group) = first[h];
        (keep_group != g).then(|| format!("same text as report {keep} of another study"))
    });
    Ok(())
}

/// Keeps one reconstruction per study: the thinnest (smallest slice spacing), or the first by
/// volume id.
fn one_reconstruction(
    view: &DataFrame,
    sv: &mut Sieve,
    reconstruction: Reconstruction,
) -> Result<(), CurateError> {
    let n = view.height();
    let vol_id = str_col(view, "volume_id")?;
    let study = str_col(view, "study_id")?;
    let spacing = f64_col(view, "slice_spacing_mm")?;
    // Per study, the winning (spacing or 0, volume id).
    let mut best: BTreeMap<&str, (f64, &str)> = BTreeMap::new();
    for r in 0..n {
        if let (true, Some(s), Some(v)) = (sv.alive[r], &study[r], &vol_id[r]) {
            let key = match reconstruction {
                Reconstruction::Thinnest => spacing[r].unwrap_or(f64::INFINITY),
                _ => 0.0,
            };
            let e = best.entry(s.as_str()).or_insert((key, v.as_str()));
            if (key, v.as_str()) < (e.0, e.1) {
                *e = (key, v.as_str());
            }
        }
    }
    let name = match reconstruction {
        Reconstruction::Thinnest => "reconstruction: thinnest",
        _ => "reconstruction: first",
    };
    sv.apply(name, &|r| {
        let (s, v) = (study[r].as_deref()?, vol_id[r].as_deref()?);
        let (_, keep) = best[s];
        (keep != v).then(|| format!("study keeps volume {keep}"))
    });
    Ok(())
}

/// Applies policies and rules to `view` (a collected view, see [`crate::view`]).
pub fn select(
    view: &DataFrame,
    rules: &[String],
    pol: &Policies,
) -> Result<Selection, CurateError> {
    let n = view.height();
    let valid: Vec<String> = view
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    check_rules(rules, &valid)?;
    let mut sv = Sieve {
        alive: vec![true; n],
        out: Selection {
            counts: vec![("candidates".into(), n)],
            ..Default::default()
        },
        rule_index: 0,
    };
    let has_volume = bool_col(view, "has_volume")?;
    let has_report = bool_col(view, "has_report")?;
    if pol.require_volume {
        sv.apply("require_volume", &|r| {
            (!has_volume[r]).then(|| "report without a volume".to_string())
        });
    }
    if pol.require_report {
        sv.apply("require_report", &|r| {
            (!has_report[r]).then(|| "volume without a report".to_string())
        });
    }
    if pol.min_report_chars > 0 {
        let chars = f64_col(view, "report_chars")?;
        let min = pol.min_report_chars as f64;
        sv.apply("min_report_chars", &|r| match chars[r] {
            Some(c) if c >= min => None,
            Some(c) => Some(format!("{c} characters < {min}")),
            None => Some("no report text".into()),
        });
    }
    if !rules.is_empty() {
        let exprs: Vec<Expr> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                sql_expr(r)
                    .map(|e| e.alias(format!("__rule{i}")))
                    .map_err(|e| CurateError::Rule(format!("rule {r:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let evaluated = view
            .clone()
            .lazy()
            .select(exprs)
            .collect()
            .map_err(|e| CurateError::Rule(format!("evaluating rules: {e}")))?;
        for (i, r) in rules.iter().enumerate() {
            let c = evaluated
                .column(&format!("__rule{i}"))
                .map_err(pl("rule"))?;
            if c.dtype() != &DataType::Boolean {
                return Err(CurateError::Rule(format!(
                    "rule {r:?} must be a boolean expression, it gives {}",
                    c.dtype()
                )));
            }
            let ok: Vec<Option<bool>> = c.bool().map_err(pl("rule"))?.iter().collect();
            sv.apply(&format!("rule: {r}"), &|row| match ok[row] {
                Some(true) => None,
                Some(false) => Some("false".into()),
                None => Some("null (a column it reads is missing for this row)".into()),
            });
        }
    }
    let vol_id = str_col(view, "volume_id")?;
    if pol.dedupe_volumes {
        let hash = str_col(view, "volume_hash")?;
        let mut first: BTreeMap<&str, (&str, usize)> = BTreeMap::new();
        for r in 0..n {
            if let (true, Some(h), Some(v)) = (sv.alive[r], &hash[r], &vol_id[r]) {
                let e = first.entry(h.as_str()).or_insert((v.as_str(), r));
                if v.as_str() < e.0 {
                    *e = (v.as_str(), r);
                }
            }
        }
        sv.apply("dedupe_volumes", &|r| {
            let (h, v) = (hash[r].as_deref()?, vol_id[r].as_deref()?);
            let (keep, _) = first[h];
            (keep != v).then(|| format!("same voxels as volume {keep}"))
        });
    }
    if pol.dedupe_reports {
        dedupe_reports(view, &mut sv)?;
    }
    if pol.reconstruction != Reconstruction::All {
        one_reconstruction(view, &mut sv, pol.reconstruction)?;
    }
    let mut out = sv.out;
    out.selected = (0..n).filter(|&r| sv.alive[r]).collect();
    out.excluded.sort_by_key(|e| e.row);
    Ok(out)
}
