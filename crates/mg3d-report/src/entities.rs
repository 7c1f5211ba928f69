//! Lexicon-driven entity extraction with ConText-style assertion, and CT-RATE label aggregation.
//!
//! Lexicons: `configs/lexicon/findings.toml` (observations, with the CT-RATE label they count for)
//! and `configs/lexicon/anatomy.toml`; assertion rules: `configs/context.toml`. Matching is on
//! lower-cased word tokens, longest phrase first. A forward trigger covers the words after it up to
//! the sentence end, a terminator or its max scope; a backward trigger the words before it;
//! pseudo-triggers ("no change") are consumed and trigger nothing. An observation is `uncertain` when
//! a possible-existence trigger covers it, else `absent` when a negation covers it, else `present`.
//! Elliptic coordination ("no pleural or pericardial effusion") gives "pleural" its own entity.

use std::collections::HashMap;
use std::ops::Range;

use serde::Deserialize;

use crate::ReportError;
use crate::wording::{
    is_header, lemma, lower_words, node_qualifier, question_mark, size_mm, words,
};

/// Embedded default configuration files.
pub const DEFAULT_FINDINGS: &str = include_str!("../../../configs/lexicon/findings.toml");
/// Embedded anatomy lexicon.
pub const DEFAULT_ANATOMY: &str = include_str!("../../../configs/lexicon/anatomy.toml");
/// Embedded modifier lexicon (severity grades).
pub const DEFAULT_MODIFIERS: &str = include_str!("../../../configs/lexicon/modifiers.toml");
/// Embedded ConText rules.
pub const DEFAULT_CONTEXT: &str = include_str!("../../../configs/context.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FindingDef {
    term: String,
    #[serde(default)]
    label: Option<String>,
    synonyms: Vec<String>,
    #[serde(default)]
    coordinated: Vec<String>,
    #[serde(default)]
    head: Option<String>,
    /// A mention that names the structure, not the finding ("lymph nodes"): it counts only
    /// when its clause qualifies it (see [`node_qualifier`]); unqualified, it is no mention.
    #[serde(default)]
    qualified: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnatomyDef {
    term: String,
    synonyms: Vec<String>,
    #[serde(default)]
    laterality: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    literals: Vec<String>,
    category: String,
    direction: String,
    #[serde(default)]
    max_scope: usize,
}

#[derive(Deserialize)]
struct FindingsFile {
    finding: Vec<FindingDef>,
}
#[derive(Deserialize)]
struct AnatomyFile {
    anatomy: Vec<AnatomyDef>,
}
#[derive(Deserialize)]
struct ModifiersFile {
    severity: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
struct ContextFile {
    rule: Vec<RuleDef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Finding(usize),
    Anatomy(usize),
}

/// Compiled lexicons and rules.
#[derive(Debug, Clone)]
pub struct Extractor {
    findings: Vec<FindingDef>,
    anatomy: Vec<AnatomyDef>,
    rules: Vec<RuleDef>,
    /// Severity word -> grade.
    severity: HashMap<String, String>,
    /// first token -> (phrase tokens, kind), longest first.
    entity_index: HashMap<String, Vec<(Vec<String>, Kind)>>,
    /// first token -> (phrase tokens, rule index), longest first.
    trigger_index: HashMap<String, Vec<(Vec<String>, usize)>>,
}

/// Type of an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityType {
    /// A finding.
    Observation,
    /// A body part.
    Anatomy,
}

/// One extracted entity; ranges are byte offsets into the text given to [`Extractor::extract`].
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    /// Byte range.
    pub span: Range<usize>,
    /// Observation or anatomy.
    pub etype: EntityType,
    /// Normalised term.
    pub norm: String,
    /// CT-RATE label (observations counted towards one).
    pub label: Option<String>,
    /// present | absent | uncertain (anatomy: present).
    pub assertion: &'static str,
    /// The trigger phrase that set the assertion.
    pub trigger: Option<String>,
    /// A historical trigger covers it.
    pub historical: bool,
    /// A hypothetical trigger covers it.
    pub hypothetical: bool,
    /// left | right | bilateral, from the clause or the anatomy term.
    pub laterality: Option<String>,
    /// Largest size stated in its clause, in mm.
    pub size_mm: Option<f64>,
    /// minimal | mild | moderate | severe, from a severity word in its clause.
    pub severity: Option<String>,
    /// Index (in the returned list) of the anatomy entity it is located at (same clause).
    pub located_at: Option<usize>,
}

