//! Engine tests with toy stages: reruns, selection, atomicity, determinism, status reasons, errors.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mg3d_core::engine::{Engine, RunOptions, StageState};
use mg3d_core::pipeline::Pipeline;
use mg3d_core::stage::{
    InputDecl, ParamDef, ParamType, Stage, StageContext, StageError, StageRegistry,
};
use serde_json::{Value, json};

/// Writes `value` (and a derived file) to its output.
struct Gen {
    runs: Arc<AtomicUsize>,
    version: &'static str,
}
impl Stage for Gen {
    fn kind(&self) -> &'static str {
        "gen"
    }
    fn code_version(&self) -> &'static str {
        self.version
    }
    fn describe(&self) -> &'static str {
        "writes a value"
    }
    fn params(&self) -> Vec<ParamDef> {
        vec![
            ParamDef::new("value", ParamType::Int, json!(1), "the value"),
            ParamDef::new(
                "fail_after_write",
                ParamType::Bool,
                json!(false),
                "fail after a partial write",
            ),
        ]
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let nth = self.runs.fetch_add(1, Ordering::SeqCst);
        let v = ctx.params.as_map()["value"].as_i64().unwrap();
        fs::write(ctx.out_dir.join("value.txt"), format!("{v}\n"))?;
        if ctx.params.as_map()["fail_after_write"].as_bool().unwrap() {
            return Err(StageError::msg("simulated failure halfway"));
        }
        fs::create_dir_all(ctx.out_dir.join("sub"))?;
        fs::write(ctx.out_dir.join("sub/square.txt"), format!("{}\n", v * v))?;
        // Something only this run knows: reported, never in the lockfile.
        Ok(json!({"value": v, "this_run": {"nth_run": nth}}))
    }
}

/// Reads its `gen` input and writes the value doubled.
struct Double {
    runs: Arc<AtomicUsize>,
}
impl Stage for Double {
    fn kind(&self) -> &'static str {
        "double"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn uses_seed(&self) -> bool {
        true
    }
    fn describe(&self) -> &'static str {
        "doubles"
    }
    fn params(&self) -> Vec<ParamDef> {
        vec![]
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![InputDecl {
            kind: "gen",
            required: true,
        }]
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let v: i64 = fs::read_to_string(ctx.input("gen")?.join("value.txt"))?
            .trim()
            .parse()
            .unwrap();
        fs::write(ctx.out_dir.join("double.txt"), format!("{}\n", 2 * v))?;
        Ok(json!({}))
    }
}

/// Processes `n` items through the item store; fails at item `fail_at` if set.
struct Items {
    made: Arc<Mutex<Vec<String>>>,
}
impl Stage for Items {
    fn kind(&self) -> &'static str {
        "items"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn describe(&self) -> &'static str {
        "per-item work"
    }
    fn params(&self) -> Vec<ParamDef> {
        vec![
            ParamDef::new("n", ParamType::Int, json!(10), "items"),
            ParamDef::new("fail_at", ParamType::Int, json!(-1), "fail at this item"),
        ]
    }
    fn item_params(&self) -> Option<Vec<&'static str>> {
        Some(vec![])
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p = ctx.params.as_map();
        let n = p["n"].as_i64().unwrap();
        let fail_at = p["fail_at"].as_i64().unwrap();
        let mut all = String::new();
        for i in 0..n {
            let id = format!("item{i}");
            let key = ctx.items().key(&id, &format!("content-of-{id}"));
            if i == fail_at {
                return Err(StageError::msg("killed"));
            }
            let out = ctx.items().get_or_make::<StageError>(&key, |dir| {
                self.made.lock().unwrap().push(id.clone());
                fs::write(dir.join("r.txt"), format!("{id} done\n"))?;
                Ok(())
            })?;
            all.push_str(&fs::read_to_string(out.dir().join("r.txt"))?);
        }
        fs::write(ctx.out_dir.join("all.txt"), all)?;
        Ok(json!({"n": n}))
    }
}

struct Fixture {
    gen_runs: Arc<AtomicUsize>,
    dbl_runs: Arc<AtomicUsize>,
    made: Arc<Mutex<Vec<String>>>,
    registry: StageRegistry,
}

