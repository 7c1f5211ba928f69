//! The whole chain through `eval` and `report` on a small synthetic corpus with the real
//! all-MiniLM-L6-v2: the evaluation table follows its contract, metrics lie in their ranges, the
//! random baselines are the expected ones, reruns are byte-identical, and the QC page shows the
//! evaluation. Skipped without .venv/minilm unless MG3D_REQUIRE_PYTHON=1.

use std::fs;
use std::path::Path;

use arrow::array::{Array, Float64Array, Int64Array, StringArray};
use mg3d_core::fsutil::hash_dir;
use mg3d_core::table::{TableSchema, read_table};

use crate::cli::{mg3d, text};
use mg3d_testkit::minilm;

fn pipeline(text: &Path) -> String {
    let t = text.display();
    format!(
        r#"[pipeline]
name = "evaltest"
work_dir = "work"
salt = "test-salt-0123456789"
seed = 9

[stages.synth]
kind = "synth"
params = {{ patients = 14, faults = false, prevalence = 0.4, body_width_mm = [90.0, 110.0], z_extent_mm = [50.0, 70.0], in_plane_spacing_mm = [1.5, 2.0], slice_spacing_mm = [2.0, 3.0], second_recon_fraction = 0.0, ctrg_patients = 3 }}

[stages.ingest]
kind = "ingest"
inputs = ["synth"]
params = {{ dicom_roots = ["@synth/dicom"], nifti_roots = ["@synth/nifti"], ctrate_metadata = ["@synth/metadata/train_metadata.csv"], accession_map = "@synth/reports/accession_map.csv", ctrg_annotations = ["@synth/ctrg/annotation.json"] }}

[stages.preprocess]
kind = "preprocess"
inputs = ["ingest"]
params = {{ preset = "demo-64" }}

[stages.reports]
kind = "reports"
inputs = ["synth"]
params = {{ files = ["@synth/reports/train_reports.csv"], ctrg_annotations = ["@synth/ctrg/annotation.json"] }}

[stages.entities]
kind = "entities"
inputs = ["reports"]

[stages.tokens]
kind = "tokens"
inputs = ["reports"]
params = {{ tokenizer = "{t}", max_length = 128 }}

[stages.shards]
kind = "shards"
inputs = ["preprocess", "tokens", "entities", "ingest", "reports"]
params = {{ shard_mb = 1.0, seed = 1, ratios = [0.6, 0.2, 0.2] }}

[stages.train]
kind = "train"
inputs = ["shards"]
params = {{ model = "tiny", text_model = "{t}", hidden = 32, input = [32, 64, 64], steps = 3, batch_size = 2, device = "cpu" }}

[stages.eval]
kind = "eval"
inputs = ["train", "shards", "entities", "reports"]
params = {{ splits = ["train", "val", "test"], align_steps = 4, align_batch = 8, align_encoder = true, bootstrap = 50, recall_k = [1, 5], map_k = [1, 5], device = "cpu" }}

[stages.report]
kind = "qc"
inputs = ["ingest", "preprocess", "reports", "entities", "tokens", "shards", "train", "eval"]
"#
    )
}

/// Runs `mg3d` and requires success.
fn mg3d_ok(dir: &Path, args: &[&str]) {
    let o = mg3d(dir, args);
    assert!(o.status.success(), "mg3d {args:?} failed:\n{}", text(&o));
}