fn phrase_tokens(p: &str) -> Vec<String> {
    words(p).into_iter().map(|(_, w)| w).collect()
}

fn longest_matches<K: Copy>(
    toks: &[(Range<usize>, String)],
    index: &HashMap<String, Vec<(Vec<String>, K)>>,
) -> Vec<(Range<usize>, K)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let mut best: Option<(usize, K)> = None;
        if let Some(cands) = index.get(&toks[i].1) {
            for (ph, k) in cands {
                if i + ph.len() <= toks.len() && ph.iter().zip(&toks[i..]).all(|(a, (_, b))| a == b)
                {
                    best = Some((ph.len(), *k));
                    break; // candidates are sorted longest first
                }
            }
        }
        match best {
            Some((n, k)) => {
                out.push((i..i + n, k));
                i += n;
            }
            None => i += 1,
        }
    }
    out
}

fn laterality_words(text: &str) -> Option<String> {
    let w: Vec<String> = words(text).into_iter().map(|(_, w)| w).collect();
    if w.iter().any(|x| x == "bilateral" || x == "both")
        || (w.iter().any(|x| x == "left") && w.iter().any(|x| x == "right"))
    {
        Some("bilateral".into())
    } else if w.iter().any(|x| x == "left" || x == "lul" || x == "lll") {
        Some("left".into())
    } else if w
        .iter()
        .any(|x| x == "right" || x == "rul" || x == "rml" || x == "rll")
    {
        Some("right".into())
    } else {
        None
    }
}

impl Extractor {
    /// Compiles lexicon and rule texts (TOML).
    pub fn new(findings: &str, anatomy: &str, context: &str) -> Result<Extractor, ReportError> {
        let lexicon = |what| move |source| ReportError::Lexicon { what, source };
        let f: FindingsFile = toml::from_str(findings).map_err(lexicon("findings lexicon"))?;
        let a: AnatomyFile = toml::from_str(anatomy).map_err(lexicon("anatomy lexicon"))?;
        let c: ContextFile = toml::from_str(context).map_err(lexicon("context rules"))?;
        for r in &c.rule {
            if ![
                "forward",
                "backward",
                "bidirectional",
                "terminate",
                "pseudo",
            ]
            .contains(&r.direction.as_str())
            {
                return Err(ReportError::ContextRule {
                    literals: r.literals.clone(),
                    detail:
                        "direction must be forward, backward, bidirectional, terminate or pseudo"
                            .into(),
                });
            }
            if ![
                "negated",
                "possible",
                "historical",
                "hypothetical",
                "terminate",
                "pseudo",
            ]
            .contains(&r.category.as_str())
            {
                return Err(ReportError::ContextRule {
                    literals: r.literals.clone(),
                    detail: format!("unknown category {:?}", r.category),
                });
            }
        }
        let mut entity_index: HashMap<String, Vec<(Vec<String>, Kind)>> = HashMap::new();
        for (i, d) in f.finding.iter().enumerate() {
            for s in d.synonyms.iter().chain(std::iter::once(&d.term)) {
                let t: Vec<String> = phrase_tokens(s).iter().map(|w| lemma(w)).collect();
                if !t.is_empty() {
                    entity_index
                        .entry(t[0].clone())
                        .or_default()
                        .push((t, Kind::Finding(i)));
                }
            }
        }
        for (i, d) in a.anatomy.iter().enumerate() {
            for s in d.synonyms.iter().chain(std::iter::once(&d.term)) {
                let t: Vec<String> = phrase_tokens(s).iter().map(|w| lemma(w)).collect();
                if !t.is_empty() {
                    entity_index
                        .entry(t[0].clone())
                        .or_default()
                        .push((t, Kind::Anatomy(i)));
                }
            }
        }
        let mut trigger_index: HashMap<String, Vec<(Vec<String>, usize)>> = HashMap::new();
        for (i, r) in c.rule.iter().enumerate() {
            for l in &r.literals {
                let t = phrase_tokens(l);
                if !t.is_empty() {
                    trigger_index.entry(t[0].clone()).or_default().push((t, i));
                }
            }
        }
        for v in entity_index.values_mut() {
            v.sort_by(|a, b| {
                b.0.len()
                    .cmp(&a.0.len())
                    .then(matches!(a.1, Kind::Anatomy(_)).cmp(&matches!(b.1, Kind::Anatomy(_))))
            });
            v.dedup_by(|a, b| a.0 == b.0);
        }
        for v in trigger_index.values_mut() {
            v.sort_by_key(|b| std::cmp::Reverse(b.0.len()));
        }
        let m: ModifiersFile =
            toml::from_str(DEFAULT_MODIFIERS).map_err(lexicon("modifiers lexicon"))?;
        let severity = m
            .severity
            .into_iter()
            .flat_map(|(grade, words)| {
                words
                    .into_iter()
                    .map(move |w| (w.to_lowercase(), grade.clone()))
            })
            .collect();
        Ok(Extractor {
            findings: f.finding,
            anatomy: a.anatomy,
            rules: c.rule,
            severity,
            entity_index,
            trigger_index,
        })
    }

