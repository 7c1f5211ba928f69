//! Sentence and clause segmentation with byte ranges into the original text.
//!
//! Sentences end at `.`, `!` or `?` followed by whitespace and then an upper-case letter, a digit,
//! an opening bracket or the end of the text, or at a line break; not after known abbreviations
//! ("approx.", "e.g.", "Dr.", "No. 3"), not inside numbers ("3.5 x 2 cm"), and a bare list number
//! ("1.") joins the sentence it numbers. Clauses follow MG-3D: each sentence is split after commas
//! and semicolons outside parentheses (keeping the separator), never between digits ("1,5 cm").
//! Every range satisfies `text[r.clone()]` == the span, trimmed of surrounding whitespace.

use std::ops::Range;

/// Abbreviations that do not end a sentence (lower-cased, without the final dot).
const ABBREVIATIONS: [&str; 24] = [
    "approx", "e.g", "i.e", "vs", "dr", "mr", "mrs", "ms", "fig", "no", "nr", "cf", "etc", "resp",
    "max", "min", "ca", "incl", "excl", "appr", "diam", "est", "prox", "st",
];

fn trim(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = &text[r.clone()];
    let start = r.start + (s.len() - s.trim_start().len());
    let end = r.end - (s.len() - s.trim_end().len());
    (start < end).then_some(start..end)
}

/// The word before byte `dot` (letters, digits and inner dots), lower-cased.
fn word_before(text: &str, dot: usize) -> String {
    let before = &text[..dot];
    // The word starts after the last separator, which may be multi-byte (U+00A0, U+3000).
    let start = before
        .char_indices()
        .rfind(|&(_, c)| c.is_whitespace() || c == '(' || c == '[')
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(0);
    before[start..].to_lowercase()
}

fn is_list_marker(s: &str) -> bool {
    let t = s.trim();
    let body = t
        .strip_suffix('.')
        .or_else(|| t.strip_suffix(')'))
        .unwrap_or("");
    !body.is_empty()
        && body.len() <= 3
        && (body.chars().all(|c| c.is_ascii_digit())
            || (body.len() == 1 && body.chars().all(|c| c.is_ascii_lowercase())))
}

/// Whether the line break at byte `i` is a hard wrap inside a sentence: the next line goes on in
/// lower case, or this line ends with a comma, a hyphen or a word that cannot end a sentence
/// ("or", "and", "of", ...). A blank line always ends the sentence.
fn is_wrap(text: &str, i: usize) -> bool {
    let before = text[..i].trim_end_matches([' ', '\t', '\r']);
    let after = text[i + 1..].trim_start_matches([' ', '\t']);
    if before.is_empty() || before.ends_with('\n') || after.starts_with(['\n', '\r']) {
        return false;
    }
    if after.starts_with(|c: char| c.is_lowercase()) || before.ends_with([',', '-', '/', '(']) {
        return true;
    }
    let last = before
        .rsplit(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_lowercase();
    const CONNECTIVES: [&str; 16] = [
        "and", "or", "of", "the", "a", "an", "with", "without", "to", "in", "at", "by", "for",
        "from", "no", "nor",
    ];
    CONNECTIVES.contains(&last.as_str())
}

/// Sentence ranges of `text`.
pub fn sentences(text: &str) -> Vec<Range<usize>> {
    let b = text.as_bytes();
    let mut cuts: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            if !is_wrap(text, i) {
                cuts.push(i + 1);
            }
        } else if c == b'.' || c == b'!' || c == b'?' {
            // Must be followed by whitespace (or the end).
            let next = b.get(i + 1).copied();
            let ends = match next {
                None => true,
                Some(n) if n.is_ascii_whitespace() => {
                    // What follows the whitespace?
                    let rest = text[i + 1..].trim_start();
                    match rest.chars().next() {
                        None => true,
                        Some(ch) => {
                            ch.is_uppercase()
                                || ch.is_ascii_digit()
                                || ch == '('
                                || ch == '['
                                || ch == '"'
                                || !ch.is_alphabetic()
                        }
                    }
                }
                _ => false,
            };
            if ends && c == b'.' {
                let w = word_before(text, i);
                let w = w.trim_start_matches(|ch: char| !ch.is_alphanumeric());
                let is_abbrev = ABBREVIATIONS.contains(&w)
                    || (w.len() == 1
                        && w.chars().all(|ch| ch.is_alphabetic())
                        && !text[..i]
                            .trim_end()
                            .ends_with(|ch: char| ch.is_ascii_digit()));
                // "No. 3" is an abbreviation only when a number follows.
                let no_num = w == "no"
                    && !text[i + 1..]
                        .trim_start()
                        .starts_with(|ch: char| ch.is_ascii_digit());
                if !is_abbrev || no_num {
                    cuts.push(i + 1);
                }
            } else if ends {
                cuts.push(i + 1);
            }
        }
        i += 1;
    }
    cuts.push(b.len());
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut start = 0;
    for cut in cuts {
        if cut <= start {
            continue;
        }
        if let Some(r) = trim(text, start..cut) {
            // A bare list marker ("1.") joins the sentence it numbers.
            if let Some(prev) = out.last()
                && is_list_marker(&text[prev.clone()])
            {
                let p = prev.start;
                out.pop();
                out.push(p..r.end);
                start = cut;
                continue;
            }
            out.push(r);
        }
        start = cut;
    }
    out
}