#[test]
fn eval_and_report_end_to_end() {
    let Some(text) = minilm() else { return };
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("p.toml"), pipeline(&text)).unwrap();
    mg3d_ok(dir.path(), &["run", "p.toml", "--quiet"]);
    let out = dir.path().join("work/eval");

    let batches = read_table(
        &out.join("eval.parquet"),
        &TableSchema::get("eval").unwrap(),
    )
    .expect("eval.parquet follows schemas/eval.json");
    let mut rows = vec![];
    for b in &batches {
        let s = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone()
        };
        let (task, label, metric) = (s("task"), s("label"), s("metric"));
        let value = b
            .column_by_name("value")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .clone();
        let n = b
            .column_by_name("n")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .clone();
        for i in 0..b.num_rows() {
            rows.push((
                task.value(i).to_string(),
                label.value(i).to_string(),
                metric.value(i).to_string(),
                value.value(i),
                n.value(i),
            ));
        }
    }
    let get = |task: &str, label: &str, metric: &str| {
        rows.iter()
            .find(|r| r.0 == task && r.1 == label && r.2 == metric)
            .unwrap_or_else(|| panic!("no row {task}/{label}/{metric} in {rows:?}"))
            .clone()
    };
    // Every per-label zero-shot score lies in [0, 1]; the mean exists.
    let zs: Vec<_> = rows
        .iter()
        .filter(|r| r.0 == "zero_shot" && r.1 != "mean" && r.2 != "threshold")
        .collect();
    assert!(!zs.is_empty(), "no zero-shot label was scorable: {rows:?}");
    assert!(zs.iter().all(|r| (0.0..=1.0).contains(&r.3)), "{zs:?}");
    let mean = get("zero_shot", "mean", "auc");
    assert!((0.0..=1.0).contains(&mean.3));
    // Retrieval: the random baseline is K / N; recall is monotone in K.
    let (r1, r5) = (
        get("report_to_volume", "", "recall@1"),
        get("report_to_volume", "", "recall@5"),
    );
    let n = r1.4 as f64;
    assert!(n >= 4.0, "{rows:?}");
    assert!((get("report_to_volume", "", "random_recall@1").3 - 1.0 / n).abs() < 1e-12);
    assert!(r1.3 <= r5.3 && (0.0..=1.0).contains(&r5.3));
    let map5 = get("volume_to_volume", "", "map@5");
    assert!((0.0..=1.0).contains(&map5.3));
    get("volume_to_volume", "", "random_map@5");
    get("linear_probe", "mean", "auc");

    let summary: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(summary["label_source"], "entities labels.parquet");
    // The entity alignment found finding clauses and fitted its text head.
    let align = &summary["alignment"];
    assert_eq!(align["method"], "entity");
    assert!(
        align["train_clauses_with_findings"].as_u64().unwrap() > 0,
        "{align}"
    );
    assert!(
        align["text_last_loss"].as_f64().unwrap() < align["text_first_loss"].as_f64().unwrap(),
        "{align}"
    );
    assert_eq!(summary["samples"].as_f64().unwrap(), n);

    tensorboard_has_every_loss(dir.path());
    embed_and_predict_match_eval(dir.path());
    ctrg_slices_reach_the_shards_in_order(dir.path());
    // The train output is a model folder that names the preprocess preset of its volumes.
    let config: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(dir.path().join("work/train/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["volume"]["preset"], "demo-64", "{config}");
    assert!(dir.path().join("work/train/tokenizer.json").is_file());

    // Forced reruns give the same bytes: the train stage's checkpoint and metrics, then eval.
    let train_dir = dir.path().join("work/train");
    let train_before = hash_dir(&train_dir).unwrap();
    assert!(train_before.keys().any(|k| k.ends_with("state.json")));
    mg3d_ok(
        dir.path(),
        &["run", "p.toml", "--stage", "train", "--force", "--quiet"],
    );
    let train_after = hash_dir(&train_dir).unwrap();
    for (name, digest) in &train_before {
        assert!(
            train_after.get(name) == Some(digest),
            "train/{name} differs after a forced rerun"
        );
    }
    assert_eq!(train_before.len(), train_after.len());
    let before = fs::read(out.join("eval.parquet")).unwrap();
    let json_before = fs::read(out.join("eval.json")).unwrap();
    mg3d_ok(
        dir.path(),
        &["run", "p.toml", "--stage", "eval", "--force", "--quiet"],
    );
    assert_eq!(before, fs::read(out.join("eval.parquet")).unwrap());
    assert_eq!(json_before, fs::read(out.join("eval.json")).unwrap());

    // The QC page carries the evaluation.
    let page = fs::read_to_string(dir.path().join("work/report/qc/index.html")).unwrap();
    assert!(page.contains("report_to_volume") && page.contains("zero_shot"));
}

/// `mg3d embed` on a DICOM series folder and a NIfTI file of the corpus (their original files,
/// through ingest's and preprocess's code again) gives the frozen features the eval stage
/// computed for those volumes, and `mg3d predict` its zero-shot probabilities (from the encoder
/// the alignment fine-tuned: the pipeline has `align_encoder = true`).
fn embed_and_predict_match_eval(dir: &Path) {
    use mg3d_core::rows::{EmbeddingsRow, PredictionsRow};
    use mg3d_core::table::read_rows;
    let work = dir.join("work");
    let series = fs::read_dir(work.join("synth/dicom"))
        .unwrap()
        .flat_map(|p| fs::read_dir(p.unwrap().path()).unwrap())
        .flat_map(|s| fs::read_dir(s.unwrap().path()).unwrap())
        .map(|d| d.unwrap().path())
        .min()
        .expect("a DICOM series folder");
    let nifti = fs::read_dir(work.join("synth/nifti"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|f| f.to_string_lossy().ends_with(".nii.gz"))
        .min()
        .expect("a NIfTI file");
    let name = nifti.file_name().unwrap().to_str().unwrap();
    let inputs = [series.to_str().unwrap(), nifti.to_str().unwrap()];
    let scan_args = [
        "--pipeline",
        "p.toml",
        "--ctrate-metadata",
        "work/synth/metadata/train_metadata.csv",
    ];
    let mut args = vec!["embed", "--model", "work/train", "--out", "emb.parquet"];
    args.extend(scan_args);
    args.extend(inputs);
    mg3d_ok(dir, &args);
    let embedded: Vec<EmbeddingsRow> = read_rows(&dir.join("emb.parquet")).unwrap();
    let eval: Vec<EmbeddingsRow> = read_rows(&work.join("eval/features.parquet")).unwrap();
    assert_eq!(embedded.len(), 2);
    // A DICOM series gets ingest's volume_id; a lone NIfTI file is keyed from its name, where
    // ingest keys it from its root and relative path.
    let nifti_id = mg3d_core::ids::pseudonym(
        "test-salt-0123456789",
        "volume",
        &format!("nifti_roots[0]/{name}"),
    );
    let ids = [embedded[0].volume_id.clone(), nifti_id];
    for (e, id) in embedded.iter().zip(&ids) {
        let want = eval
            .iter()
            .find(|r| &r.volume_id == id)
            .unwrap_or_else(|| panic!("volume {id} (input {:?}) not in eval", e.input_index));
        assert_eq!(e.features.len(), want.features.len());
        let worst = e
            .features
            .iter()
            .zip(&want.features)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-4,
            "input {:?}: features differ by {worst}",
            e.input_index
        );
        assert!(e.preprocess_hash.as_ref().is_some_and(|h| h.len() == 64));
    }
    assert_eq!(embedded[0].source, "dicom");
    assert_eq!(embedded[1].source, "ct-rate");
    // The same as safetensors: tensor `features`, the ids in the header's metadata.
    let mut args = vec!["embed", "--model", "work/train", "--out", "emb.safetensors"];
    args.extend(scan_args);
    args.extend(inputs);
    mg3d_ok(dir, &args);
    let bytes = fs::read(dir.join("emb.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let listed: Vec<String> =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["volume_ids"]).unwrap();
    assert_eq!(listed[0], embedded[0].volume_id);
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f = t.tensor("features").unwrap();
    assert_eq!(f.shape(), [2, embedded[0].features.len()]);
    let first: Vec<f32> = f.data()[..4 * f.shape()[1]]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(first, embedded[0].features);
    // The eval output's predictor holds a model folder of its own.
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(work.join("eval/predictor/model").join(f).is_file(), "{f}");
    }

    let mut args = vec!["predict", "--model", "work/eval", "--out", "pred.parquet"];
    args.extend(scan_args);
    args.extend(inputs);
    mg3d_ok(dir, &args);
    let predicted: Vec<PredictionsRow> = read_rows(&dir.join("pred.parquet")).unwrap();
    let eval: Vec<PredictionsRow> = read_rows(&work.join("eval/predictions.parquet")).unwrap();
    let mut compared = 0;
    for p in predicted.iter().filter(|p| p.task == "zero_shot") {
        let id = &ids[p.input_index.unwrap() as usize];
        let want = eval
            .iter()
            .find(|r| &r.volume_id == id && r.name == p.name)
            .unwrap_or_else(|| panic!("no eval prediction for {id} {}", p.name));
        assert!(
            (p.value - want.value).abs() < 1e-4,
            "{} {}: predict {} vs eval {}",
            id,
            p.name,
            p.value,
            want.value
        );
        compared += 1;
    }
    assert!(compared >= 2, "{predicted:?}");
    // Nearest training reports: top 5 per scan, ranked, most similar first.
    let nearest: Vec<_> = predicted
        .iter()
        .filter(|p| p.task == "nearest_report" && p.input_index == Some(0))
        .collect();
    assert_eq!(nearest.len(), 5);
    assert!(nearest.windows(2).all(|w| w[0].value >= w[1].value));
}

/// The CTRG-shaped set's JPEG folders (slices named 1.jpg .. N.jpg, superior first) reach the
/// shards as their volumes in HU (the synthetic truth, in its real geometry) would through the
/// same preprocess and shard code: equal up to 8-bit and JPEG loss, and far from the same
/// volume with its slices reversed.
fn ctrg_slices_reach_the_shards_in_order(dir: &Path) {
    use mg3d_ingest::preprocess::load_preset;
    use mg3d_ingest::scan::{ScanOptions, preprocess_scan, read_scan};
    use mg3d_shard::{Loader, LoaderConfig, ShardIndex};
    let work = dir.join("work");
    let index = ShardIndex::open(&work.join("shards")).unwrap();
    let dtype = index
        .fields()
        .iter()
        .find(|f| f.name == "volume")
        .unwrap()
        .dtype;
    let preset = load_preset("demo-64").unwrap();
    let mut shard_volumes = std::collections::BTreeMap::new();
    for split in ["train", "val", "test"] {
        let entries = &index.split(split).unwrap().samples;
        let cfg = LoaderConfig {
            split: split.into(),
            batch_size: 1,
            shuffle: false,
            workers: 0,
            ..Default::default()
        };
        for b in Loader::new(&index, cfg).unwrap() {
            let b = b.unwrap();
            let v = b.field("volume").unwrap().to_f32();
            shard_volumes.insert(entries[b.samples[0] as usize].volume_id.clone(), v);
        }
    }
    let truth = work.join("synth/truth/ctrg");
    let mut checked = 0;
    for f in fs::read_dir(&truth).unwrap() {
        let f = f.unwrap().path();
        let id = f
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches(".nii.gz");
        let key = mg3d_core::ctrg::source_key(id);
        let vid = mg3d_core::ids::pseudonym("test-salt-0123456789", "volume", &key);
        let Some(shard) = shard_volumes.get(&vid) else {
            continue; // left out by curate or the split, not by the reader
        };
        let hu = read_scan(&f, &ScanOptions::default()).unwrap().volume;
        let field = |v: &mg3d_volume::Volume| {
            let (pre, _) = preprocess_scan(v, &preset).unwrap();
            mg3d_shard::volume_field(&pre, &index.file.volume, dtype).to_f32()
        };
        let mut reversed = hu.clone();
        let plane = hu.dims[0] * hu.dims[1];
        for (k, s) in reversed.data.chunks_mut(plane).enumerate() {
            let from = (hu.dims[2] - 1 - k) * plane;
            s.copy_from_slice(&hu.data[from..from + plane]);
        }
        let mad = |a: &[f32]| {
            a.iter().zip(shard).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
        };
        let (right, wrong) = (mad(&field(&hu)), mad(&field(&reversed)));
        assert!(
            right < 0.005 && right * 4.0 < wrong,
            "CTRG {id}: mean |shard - truth| {right}, with the slices reversed {wrong}"
        );
        checked += 1;
    }
    assert!(checked >= 1, "no CTRG volume reached the shards");
}

/// TensorBoard's own reader finds, in the train run's event files, every loss, the learning rate
/// and the step time of every step, equal (as f32) to metrics.parquet.
fn tensorboard_has_every_loss(dir: &Path) {
    let py = mg3d_testkit::python_with(&["tensorboard"]).expect("tensorboard in the venv");
    let runs = dir.join("work/.items/train/.tensorboard");
    let run = fs::read_dir(&runs).unwrap().next().unwrap().unwrap().path();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/tensorboard_scalars.py");
    let o = std::process::Command::new(py)
        .arg(script)
        .arg(run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let metrics = read_table(
        &dir.join("work/train/metrics.parquet"),
        &TableSchema::get("metrics").unwrap(),
    )
    .unwrap();
    let b = &metrics[0];
    let col = |n: &str| {
        b.column_by_name(n)
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .clone()
    };
    let steps = b
        .column_by_name("step")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .clone();
    for (tag, column) in [
        ("loss/total", "total"),
        ("loss/mim", "mim"),
        ("loss/mlm", "mlm"),
        ("loss/sal", "sal"),
        ("loss/cml", "cml"),
        ("loss/dcl", "dcl"),
        ("loss/ssm", "ssm"),
        ("train/lr", "lr"),
        ("train/grad_norm", "grad_norm"),
    ] {
        let events = got[tag]
            .as_array()
            .unwrap_or_else(|| panic!("no {tag} in {got}"));
        let want = col(column);
        assert_eq!(events.len(), want.len(), "{tag}");
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e[0].as_i64(), Some(steps.value(i)), "{tag} step");
            assert_eq!(
                e[1].as_f64().unwrap() as f32,
                want.value(i) as f32,
                "{tag} step {i}"
            );
        }
    }
    let times = got["train/step_seconds"].as_array().unwrap();
    assert!(times.len() == steps.len() && times.iter().all(|t| t[1].as_f64().unwrap() > 0.0));
}