    /// Elliptic coordination ("no pleural or pericardial effusion"): for a finding "<mod2> <head>"
    /// preceded by "<mod> (or|and|,)", the finding "<mod> <head>" when the lexicon has it.
    fn coordinated(
        &self,
        sentence: &str,
        toks: &[(Range<usize>, String)],
        hits: &[(Range<usize>, Kind)],
    ) -> Vec<(Range<usize>, Kind)> {
        let mut extra = Vec::new();
        for (r, k) in hits {
            let Kind::Finding(fi) = *k else { continue };
            let Some(head) = &self.findings[fi].head else {
                continue;
            };
            if toks[r.end - 1].1 != *head || r.start < 2 {
                continue;
            }
            let conj = &toks[r.start - 1].1;
            if conj != "or"
                && conj != "and"
                && sentence[toks[r.start - 2].0.end..toks[r.start - 1].0.start].trim() != ","
            {
                continue;
            }
            let m = r.start - 2;
            if let Some(fj) = self
                .findings
                .iter()
                .position(|d| d.head.as_deref() == Some(head) && d.coordinated.contains(&toks[m].1))
                && !hits.iter().any(|(h, _)| h.contains(&m))
            {
                extra.push((m..m + 1, Kind::Finding(fj)));
            }
        }
        extra
    }

    /// The built-in configuration.
    pub fn default_config() -> Extractor {
        Extractor::new(DEFAULT_FINDINGS, DEFAULT_ANATOMY, DEFAULT_CONTEXT)
            .expect("built-in lexicons parse")
    }

