//! Clause-level finding targets: entity mentions land in the clause holding them, by section and
//! byte offset.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int32Array, StringArray};
use mg3d_core::labels::CT_RATE_LABELS;
use mg3d_core::table::{TableSchema, write_columns};
use mg3d_eval::entity_align::{read_clause_targets, target_row};

fn strs(v: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}
fn ints(v: &[Option<i32>]) -> ArrayRef {
    Arc::new(Int32Array::from(v.to_vec()))
}

/// One entity row: (report, section, start, surface, label, type, assertion).
type Mention<'a> = (
    &'a str,
    &'a str,
    i32,
    &'a str,
    Option<&'a str>,
    &'a str,
    &'a str,
);

fn write_entities(path: &std::path::Path, rows: &[Mention]) {
    let n = rows.len();
    let col = |f: &dyn Fn(&Mention) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let columns: Vec<ArrayRef> = vec![
        col(&|r| Some(r.0.into())),
        col(&|r| Some(r.1.into())),
        ints(&vec![Some(0); n]),
        ints(&(0..n as i32).map(Some).collect::<Vec<_>>()),
        ints(&rows.iter().map(|r| Some(r.2)).collect::<Vec<_>>()),
        ints(
            &rows
                .iter()
                .map(|r| Some(r.2 + r.3.len() as i32))
                .collect::<Vec<_>>(),
        ),
        col(&|r| Some(r.3.into())),
        col(&|r| Some(r.3.to_lowercase())),
        col(&|r| r.4.map(String::from)),
        col(&|r| Some(r.5.into())),
        col(&|r| Some(r.6.into())),
        strs(&vec![None; n]),
        Arc::new(BooleanArray::from(vec![false; n])),
        Arc::new(BooleanArray::from(vec![false; n])),
        strs(&vec![None; n]),
        Arc::new(Float64Array::from(vec![None; n])),
        strs(&vec![None; n]),
        ints(&vec![None; n]),
        strs(&vec![Some("test"); n]),
    ];
    write_columns(path, &TableSchema::get("entities").unwrap(), columns).unwrap();
}

#[test]
fn mentions_land_in_their_clauses() {
    let dir = tempfile::tempdir().unwrap();
    // Report r: findings "No pleural effusion, small nodule in the RUL. Heart is enlarged."
    //   clause 0 = [0, 20) "No pleural effusion,", clause 1 = [21, 45), clause 2 = [46, 63);
    // impression "Cardiomegaly." = clause 3 = [0, 13).
    let clauses = [
        ("findings", 0, 0, 20),
        ("findings", 1, 21, 45),
        ("findings", 2, 46, 63),
        ("impression", 3, 0, 13),
    ];
    write_columns(
        &dir.path().join("clauses.parquet"),
        &TableSchema::get("clauses").unwrap(),
        vec![
            strs(&[Some("r"); 4]),
            strs(&clauses.iter().map(|c| Some(c.0)).collect::<Vec<_>>()),
            ints(&[Some(1), Some(1), Some(2), Some(3)]),
            ints(&clauses.iter().map(|c| Some(c.1)).collect::<Vec<_>>()),
            ints(&clauses.iter().map(|c| Some(c.2)).collect::<Vec<_>>()),
            ints(&clauses.iter().map(|c| Some(c.3)).collect::<Vec<_>>()),
            strs(&[
                Some("No pleural effusion,"),
                Some("small nodule in the RUL."),
                Some("Heart is enlarged."),
                Some("Cardiomegaly."),
            ]),
        ],
    )
    .unwrap();
    let rows: Vec<Mention> = vec![
        (
            "r",
            "findings",
            3,
            "pleural effusion",
            Some("Pleural effusion"),
            "OBSERVATION",
            "absent",
        ),
        (
            "r",
            "findings",
            27,
            "nodule",
            Some("Lung nodule"),
            "OBSERVATION",
            "present",
        ),
        // Anatomy and uncertain mentions give no target.
        ("r", "findings", 41, "RUL", None, "ANATOMY", "present"),
        (
            "r",
            "findings",
            46,
            "Heart",
            Some("Cardiomegaly"),
            "OBSERVATION",
            "uncertain",
        ),
        // Impression offsets count from the impression's start: clause 3, not clause 0.
        (
            "r",
            "impression",
            0,
            "Cardiomegaly",
            Some("Cardiomegaly"),
            "OBSERVATION",
            "present",
        ),
        // A second, absent mention of the nodule in the same clause does not override the present one.
        (
            "r",
            "findings",
            30,
            "nodule",
            Some("Lung nodule"),
            "OBSERVATION",
            "absent",
        ),
        // A mention outside every clause span is dropped.
        (
            "r",
            "findings",
            200,
            "atelectasis",
            Some("Atelectasis"),
            "OBSERVATION",
            "present",
        ),
    ];
    write_entities(&dir.path().join("entities.parquet"), &rows);
    let t = read_clause_targets(
        &dir.path().join("clauses.parquet"),
        &dir.path().join("entities.parquet"),
    )
    .unwrap();
    let at = |l: &str| CT_RATE_LABELS.iter().position(|x| *x == l).unwrap();
    let r = t.get("r");
    let row0 = target_row(r, 0);
    assert_eq!(row0[at("Pleural effusion")], -1.0);
    assert_eq!(row0.iter().filter(|&&v| v != 0.0).count(), 1);
    let row1 = target_row(r, 1);
    assert_eq!(row1[at("Lung nodule")], 1.0);
    assert_eq!(row1.iter().filter(|&&v| v != 0.0).count(), 1);
    assert!(target_row(r, 2).iter().all(|&v| v == 0.0));
    let row3 = target_row(r, 3);
    assert_eq!(row3[at("Cardiomegaly")], 1.0);
    assert!(target_row(r, 0)[at("Cardiomegaly")] == 0.0);
    // Unknown reports and clauses give all-zero rows.
    assert!(target_row(t.get("other"), 0).iter().all(|&v| v == 0.0));
    assert!(target_row(r, 9).iter().all(|&v| v == 0.0));
}
