//! Embeds every `schemas/*.json` of the workspace into the core crate, so the binary carries the
//! table contracts, and generates one typed row struct per table from the same files, so a table's
//! columns are declared once: in its schema.
use std::{env, fs, path::PathBuf};

use serde_json::Value;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let dir = manifest.join("../../schemas");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(rd) = fs::read_dir(&dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|s| s.to_str()) == Some("json") {
                println!("cargo:rerun-if-changed={}", p.display());
                let stem = p.file_stem().unwrap().to_string_lossy().to_string();
                names.push((stem, p.canonicalize().unwrap()));
            }
        }
    }
    names.sort();
    let mut out = String::from(
        "/// (table name, schema JSON) for every file in `schemas/`.\npub static EMBEDDED: &[(&str, &str)] = &[\n",
    );
    for (n, p) in &names {
        out.push_str(&format!(
            "    ({n:?}, include_str!({:?})),\n",
            p.display().to_string()
        ));
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    fs::write(out_dir.join("schemas.rs"), out).unwrap();
    let mut rows = String::new();
    for (n, p) in &names {
        let schema: Value = serde_json::from_str(&fs::read_to_string(p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        rows.push_str(&row_struct(n, &schema));
    }
    fs::write(out_dir.join("rows.rs"), rows).unwrap();
}

/// `truth_findings` -> `TruthFindingsRow`.
fn struct_name(table: &str) -> String {
    let mut s: String = table
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    s.push_str("Row");
    s
}

/// The Rust type of a schema type (see `mg3d_core::table::parse_type` for the grammar).
fn rust_type(ty: &str) -> String {
    let ty = ty.trim();
    let inner = |p: &str| ty.strip_prefix(p).and_then(|r| r.strip_suffix('>'));
    if let Some(t) = inner("list<") {
        return format!("Vec<{}>", rust_type(t));
    }
    if let Some(t) = inner("fixed_size_list<") {
        let (t, n) = t.rsplit_once(',').expect("fixed_size_list<T, N>");
        return format!("[{}; {}]", rust_type(t), n.trim());
    }
    match ty {
        "bool" => "bool",
        "int8" => "i8",
        "int16" => "i16",
        "int32" => "i32",
        "int64" => "i64",
        "uint8" => "u8",
        "uint16" => "u16",
        "uint32" => "u32",
        "uint64" => "u64",
        "float32" => "f32",
        "float64" => "f64",
        "utf8" => "String",
        "binary" => "Vec<u8>",
        _ => panic!("unknown schema type {ty:?}"),
    }
    .to_string()
}

fn row_struct(table: &str, schema: &Value) -> String {
    let name = struct_name(table);
    let description = schema["description"].as_str().unwrap_or_default();
    let mut s = format!(
        "#[doc = {:?}]\n#[doc = \"\"]\n#[doc = {:?}]\n\
         #[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]\n\
         pub struct {name} {{\n",
        format!("One row of table `{table}`: {description}"),
        format!("Generated from `schemas/{table}.json`."),
    );
    for c in schema["columns"].as_array().expect("columns") {
        let col = c["name"].as_str().expect("column name");
        let mut ty = rust_type(c["type"].as_str().expect("column type"));
        if c["nullable"].as_bool().expect("nullable") {
            ty = format!("Option<{ty}>");
        }
        let ident = if matches!(col, "type" | "match" | "ref" | "move" | "self" | "crate") {
            format!("r#{col}")
        } else {
            col.to_string()
        };
        s.push_str(&format!(
            "    #[doc = {:?}]\n    pub {ident}: {ty},\n",
            c["meaning"].as_str().unwrap_or_default()
        ));
    }
    s.push_str(&format!(
        "}}\n\nimpl crate::table::Row for {name} {{\n    const TABLE: &'static str = {table:?};\n}}\n\n"
    ));
    s
}
