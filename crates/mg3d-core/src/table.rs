//! Schema-checked Parquet tables.
//!
//! Each table has a contract in `schemas/<table>.json` (embedded at build time):
//! ```json
//! { "table": "truth_findings", "version": 1, "description": "...",
//!   "columns": [ { "name": "patient_id", "type": "utf8", "nullable": false, "meaning": "..." } ] }
//! ```
//! Types: `bool`, `int8..int64`, `uint8..uint64`, `float32`, `float64`, `utf8`, `binary`,
//! `list<T>`, `fixed_size_list<T, N>`. Writers check every batch (names, order, types, nulls in
//! non-nullable columns) and name the offending column; readers check the files they open.
//!
//! Stages write and read rows as the typed structs of [`crate::rows`], which the build generates
//! from the same schema files ([`write_rows`], [`read_rows`], [`TableWriter::write_rows`]), so a
//! column is declared once.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::fsutil::tmp_sibling;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/schemas.rs"));
}

/// Table errors. Each names the table or file and the column at fault.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// A batch or file does not match the table's schema.
    #[error("table {table}: column {column:?}: {detail}")]
    Violation {
        /// Table name.
        table: String,
        /// Column at fault.
        column: String,
        /// What is wrong.
        detail: String,
    },
    /// A schema file itself is invalid.
    #[error("schema {name}: {detail}")]
    BadSchema {
        /// Schema name or file.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// No schema of that name.
    #[error("no schema for table {0:?} (see schemas/)")]
    Unknown(String),
    /// I/O, Parquet or Arrow failure.
    #[error("{path}: {detail}")]
    Io {
        /// File.
        path: PathBuf,
        /// Error.
        detail: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    table: String,
    version: u32,
    description: String,
    columns: Vec<RawColumn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    nullable: bool,
    meaning: String,
}

/// One column of a table contract.
#[derive(Debug, Clone)]
pub struct ColumnDef {
    /// Name.
    pub name: String,
    /// Type as written in the schema file.
    pub type_name: String,
    /// Whether nulls are allowed.
    pub nullable: bool,
    /// One-line meaning.
    pub meaning: String,
}

/// A table contract loaded from `schemas/`.
#[derive(Debug, Clone)]
pub struct TableSchema {
    /// Table name (file stem).
    pub name: String,
    /// Schema version, written into each file's metadata.
    pub version: u32,
    /// What one row is.
    pub description: String,
    /// Columns in order.
    pub columns: Vec<ColumnDef>,
    arrow: SchemaRef,
}

/// Parses a schema type name into an Arrow type.
pub fn parse_type(s: &str) -> Result<DataType, String> {
    let s = s.trim();
    let inner = |p: &str| s.strip_prefix(p).and_then(|r| r.strip_suffix('>'));
    if let Some(t) = inner("list<") {
        return Ok(DataType::List(Arc::new(Field::new(
            "item",
            parse_type(t)?,
            true,
        ))));
    }
    if let Some(t) = inner("fixed_size_list<") {
        let (t, n) = t.rsplit_once(',').ok_or("fixed_size_list<T, N> needs N")?;
        let n: i32 = n.trim().parse().map_err(|_| format!("bad length in {s}"))?;
        return Ok(DataType::FixedSizeList(
            Arc::new(Field::new("item", parse_type(t)?, true)),
            n,
        ));
    }
    Ok(match s {
        "bool" => DataType::Boolean,
        "int8" => DataType::Int8,
        "int16" => DataType::Int16,
        "int32" => DataType::Int32,
        "int64" => DataType::Int64,
        "uint8" => DataType::UInt8,
        "uint16" => DataType::UInt16,
        "uint32" => DataType::UInt32,
        "uint64" => DataType::UInt64,
        "float32" => DataType::Float32,
        "float64" => DataType::Float64,
        "utf8" => DataType::Utf8,
        "binary" => DataType::Binary,
        _ => return Err(format!("unknown type {s:?}")),
    })
}

impl TableSchema {
    /// Parses a schema JSON text.
    pub fn from_json(name: &str, text: &str) -> Result<TableSchema, TableError> {
        let bad = |detail: String| TableError::BadSchema {
            name: name.to_string(),
            detail,
        };
        let raw: RawSchema = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if raw.table != name {
            return Err(bad(format!("file is for table {:?}", raw.table)));
        }
        let mut fields = Vec::new();
        let mut columns = Vec::new();
        for c in raw.columns {
            let dt = parse_type(&c.ty).map_err(|e| bad(format!("column {}: {e}", c.name)))?;
            fields.push(Field::new(&c.name, dt, c.nullable));
            columns.push(ColumnDef {
                name: c.name,
                type_name: c.ty,
                nullable: c.nullable,
                meaning: c.meaning,
            });
        }
        Ok(TableSchema {
            name: raw.table,
            version: raw.version,
            description: raw.description,
            columns,
            arrow: Arc::new(Schema::new(fields)),
        })
    }

    /// The contract of table `name` from the embedded `schemas/`.
    pub fn get(name: &str) -> Result<TableSchema, TableError> {
        let (_, text) = embedded::EMBEDDED
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| TableError::Unknown(name.to_string()))?;
        TableSchema::from_json(name, text)
    }

    /// Names of every embedded table contract.
    pub fn names() -> Vec<&'static str> {
        embedded::EMBEDDED.iter().map(|(n, _)| *n).collect()
    }

    /// The Arrow schema.
    pub fn arrow(&self) -> SchemaRef {
        self.arrow.clone()
    }

    fn violation(&self, column: &str, detail: impl Into<String>) -> TableError {
        TableError::Violation {
            table: self.name.clone(),
            column: column.to_string(),
            detail: detail.into(),
        }
    }

    /// Checks a schema (of a batch or file) against the contract.
    pub fn check_schema(&self, got: &Schema) -> Result<(), TableError> {
        for (i, want) in self.arrow.fields().iter().enumerate() {
            let Some(f) = got.fields().get(i) else {
                return Err(self.violation(want.name(), "missing"));
            };
            if f.name() != want.name() {
                let detail = match got.fields().iter().position(|g| g.name() == want.name()) {
                    Some(j) => format!("at position {j}, expected {i}"),
                    None => format!("missing (found {:?} at position {i})", f.name()),
                };
                return Err(self.violation(want.name(), detail));
            }
            if !types_match(f.data_type(), want.data_type()) {
                return Err(self.violation(
                    want.name(),
                    format!(
                        "type {} does not match the schema's {}",
                        f.data_type(),
                        self.columns[i].type_name
                    ),
                ));
            }
            if f.is_nullable() && !want.is_nullable() {
                return Err(self.violation(want.name(), "is nullable but the schema says not null"));
            }
        }
        if got.fields().len() > self.arrow.fields().len() {
            let extra = got.fields()[self.arrow.fields().len()].name();
            return Err(self.violation(extra, "not in the schema"));
        }
        Ok(())
    }

    /// Checks a batch: names and types, and no nulls in non-nullable columns.
    /// Returns the batch re-labelled with the contract's schema (nullability as declared).
    pub fn check_batch(&self, batch: &RecordBatch) -> Result<RecordBatch, TableError> {
        let got = batch.schema();
        for (i, want) in self.arrow.fields().iter().enumerate() {
            if let Some(f) = got.fields().get(i)
                && f.name() == want.name()
                && !want.is_nullable()
                && batch.column(i).null_count() > 0
            {
                return Err(self.violation(
                    want.name(),
                    format!(
                        "{} null value(s) in a non-nullable column",
                        batch.column(i).null_count()
                    ),
                ));
            }
        }
        // Builders mark every field nullable; compare types and names only, then relabel.
        let relaxed = Schema::new(
            got.fields()
                .iter()
                .zip(
                    self.arrow
                        .fields()
                        .iter()
                        .map(Some)
                        .chain(std::iter::repeat(None)),
                )
                .map(|(g, w)| match w {
                    Some(w) => Field::new(g.name(), g.data_type().clone(), w.is_nullable()),
                    None => g.as_ref().clone(),
                })
                .collect::<Vec<_>>(),
        );
        self.check_schema(&relaxed)?;
        RecordBatch::try_new(self.arrow.clone(), batch.columns().to_vec())
            .map_err(|e| self.violation("*", e.to_string()))
    }
}

