//! `mg3d stages` and `mg3d schema`: the stage kinds and table contracts a binary knows.

use mg3d_core::StageRegistry;
use mg3d_core::table::{TableSchema, check_file};

use crate::{Fail, SchemaCmd};

/// `mg3d stages`: every stage kind with its inputs and parameters.
pub(crate) fn cmd_stages(reg: &StageRegistry) {
    for kind in reg.kinds() {
        let s = reg.get(kind).unwrap();
        println!(
            "{kind} (code version {}): {}",
            s.code_version(),
            s.describe()
        );
        for i in s.inputs() {
            println!(
                "  input  {} {}",
                i.kind,
                if i.required {
                    "(required)"
                } else {
                    "(optional)"
                }
            );
        }
        for d in s.params() {
            let def = d
                .default
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "(required)".into());
            println!(
                "  param  {:<24} {:?} = {:<20} {}",
                d.name,
                d.ty,
                def,
                d.summary()
            );
        }
    }
}

/// `mg3d schema`.
pub(crate) fn cmd_schema(cmd: SchemaCmd, json: bool) -> Result<(), Fail> {
    match cmd {
        SchemaCmd::Check { file, table } => match check_file(&file, table.as_deref()) {
            Ok((t, rows)) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"file": file, "table": t, "rows": rows, "ok": true})
                    );
                } else {
                    println!("{}: matches table {t} ({rows} rows)", file.display());
                }
            }
            Err(e) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"file": file, "ok": false, "error": e.to_string()})
                    );
                }
                return Err(Fail(3, e.into()));
            }
        },
        SchemaCmd::List => {
            for n in TableSchema::names() {
                let s = TableSchema::get(n)?;
                println!("{:<20} v{}  {}", n, s.version, s.description);
            }
        }
        SchemaCmd::Show { table } => {
            let s = TableSchema::get(&table).map_err(|e| Fail(2, e.into()))?;
            println!("{} (version {}): {}", s.name, s.version, s.description);
            for c in &s.columns {
                println!(
                    "  {:<20} {:<28} {:<9} {}",
                    c.name,
                    c.type_name,
                    if c.nullable { "nullable" } else { "not null" },
                    c.meaning
                );
            }
        }
    }
    Ok(())
}
