//! The `report` stage end to end: small fixture outputs for every upstream kind (written by
//! stand-in stages of those kinds), the page built by the real engine, then opened in headless
//! Chromium, which must load every embedded image. Without Chromium (Debian's `chromium`, installed
//! by `make setup`) the browser check is skipped, unless MG3D_REQUIRE_BROWSER=1.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BooleanArray, FixedSizeListArray, Float64Array, Int32Array, Int64Array, ListArray,
    StringArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::DataType;
use mg3d_core::stage::{ParamDef, Stage, StageContext, StageError, StageInput, StageRegistry};
use mg3d_core::table::{TableSchema, write_columns};
use mg3d_core::{Engine, Pipeline, RunOptions};
use mg3d_qc::{PAGE, QcStage, ReportOptions, build_page};
use mg3d_volume::Volume;
use serde_json::{Value, json};

// ------------------------------------------------------------------ fixture tables

/// A column of `n` placeholder values of type `dt` (zeros, "x", false, empty lists).
fn placeholder(dt: &DataType, n: usize) -> ArrayRef {
    match dt {
        DataType::Utf8 => Arc::new(StringArray::from(vec!["x"; n])),
        DataType::Boolean => Arc::new(BooleanArray::from(vec![false; n])),
        DataType::FixedSizeList(f, size) => Arc::new(FixedSizeListArray::new(
            f.clone(),
            *size,
            placeholder(f.data_type(), n * *size as usize),
            None,
        )),
        DataType::List(f) => Arc::new(ListArray::new(
            f.clone(),
            OffsetBuffer::new_zeroed(n),
            placeholder(f.data_type(), 0),
            None,
        )),
        other => arrow::compute::cast(&Int32Array::from(vec![0; n]), other).unwrap(),
    }
}

/// Writes contract table `table` with `n` rows: the given columns, placeholders elsewhere.
fn write(dir: &Path, file: &str, table: &str, n: usize, cols: Vec<(&str, ArrayRef)>) {
    let schema = TableSchema::get(table).unwrap();
    let arrays: Vec<ArrayRef> = schema
        .arrow()
        .fields()
        .iter()
        .map(|f| {
            cols.iter()
                .find(|c| c.0 == f.name())
                .map(|c| c.1.clone())
                .unwrap_or_else(|| placeholder(f.data_type(), n))
        })
        .collect();
    write_columns(&dir.join(file), &schema, arrays).unwrap();
}

