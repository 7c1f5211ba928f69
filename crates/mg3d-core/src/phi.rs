//! Identifying values found in the inputs (names, ids, dates, folder names) and the one scrubber
//! that removes them from every message and path that leaves ingest.
//!
//! Values are kept as sequences of lower-cased word tokens, so matching ignores case and
//! separators: a PatientName `DOE^JANE` is found in `Jane Doe`, `doe_jane` and `DOE-JANE`, a
//! birth date `19470312` in `1947-03-12`, `12.03.1947` and `03/12/1947`. Long values (ids) are
//! also found inside longer words (`xMRN4471923`).

use std::collections::BTreeSet;
use std::path::Path;

/// The replacement for a scrubbed value.
pub const REDACTED: &str = "[redacted]";

/// Values shorter than this (after removing separators) are only matched as whole tokens; longer
/// ones also as substrings.
const SUBSTRING_MIN: usize = 6;

/// A set of identifying values; [`Phi::scrub`] removes them from a text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Phi {
    /// Token sequences (lower case), each a value or a variant of one.
    seqs: BTreeSet<Vec<String>>,
    /// Separator-free lower-case forms of long values, matched anywhere.
    runs: BTreeSet<String>,
    /// The byte lengths of `runs`.
    run_lens: BTreeSet<usize>,
    /// The most tokens of any sequence.
    max_seq: usize,
}

