//! CT-RATE-style reports written from the truth, with exact entity spans.
//!
//! Templates live in `configs/synth/reports.toml` (markup described there). Filling a template
//! yields the sentence and, for each `<<span>>`, its byte range and finding, so the entity truth
//! always satisfies `text[start..end] == span`.

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::catalog::Side;
use crate::error::TemplateError;
use crate::phantom::RenderedFinding;

/// The default templates, embedded from `configs/synth/reports.toml`.
pub const DEFAULT_TEMPLATES: &str = include_str!("../../../configs/synth/reports.toml");

/// Templates for one finding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindingTemplates {
    /// Positive statements.
    pub present: Vec<String>,
    /// Hedged statements.
    pub uncertain: Vec<String>,
    /// Negative statements.
    pub absent: Vec<String>,
    /// Impression lines for present findings.
    pub impression: Vec<String>,
}

/// A sentence template over several findings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Combined {
    /// The findings it states.
    pub findings: Vec<String>,
    /// Templates.
    pub templates: Vec<String>,
}

/// The whole template file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Templates {
    /// ClinicalInformation_EN choices.
    pub clinical: Vec<String>,
    /// Technique_EN choices.
    pub technique: Vec<String>,
    /// Impressions when nothing is present.
    pub no_impression: Vec<String>,
    /// Normal statements per region.
    pub normal: BTreeMap<String, Vec<String>>,
    /// Per-finding templates.
    pub findings: BTreeMap<String, FindingTemplates>,
    /// Multi-finding negatives.
    #[serde(default)]
    pub combined_absent: Vec<Combined>,
    /// Multi-finding positives.
    #[serde(default)]
    pub combined_present: Vec<Combined>,
}

impl Templates {
    /// Parses a template file.
    pub fn parse(text: &str) -> Result<Templates, TemplateError> {
        let t: Templates = toml::from_str(text)?;
        for (name, f) in &t.findings {
            if f.present.is_empty()
                || f.absent.is_empty()
                || f.uncertain.is_empty()
                || f.impression.is_empty()
            {
                return Err(TemplateError::Incomplete(name.clone()));
            }
        }
        Ok(t)
    }
}

/// How a report states a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Assertion {
    /// Stated as present.
    Present,
    /// Stated as absent.
    Absent,
    /// Hedged.
    Uncertain,
}

impl Assertion {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Assertion::Present => "present",
            Assertion::Absent => "absent",
            Assertion::Uncertain => "uncertain",
        }
    }
}

/// One entity mention in a report section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EntityTruth {
    /// CT-RATE VolumeName the report belongs to.
    pub volume_name: String,
    /// Report column (Findings_EN, Impressions_EN).
    pub section: String,
    /// Byte offset of the span in the section text.
    pub start: usize,
    /// Byte end (exclusive).
    pub end: usize,
    /// The span text.
    pub text: String,
    /// CT-RATE label.
    pub finding: String,
    /// Region where stated (null for region-free statements).
    pub region: Option<String>,
    /// Assertion.
    pub assertion: Assertion,
}

/// A statement the report will make about one finding.
#[derive(Debug, Clone)]
pub struct Statement {
    /// CT-RATE label.
    pub label: String,
    /// How it is asserted.
    pub assertion: Assertion,
    /// The drawn finding when present or hedged-present.
    pub finding: Option<RenderedFinding>,
}

fn pick<'a>(rng: &mut ChaCha8Rng, v: &'a [String]) -> &'a str {
    &v[rng.random_range(0..v.len())]
}