fn strs(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

fn json_file(dir: &Path, file: &str, v: Value) {
    fs::write(dir.join(file), serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

const VOLUMES: [&str; 3] = ["v1", "v2", "v3"];
const REPORTS: [&str; 3] = ["r1", "r2", "r3"];

/// A small chest-like phantom in RAS: air, a body ellipse, two lungs and a nodule in one lung.
fn phantom(nodule: bool) -> Volume {
    let dims = [32, 28, 16];
    let mut data = Vec::with_capacity(32 * 28 * 16);
    for k in 0..16 {
        for j in 0..28 {
            for i in 0..32 {
                let (x, y) = ((i as f64 - 15.5) / 15.0, (j as f64 - 13.5) / 12.0);
                let lung = |cx: f64| ((x - cx) / 0.3).powi(2) + (y / 0.6).powi(2) < 1.0;
                let mut hu = if x * x + y * y < 1.0 { 40.0 } else { -1000.0 };
                if lung(-0.45) || lung(0.45) {
                    hu = -850.0;
                }
                if nodule && ((x - 0.45).powi(2) + y * y < 0.01) && (6..10).contains(&k) {
                    hu = 30.0;
                }
                data.push(hu as f32);
            }
        }
    }
    let affine = [
        [1.5, 0.0, 0.0, -24.0],
        [0.0, 1.5, 0.0, -21.0],
        [0.0, 0.0, 2.0, -16.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    Volume { dims, data, affine }
}

fn ingest(d: &Path) {
    write(
        d,
        "volumes.parquet",
        "volumes",
        3,
        vec![("volume_id", strs(&VOLUMES))],
    );
    write(
        d,
        "rejects.parquet",
        "rejects",
        3,
        vec![
            (
                "reason",
                strs(&["series_missing_slice", "empty_file", "empty_file"]),
            ),
            ("n_files", Arc::new(Int32Array::from(vec![11, 1, 1]))),
        ],
    );
}

fn preprocess(d: &Path) {
    fs::create_dir_all(d.join("volumes")).unwrap();
    for (i, v) in VOLUMES.iter().enumerate() {
        let path = d.join(format!("volumes/{v}.nii.gz"));
        mg3d_volume::nifti_write::write_nifti_i16(&path, &phantom(i == 1)).unwrap();
    }
    let files: Vec<String> = VOLUMES
        .iter()
        .map(|v| format!("volumes/{v}.nii.gz"))
        .collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    write(
        d,
        "preprocessed.parquet",
        "preprocessed",
        3,
        vec![("volume_id", strs(&VOLUMES)), ("file", strs(&files))],
    );
}

fn reports(d: &Path) {
    write(
        d,
        "reports.parquet",
        "reports",
        3,
        vec![("report_id", strs(&REPORTS))],
    );
    write(
        d,
        "rejects.parquet",
        "rejects",
        1,
        vec![("reason", strs(&["report_duplicate_id"]))],
    );
}

fn entities(d: &Path) {
    // r2: nodule present, emphysema uncertain; r1: effusion absent; r3: nothing stated.
    let rows = [
        ("r1", "Pleural effusion", Some(0)),
        ("r2", "Lung nodule", Some(1)),
        ("r2", "Emphysema", Some(-1)),
        ("r3", "Lung nodule", None),
    ];
    write(
        d,
        "labels.parquet",
        "labels",
        rows.len(),
        vec![
            ("report_id", strs(&rows.map(|r| r.0))),
            ("label", strs(&rows.map(|r| r.1))),
            (
                "value",
                Arc::new(Int32Array::from(rows.map(|r| r.2).to_vec())),
            ),
        ],
    );
    let ents = [
        ("r2", 0, "nodule", "OBSERVATION", "present", Some(6.0)),
        ("r2", 1, "emphysema", "OBSERVATION", "uncertain", None),
        ("r2", 2, "right lung", "ANATOMY", "present", None),
        ("r1", 0, "effusion", "OBSERVATION", "absent", None),
    ];
    write(
        d,
        "entities.parquet",
        "entities",
        ents.len(),
        vec![
            ("report_id", strs(&ents.map(|e| e.0))),
            (
                "ent_idx",
                Arc::new(Int32Array::from(ents.map(|e| e.1).to_vec())),
            ),
            ("surface", strs(&ents.map(|e| e.2))),
            ("type", strs(&ents.map(|e| e.3))),
            ("assertion", strs(&ents.map(|e| e.4))),
            (
                "size_mm",
                Arc::new(Float64Array::from(ents.map(|e| e.5).to_vec())),
            ),
            ("laterality", strs(&["right", "x", "right", "x"])),
            (
                "severity",
                Arc::new(StringArray::from(vec![None::<&str>; 4])),
            ),
            ("label", Arc::new(StringArray::from(vec![None::<&str>; 4]))),
            (
                "trigger_text",
                Arc::new(StringArray::from(vec![None::<&str>; 4])),
            ),
            (
                "located_at",
                Arc::new(Int32Array::from(vec![None::<i32>; 4])),
            ),
        ],
    );
}

fn graph(d: &Path) {
    json_file(
        d,
        "graph_stats.json",
        json!({
            "reports": 3, "nodes": 3, "edges": 1, "components": 2,
            "node_degree": [{"degree": 0, "count": 1}, {"degree": 1, "count": 2}],
            "neighbors_per_report": [{"degree": 2, "count": 3}]
        }),
    );
}

fn curate(d: &Path) {
    write(
        d,
        "corpus.parquet",
        "corpus",
        3,
        vec![
            ("volume_id", strs(&VOLUMES)),
            ("report_id", strs(&REPORTS)),
            ("split", strs(&["train", "train", "test"])),
        ],
    );
    write(
        d,
        "excluded.parquet",
        "excluded",
        2,
        vec![
            (
                "rule",
                strs(&["rule: slice_spacing_mm <= 3.0", "require_volume"]),
            ),
            ("rule_index", Arc::new(Int32Array::from(vec![4, 1]))),
        ],
    );
    json_file(
        d,
        "corpus_card.json",
        json!({"selected_pairs": 3, "selected_patients": 3,
               "counts_after_each_rule": [{"rule": "candidates", "remaining": 5},
                                          {"rule": "require_volume", "remaining": 4}]}),
    );
}

fn shards(d: &Path) {
    json_file(
        d,
        "index.json",
        json!({"splits": {"train": {"samples": [{}, {}], "shards": [{"bytes": 10}]},
                          "test": {"samples": [{}], "shards": [{"bytes": 5}]}}}),
    );
}

fn train(d: &Path) {
    let n = 6;
    let mut cols: Vec<(&str, ArrayRef)> = vec![(
        "step",
        Arc::new(Int64Array::from((1..=n as i64).collect::<Vec<_>>())),
    )];
    for (o, name) in ["total", "mim", "mlm", "sal", "cml", "dcl", "ssm"]
        .iter()
        .enumerate()
    {
        let v: Vec<f64> = (0..n).map(|s| 10.0 / (s as f64 + 1.0) + o as f64).collect();
        cols.push((name, Arc::new(Float64Array::from(v))));
    }
    write(d, "metrics.parquet", "metrics", n, cols);
    json_file(d, "train.json", json!({"steps": n}));
}

fn eval(d: &Path) {
    write(
        d,
        "eval.parquet",
        "eval",
        3,
        vec![
            (
                "task",
                strs(&["zero_shot", "zero_shot", "report_to_volume"]),
            ),
            ("label", strs(&["Lung nodule", "mean", ""])),
            ("metric", strs(&["auc", "auc", "recall@5"])),
            (
                "value",
                Arc::new(Float64Array::from(vec![0.75, f64::NAN, 0.4])),
            ),
            (
                "ci_low",
                Arc::new(Float64Array::from(vec![Some(0.5), None, None])),
            ),
            (
                "ci_high",
                Arc::new(Float64Array::from(vec![Some(0.9), None, None])),
            ),
            ("n", Arc::new(Int64Array::from(vec![3, 3, 3]))),
            (
                "n_positive",
                Arc::new(Int64Array::from(vec![Some(1), None, None])),
            ),
        ],
    );
    json_file(d, "eval.json", json!({"note": "fixture <eval>"}));
}

// ------------------------------------------------------------------ stand-in stages

/// A stage of an upstream kind that writes fixture outputs.
struct Fixture {
    kind: &'static str,
    write: Writer,
}

impl Stage for Fixture {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn describe(&self) -> &'static str {
        "test fixture"
    }
    fn params(&self) -> Vec<ParamDef> {
        Vec::new()
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        (self.write)(&ctx.out_dir);
        Ok(json!({}))
    }
}

/// A fixture writer: fills a stage output directory.
type Writer = fn(&Path);

const FIXTURES: [(&str, Writer); 9] = [
    ("ingest", ingest),
    ("preprocess", preprocess),
    ("reports", reports),
    ("entities", entities),
    ("graph", graph),
    ("curate", curate),
    ("shards", shards),
    ("train", train),
    ("eval", eval),
];

fn registry() -> StageRegistry {
    let mut r = StageRegistry::new();
    for (kind, write) in FIXTURES {
        r.register(Arc::new(Fixture { kind, write }));
    }
    r.register(Arc::new(QcStage));
    r
}

/// Runs a pipeline of the given fixture kinds and a report stage reading them all; returns the
/// page path and the report stage's summary.
fn run_pipeline(root: &Path, kinds: &[&str]) -> (PathBuf, Value) {
    let mut toml = format!(
        "[pipeline]\nname = \"qc\"\nwork_dir = \"{}\"\nsalt = \"test-salt-0123456789\"\nseed = 1\n",
        root.join("work").display()
    );
    for k in kinds {
        toml.push_str(&format!("\n[stages.{k}]\nkind = \"{k}\"\n"));
    }
    let inputs: Vec<String> = kinds.iter().map(|k| format!("\"{k}\"")).collect();
    toml.push_str(&format!(
        "\n[stages.report]\nkind = \"qc\"\ninputs = [{}]\n\n[stages.report.params]\nmontage_volumes = 2\n",
        inputs.join(", ")
    ));
    let reg = registry();
    let p = Pipeline::parse(Path::new("qc.toml"), &toml, &reg).unwrap();
    let opts = RunOptions {
        quiet: true,
        ..Default::default()
    };
    let report = Engine::new(&reg).run(&p, &opts).unwrap();
    let summary = report
        .stages
        .iter()
        .find(|s| s.name == "report")
        .unwrap()
        .summary
        .clone();
    (root.join("work/report").join(PAGE), summary)
}

// ------------------------------------------------------------------ the browser

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("MG3D_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "{} not found: the browser check needs Debian's chromium (`make setup` installs it)",
        path.display()
    );
    if std::env::var("MG3D_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("{msg} (MG3D_REQUIRE_BROWSER=1)");
    }
    eprintln!("SKIPPED browser check: {msg}");
    None
}

/// The DOM after load, as headless Chromium dumps it (offline: every host unresolvable).
fn dump_dom(browser: &Path, page: &Path, profile: &Path) -> String {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).unwrap();
        s
    });
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap()
}