/// Arrow types are compared ignoring the names and nullability of list item fields.
fn types_match(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y))
        | (DataType::LargeList(x), DataType::LargeList(y)) => {
            types_match(x.data_type(), y.data_type())
        }
        (DataType::FixedSizeList(x, n), DataType::FixedSizeList(y, m)) => {
            n == m && types_match(x.data_type(), y.data_type())
        }
        _ => a == b,
    }
}

/// A typed row of a table: the structs of [`crate::rows`], generated from `schemas/`.
pub trait Row: Serialize + DeserializeOwned {
    /// The table's name (its schema file's stem).
    const TABLE: &'static str;
}

impl TableSchema {
    /// Converts typed rows into one batch of this table.
    pub fn rows_to_batch<R: Row>(&self, rows: &[R]) -> Result<RecordBatch, TableError> {
        if R::TABLE != self.name {
            return Err(self.violation("*", format!("rows of table {:?}", R::TABLE)));
        }
        serde_arrow::to_record_batch(self.arrow.fields(), &rows)
            .map_err(|e| self.violation("*", e.to_string()))
    }
}

/// Writes typed rows as a whole table file (atomically, schema-checked).
pub fn write_rows<R: Row>(path: &Path, rows: &[R]) -> Result<(), TableError> {
    let schema = TableSchema::get(R::TABLE)?;
    write_table(path, &schema, &schema.rows_to_batch(rows)?)
}

