//! Schema-checked tables: violations name the column; files round-trip and are checked on read.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use mg3d_core::table::{TableError, TableSchema, read_table, write_table};

fn schema() -> TableSchema {
    TableSchema::from_json(
        "toy",
        r#"{"table": "toy", "version": 1, "description": "test",
            "columns": [
              {"name": "id", "type": "utf8", "nullable": false, "meaning": "id"},
              {"name": "n", "type": "int32", "nullable": true, "meaning": "n"}
            ]}"#,
    )
    .unwrap()
}

fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        cols.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

fn violation_column(e: TableError) -> String {
    match e {
        TableError::Violation { column, .. } => column,
        other => panic!("expected a violation, got {other}"),
    }
}

#[test]
fn violations_name_the_column() {
    let s = schema();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("toy.parquet");
    let nulls = batch(vec![
        (
            "id",
            Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
        ),
        ("n", Arc::new(Int32Array::from(vec![1, 2]))),
    ]);
    let e = write_table(&p, &s, &nulls).unwrap_err();
    assert!(
        e.to_string().contains("column \"id\": 1 null value(s)"),
        "{e}"
    );
    assert_eq!(violation_column(e), "id");
    assert!(!p.exists(), "a failed write leaves no file");

    let wrong_type = batch(vec![
        ("id", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
        ("n", Arc::new(Float64Array::from(vec![1.0]))),
    ]);
    let e = write_table(&p, &s, &wrong_type).unwrap_err();
    assert!(
        e.to_string()
            .contains("type Float64 does not match the schema's int32"),
        "{e}"
    );

    let missing = batch(vec![(
        "id",
        Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
    )]);
    assert_eq!(
        violation_column(write_table(&p, &s, &missing).unwrap_err()),
        "n"
    );

    let extra = batch(vec![
        ("id", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
        ("n", Arc::new(Int32Array::from(vec![1]))),
        ("zz", Arc::new(Int32Array::from(vec![1]))),
    ]);
    assert_eq!(
        violation_column(write_table(&p, &s, &extra).unwrap_err()),
        "zz"
    );
}

#[test]
fn round_trip_and_read_check() {
    let s = schema();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("toy.parquet");
    let ok = batch(vec![
        (
            "id",
            Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
        ),
        ("n", Arc::new(Int32Array::from(vec![Some(1), None]))),
    ]);
    write_table(&p, &s, &ok).unwrap();
    let first = std::fs::read(&p).unwrap();
    write_table(&p, &s, &ok).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), first, "same batch, same bytes");
    let back = read_table(&p, &s).unwrap();
    assert_eq!(back[0].num_rows(), 2);
    assert_eq!(back[0].schema().field(0).data_type(), &DataType::Utf8);
    assert!(!back[0].schema().field(0).is_nullable());

    // A file of another shape fails the read check, naming the column.
    let other = TableSchema::from_json(
        "toy",
        r#"{"table": "toy", "version": 1, "description": "t", "columns": [
            {"name": "id", "type": "utf8", "nullable": false, "meaning": "id"},
            {"name": "n", "type": "int64", "nullable": true, "meaning": "n"}]}"#,
    )
    .unwrap();
    let e = read_table(&p, &other).unwrap_err();
    assert_eq!(violation_column(e), "n");
}

#[test]
fn embedded_schemas_parse() {
    let names = TableSchema::names();
    assert!(!names.is_empty());
    for n in names {
        let s = TableSchema::get(n).unwrap();
        assert!(!s.columns.is_empty(), "{n}");
        assert!(
            s.columns.iter().all(|c| !c.meaning.is_empty()),
            "{n}: every column has a meaning"
        );
    }
}