/// The value of attribute `name` on `<body>` in a dumped DOM.
fn body_attr<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    let body = &dom[dom.find("<body")?..];
    let body = &body[..body.find('>')?];
    let key = format!("{name}=\"");
    let at = body.find(&key)? + key.len();
    Some(&body[at..at + body[at..].find('"')?])
}

// ------------------------------------------------------------------ tests

#[test]
fn page_renders_in_chromium_with_all_images_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let kinds: Vec<&str> = FIXTURES.iter().map(|f| f.0).collect();
    let (page, summary) = run_pipeline(tmp.path(), &kinds);
    let html = fs::read_to_string(&page).unwrap();

    // Every section has its data: no notes, and the expected content.
    assert_eq!(summary["notes"], 0, "unexpected notes: {summary}");
    for id in [
        "counts", "rejects", "labels", "montage", "graph", "losses", "eval",
    ] {
        assert!(html.contains(&format!("<section id=\"{id}\">")), "{id}");
    }
    for text in [
        "series_missing_slice",
        "report_duplicate_id",
        "rule: slice_spacing_mm &lt;= 3.0",
        "axial mid-slice of volume v2",
        "sagittal mid-slice of volume v2",
        "<span class=\"chip present\">Lung nodule</span>",
        "nodule (present, right, 6 mm)",
        "train: samples",
        "recall@5",
        "fixture &lt;eval&gt;",
    ] {
        assert!(html.contains(text), "page lacks {text:?}");
    }
    // v2 has the most present labels, so it comes first; montage_volumes = 2 shows two volumes.
    let v2 = html.find("axial mid-slice of volume v2").unwrap();
    let v1 = html.find("axial mid-slice of volume v1").unwrap();
    assert!(v2 < v1);
    assert!(!html.contains("volume v3\""));
    // 3 rejects/exclusion charts + prevalence + 2 x 3 slices + 2 graph charts + 7 losses + 1 AUC.
    let images = summary["images"].as_u64().unwrap();
    assert_eq!(images, 3 + 1 + 6 + 2 + 7 + 1);
    assert!(html.contains(&format!("data-expected-images=\"{images}\"")));

    // Self-contained: no external references, no absolute paths of this machine.
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(!html.contains(&tmp.path().display().to_string()));

    let Some(browser) = chromium() else {
        return;
    };
    let dom = dump_dom(&browser, &page, &tmp.path().join("profile"));
    let loaded = body_attr(&dom, "data-images").unwrap_or("none");
    assert_eq!(
        loaded,
        format!("{images}/{images}"),
        "images loaded/total in Chromium (broken: {:?})",
        body_attr(&dom, "data-broken")
    );
    assert_eq!(body_attr(&dom, "data-broken"), Some(""));
    for id in [
        "counts", "rejects", "labels", "montage", "graph", "losses", "eval",
    ] {
        assert!(
            dom.contains(&format!("<section id=\"{id}\">")),
            "{id} not in the DOM"
        );
    }

    // The check notices an image that does not decode: corrupt the first PNG.
    let broken = html.replacen(
        "src=\"data:image/png;base64,",
        "src=\"data:image/png;base64,AAAA",
        1,
    );
    let broken_page = tmp.path().join("broken.html");
    fs::write(&broken_page, broken).unwrap();
    let dom = dump_dom(&browser, &broken_page, &tmp.path().join("profile"));
    assert_eq!(
        body_attr(&dom, "data-images"),
        Some(format!("{}/{images}", images - 1).as_str())
    );
    assert_eq!(
        body_attr(&dom, "data-broken"),
        Some("axial mid-slice of volume v2")
    );
}