    /// Extracts entities from one sentence. `clauses` are byte ranges within `sentence` (for sizes,
    /// laterality and located_at); pass `[0..len]` when unknown.
    pub fn extract(&self, sentence: &str, clauses: &[Range<usize>]) -> Vec<Entity> {
        let toks = words(sentence);
        // Entities match on lemmas ("fibrotic bands" = "fibrotic band"); triggers on the words.
        let lemmas: Vec<(Range<usize>, String)> =
            toks.iter().map(|(r, w)| (r.clone(), lemma(w))).collect();
        let mut hits = longest_matches(&lemmas, &self.entity_index);
        // Elliptic coordination: "<mod> (or|and|,) <mod2> <head>" where mod2+head is a finding.
        let extra = self.coordinated(sentence, &lemmas, &hits);
        hits.extend(extra);
        hits.sort_by_key(|h| h.0.start);
        let triggers = longest_matches(&toks, &self.trigger_index);
        // Terminate rules end a scope at their word; ";" and ":" between words at the word after.
        let terminators = Terminators {
            words: triggers
                .iter()
                .filter(|(_, ri)| self.rules[*ri].direction == "terminate")
                .map(|(r, _)| r.start)
                .collect(),
            punct: (1..toks.len())
                .filter(|&i| sentence[toks[i - 1].0.end..toks[i].0.start].contains([';', ':']))
                .collect(),
        };
        let byte = |r: &Range<usize>| toks[r.start].0.start..toks[r.end - 1].0.end;
        let clause_of = |b: usize| clauses.iter().position(|c| c.contains(&b)).unwrap_or(0);
        let mut out: Vec<Entity> = Vec::new();
        for (r, k) in &hits {
            let span = byte(r);
            if is_header(sentence, &span) {
                continue;
            }
            let (etype, norm, label, mut laterality) = match *k {
                Kind::Finding(i) => (
                    EntityType::Observation,
                    self.findings[i].term.clone(),
                    self.findings[i].label.clone(),
                    None,
                ),
                Kind::Anatomy(i) => (
                    EntityType::Anatomy,
                    self.anatomy[i].term.clone(),
                    None,
                    self.anatomy[i].laterality.clone(),
                ),
            };
            let (negated, possible, historical, hypothetical) =
                self.context_of(sentence, &toks, &triggers, &terminators, r, &clause_of);
            let c = clause_of(span.start);
            let clause = clauses.get(c).cloned().unwrap_or(0..sentence.len());
            let qualified = matches!(*k, Kind::Finding(i) if self.findings[i].qualified);
            let qualifier = if qualified {
                // What the sentence says of the nodes, from their clause to the next ";" or ":".
                let end = sentence[span.end..]
                    .find([';', ':'])
                    .map_or(sentence.len(), |e| span.end + e);
                node_qualifier(
                    &sentence[clause.start.min(span.start)..end],
                    &sentence[span.end..end],
                )
            } else {
                None
            };
            // "?" hedges the finding it follows ("atelectasis?") and a clause it opens
            // ("?New trace effusion").
            let possible = possible.or_else(|| question_mark(sentence, &span, &clause));
            let (assertion, trigger) = if etype == EntityType::Anatomy {
                ("present", None)
            } else if let Some(t) = possible {
                ("uncertain", Some(t))
            } else if let Some(t) = negated {
                ("absent", Some(t))
            } else if qualified {
                match qualifier {
                    Some((a, t)) => (a, Some(t)),
                    // A structure named without a finding ("LYMPH NODES", "nodes are seen").
                    None => continue,
                }
            } else {
                ("present", None)
            };
            if laterality.is_none() {
                laterality = laterality_words(&sentence[clause.clone()]);
            }
            let (size, severity) = if etype == EntityType::Observation {
                let grade = words(&sentence[clause.clone()])
                    .into_iter()
                    .find_map(|(_, w)| self.severity.get(&w).cloned());
                (size_mm(&sentence[clause]), grade)
            } else {
                (None, None)
            };
            out.push(Entity {
                span,
                etype,
                norm,
                label,
                assertion,
                trigger,
                historical,
                hypothetical,
                laterality,
                size_mm: size,
                severity,
                located_at: None,
            });
        }
        coronary_context(&mut out, sentence, clauses, &clause_of);
        link_anatomy(&mut out, &clause_of);
        out
    }
}

impl Extractor {
    /// The ConText triggers covering the entity at word range `r`: (negation, hedge, historical,
    /// hypothetical), the first two as the trigger's text.
    fn context_of(
        &self,
        sentence: &str,
        toks: &[(Range<usize>, String)],
        triggers: &[(Range<usize>, usize)],
        terminators: &Terminators,
        r: &Range<usize>,
        clause_of: &dyn Fn(usize) -> usize,
    ) -> (Option<String>, Option<String>, bool, bool) {
        let byte = |r: &Range<usize>| toks[r.start].0.start..toks[r.end - 1].0.end;
        let (mut negated, mut possible, mut historical, mut hypothetical) =
            (None, None, false, false);
        for (tr, ri) in triggers {
            let rule = &self.rules[*ri];
            if !covers(rule, tr, r, terminators, toks.len()) {
                continue;
            }
            // A hedge after the finding that goes on to name something else hedges that
            // ("consolidation, likely infective"; "nodes, likely reactive"), not the finding.
            let trigger: Vec<&str> = toks[tr.clone()].iter().map(|(_, w)| w.as_str()).collect();
            let alternative = matches!(
                trigger.as_slice(),
                ["versus"] | ["vs"] | ["or"] | ["differential", "diagnosis"]
            );
            if rule.category == "possible"
                && !alternative
                && tr.start >= r.end
                && tr.end < toks.len()
                && clause_of(toks[tr.end].0.start) == clause_of(toks[tr.end - 1].0.start)
                && !terminators.words.contains(&tr.end)
                && !terminators.punct.contains(&tr.end)
            {
                continue;
            }
            let text = sentence[byte(tr)].to_string();
            match rule.category.as_str() {
                "negated" => negated = negated.or(Some(text)),
                "possible" => possible = possible.or(Some(text)),
                "historical" => historical = true,
                "hypothetical" => hypothetical = true,
                _ => {}
            }
        }
        (negated, possible, historical, hypothetical)
    }
}

