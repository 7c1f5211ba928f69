//! Bad pipeline files give errors that name the file, the line and the fix.

use std::path::Path;
use std::sync::Arc;

use mg3d_core::stage::{
    InputDecl, ParamDef, ParamType, Stage, StageContext, StageError, StageRegistry,
};
use serde_json::{Value, json};

struct Src;
impl Stage for Src {
    fn kind(&self) -> &'static str {
        "src"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn describe(&self) -> &'static str {
        "source"
    }
    fn params(&self) -> Vec<ParamDef> {
        vec![
            ParamDef::new("n", ParamType::Int, json!(3), "count"),
            ParamDef::new("ratio", ParamType::Float, json!(0.5), "ratio"),
        ]
    }
    fn run(&self, _: &StageContext) -> Result<Value, StageError> {
        Ok(json!({}))
    }
}
struct Sink;
impl Stage for Sink {
    fn kind(&self) -> &'static str {
        "sink"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn describe(&self) -> &'static str {
        "sink"
    }
    fn params(&self) -> Vec<ParamDef> {
        vec![]
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![InputDecl {
            kind: "src",
            required: true,
        }]
    }
    fn run(&self, _: &StageContext) -> Result<Value, StageError> {
        Ok(json!({}))
    }
}

fn reg() -> StageRegistry {
    let mut r = StageRegistry::new();
    r.register(Arc::new(Src)).register(Arc::new(Sink));
    r
}

fn err(text: &str) -> mg3d_core::PipelineError {
    mg3d_core::Pipeline::parse(Path::new("pipelines/bad.toml"), text, &reg()).unwrap_err()
}

const HEAD: &str = "[pipeline]\nname = \"p\"\nsalt = \"test-salt-0123456789\"\n";

#[test]
fn unknown_key_names_line() {
    let e = err(&format!("{HEAD}\n[stages.a]\nkind = \"src\"\nkinds = 3\n"));
    assert_eq!(e.line, Some(7), "{e}");
    assert!(e.message.contains("unknown field `kinds`"), "{e}");
    assert!(e.to_string().starts_with("pipelines/bad.toml:7:"), "{e}");
    assert!(
        e.fix.contains("[stages.NAME] takes kind, inputs, params"),
        "{e}"
    );
}

#[test]
fn unknown_kind_lists_known_kinds() {
    let e = err(&format!("{HEAD}[stages.a]\nkind = \"sorc\"\n"));
    assert_eq!(e.line, Some(5));
    assert!(e.message.contains("unknown kind \"sorc\""), "{e}");
    assert_eq!(e.fix, "use one of: sink, src");
}

#[test]
fn missing_input_names_stages() {
    let e = err(&format!(
        "{HEAD}[stages.a]\nkind = \"src\"\n[stages.b]\nkind = \"sink\"\ninputs = [\"a\", \"x\"]\n"
    ));
    assert_eq!(e.line, Some(8), "{e}");
    assert!(
        e.message.contains("input \"x\", which is not a stage"),
        "{e}"
    );
    assert!(
        e.fix.contains("define [stages.x] or use one of: a, b"),
        "{e}"
    );
}

#[test]
fn required_input_kind() {
    let e = err(&format!("{HEAD}[stages.b]\nkind = \"sink\"\n"));
    assert!(e.message.contains("needs an input of kind \"src\""), "{e}");
    assert_eq!(e.line, Some(4));
}

#[test]
fn cycle_is_named() {
    let e = err(&format!(
        "{HEAD}[stages.s]\nkind = \"src\"\n[stages.a]\nkind = \"sink\"\ninputs = [\"s\", \"b\"]\n[stages.b]\nkind = \"sink\"\ninputs = [\"s\", \"a\"]\n"
    ));
    assert!(
        e.message.contains("cycle: a -> b -> a") || e.message.contains("cycle: b -> a -> b"),
        "{e}"
    );
    assert!(e.line.is_some());
    assert!(e.fix.contains("acyclic"));
}

#[test]
fn unknown_and_mistyped_params() {
    let e = err(&format!(
        "{HEAD}[stages.a]\nkind = \"src\"\n[stages.a.params]\nn = 3\nnn = 4\n"
    ));
    assert_eq!(e.line, Some(8), "{e}");
    assert!(e.message.contains("unknown param \"nn\""), "{e}");
    assert_eq!(e.fix, "valid params of src: n, ratio");
    let e = err(&format!(
        "{HEAD}[stages.a]\nkind = \"src\"\nparams = {{ n = \"three\" }}\n"
    ));
    assert!(
        e.message.contains("param \"n\" must be Int, got string"),
        "{e}"
    );
}

#[test]
fn salt_required_and_defaults_filled() {
    let e = err("[pipeline]\nname = \"p\"\n");
    assert!(e.message.contains("no salt"), "{e}");
    let p = mg3d_core::Pipeline::parse(
        Path::new("ok.toml"),
        &format!("{HEAD}[stages.a]\nkind = \"src\"\nparams = {{ ratio = 1 }}\n"),
        &reg(),
    )
    .unwrap();
    assert_eq!(p.stages[0].params.canonical(), r#"{"n":3,"ratio":1.0}"#);
    let e = err("[pipeline]\nname = \"p\"\nsalt = \"test-salt-0123456789\"\n[stages.a\n");
    assert_eq!(e.line, Some(4), "{e}");
}

#[test]
fn empty_or_short_salts_are_refused_with_the_fix() {
    for salt in ["", "short-salt"] {
        let e = err(&format!("[pipeline]\nname = \"p\"\nsalt = \"{salt}\"\n"));
        assert!(e.message.contains("at least 16"), "{e}");
        assert!(e.fix.contains("openssl rand"), "{e}");
    }
}