#[test]
fn same_inputs_give_the_same_page() {
    // Two runs in different directories: byte-identical pages (no paths, times or hash order).
    let kinds = ["preprocess", "entities", "curate", "train"];
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (page_a, _) = run_pipeline(a.path(), &kinds);
    let (page_b, _) = run_pipeline(b.path(), &kinds);
    assert_eq!(fs::read(page_a).unwrap(), fs::read(page_b).unwrap());
}

#[test]
fn missing_and_broken_inputs_become_notes() {
    let tmp = tempfile::tempdir().unwrap();
    // Only train, with a corrupt metrics table; curate's output directory is empty.
    let train_dir = tmp.path().join("train");
    fs::create_dir_all(&train_dir).unwrap();
    fs::write(train_dir.join("metrics.parquet"), b"not parquet").unwrap();
    let curate_dir = tmp.path().join("curate");
    fs::create_dir_all(&curate_dir).unwrap();
    let inputs = vec![
        StageInput {
            name: "train".into(),
            kind: "train".into(),
            dir: train_dir,
        },
        StageInput {
            name: "curate".into(),
            kind: "curate".into(),
            dir: curate_dir,
        },
    ];
    let page = build_page(&inputs, &ReportOptions::default());
    assert_eq!(page.images, 0);
    assert!(page.notes >= 6, "{} notes", page.notes);
    assert!(page.html.contains("training metrics unavailable"));
    assert!(page.html.contains("no input of kind &quot;eval&quot;"));
    assert!(page.html.contains("no input of kind &quot;graph&quot;"));
    assert!(page.html.contains("curate/excluded.parquet: missing"));
    assert!(!page.html.contains(&tmp.path().display().to_string()));
    assert_eq!(
        page.sections,
        [
            "counts", "rejects", "labels", "montage", "graph", "losses", "eval"
        ]
    );

    // No inputs at all still gives a page; so does a pipeline without eval (optional input).
    let empty = build_page(&[], &ReportOptions::default());
    assert!(empty.html.contains("This stage has no inputs."));
    let (page, summary) = run_pipeline(tmp.path(), &["train", "graph"]);
    assert!(page.is_file());
    assert!(summary["notes"].as_u64().unwrap() > 0);
    assert_eq!(summary["images"], 7 + 2);
}