/// Reads a whole table file as typed rows, checking the file against the contract first.
pub fn read_rows<R: Row>(path: &Path) -> Result<Vec<R>, TableError> {
    let schema = TableSchema::get(R::TABLE)?;
    let mut rows = Vec::new();
    for b in read_table(path, &schema)? {
        let mut part: Vec<R> = serde_arrow::from_record_batch(&b).map_err(|e| TableError::Io {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        rows.append(&mut part);
    }
    Ok(rows)
}

/// Streams schema-checked batches into a Parquet file (zstd, page statistics), written atomically.
pub struct TableWriter {
    schema: TableSchema,
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<ArrowWriter<File>>,
}

impl TableWriter {
    /// Starts writing table `schema` to `path` (the file appears only on [`TableWriter::finish`]).
    pub fn create(path: &Path, schema: &TableSchema) -> Result<TableWriter, TableError> {
        let io = |e: &dyn std::fmt::Display| TableError::Io {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        let tmp = tmp_sibling(path);
        let file = File::create(&tmp).map_err(|e| io(&e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_key_value_metadata(Some(vec![
                KeyValue::new("mg3d.table".to_string(), schema.name.clone()),
                KeyValue::new(
                    "mg3d.schema_version".to_string(),
                    schema.version.to_string(),
                ),
            ]))
            .build();
        let writer = ArrowWriter::try_new(file, schema.arrow(), Some(props)).map_err(|e| io(&e))?;
        Ok(TableWriter {
            schema: schema.clone(),
            path: path.to_path_buf(),
            tmp,
            writer: Some(writer),
        })
    }

    /// Checks and appends one batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), TableError> {
        let batch = self.schema.check_batch(batch)?;
        self.writer
            .as_mut()
            .expect("open")
            .write(&batch)
            .map_err(|e| TableError::Io {
                path: self.path.clone(),
                detail: e.to_string(),
            })
    }

    /// Appends typed rows as one batch.
    pub fn write_rows<R: Row>(&mut self, rows: &[R]) -> Result<(), TableError> {
        let batch = self.schema.rows_to_batch(rows)?;
        self.write(&batch)
    }

    /// Closes the file and moves it into place.
    pub fn finish(mut self) -> Result<(), TableError> {
        let w = self.writer.take().expect("open");
        let io = |e: &dyn std::fmt::Display| TableError::Io {
            path: self.path.clone(),
            detail: e.to_string(),
        };
        w.close().map_err(|e| io(&e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| io(&e))
    }
}

impl Drop for TableWriter {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes arrays (one per contract column, in order) as a whole table file. The arrays may come
/// from builders (every field nullable); nulls are then checked against the contract.
pub fn write_columns(
    path: &Path,
    schema: &TableSchema,
    columns: Vec<arrow::array::ArrayRef>,
) -> Result<(), TableError> {
    let fields: Vec<Field> = schema
        .arrow()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| {
        TableError::Violation {
            table: schema.name.clone(),
            column: "*".into(),
            detail: e.to_string(),
        }
    })?;
    write_table(path, schema, &batch)
}

/// Writes one batch as a whole table file.
pub fn write_table(
    path: &Path,
    schema: &TableSchema,
    batch: &RecordBatch,
) -> Result<(), TableError> {
    let mut w = TableWriter::create(path, schema)?;
    w.write(batch)?;
    w.finish()
}

/// The table name a Parquet file declares in its metadata (`mg3d.table`), if any.
pub fn declared_table(path: &Path) -> Result<Option<String>, TableError> {
    let io = |e: &dyn std::fmt::Display| TableError::Io {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let f = File::open(path).map_err(|e| io(&e))?;
    let b = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| io(&e))?;
    Ok(b.metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| {
            kv.iter()
                .find(|k| k.key == "mg3d.table")
                .and_then(|k| k.value.clone())
        }))
}

/// Reads a whole table, checking the file against the contract first.
pub fn read_table(path: &Path, schema: &TableSchema) -> Result<Vec<RecordBatch>, TableError> {
    let io = |e: &dyn std::fmt::Display| TableError::Io {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let f = File::open(path).map_err(|e| io(&e))?;
    let b = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| io(&e))?;
    schema.check_schema(b.schema())?;
    b.build()
        .map_err(|e| io(&e))?
        .map(|r| r.map_err(|e| io(&e)))
        .collect()
}

/// Checks a Parquet file against its contract (by metadata, else by file stem). Returns the table name and row count.
pub fn check_file(path: &Path, table: Option<&str>) -> Result<(String, usize), TableError> {
    let name = match table {
        Some(t) => t.to_string(),
        None => match declared_table(path)? {
            Some(t) => t,
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        },
    };
    let schema = TableSchema::get(&name)?;
    let batches = read_table(path, &schema)?;
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    Ok((name, rows))
}