/// Calcification of the coronary arteries is its own label: an arterial calcification whose
/// clause names them counts for the coronary label (for both when the clause also names another
/// artery: "in the aorta and coronary arteries").
fn coronary_context(
    out: &mut Vec<Entity>,
    sentence: &str,
    clauses: &[Range<usize>],
    clause_of: &dyn Fn(usize) -> usize,
) {
    let mut coronary = Vec::new();
    for e in out
        .iter_mut()
        .filter(|e| e.label.as_deref() == Some(ARTERIAL))
    {
        let c = clauses
            .get(clause_of(e.span.start))
            .cloned()
            .unwrap_or(0..sentence.len());
        let w = lower_words(&sentence[c]);
        let has = |names: &[&str]| w.split(' ').any(|x| names.contains(&x));
        if has(&["coronary", "coronaries", "lad", "rca", "circumflex"]) {
            let mut cor = e.clone();
            cor.label = Some(CORONARY.to_string());
            cor.norm = "coronary artery wall calcification".to_string();
            // Another artery named too: the calcification counts for both labels.
            let others = [
                "aorta",
                "aortic",
                "arch",
                "carotid",
                "subclavian",
                "brachiocephalic",
                "iliac",
            ];
            if has(&others) {
                coronary.push(cor);
            } else {
                *e = cor;
            }
        }
    }
    out.extend(coronary);
}

/// `located_at`: each observation's nearest anatomy entity in the same clause.
fn link_anatomy(out: &mut [Entity], clause_of: &dyn Fn(usize) -> usize) {
    let anat: Vec<(usize, usize)> = out
        .iter()
        .enumerate()
        .filter(|(_, e)| e.etype == EntityType::Anatomy)
        .map(|(i, e)| (i, e.span.start))
        .collect();
    for e in out
        .iter_mut()
        .filter(|e| e.etype == EntityType::Observation)
    {
        let c = clause_of(e.span.start);
        e.located_at = anat
            .iter()
            .filter(|(_, s)| clause_of(*s) == c)
            .min_by_key(|(_, s)| (*s as isize - e.span.start as isize).unsigned_abs())
            .map(|(j, _)| *j);
    }
}

const ARTERIAL: &str = "Arterial wall calcification";
const CORONARY: &str = "Coronary artery wall calcification";

/// Where scopes end in a sentence, as word indices: terminate-rule words ("but") end a scope at
/// themselves, ";" and ":" at the boundary before the word after them.
struct Terminators {
    words: Vec<usize>,
    punct: Vec<usize>,
}

impl Terminators {
    /// The first word a forward scope starting at word `from` cannot reach.
    fn forward_stop(&self, from: usize) -> Option<usize> {
        self.words
            .iter()
            .chain(&self.punct)
            .copied()
            .filter(|&t| t >= from)
            .min()
    }
    /// The first word a backward scope from a trigger at word `at` can reach.
    fn backward_stop(&self, at: usize) -> usize {
        let words = self.words.iter().filter(|&&t| t < at).map(|&t| t + 1);
        let punct = self.punct.iter().copied().filter(|&t| t <= at);
        words.chain(punct).max().unwrap_or(0)
    }
}

/// Whether the trigger at word range `tr` scopes over the entity at `r`: forward to the next
/// terminator (or `max_scope` words), backward to the previous one, or both, by the rule's
/// direction.
fn covers(
    rule: &RuleDef,
    tr: &Range<usize>,
    r: &Range<usize>,
    terminators: &Terminators,
    n_toks: usize,
) -> bool {
    let covers_forward = tr.end <= r.start && {
        let stop = terminators.forward_stop(tr.end).unwrap_or(n_toks);
        let max = if rule.max_scope > 0 {
            tr.end + rule.max_scope
        } else {
            n_toks
        };
        r.start < stop.min(max)
    };
    let covers_backward = tr.start >= r.end && {
        let stop = terminators.backward_stop(tr.start);
        let max = if rule.max_scope > 0 {
            tr.start.saturating_sub(rule.max_scope)
        } else {
            0
        };
        r.start >= stop.max(max)
    };
    match rule.direction.as_str() {
        "forward" => covers_forward,
        "backward" => covers_backward,
        "bidirectional" => covers_forward || covers_backward,
        _ => false,
    }
}

