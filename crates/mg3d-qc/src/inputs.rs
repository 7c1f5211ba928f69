//! Reading the report stage's inputs: upstream output directories by kind, Parquet tables (checked
//! against their contracts) as typed rows, row counts and JSON files. Every reader returns a
//! `Result<_, String>` whose error is a note for the page, never a stage failure.

use std::fs::File;
use std::path::{Path, PathBuf};

use mg3d_core::stage::StageInput;
use mg3d_core::table::{Row, read_rows};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use crate::INPUT_KINDS;

/// A section's data, or the note that replaces it on the page (missing input, unreadable table).
pub type Part<T> = Result<T, String>;

/// The upstream outputs the page reads.
#[derive(Debug, Clone)]
pub struct Inputs {
    stages: Vec<StageInput>,
}

/// Position of `kind` in the page order ([`INPUT_KINDS`], a pipeline's natural order); kinds not
/// named there follow.
fn kind_rank(kind: &str) -> usize {
    INPUT_KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(INPUT_KINDS.len())
}

impl Inputs {
    /// Wraps the stage's inputs, ordered by [`INPUT_KINDS`], then kind and name.
    pub fn new(stages: &[StageInput]) -> Inputs {
        let mut stages = stages.to_vec();
        stages.sort_by(|a, b| {
            (kind_rank(&a.kind), &a.kind, &a.name).cmp(&(kind_rank(&b.kind), &b.kind, &b.name))
        });
        Inputs { stages }
    }

    /// Every input, in page order.
    pub fn all(&self) -> &[StageInput] {
        &self.stages
    }

    /// The output directory of the first input of `kind`, or a note saying it is absent.
    pub fn dir(&self, kind: &str) -> Part<&Path> {
        self.stages
            .iter()
            .find(|s| s.kind == kind)
            .map(|s| s.dir.as_path())
            .ok_or_else(|| format!("no input of kind \"{kind}\" in this pipeline"))
    }

    /// `file` inside the output of the first input of `kind`.
    pub fn file(&self, kind: &str, file: &str) -> Part<PathBuf> {
        Ok(self.dir(kind)?.join(file))
    }

    /// Reads `file` of the input of `kind` as typed rows of its table (checked against the
    /// contract).
    pub fn rows<R: Row>(&self, kind: &str, file: &str) -> Part<Vec<R>> {
        read_rows_note(&self.file(kind, file)?).map_err(|e| format!("{kind}/{file}: {e}"))
    }

    /// Parses the JSON file `file` of the input of `kind`.
    pub fn json(&self, kind: &str, file: &str) -> Part<Value> {
        read_json(&self.file(kind, file)?).map_err(|e| format!("{kind}/{file}: {e}"))
    }
}

/// Parses a JSON file.
pub fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| io_note(path, &e))?;
    serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))
}

fn io_note(path: &Path, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!("{} is missing", file_name(path))
    } else {
        format!("cannot read {}: {e}", file_name(path))
    }
}

/// The last component of a path (pages never show absolute paths: they depend on the machine).
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `msg` with `path` replaced by its file name: notes never show where the work dir is.
pub fn scrub(msg: &str, path: &Path) -> String {
    msg.replace(&path.display().to_string(), &file_name(path))
}

/// Row count of a Parquet file from its footer (no contract check: counts only).
pub fn parquet_rows(path: &Path) -> Result<i64, String> {
    let f = File::open(path).map_err(|e| io_note(path, &e))?;
    let b = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| format!("not Parquet: {e}"))?;
    Ok(b.metadata().file_metadata().num_rows())
}

/// The `*.parquet` files at the top of `dir`, sorted by name.
pub fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_note(dir, &e))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads a table file as typed rows; the error is a note naming no absolute path.
pub fn read_rows_note<R: Row>(path: &Path) -> Result<Vec<R>, String> {
    if !path.is_file() {
        return Err("missing".into());
    }
    read_rows(path).map_err(|e| scrub(&e.to_string(), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, kind: &str) -> StageInput {
        StageInput {
            name: name.into(),
            kind: kind.into(),
            dir: PathBuf::from(format!("/nowhere/{name}")),
        }
    }

    #[test]
    fn inputs_are_in_pipeline_order_and_absent_kinds_are_notes() {
        let i = Inputs::new(&[
            input("z", "custom"),
            input("t", "train"),
            input("i", "ingest"),
            input("a", "custom"),
        ]);
        let names: Vec<&str> = i.all().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["i", "t", "a", "z"]);
        assert!(
            i.dir("eval")
                .unwrap_err()
                .contains("no input of kind \"eval\"")
        );
        assert!(i.dir("train").is_ok());
    }

    #[test]
    fn missing_files_are_notes_naming_only_the_file() {
        let i = Inputs::new(&[input("g", "graph")]);
        let e = i.json("graph", "graph_stats.json").unwrap_err();
        assert!(e.contains("graph_stats.json is missing"), "{e}");
        assert!(!e.contains("/nowhere"), "{e}");
        let e = i
            .rows::<mg3d_core::rows::EdgesRow>("graph", "edges.parquet")
            .unwrap_err();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn unreadable_tables_are_notes_without_the_directory() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.parquet");
        std::fs::write(&p, b"not parquet").unwrap();
        let e = read_rows_note::<mg3d_core::rows::MetricsRow>(&p).unwrap_err();
        assert!(e.contains("metrics.parquet"), "{e}");
        assert!(!e.contains(&d.path().display().to_string()), "{e}");
        assert!(parquet_rows(&p).unwrap_err().starts_with("not Parquet"));
        assert_eq!(parquet_files(d.path()).unwrap(), vec![p]);
    }
}