fn fmt_num(x: f64, decimals: usize) -> String {
    format!("{x:.decimals$}")
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// An entity span in filled text: (start byte, end byte, CT-RATE label).
pub type Span = (usize, usize, String);

/// Fills one template. `findings` maps label -> drawn finding for placeholders; `default` is the
/// template's own finding. Returns the text and (start, end, label) spans.
pub fn fill(
    template: &str,
    default: &str,
    findings: &BTreeMap<String, RenderedFinding>,
) -> Result<(String, Vec<Span>), TemplateError> {
    let markup = |detail: String| TemplateError::Markup {
        template: template.to_string(),
        detail,
    };
    let mut out = String::new();
    let mut spans = Vec::new();
    let mut open: Option<usize> = None;
    let mut rest = template;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("<<") {
            if open.is_some() {
                return Err(markup("nested <<".into()));
            }
            open = Some(out.len());
            rest = r;
        } else if let Some(r) = rest.strip_prefix(">>") {
            let start = open.take().ok_or_else(|| markup("unbalanced >>".into()))?;
            let inner = out[start..].to_string();
            let (text, label) = match inner.rsplit_once('|') {
                Some((t, l)) => (t.to_string(), l.to_string()),
                None => (inner.clone(), default.to_string()),
            };
            out.truncate(start);
            out.push_str(&text);
            spans.push((start, out.len(), label));
            rest = r;
        } else if rest.starts_with('{') {
            let end = rest.find('}').ok_or_else(|| markup("unclosed {".into()))?;
            let ph = &rest[1..end];
            let (name, label) = ph.split_once(':').unwrap_or((ph, default));
            let f = findings.get(label);
            let need = |o: Option<String>| {
                o.ok_or_else(|| markup(format!("placeholder {{{ph}}} has no value for {label:?}")))
            };
            let side = f.and_then(|f| f.side);
            let val = match name {
                "region" => need(f.map(|f| f.region.clone()))?,
                "region_abbr" => need(f.map(|f| f.region_abbr.clone()))?,
                "size_mm" => need(f.and_then(|f| f.size_mm).map(|s| fmt_num(s.round(), 0)))?,
                "size_dec" => need(f.and_then(|f| f.size_mm).map(|s| fmt_num(s, 1)))?,
                "size_cm" => need(f.and_then(|f| f.size_mm).map(|s| fmt_num(s / 10.0, 1)))?,
                "side" => need(side.map(|s| s.word().to_string()))?,
                "side_cap" => need(side.map(|s| capitalize(s.word())))?,
                "side_word" => need(side.map(|s| match s {
                    Side::Bilateral => "both sides".to_string(),
                    s => format!("{} side", s.word()),
                }))?,
                other => return Err(markup(format!("unknown placeholder {other:?}"))),
            };
            out.push_str(&val);
            rest = &rest[end + 1..];
        } else {
            let ch = rest.chars().next().unwrap();
            out.push(ch);
            rest = &rest[ch.len_utf8()..];
        }
    }
    if open.is_some() {
        return Err(markup("unclosed <<".into()));
    }
    Ok((out, spans))
}

/// The five CT-RATE report columns plus entity truth.
#[derive(Debug, Clone)]
pub struct Report {
    /// ClinicalInformation_EN.
    pub clinical: String,
    /// Technique_EN.
    pub technique: String,
    /// Findings_EN.
    pub findings: String,
    /// Impressions_EN.
    pub impressions: String,
    /// Entity spans (volume_name left empty; the caller sets it).
    pub entities: Vec<EntityTruth>,
}

/// Section order of findings in Findings_EN, with the normal statements interleaved.
const FINDINGS_ORDER: [(&str, &[&str]); 5] = [
    ("airways", &[]),
    (
        "mediastinum",
        &[
            "Cardiomegaly",
            "Pericardial effusion",
            "Lymphadenopathy",
            "Arterial wall calcification",
            "Coronary artery wall calcification",
            "Medical material",
        ],
    ),
    (
        "",
        &[
            "Hiatal hernia",
            "Emphysema",
            "Lung nodule",
            "Consolidation",
            "Lung opacity",
            "Atelectasis",
            "Pleural effusion",
        ],
    ),
    ("abdomen", &[]),
    ("bones", &[]),
];

struct Builder<'a> {
    text: String,
    section: &'static str,
    entities: Vec<EntityTruth>,
    findings: &'a BTreeMap<String, RenderedFinding>,
    assertions: &'a BTreeMap<String, Assertion>,
}

impl Builder<'_> {
    fn sentence(&mut self, template: &str, default: &str) -> Result<(), TemplateError> {
        let (mut s, spans) = fill(template, default, self.findings)?;
        // Sentences start with a capital letter (a template may start with a placeholder).
        if let Some(c) = s.chars().next().filter(|c| c.is_lowercase())
            && c.is_ascii()
        {
            s.replace_range(0..1, &c.to_ascii_uppercase().to_string());
        }
        if !self.text.is_empty() {
            self.text.push(' ');
        }
        let base = self.text.len();
        self.text.push_str(&s);
        for (a, b, label) in spans {
            let assertion = *self
                .assertions
                .get(&label)
                .ok_or_else(|| TemplateError::Unstated(label.clone()))?;
            self.entities.push(EntityTruth {
                volume_name: String::new(),
                section: self.section.to_string(),
                start: base + a,
                end: base + b,
                text: self.text[base + a..base + b].to_string(),
                finding: label.clone(),
                region: if assertion == Assertion::Absent {
                    None
                } else {
                    self.findings.get(&label).map(|f| f.region.clone())
                },
                assertion,
            });
        }
        Ok(())
    }
}

/// Multi-finding sentences claim their findings (half of the time when they apply): each with
/// its first finding and template; the claimed findings are added to `done`.
fn claim_combined<'t>(
    t: &'t Templates,
    assertions: &BTreeMap<String, Assertion>,
    done: &mut Vec<String>,
    rng: &mut ChaCha8Rng,
) -> Vec<(String, &'t str)> {
    let mut combined: Vec<(String, &str)> = Vec::new();
    for (group, want) in [
        (&t.combined_present, Assertion::Present),
        (&t.combined_absent, Assertion::Absent),
    ] {
        for c in group {
            let applies = c
                .findings
                .iter()
                .all(|f| assertions.get(f) == Some(&want) && !done.contains(f));
            if applies && rng.random_bool(0.5) {
                combined.push((c.findings[0].clone(), pick(rng, &c.templates)));
                done.extend(c.findings.iter().cloned());
            }
        }
    }
    combined
}

