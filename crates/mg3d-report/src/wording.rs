//! What the words around a mention say of it: lemmas for matching, organ headers, "?" hedges,
//! and the qualifiers that make a named lymph node a finding or not (see [`crate::entities`]).

use std::ops::Range;

/// A word's lemma for matching entities: plural endings removed ("opacities" -> "opacity",
/// "sequelae" -> "sequela", "masses" -> "mass", "bands" -> "band"), words ending in -is, -us or
/// -ss kept ("atelectasis"). The lexicon's phrases go through it too, so listing one form matches
/// both.
pub(crate) fn lemma(w: &str) -> String {
    let n = w.len();
    if n > 4 && w.ends_with("ies") {
        format!("{}y", &w[..n - 3])
    } else if n > 4 && w.ends_with("ae") {
        w[..n - 1].to_string()
    } else if n > 4 && w.ends_with("sses") {
        w[..n - 2].to_string()
    } else if n > 3 && w.ends_with('s') && !["ss", "is", "us", "'s"].iter().any(|e| w.ends_with(e))
    {
        w[..n - 1].to_string()
    } else {
        w.to_string()
    }
}

/// Lower-cased words of `text` joined by single spaces.
pub(crate) fn lower_words(text: &str) -> String {
    words(text)
        .into_iter()
        .map(|(_, w)| w)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A question mark hedging the finding at `span`: right after it ("atelectasis?"), or opening
/// its clause ("?New trace left pleural effusion").
pub(crate) fn question_mark(
    sentence: &str,
    span: &Range<usize>,
    clause: &Range<usize>,
) -> Option<String> {
    let after = sentence[span.end..].trim_start_matches([' ', ')']);
    let opens = sentence[clause.start.min(span.start)..span.start]
        .trim_start()
        .starts_with('?');
    (after.starts_with('?') || opens).then(|| "?".to_string())
}

/// An organ header ("LYMPH NODES:", "PLEURA:"): the words in capitals, followed by a colon.
pub(crate) fn is_header(sentence: &str, span: &Range<usize>) -> bool {
    let t = &sentence[span.clone()];
    t.chars().any(char::is_alphabetic)
        && !t.chars().any(char::is_lowercase)
        && sentence[span.end..].trim_start().starts_with(':')
}

/// What a clause says of the lymph nodes it names (`after`: the clause from the mention on):
/// not enlarged ("subcentimetre", "not in pathological size", "less than 10 mm", "prominent but
/// not enlarged") is absent, "borderline"/"equivocal" uncertain, enlarged ("pathological",
/// "enlarged", "bulky") present; else the first size given decides by the 10 mm short-axis
/// threshold (over: present, 10 mm: uncertain, under: absent). `None`: nothing said.
pub(crate) fn node_qualifier(clause: &str, after: &str) -> Option<(&'static str, String)> {
    let lower = clause.to_lowercase();
    let w: Vec<String> = words(&lower).into_iter().map(|(_, w)| w).collect();
    let text = w.join(" ");
    let has = |p: &str| {
        text == p
            || text.starts_with(&format!("{p} "))
            || text.ends_with(&format!(" {p}"))
            || text.contains(&format!(" {p} "))
    };
    const NOT_ENLARGED: [&str; 14] = [
        "not enlarged",
        "none enlarged",
        "not pathologically enlarged",
        "not in pathological size",
        "not of pathological size",
        "not pathological",
        "subcentimeter",
        "subcentimetre",
        "sub-centimeter",
        "sub-centimetre",
        "less than 1 cm",
        "less than 10 mm",
        "normal size",
        "normal in size",
    ];
    const UNCERTAIN: [&str; 3] = ["borderline", "equivocal", "indeterminate"];
    const ENLARGED: [&str; 11] = [
        "enlarged",
        "enlargement",
        "pathological",
        "pathologic",
        "pathologically",
        "bulky",
        "conglomerate",
        "conglomerated",
        "matted",
        "necrotic",
        "enlarging",
    ];
    if let Some(p) = NOT_ENLARGED.iter().find(|p| has(p)) {
        return Some(("absent", p.to_string()));
    }
    if let Some(p) = UNCERTAIN.iter().find(|p| has(p)) {
        return Some(("uncertain", p.to_string()));
    }
    if let Some(p) = ENLARGED.iter().find(|p| has(p)) {
        return Some(("present", p.to_string()));
    }
    let size = size_mm(after).or_else(|| size_mm(clause))?;
    let t = format!("{size} mm");
    Some(if size > 10.0 {
        ("present", t)
    } else if size >= 10.0 {
        ("uncertain", t)
    } else {
        ("absent", t)
    })
}

/// The words of `text` (letters and digits, with inner hyphens, dots and apostrophes), lower-cased,
/// with their byte ranges.
pub(crate) fn words(text: &str) -> Vec<(Range<usize>, String)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let b = text.as_bytes();
    let is_word = |i: usize| {
        let c = text[i..].chars().next().unwrap();
        c.is_alphanumeric()
            || ((c == '-' || c == '.' || c == '\'')
                && i > 0
                && i + 1 < b.len()
                && text[..i]
                    .chars()
                    .last()
                    .is_some_and(|p| p.is_alphanumeric())
                && text[i + 1..]
                    .chars()
                    .next()
                    .is_some_and(|n| n.is_alphanumeric()))
    };
    for (i, _) in text.char_indices() {
        match (start, is_word(i)) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                out.push((s..i, text[s..i].to_lowercase()));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s..text.len(), text[s..].to_lowercase()));
    }
    out
}

/// The largest size in `text` in millimetres ("3.5 x 2 cm" -> 35), if any.
pub(crate) fn size_mm(text: &str) -> Option<f64> {
    let toks = words(text);
    let mut best: Option<f64> = None;
    for w in toks.windows(2) {
        let unit = w[1].1.as_str();
        let scale = match unit {
            "mm" => 1.0,
            "cm" => 10.0,
            _ => continue,
        };
        // "3.5 x 2 cm": every number before the unit in an "a x b" chain counts with that unit.
        let mut j = toks.iter().position(|t| t.0 == w[0].0).unwrap();
        while let Ok(v) = toks[j].1.replace(',', ".").parse::<f64>() {
            best = Some(best.map_or(v * scale, |b: f64| b.max(v * scale)));
            if j >= 2 && (toks[j - 1].1 == "x" || toks[j - 1].1 == "×") {
                j -= 2;
            } else {
                break;
            }
        }
    }
    best
}
