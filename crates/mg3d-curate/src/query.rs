//! `mg3d query`: polars SQL over every table a pipeline's stages wrote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use polars::sql::SQLContext;

use crate::CurateError;
use crate::view::scan;

/// The tables of a work dir: `<work>/<stage>/*.parquet` (top level of each stage's output), by
/// file stem (`volumes`, `entities`, `edges`, ...). When two stages wrote the same stem, the first
/// stage in `stages` order owns the bare name; every table is also available as `<stage>_<stem>`.
pub fn tables(work_dir: &Path, stages: &[String]) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for st in stages {
        let dir = work_dir.join(st);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        files.sort();
        for f in files {
            let Some(stem) = f.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
                continue;
            };
            out.entry(stem.clone()).or_insert_with(|| f.clone());
            out.insert(format!("{st}_{stem}"), f);
        }
    }
    out
}

/// Runs `sql` with every table registered; errors name the known tables.
pub fn query(tables: &BTreeMap<String, PathBuf>, sql: &str) -> Result<DataFrame, CurateError> {
    let mut ctx = SQLContext::new();
    for (name, path) in tables {
        ctx.register(name, scan(path)?);
    }
    let lf = ctx.execute(sql).map_err(|e| {
        CurateError::Rule(format!(
            "{e}\n  tables: {}",
            tables.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    lf.collect().map_err(|e| CurateError::Rule(e.to_string()))
}

/// Writes a result as `.parquet` or `.csv` (by extension), atomically.
pub fn write_result(df: &mut DataFrame, path: &Path) -> Result<(), CurateError> {
    let tmp = mg3d_core::fsutil::tmp_sibling(path);
    let io = |e: std::io::Error| CurateError::Output(format!("{}: {e}", path.display()));
    let pe = |e: PolarsError| CurateError::Output(format!("{}: {e}", path.display()));
    let f = std::fs::File::create(&tmp).map_err(io)?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => {
            ParquetWriter::new(f).finish(df).map_err(pe)?;
        }
        Some("csv") => {
            CsvWriter::new(f).finish(df).map_err(pe)?;
        }
        _ => {
            let _ = std::fs::remove_file(&tmp);
            return Err(CurateError::Output(format!(
                "{}: use a .parquet or .csv file name",
                path.display()
            )));
        }
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// The rows of a result as JSON objects (one string per row); nested values become their text.
pub fn json_lines(df: &DataFrame) -> Result<Vec<String>, CurateError> {
    use serde_json::{Map, Value};
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let row = df
            .get_row(i)
            .map_err(|e| CurateError::Output(e.to_string()))?;
        let mut m = Map::new();
        for (name, v) in names.iter().zip(row.0) {
            let j = match v {
                AnyValue::Null => Value::Null,
                AnyValue::Boolean(b) => Value::Bool(b),
                AnyValue::String(s) => Value::String(s.to_string()),
                AnyValue::StringOwned(s) => Value::String(s.to_string()),
                AnyValue::Int8(x) => x.into(),
                AnyValue::Int16(x) => x.into(),
                AnyValue::Int32(x) => x.into(),
                AnyValue::Int64(x) => x.into(),
                AnyValue::UInt8(x) => x.into(),
                AnyValue::UInt16(x) => x.into(),
                AnyValue::UInt32(x) => x.into(),
                AnyValue::UInt64(x) => x.into(),
                AnyValue::Float32(x) => serde_json::Number::from_f64(x as f64)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
                AnyValue::Float64(x) => serde_json::Number::from_f64(x)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
                other => Value::String(other.to_string()),
            };
            m.insert(name.clone(), j);
        }
        out.push(Value::Object(m).to_string());
    }
    Ok(out)
}