fn fixture(gen_version: &'static str) -> Fixture {
    let gen_runs = Arc::new(AtomicUsize::new(0));
    let dbl_runs = Arc::new(AtomicUsize::new(0));
    let made = Arc::new(Mutex::new(vec![]));
    let mut registry = StageRegistry::new();
    registry
        .register(Arc::new(Gen {
            runs: gen_runs.clone(),
            version: gen_version,
        }))
        .register(Arc::new(Double {
            runs: dbl_runs.clone(),
        }))
        .register(Arc::new(Items { made: made.clone() }));
    Fixture {
        gen_runs,
        dbl_runs,
        made,
        registry,
    }
}

fn pipeline_text(work: &Path, a: i64, c: i64, a_fail: bool) -> String {
    format!(
        r#"[pipeline]
name = "toy"
work_dir = "{}"
salt = "test-salt-0123456789"
seed = 7

[stages.a]
kind = "gen"
params = {{ value = {a}, fail_after_write = {a_fail} }}

[stages.b]
kind = "double"
inputs = ["a"]

[stages.c]
kind = "gen"
params = {{ value = {c} }}

[stages.d]
kind = "double"
inputs = ["c"]
"#,
        work.display()
    )
}

fn load(reg: &StageRegistry, text: &str) -> Pipeline {
    Pipeline::parse(Path::new("toy.toml"), text, reg).unwrap()
}

fn ran(report: &mg3d_core::RunReport) -> Vec<String> {
    report
        .stages
        .iter()
        .filter(|s| s.action == "ran")
        .map(|s| s.name.clone())
        .collect()
}

fn quiet() -> RunOptions {
    RunOptions {
        quiet: true,
        ..Default::default()
    }
}

#[test]
fn param_change_reruns_only_that_stage_and_dependents() {
    let t = tempfile::tempdir().unwrap();
    let f = fixture("1");
    let eng = Engine::new(&f.registry);
    let p = load(&f.registry, &pipeline_text(t.path(), 1, 5, false));
    assert_eq!(ran(&eng.run(&p, &quiet()).unwrap()), ["a", "b", "c", "d"]);
    assert_eq!(
        ran(&eng.run(&p, &quiet()).unwrap()),
        Vec::<String>::new(),
        "second run is a no-op"
    );
    let p2 = load(&f.registry, &pipeline_text(t.path(), 2, 5, false));
    let st = eng.status(&p2, false).unwrap();
    assert_eq!(st[0].state, StageState::Stale);
    assert!(
        st[0].reasons[0].contains("params changed: value: 1 -> 2"),
        "{:?}",
        st[0].reasons
    );
    assert!(
        st[1].reasons.iter().any(|r| r.contains("input a is stale")),
        "{:?}",
        st[1].reasons
    );
    assert_eq!(st[2].state, StageState::Fresh);
    assert_eq!(ran(&eng.run(&p2, &quiet()).unwrap()), ["a", "b"]);
    assert_eq!(
        fs::read_to_string(t.path().join("b/double.txt")).unwrap(),
        "4\n"
    );
    assert_eq!(f.gen_runs.load(Ordering::SeqCst), 3);
    assert_eq!(f.dbl_runs.load(Ordering::SeqCst), 3);
}