/// The impressions: a numbered list (sometimes) of the present and hedged drawn findings, or a
/// normal statement.
fn write_impressions(
    b: &mut Builder,
    t: &Templates,
    statements: &[Statement],
    rng: &mut ChaCha8Rng,
) -> Result<(), TemplateError> {
    let positives: Vec<&Statement> = statements
        .iter()
        .filter(|s| s.assertion != Assertion::Absent && s.finding.is_some())
        .collect();
    if positives.is_empty() {
        b.sentence(pick(rng, &t.no_impression), "")?;
    } else {
        let numbered = positives.len() > 1 && rng.random_bool(0.6);
        for (n, s) in positives.iter().enumerate() {
            let ft = &t.findings[&s.label];
            let tpl = if s.assertion == Assertion::Uncertain {
                pick(rng, &ft.uncertain)
            } else {
                pick(rng, &ft.impression)
            };
            if numbered {
                if !b.text.is_empty() {
                    b.text.push(' ');
                }
                b.text.push_str(&format!("{}.", n + 1));
            }
            b.sentence(tpl, &s.label)?;
        }
    }
    Ok(())
}

/// Writes a report for `statements`. `slice_mm` goes into the technique section.
pub fn write_report(
    t: &Templates,
    statements: &[Statement],
    slice_mm: f64,
    rng: &mut ChaCha8Rng,
) -> Result<Report, TemplateError> {
    let findings: BTreeMap<String, RenderedFinding> = statements
        .iter()
        .filter_map(|s| s.finding.clone().map(|f| (s.label.clone(), f)))
        .collect();
    let assertions: BTreeMap<String, Assertion> = statements
        .iter()
        .map(|s| (s.label.clone(), s.assertion))
        .collect();
    let mut done: Vec<String> = Vec::new();
    let mut b = Builder {
        text: String::new(),
        section: "Findings_EN",
        entities: vec![],
        findings: &findings,
        assertions: &assertions,
    };

    // Multi-finding sentences first claim their findings (half of the time when they apply).
    let combined = claim_combined(t, &assertions, &mut done, rng);
    for (normal, labels) in FINDINGS_ORDER {
        if !normal.is_empty()
            && normal != "mediastinum"
            && let Some(v) = t.normal.get(normal)
        {
            b.sentence(pick(rng, v), "")?;
        }
        for &label in labels {
            if let Some((_, tpl)) = combined.iter().find(|(first, _)| first == label) {
                b.sentence(tpl, label)?;
                continue;
            }
            if done.iter().any(|d| d == label) {
                continue;
            }
            let Some(a) = assertions.get(label) else {
                continue;
            };
            let ft = t
                .findings
                .get(label)
                .ok_or_else(|| TemplateError::NoTemplates(label.to_string()))?;
            let list = match a {
                Assertion::Present => &ft.present,
                Assertion::Uncertain => &ft.uncertain,
                Assertion::Absent => &ft.absent,
            };
            // A hedged statement about an undrawn finding has no region or size: use a template without placeholders.
            let candidates: Vec<&String> = if findings.contains_key(label) {
                list.iter().collect()
            } else {
                list.iter().filter(|s| !s.contains('{')).collect()
            };
            if candidates.is_empty() {
                return Err(TemplateError::NoPlainTemplate {
                    label: label.to_string(),
                    assertion: a.as_str(),
                });
            }
            let tpl = candidates[rng.random_range(0..candidates.len())];
            b.sentence(tpl, label)?;
        }
        if normal == "mediastinum"
            && !assertions.contains_key("Lymphadenopathy")
            && let Some(v) = t.normal.get(normal)
        {
            b.sentence(pick(rng, v), "")?;
        }
    }
    let findings_text = std::mem::take(&mut b.text);
    let mut entities = std::mem::take(&mut b.entities);

    // Impressions: a numbered list of present (and hedged) findings, or a normal statement.
    b.section = "Impressions_EN";
    write_impressions(&mut b, t, statements, rng)?;
    let impressions = std::mem::take(&mut b.text);
    entities.append(&mut b.entities);
    let clinical = pick(rng, &t.clinical).to_string();
    let (technique, _) = fill(
        pick(rng, &t.technique)
            .replace(
                "{slice_mm}",
                format!("{slice_mm:.2}")
                    .trim_end_matches('0')
                    .trim_end_matches('.'),
            )
            .as_str(),
        "",
        &BTreeMap::new(),
    )?;
    Ok(Report {
        clinical,
        technique,
        findings: findings_text,
        impressions,
        entities,
    })
}