/// The word tokens of `s` (runs of alphanumeric characters) with their byte ranges.
fn tokens(s: &str) -> Vec<(usize, usize)> {
    let mut out = vec![];
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(a)) => {
                out.push((a, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(a) = start {
        out.push((a, s.len()));
    }
    out
}

/// Whether a value (separators removed) can identify anyone: two characters or more, and four
/// digits or more if it is a number.
fn identifying(joined: &str) -> bool {
    let n = joined.chars().count();
    n >= 2 && (n >= 4 || !joined.chars().all(|c| c.is_ascii_digit()))
}

fn lower_tokens(s: &str) -> Vec<String> {
    tokens(s)
        .into_iter()
        .map(|(a, b)| s[a..b].to_lowercase())
        .collect()
}

impl Phi {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Adds an identifier (an id, an accession number, an institution): the whole value, matched
    /// as a token sequence, and as a substring when long. Single characters, and numbers of fewer
    /// than four digits (a StudyID of "15" would redact every 15 in a message), are ignored.
    pub fn add_value(&mut self, v: &str) {
        let toks = lower_tokens(v);
        let joined: String = toks.concat();
        if !identifying(&joined) {
            return;
        }
        if joined.chars().count() >= SUBSTRING_MIN {
            self.run_lens.insert(joined.len());
            self.runs.insert(joined);
        }
        self.insert_seq(toks);
    }

    /// Adds a person name (DICOM PN: `Family^Given^Middle^Prefix^Suffix`, with `=` between
    /// alphabetic, ideographic and phonetic forms): the whole name in both orders, and every
    /// part that can identify on its own (see `add_value`).
    pub fn add_name(&mut self, pn: &str) {
        for group in pn.split('=') {
            let parts: Vec<&str> = group
                .split('^')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect();
            if parts.is_empty() {
                continue;
            }
            self.add_value(&parts.join(" "));
            if parts.len() >= 2 {
                let mut swapped = parts.clone();
                swapped.swap(0, 1);
                self.add_value(&swapped.join(" "));
            }
            for p in parts {
                for t in lower_tokens(p) {
                    if identifying(&t) {
                        self.insert_seq(vec![t]);
                    }
                }
            }
        }
    }

    /// Adds a date (DICOM DA `YYYYMMDD`, or already separated) with the ways it is commonly
    /// written: ISO, day-first and month-first, with or without leading zeros, any separators.
    pub fn add_date(&mut self, da: &str) {
        let digits: String = da.chars().filter(char::is_ascii_digit).collect();
        self.add_value(da);
        if digits.len() != 8 {
            return;
        }
        let (y, m, d) = (&digits[..4], &digits[4..6], &digits[6..]);
        let (m1, d1) = (m.trim_start_matches('0'), d.trim_start_matches('0'));
        self.add_value(&digits);
        for (mm, dd) in [(m, d), (m1, d1)] {
            for seq in [[y, mm, dd], [dd, mm, y], [mm, dd, y]] {
                self.insert_seq(seq.iter().map(|t| t.to_string()).collect());
            }
        }
    }

    /// Adds the components of a relative path (folder and file names, with and without their
    /// extensions) that look like identifiers, since archives name folders after patients
    /// (`Surname_Name_MRN/`): those of two or more words or with a digit, not plain words such as
    /// `dicom` or `scans`.
    pub fn add_path(&mut self, rel: &Path) {
        for c in rel.components() {
            let c = c.as_os_str().to_string_lossy();
            let stem = c.split('.').next().unwrap_or("");
            let toks = lower_tokens(stem);
            let digit = stem.chars().any(|c| c.is_ascii_digit());
            if toks.concat().chars().count() >= 3 && (toks.len() >= 2 || digit) {
                self.add_value(stem);
                self.add_value(&c);
            }
        }
    }

    fn insert_seq(&mut self, seq: Vec<String>) {
        self.max_seq = self.max_seq.max(seq.len());
        self.seqs.insert(seq);
    }

    /// Adds everything in `other`.
    pub fn extend(&mut self, other: &Phi) {
        self.max_seq = self.max_seq.max(other.max_seq);
        self.seqs.extend(other.seqs.iter().cloned());
        self.runs.extend(other.runs.iter().cloned());
        self.run_lens.extend(&other.run_lens);
    }

    /// `s` with every value of the set replaced by [`REDACTED`] (longest match first).
    pub fn scrub(&self, s: &str) -> String {
        if self.seqs.is_empty() {
            return s.to_string();
        }
        let max_len = self.max_seq;
        let toks = tokens(s);
        let low: Vec<String> = toks.iter().map(|&(a, b)| s[a..b].to_lowercase()).collect();
        // Byte ranges to redact: token sequences first.
        let mut cut: Vec<(usize, usize)> = vec![];
        let mut i = 0;
        while i < toks.len() {
            let hit = (1..=max_len.min(toks.len() - i))
                .rev()
                .find(|&n| self.seqs.contains(&low[i..i + n]));
            match hit {
                Some(n) => {
                    cut.push((toks[i].0, toks[i + n - 1].1));
                    i += n;
                }
                None => i += 1,
            }
        }
        // Then long values inside words, on the separator-free lower-case text: every substring of
        // a length some value has is looked up (an archive holds many thousands of values, and a
        // search per value would cost that many scans of every message).
        if !self.runs.is_empty() {
            let mut flat = String::new();
            let mut at: Vec<usize> = vec![]; // byte in `s` of each byte of `flat`
            for (c_at, c) in s.char_indices() {
                if c.is_alphanumeric() {
                    for l in c.to_lowercase() {
                        let mut buf = [0u8; 4];
                        for _ in 0..l.encode_utf8(&mut buf).len() {
                            at.push(c_at);
                        }
                        flat.push(l);
                    }
                }
            }
            for (a, _) in flat.char_indices() {
                for &len in &self.run_lens {
                    let b = a + len;
                    if b > flat.len() || !flat.is_char_boundary(b) {
                        continue;
                    }
                    if self.runs.contains(&flat[a..b]) {
                        let end_c = at[b - 1];
                        let end = end_c + s[end_c..].chars().next().map_or(1, char::len_utf8);
                        cut.push((at[a], end));
                    }
                }
            }
        }
        if cut.is_empty() {
            return s.to_string();
        }
        // Overlapping cuts, and cuts with only separators between them, become one.
        cut.sort();
        let mut merged: Vec<(usize, usize)> = vec![];
        for (a, b) in cut {
            match merged.last_mut() {
                Some(last) if a <= last.1 || !s[last.1..a].chars().any(char::is_alphanumeric) => {
                    last.1 = last.1.max(b)
                }
                _ => merged.push((a, b)),
            }
        }
        let mut out = String::with_capacity(s.len());
        let mut pos = 0;
        for (a, b) in merged {
            out.push_str(&s[pos..a]);
            out.push_str(REDACTED);
            pos = b;
        }
        out.push_str(&s[pos..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phi() -> Phi {
        let mut p = Phi::new();
        p.add_name("QUIXOTE^ZEBULON^Li");
        p.add_value("MRN4471923");
        p.add_date("19470312");
        p.add_value("St Elsewhere Clinic");
        p
    }

    #[test]
    fn names_in_any_case_and_order() {
        let p = phi();
        for s in [
            "Zebulon Quixote",
            "quixote_zebulon",
            "QUIXOTE-ZEBULON",
            "by zebulon",
            "dr li said",
        ] {
            let out = p.scrub(s);
            assert!(!out.to_lowercase().contains("zebulon"), "{out}");
            assert!(!out.to_lowercase().contains("quixote"), "{out}");
            assert!(!out.to_lowercase().contains(" li "), "{out}");
        }
        // A short part only as a whole word.
        assert_eq!(p.scrub("liver"), "liver");
    }

    #[test]
    fn dates_in_common_forms() {
        let p = phi();
        for s in [
            "born 1947-03-12",
            "12.03.1947",
            "03/12/1947",
            "3/12/1947",
            "19470312",
        ] {
            let out = p.scrub(s);
            assert!(!out.contains("1947"), "{s} -> {out}");
        }
        assert_eq!(p.scrub("1947 cases"), "1947 cases");
        // Dates alone (no longer sequence in the set) are still found in every form.
        let mut d = Phi::new();
        d.add_date("19470312");
        assert_eq!(d.scrub("on 12.03.1947"), "on [redacted]");
        // A short number is no identifier: messages keep their numbers.
        let mut q = Phi::new();
        q.add_value("15");
        q.add_name("DOE^JANE^15");
        assert_eq!(q.scrub("tilted 15.00 degrees"), "tilted 15.00 degrees");
    }

    #[test]
    fn ids_inside_words_and_multi_word_values() {
        let p = phi();
        assert_eq!(p.scrub("file xmrn4471923y.nii"), "file x[redacted]y.nii");
        assert_eq!(p.scrub("at st. elsewhere clinic"), "at [redacted]");
        assert_eq!(
            p.scrub("path QUIXOTE_ZEBULON_MRN4471923/scan"),
            "path [redacted]/scan"
        );
    }

    #[test]
    fn many_values_scrub_quickly() {
        let mut p = Phi::new();
        for i in 0..100_000 {
            p.add_value(&format!("MRN{i:08}"));
            p.add_name(&format!("Name{i}^Given{i}"));
        }
        let t = std::time::Instant::now();
        for _ in 0..1000 {
            assert_eq!(
                p.scrub("gap of 6.000 mm after slice 5 (MRN00012345)"),
                "gap of 6.000 mm after slice 5 ([redacted])"
            );
        }
        // Not a timing assertion: a search per value (100,000 scans per message) took minutes.
        eprintln!("1000 messages against 300,000 values: {:?}", t.elapsed());
    }

    #[test]
    fn paths_and_unicode() {
        let mut p = Phi::new();
        p.add_path(Path::new("dicom/Müller_Anna_0042/ct.nii.gz"));
        assert_eq!(p.scrub("in MÜLLER_ANNA_0042: bad"), "in [redacted]: bad");
        assert_eq!(p.scrub("not DICOM, ct"), "not DICOM, ct");
        assert_eq!(p.scrub("no\u{a0}effusion"), "no\u{a0}effusion");
        assert_eq!(Phi::new().scrub("x"), "x");
    }
}