/// Clause ranges inside the sentence `s` of `text` (MG-3D: split after commas and semicolons
/// outside parentheses, never between digits).
pub fn clauses(text: &str, s: Range<usize>) -> Vec<Range<usize>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = s.start;
    for i in s.clone() {
        match b[i] {
            b'(' | b'[' => depth += 1,
            b')' | b']' => depth = (depth - 1).max(0),
            b',' | b';' if depth == 0 => {
                let between_digits = b[i] == b','
                    && i > s.start
                    && b[i - 1].is_ascii_digit()
                    && b.get(i + 1).is_some_and(|c| c.is_ascii_digit());
                if !between_digits {
                    if let Some(r) = trim(text, start..i + 1) {
                        out.push(r);
                    }
                    start = i + 1;
                }
            }
            _ => {}
        }
    }
    if let Some(r) = trim(text, start..s.end) {
        out.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sents(t: &str) -> Vec<&str> {
        sentences(t).into_iter().map(|r| &t[r]).collect()
    }

    #[test]
    fn hard_line_wraps_do_not_end_sentences_but_lines_of_a_list_do() {
        assert_eq!(
            sents("PLEURA: No pleural or\npericardial effusion.\nHEART: Normal size."),
            [
                "PLEURA: No pleural or\npericardial effusion.",
                "HEART: Normal size."
            ]
        );
        assert_eq!(
            sents("Mediastinal nodes up to 11 mm,\nborderline enlarged"),
            ["Mediastinal nodes up to 11 mm,\nborderline enlarged"]
        );
        assert_eq!(
            sents("IMPRESSION:\n\nNo acute findings"),
            ["IMPRESSION:", "No acute findings"]
        );
        assert_eq!(
            sents("1. Emphysema\n2. Nodule"),
            ["1. Emphysema", "2. Nodule"]
        );
    }

    #[test]
    fn decimals_sizes_and_abbreviations_do_not_split() {
        assert_eq!(
            sents(
                "A nodule of approx. 3.5 x 2 cm in the RUL. No effusion. Dr. Smith was informed."
            ),
            [
                "A nodule of approx. 3.5 x 2 cm in the RUL.",
                "No effusion.",
                "Dr. Smith was informed."
            ]
        );
        assert_eq!(
            sents("Compared with prior (e.g. 2019). Stable."),
            ["Compared with prior (e.g. 2019).", "Stable."]
        );
        assert_eq!(
            sents("Lesion no. 3 is stable. No new lesion."),
            ["Lesion no. 3 is stable.", "No new lesion."]
        );
    }

    #[test]
    fn list_numbers_join_their_sentence() {
        assert_eq!(
            sents("1. Nodule in the RUL. 2. Left pleural effusion."),
            ["1. Nodule in the RUL.", "2. Left pleural effusion."]
        );
        assert_eq!(
            sents("Impression:\n1. Emphysema.\n2. Atelectasis"),
            ["Impression:", "1. Emphysema.", "2. Atelectasis"]
        );
    }

    #[test]
    fn offsets_exact_with_multibyte_text() {
        let t = "Größe 3,5 cm; Läsion (µ, β) unverändert. Keine Ergüsse — gut.";
        for r in sentences(t) {
            for c in clauses(t, r.clone()) {
                assert!(t.is_char_boundary(c.start) && t.is_char_boundary(c.end));
            }
        }
        let s = sentences(t);
        assert_eq!(&t[s[0].clone()], "Größe 3,5 cm; Läsion (µ, β) unverändert.");
        let c: Vec<&str> = clauses(t, s[0].clone())
            .into_iter()
            .map(|r| &t[r])
            .collect();
        assert_eq!(c, ["Größe 3,5 cm;", "Läsion (µ, β) unverändert."]);
    }

    #[test]
    fn unicode_spaces_before_a_full_stop() {
        for sp in ['\u{a0}', '\u{202f}', '\u{3000}', '\u{2009}'] {
            let t = format!("No{sp}effusion. Heart{sp}normal.{sp}Dr.{sp}X{sp}no. 3.");
            let s = sents(&t);
            assert_eq!(s.len(), 2, "{s:?}");
            assert_eq!(s[0], format!("No{sp}effusion."));
            for r in sentences(&t) {
                for c in clauses(&t, r) {
                    assert!(t.is_char_boundary(c.start) && t.is_char_boundary(c.end));
                }
            }
        }
    }

    #[test]
    fn clauses_follow_mg3d() {
        let t =
            "No effusion, pneumothorax or consolidation; heart size normal (borderline, stable).";
        let c: Vec<&str> = clauses(t, 0..t.len()).into_iter().map(|r| &t[r]).collect();
        assert_eq!(
            c,
            [
                "No effusion,",
                "pneumothorax or consolidation;",
                "heart size normal (borderline, stable)."
            ]
        );
    }
}
