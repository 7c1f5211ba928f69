//! CTRG-Chest annotation files, read once for the stages that use them (ingest: the slice
//! folders; reports: the texts): one JSON list of `{id, report, result, image_path, split}`, or
//! an object of such lists by split (`{"train": [...], "val": [...], "test": [...]}`).
//! `report` is the findings, `result` the impression; `image_path` a folder of per-slice JPEGs
//! (a string, or a list holding it), relative to the annotation file.
//!
//! An id listed again (the released val and test lists are the same 360 volumes) is kept once,
//! at its first listing; each later listing is a [`Repeat`] for the stages to report.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Errors reading an annotation file.
#[derive(Debug, thiserror::Error)]
pub enum CtrgError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a CTRG annotation file.
    #[error(
        "{path}: {detail} (a CTRG annotation file is a JSON list of {{id, report, result, image_path, split}}, or an object of such lists by split)"
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// One volume of an annotation file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The id (a number in the released file, kept as its text).
    pub id: String,
    /// Findings.
    pub report: String,
    /// Impression.
    pub result: String,
    /// The slice folder, as the file gives it (relative to the file).
    pub image_path: String,
    /// The split the file gives.
    pub split: String,
    /// Position in the file (0-based, over all lists).
    pub position: usize,
}

/// A later listing of an id already read.
#[derive(Debug, Clone, PartialEq)]
pub struct Repeat {
    /// The listing.
    pub entry: Entry,
    /// The split of the first listing.
    pub first_split: String,
    /// Whether its texts and folder equal the first listing's.
    pub identical: bool,
}

/// What the pipeline keys a CTRG volume and its report from (namespaces "volume", "report",
/// "patient", "study": one volume per patient in CTRG).
pub fn source_key(id: &str) -> String {
    format!("ctrg/{id}")
}

fn text(v: &Value, key: &str) -> Option<String> {
    match &v[key] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(a) if a.len() == 1 => a[0].as_str().map(str::to_string),
        Value::Null => None,
        _ => None,
    }
}

/// Reads an annotation file: its volumes, each id once, and the later listings of ids.
pub fn read_annotation(path: &Path) -> Result<(Vec<Entry>, Vec<Repeat>), CtrgError> {
    let bytes = std::fs::read(path).map_err(|source| CtrgError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let format = |detail: String| CtrgError::Format {
        path: path.to_path_buf(),
        detail,
    };
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format(e.to_string()))?;
    let lists: Vec<(Option<String>, &Vec<Value>)> = match &v {
        Value::Array(a) => vec![(None, a)],
        // train, val, test first (a JSON object's own order is not kept), then any other list.
        Value::Object(m) => ["train", "val", "test"]
            .into_iter()
            .filter_map(|k| m.get_key_value(k))
            .chain(
                m.iter()
                    .filter(|(k, _)| !["train", "val", "test"].contains(&k.as_str())),
            )
            .map(|(k, l)| match l {
                Value::Array(a) => Ok((Some(k.clone()), a)),
                _ => Err(format(format!("{k:?} is not a list"))),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(format("neither a list nor an object".into())),
    };
    let (mut entries, mut repeats): (Vec<Entry>, Vec<Repeat>) = (vec![], vec![]);
    let mut position = 0;
    for (split, list) in lists {
        for item in list {
            let field = |k: &str| {
                text(item, k)
                    .ok_or_else(|| format(format!("entry {position} has no text field {k:?}")))
            };
            let entry = Entry {
                id: field("id")?,
                report: text(item, "report").unwrap_or_default(),
                result: text(item, "result").unwrap_or_default(),
                image_path: field("image_path")?,
                split: text(item, "split").or(split.clone()).unwrap_or_default(),
                position,
            };
            position += 1;
            match entries.iter().find(|e| e.id == entry.id) {
                Some(first) => repeats.push(Repeat {
                    first_split: first.split.clone(),
                    identical: (&first.report, &first.result, &first.image_path)
                        == (&entry.report, &entry.result, &entry.image_path),
                    entry,
                }),
                None => entries.push(entry),
            }
        }
    }
    Ok((entries, repeats))
}

impl Repeat {
    /// The reason code and message the stages give a repeated listing.
    pub fn reject(&self) -> (&'static str, String) {
        (
            "ctrg_duplicate_id",
            format!(
                "id listed again in split {:?} (first in {:?}, which is used){}",
                self.entry.split,
                self.first_split,
                if self.identical {
                    "; the listings are identical (the released val and test lists are the same volumes)"
                } else {
                    "; the listings differ"
                }
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_by_split_and_the_val_test_duplicate() {
        let d = std::env::temp_dir().join(format!("mg3d-ctrg-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("annotation.json");
        let e = |id: u32, split: &str| {
            serde_json::json!({"id": id, "report": "Lungs clear.", "result": "Normal.",
                "image_path": [format!("{id}/")], "split": split})
        };
        let v = serde_json::json!({"train": [e(1, "train")], "val": [e(2, "val")], "test": [e(2, "test")]});
        std::fs::write(&f, v.to_string()).unwrap();
        let (entries, repeats) = read_annotation(&f).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            (entries[1].id.as_str(), entries[1].image_path.as_str()),
            ("2", "2/")
        );
        assert_eq!(repeats.len(), 1);
        assert!(repeats[0].identical);
        assert_eq!(repeats[0].first_split, "val");
        assert_eq!(repeats[0].reject().0, "ctrg_duplicate_id");
        std::fs::write(&f, "{\"train\": 3}").unwrap();
        assert!(matches!(read_annotation(&f), Err(CtrgError::Format { .. })));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