/// CT-RATE label value from a report's mentions: any present -> 1, else any uncertain -> -1, else
/// any absent -> 0, else null (not mentioned).
pub fn aggregate(assertions: &[&str]) -> Option<i32> {
    if assertions.contains(&"present") {
        Some(1)
    } else if assertions.contains(&"uncertain") {
        Some(-1)
    } else if assertions.contains(&"absent") {
        Some(0)
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one clause covering the sentence
mod tests {
    use super::*;

    fn run(s: &str) -> Vec<(String, &'static str)> {
        let x = Extractor::default_config();
        x.extract(s, &[0..s.len()])
            .into_iter()
            .filter(|e| e.etype == EntityType::Observation)
            .map(|e| (s[e.span].to_string(), e.assertion))
            .collect()
    }

    /// (text, label, assertion) of the labelled observations.
    fn labelled(s: &str) -> Vec<(String, String, &'static str)> {
        let x = Extractor::default_config();
        x.extract(s, &[0..s.len()])
            .into_iter()
            .filter_map(|e| e.label.map(|l| (s[e.span].to_string(), l, e.assertion)))
            .collect()
    }

    #[test]
    fn lymph_nodes_count_by_what_the_sentence_says_of_them() {
        let node = |s: &str| {
            labelled(s)
                .into_iter()
                .filter(|(_, l, _)| l == "Lymphadenopathy")
                .map(|(_, _, a)| a)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            node("Subcarinal lymph node measuring 14 mm in short axis."),
            ["present"]
        );
        assert_eq!(node("A right hilar node of 8 mm."), ["absent"]);
        assert_eq!(node("Subcarinal node borderline at 10 mm."), ["uncertain"]);
        assert_eq!(
            node("Prominent but not enlarged mediastinal lymph nodes."),
            ["absent"]
        );
        assert_eq!(
            node("Mediastinal lymph nodes are not in pathological size."),
            ["absent"]
        );
        assert_eq!(
            node("Lymph nodes of pathological size in the AP window."),
            ["present"]
        );
        assert_eq!(node("Subcentimetre mediastinal nodes."), ["absent"]);
        assert_eq!(
            node("No lymph node of pathological size was detected."),
            ["absent"]
        );
        // Named without a finding, a node is no mention; an organ header neither.
        assert!(node("Mediastinal nodes are seen.").is_empty());
        assert!(node("LYMPH NODES: unremarkable.").is_empty());
    }

    #[test]
    fn hedges_question_marks_and_post_posed_negation() {
        let a = |s: &str| {
            labelled(s)
                .into_iter()
                .map(|(_, _, a)| a)
                .collect::<Vec<_>>()
        };
        // A hedge naming a cause leaves the finding present; one closing the clause hedges it.
        assert_eq!(a("Consolidation, likely infective."), ["present"]);
        assert_eq!(a("A small effusion is likely."), ["uncertain"]);
        assert_eq!(
            a("Left lower lobe collapse versus consolidation."),
            ["uncertain", "uncertain"]
        );
        assert_eq!(a("Atelectasis? Pneumonia?"), ["uncertain"]);
        assert_eq!(a("?New trace left pleural effusion."), ["uncertain"]);
        // A negation after the finding, also after an organ header.
        assert_eq!(a("PLEURA: Pleural effusion is not seen."), ["absent"]);
        assert_eq!(a("Pericardial effusion was not observed."), ["absent"]);
        assert_eq!(
            a("Resolution of the left lower lobe consolidation."),
            ["absent"]
        );
    }

    #[test]
    fn plurals_match_their_lemma_and_context_picks_the_artery() {
        assert_eq!(
            labelled("Fibrotic bands in both apices."),
            [(
                "Fibrotic bands".into(),
                "Pulmonary fibrotic sequela".into(),
                "present"
            )]
        );
        assert_eq!(lemma("opacities"), "opacity");
        assert_eq!(lemma("sequelae"), "sequela");
        assert_eq!(lemma("masses"), "mass");
        assert_eq!(lemma("atelectasis"), "atelectasis");
        let labels = |s: &str| {
            labelled(s)
                .into_iter()
                .map(|(_, l, _)| l)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            labels("Calcific plaques were observed in the coronary arteries."),
            ["Coronary artery wall calcification"]
        );
        assert_eq!(
            labels("Atherosclerotic changes in the aorta and coronary arteries."),
            [
                "Arterial wall calcification",
                "Coronary artery wall calcification"
            ]
        );
        assert_eq!(
            labels("Surgical emphysema in the chest wall."),
            Vec::<String>::new()
        );
    }

    #[test]
    fn negation_lists_and_scope_end() {
        assert_eq!(
            run("No effusion, pneumothorax or consolidation."),
            [
                ("effusion".into(), "absent"),
                ("pneumothorax".into(), "absent"),
                ("consolidation".into(), "absent")
            ]
        );
        assert_eq!(
            run("No pleural or pericardial effusion."),
            [
                ("pleural".into(), "absent"),
                ("pericardial effusion".into(), "absent")
            ]
        );
        assert_eq!(
            run("No nodule, but consolidation in the RLL."),
            [
                ("nodule".into(), "absent"),
                ("consolidation".into(), "present")
            ]
        );
        assert_eq!(
            run("Without evidence of pleural effusion."),
            [("pleural effusion".into(), "absent")]
        );
    }

    #[test]
    fn pseudo_negation_and_uncertainty_both_ways() {
        assert_eq!(
            run("No change in the nodule."),
            [("nodule".into(), "present")]
        );
        assert_eq!(
            run("Not only emphysema but also atelectasis."),
            [
                ("emphysema".into(), "present"),
                ("atelectasis".into(), "present")
            ]
        );
        assert_eq!(
            run("Possible small nodule in the RUL."),
            [("nodule".into(), "uncertain")]
        );
        assert_eq!(
            run("A tiny nodule cannot be excluded."),
            [("nodule".into(), "uncertain")]
        );
        assert_eq!(
            run("Consolidation is suspected."),
            [("Consolidation".into(), "uncertain")]
        );
    }

    #[test]
    fn historical_and_hypothetical_flags() {
        let x = Extractor::default_config();
        let flags = |s: &str| -> Vec<(bool, bool)> {
            x.extract(s, &[0..s.len()])
                .into_iter()
                .filter(|e| e.etype == EntityType::Observation)
                .map(|e| (e.historical, e.hypothetical))
                .collect()
        };
        let e: Vec<(bool, bool)> = ["History of pneumothorax.", "Evaluate for pleural effusion."]
            .iter()
            .flat_map(|s| flags(s))
            .collect();
        assert_eq!(e, [(true, false), (false, true)]);
    }

    #[test]
    fn sizes_laterality_and_location() {
        let s = "A 7 mm nodule in the right upper lobe.";
        let x = Extractor::default_config();
        let e = x.extract(s, &[0..s.len()]);
        let n = e
            .iter()
            .find(|e| e.etype == EntityType::Observation)
            .unwrap();
        assert_eq!(n.size_mm, Some(7.0));
        assert_eq!(n.severity, None);
        let s2 = "Minimal atelectasis; large right pleural effusion.";
        let sev: Vec<Option<String>> = x
            .extract(s2, &[0..19, 20..s2.len()])
            .into_iter()
            .filter(|e| e.etype == EntityType::Observation)
            .map(|e| e.severity)
            .collect();
        assert_eq!(
            sev,
            [Some("minimal".to_string()), Some("severe".to_string())]
        );
        assert_eq!(n.laterality.as_deref(), Some("right"));
        assert_eq!(e[n.located_at.unwrap()].norm, "right upper lobe");
        let s = "Mass of approx. 3.5 x 2 cm.";
        assert_eq!(x.extract(s, &[0..s.len()])[0].size_mm, Some(35.0));
    }

    #[test]
    fn offsets_exact_with_multibyte_text() {
        let s = "Größenkonstante Läsion — no nodule; µ-Befund: possible atelectasis.";
        let x = Extractor::default_config();
        for e in x.extract(s, &[0..s.len()]) {
            assert!(s.is_char_boundary(e.span.start) && s.is_char_boundary(e.span.end));
        }
        let got: Vec<&str> = x
            .extract(s, &[0..s.len()])
            .iter()
            .map(|e| &s[e.span.clone()])
            .collect();
        assert_eq!(got, ["nodule", "atelectasis"]);
    }
}