#[test]
fn stage_selection_and_dry_run() {
    let t = tempfile::tempdir().unwrap();
    let f = fixture("1");
    let eng = Engine::new(&f.registry);
    let p = load(&f.registry, &pipeline_text(t.path(), 1, 5, false));
    // --stage on a stage whose input has no output is a usage error.
    let e = eng
        .run(
            &p,
            &RunOptions {
                only: Some("b".into()),
                quiet: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("needs the output of \"a\""), "{e}");
    eng.run(&p, &quiet()).unwrap();
    let r = eng
        .run(
            &p,
            &RunOptions {
                only: Some("b".into()),
                quiet: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(ran(&r), ["b"]);
    let r = eng
        .run(
            &p,
            &RunOptions {
                from: Some("c".into()),
                quiet: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(ran(&r), ["c", "d"]);
    let p2 = load(&f.registry, &pipeline_text(t.path(), 3, 5, false));
    let r = eng
        .run(
            &p2,
            &RunOptions {
                dry_run: true,
                quiet: true,
                ..Default::default()
            },
        )
        .unwrap();
    let would: Vec<_> = r
        .stages
        .iter()
        .filter(|s| s.action == "would-run")
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(would, ["a", "b"]);
    assert_eq!(
        fs::read_to_string(t.path().join("a/value.txt")).unwrap(),
        "1\n",
        "dry run changed nothing"
    );
    let e = eng
        .run(
            &p,
            &RunOptions {
                only: Some("zz".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no stage named \"zz\"; stages are: a, b, c, d"),
        "{e}"
    );
}

#[test]
fn failed_stage_leaves_previous_output_and_lockfile() {
    let t = tempfile::tempdir().unwrap();
    let f = fixture("1");
    let eng = Engine::new(&f.registry);
    let p = load(&f.registry, &pipeline_text(t.path(), 1, 5, false));
    eng.run(&p, &quiet()).unwrap();
    let lock_before = fs::read(t.path().join("mg3d.lock.json")).unwrap();
    let p_fail = load(&f.registry, &pipeline_text(t.path(), 9, 5, true));
    let e = eng.run(&p_fail, &quiet()).unwrap_err();
    assert!(e.to_string().contains("simulated failure halfway"), "{e}");
    assert_eq!(
        fs::read_to_string(t.path().join("a/value.txt")).unwrap(),
        "1\n"
    );
    assert!(t.path().join("a/sub/square.txt").exists());
    assert_eq!(
        fs::read(t.path().join("mg3d.lock.json")).unwrap(),
        lock_before
    );
    let leftovers = fs::read_dir(t.path().join(".tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0, "no temp output left behind");
    // The original pipeline is still fresh.
    assert!(
        eng.status(&p, true)
            .unwrap()
            .iter()
            .all(|s| s.state == StageState::Fresh)
    );
}

#[test]
fn two_runs_give_byte_identical_outputs() {
    let t1 = tempfile::tempdir().unwrap();
    let t2 = tempfile::tempdir().unwrap();
    let f = fixture("1");
    let eng = Engine::new(&f.registry);
    for t in [&t1, &t2] {
        let p = load(&f.registry, &pipeline_text(t.path(), 4, 5, false));
        let report = eng.run(&p, &quiet()).unwrap();
        assert!(
            report.stages[0].summary["this_run"]["nth_run"].is_u64(),
            "{report:?}"
        );
    }
    for stage in ["a", "b", "c", "d"] {
        let h1 = mg3d_core::fsutil::hash_dir(&t1.path().join(stage)).unwrap();
        let h2 = mg3d_core::fsutil::hash_dir(&t2.path().join(stage)).unwrap();
        assert_eq!(h1, h2, "stage {stage}");
    }
    // The lockfiles agree too: keys hold no absolute paths or times, and summaries no run-only
    // facts (the two runs' `this_run` differ).
    let l1: Value =
        serde_json::from_slice(&fs::read(t1.path().join("mg3d.lock.json")).unwrap()).unwrap();
    let l2: Value =
        serde_json::from_slice(&fs::read(t2.path().join("mg3d.lock.json")).unwrap()).unwrap();
    assert_eq!(l1, l2);
}

#[test]
fn status_explains_each_reason() {
    let t = tempfile::tempdir().unwrap();
    let f = fixture("1");
    let eng = Engine::new(&f.registry);
    let p = load(&f.registry, &pipeline_text(t.path(), 1, 5, false));
    let st = eng.status(&p, false).unwrap();
    assert!(
        st.iter()
            .all(|s| s.state == StageState::Missing && s.reasons == ["never run"])
    );
    eng.run(&p, &quiet()).unwrap();

    // Code changed.
    let f2 = fixture("2");
    let p2 = load(&f2.registry, &pipeline_text(t.path(), 1, 5, false));
    let st = Engine::new(&f2.registry).status(&p2, false).unwrap();
    assert!(
        st[0]
            .reasons
            .iter()
            .any(|r| r == "code changed: gen version 1 -> 2"),
        "{:?}",
        st[0].reasons
    );

    // Output modified (content only: caught by --verify) and output missing.
    fs::write(t.path().join("c/value.txt"), "6\n").unwrap();
    let st = eng.status(&p, false).unwrap();
    assert_eq!(
        st[2].state,
        StageState::Fresh,
        "same size: only a content check sees it"
    );
    let st = eng.status(&p, true).unwrap();
    assert_eq!(st[2].name, "c");
    assert!(
        st[2]
            .reasons
            .iter()
            .any(|r| r.contains("output modified: value.txt changed content")),
        "{:?}",
        st[2].reasons
    );
    assert!(
        st[3].reasons.iter().any(|r| r.contains("input c is stale")),
        "{:?}",
        st[3].reasons
    );
    fs::write(t.path().join("c/extra.txt"), "x").unwrap();
    assert!(eng.status(&p, false).unwrap()[2].reasons[0].contains("1 unexpected"));
    fs::remove_dir_all(t.path().join("a")).unwrap();
    let st = eng.status(&p, false).unwrap();
    assert_eq!(st[0].state, StageState::Missing);
    assert!(st[0].reasons[0].contains("is missing"));

    // Rerunning repairs it; then an input whose output changed makes the dependent stale with "input changed".
    eng.run(&p, &quiet()).unwrap();
    assert!(
        eng.status(&p, true)
            .unwrap()
            .iter()
            .all(|s| s.state == StageState::Fresh)
    );
    let p3 = load(&f.registry, &pipeline_text(t.path(), 1, 8, false));
    eng.run(
        &p3,
        &RunOptions {
            only: Some("c".into()),
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let st = eng.status(&p3, false).unwrap();
    assert!(
        st[3].reasons.iter().any(|r| r == "input c changed"),
        "{:?}",
        st[3].reasons
    );
}

#[test]
fn per_item_work_resumes_and_adds_only_new_items() {
    let t = tempfile::tempdir().unwrap();
    let f = fixture("1");
    let eng = Engine::new(&f.registry);
    let text = |n: i64, fail_at: i64| {
        format!(
            "[pipeline]\nname='i'\nwork_dir='{}'\nsalt='test-salt-0123456789'\n[stages.it]\nkind='items'\nparams={{n={n}, fail_at={fail_at}}}\n",
            t.path().display()
        )
    };
    let made = |f: &Fixture| std::mem::take(&mut *f.made.lock().unwrap());
    // Killed at item 6: items 0..6 are finished and kept, the stage output is not promoted.
    let p = Pipeline::parse(Path::new("i.toml"), &text(10, 6), &f.registry).unwrap();
    assert!(eng.run(&p, &quiet()).is_err());
    assert_eq!(made(&f).len(), 6);
    assert!(!t.path().join("it").exists());
    // The rerun makes only the 4 remaining items.
    let p = Pipeline::parse(Path::new("i.toml"), &text(10, -1), &f.registry).unwrap();
    eng.run(&p, &quiet()).unwrap();
    assert_eq!(made(&f), ["item6", "item7", "item8", "item9"]);
    // Adding 5 items makes those 5.
    let p = Pipeline::parse(Path::new("i.toml"), &text(15, -1), &f.registry).unwrap();
    eng.run(&p, &quiet()).unwrap();
    assert_eq!(made(&f), ["item10", "item11", "item12", "item13", "item14"]);
    assert_eq!(
        fs::read_to_string(t.path().join("it/all.txt"))
            .unwrap()
            .lines()
            .count(),
        15
    );
    // A forced rerun reuses every item.
    eng.run(
        &p,
        &RunOptions {
            force: true,
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(made(&f).is_empty());
}

#[test]
fn a_new_seed_reruns_only_the_stages_that_use_it() {
    let t = tempfile::tempdir().unwrap();
    let f = fixture("1");
    let eng = Engine::new(&f.registry);
    let p = load(&f.registry, &pipeline_text(t.path(), 1, 5, false));
    assert_eq!(ran(&eng.run(&p, &quiet()).unwrap()), ["a", "b", "c", "d"]);
    let text = pipeline_text(t.path(), 1, 5, false).replace("seed = 7", "seed = 8");
    let p2 = load(&f.registry, &text);
    let st = eng.status(&p2, false).unwrap();
    assert_eq!(st[0].state, StageState::Fresh);
    assert_eq!(st[1].state, StageState::Stale, "{:?}", st[1].reasons);
    assert!(st[1].reasons[0].contains("seed"), "{:?}", st[1].reasons);
    assert_eq!(ran(&eng.run(&p2, &quiet()).unwrap()), ["b", "d"]);
}
