//! The `shards` stage in a pipeline on a small synthetic corpus: synth -> ingest -> preprocess,
//! reports -> entities, tokens -> shards. Without curate it pairs volumes with reports by report
//! key; with stand-in `graph` and `curate` stages (toy stages writing the contract tables) it keeps
//! curate's splits and stores signatures and neighbours. Reruns give byte-identical outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float32Array, Float64Array, Int8Builder, Int32Array, ListBuilder, StringArray,
    StringBuilder,
};
use mg3d_core::stage::{InputDecl, ParamDef, Stage, StageContext, StageError, StageRegistry};
use mg3d_core::table::{TableSchema, read_table, write_columns};
use mg3d_shard::{Loader, LoaderConfig, NeighborSampler, ShardIndex};
use serde_json::{Value, json};

fn strings(dir: &Path, file: &str, table: &str, col: &str) -> Vec<String> {
    read_table(&dir.join(file), &TableSchema::get(table).unwrap())
        .unwrap()
        .iter()
        .flat_map(|b| {
            let a = b
                .column_by_name(col)
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            (0..a.len()).map(move |i| a.value(i).to_string())
        })
        .collect()
}

/// Stand-in for the graph stage: a signature per report, each report's neighbours = the next
/// two reports (sorted by id).
struct FakeGraph;
impl Stage for FakeGraph {
    fn kind(&self) -> &'static str {
        "graph"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn describe(&self) -> &'static str {
        "test stand-in"
    }
    fn params(&self) -> Vec<ParamDef> {
        vec![]
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![InputDecl {
            kind: "reports",
            required: true,
        }]
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let mut ids = strings(
            ctx.input("reports")?,
            "reports.parquet",
            "reports",
            "report_id",
        );
        ids.sort();
        let n = ids.len();
        let mut sig = ListBuilder::new(Int8Builder::new());
        let mut abn = ListBuilder::new(StringBuilder::new());
        for (i, _) in ids.iter().enumerate() {
            sig.values().append_slice(&[(i % 4) as i8, 1, 0, 3, 2, 0]);
            sig.append(true);
            abn.append(true);
        }
        let s = |v: Vec<String>| Arc::new(StringArray::from(v)) as ArrayRef;
        write_columns(
            &ctx.out_dir.join("signatures.parquet"),
            &TableSchema::get("signatures")?,
            vec![
                s(ids.clone()),
                s(ids.iter().map(|r| format!("p-{r}")).collect()),
                Arc::new(Int32Array::from_iter_values(0..n as i32)),
                Arc::new(Int32Array::from_iter_values((0..n).map(|_| 1))),
                Arc::new(abn.finish()),
                Arc::new(sig.finish()),
            ],
        )?;
        let (mut r, mut nb, mut rank) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            for d in [2usize, 1] {
                r.push(ids[i].clone());
                nb.push(ids[(i + d) % n].clone());
                rank.push(d as i32);
            }
        }
        let m = r.len();
        write_columns(
            &ctx.out_dir.join("neighbors.parquet"),
            &TableSchema::get("neighbors")?,
            vec![
                s(r.clone()),
                s(nb.clone()),
                Arc::new(Int32Array::from(rank)),
                Arc::new(Float32Array::from_iter_values((0..m).map(|_| 0.5))),
                s(r),
                s(nb),
            ],
        )?;
        Ok(json!({}))
    }
}

/// Stand-in for curate: every volume with a report, split = the patient id's first hex digit.
struct FakeCurate;
impl Stage for FakeCurate {
    fn kind(&self) -> &'static str {
        "curate"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn describe(&self) -> &'static str {
        "test stand-in"
    }
    fn params(&self) -> Vec<ParamDef> {
        vec![]
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![
            InputDecl {
                kind: "ingest",
                required: true,
            },
            InputDecl {
                kind: "reports",
                required: true,
            },
        ]
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let rep = ctx.input("reports")?;
        let keys: BTreeMap<String, String> =
            strings(rep, "reports.parquet", "reports", "report_key")
                .into_iter()
                .zip(strings(rep, "reports.parquet", "reports", "report_id"))
                .collect();
        let ing = ctx.input("ingest")?;
        let vol = strings(ing, "volumes.parquet", "volumes", "volume_id");
        let pat = strings(ing, "volumes.parquet", "volumes", "patient_id");
        let stu = strings(ing, "volumes.parquet", "volumes", "study_id");
        let b = read_table(&ing.join("volumes.parquet"), &TableSchema::get("volumes")?)?;
        let rk: Vec<Option<String>> = b
            .iter()
            .flat_map(|b| {
                let a = b
                    .column_by_name("report_key")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone();
                (0..a.len()).map(move |i| (!a.is_null(i)).then(|| a.value(i).to_string()))
            })
            .collect();
        let mut cols: [Vec<String>; 6] = Default::default();
        for i in 0..vol.len() {
            let Some(k) = &rk[i] else { continue };
            let Some(r) = keys.get(k) else { continue };
            let split = match u8::from_str_radix(&pat[i][..1], 16).unwrap() % 3 {
                0 => "train",
                1 => "val",
                _ => "test",
            };
            for (c, v) in cols
                .iter_mut()
                .zip([&pat[i], &stu[i], &vol[i], r, k, &split.to_string()])
            {
                c.push(v.clone());
            }
        }
        let n = cols[0].len();
        let mut arrays: Vec<ArrayRef> = cols
            .into_iter()
            .map(|c| Arc::new(StringArray::from(c)) as ArrayRef)
            .collect();
        arrays.push(Arc::new(Float64Array::from(vec![None::<f64>; n])));
        write_columns(
            &ctx.out_dir.join("corpus.parquet"),
            &TableSchema::get("corpus")?,
            arrays,
        )?;
        Ok(json!({}))
    }
}

fn run(work: &Path, graph_and_curate: bool) -> Value {
    let mut reg = StageRegistry::new();
    reg.register(Arc::new(mg3d_synth::SynthStage))
        .register(Arc::new(mg3d_ingest::ingest::IngestStage))
        .register(Arc::new(mg3d_ingest::preprocess::PreprocessStage))
        .register(Arc::new(mg3d_report::reports::ReportsStage))
        .register(Arc::new(mg3d_report::entities_stage::EntitiesStage))
        .register(Arc::new(mg3d_report::tokens::TokensStage))
        .register(Arc::new(mg3d_shard::ShardsStage))
        .register(Arc::new(FakeGraph))
        .register(Arc::new(FakeCurate));
    let mut text = format!(
        "[pipeline]\nname='s'\nwork_dir='{}'\nsalt='test-salt-0123456789'\nseed=3\n\
         [stages.synth]\nkind='synth'\nparams={{patients=7, faults=false, body_width_mm=[60.0, 70.0], z_extent_mm=[30.0, 40.0], in_plane_spacing_mm=[1.0, 1.5], slice_spacing_mm=[2.0, 3.0], second_recon_fraction=0.5}}\n\
         [stages.ingest]\nkind='ingest'\ninputs=['synth']\nparams={{dicom_roots=['@synth/dicom'], nifti_roots=['@synth/nifti'], ctrate_metadata=['@synth/metadata/train_metadata.csv'], accession_map='@synth/reports/accession_map.csv'}}\n\
         [stages.preprocess]\nkind='preprocess'\ninputs=['ingest']\nparams={{preset='demo'}}\n\
         [stages.reports]\nkind='reports'\ninputs=['synth']\nparams={{files=['@synth/reports/train_reports.csv']}}\n\
         [stages.entities]\nkind='entities'\ninputs=['reports']\n\
         [stages.tokens]\nkind='tokens'\ninputs=['reports']\nparams={{train_vocab_size=400, max_length=64}}\n",
        work.display()
    );
    if graph_and_curate {
        text.push_str(
            "[stages.graph]\nkind='graph'\ninputs=['reports']\n\
             [stages.curate]\nkind='curate'\ninputs=['ingest', 'reports']\n\
             [stages.shards]\nkind='shards'\ninputs=['preprocess', 'tokens', 'entities', 'graph', 'curate']\n\
             params={shard_mb=2.0, dtype='bf16', shape=[96, 96, 48], max_neighbors=4}\n",
        );
    } else {
        text.push_str(
            "[stages.shards]\nkind='shards'\ninputs=['preprocess', 'tokens', 'entities', 'ingest', 'reports']\n\
             params={shard_mb=2.0, seed=9, ratios=[0.5, 0.25, 0.25]}\n",
        );
    }
    let (_p, report) = mg3d_testkit::run_pipeline(&reg, &text);
    report
        .stages
        .iter()
        .find(|s| s.name == "shards")
        .unwrap()
        .summary
        .clone()
}

#[test]
fn shards_stage_pairs_volumes_with_reports_and_rewrites_identical_bytes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let summary = run(a.path(), false);
    let out = a.path().join("shards");
    let idx = ShardIndex::open(&out).unwrap();
    let volumes = strings(
        &a.path().join("preprocess"),
        "preprocessed.parquet",
        "preprocessed",
        "volume_id",
    );
    let n = summary["samples"].as_u64().unwrap() as usize;
    assert!(n >= 7, "{summary}");
    assert_eq!(
        n + summary["volumes_without_report"].as_u64().unwrap_or(0) as usize,
        volumes.len(),
        "every preprocessed volume is a sample or counted: {summary}"
    );
    assert_eq!(
        idx.file.fields[0].shape,
        vec![1, 48, 96, 96],
        "the demo preset's shape"
    );
    assert_eq!(idx.file.split_source, "hash");
    assert!(!idx.file.has_neighbors);
    assert!(idx.fields().iter().all(|f| f.name != "signature"));
    assert!(
        summary["shards"].as_u64().unwrap() >= 3,
        "2 MiB shards: {summary}"
    );
    let reports: BTreeSet<String> = strings(
        &a.path().join("reports"),
        "reports.parquet",
        "reports",
        "report_id",
    )
    .into_iter()
    .collect();
    for s in idx.file.splits.values() {
        for e in &s.samples {
            assert!(reports.contains(&e.report_id));
        }
    }
    // Every split loads; the volumes are windowed into [0, 1] with air near 0 and tissue above.
    let mut l = Loader::new(
        &idx,
        LoaderConfig {
            split: "train".into(),
            batch_size: 2,
            verify: true,
            ..Default::default()
        },
    )
    .unwrap();
    let batch = l.next().unwrap().unwrap();
    let v = batch.field("volume").unwrap().to_f32();
    assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
    assert!(
        v.iter().any(|&x| x < 0.05) && v.iter().any(|&x| x > 0.45),
        "air and tissue"
    );
    let ids = batch.field("input_ids").unwrap();
    assert_eq!(ids.shape, vec![2, 64]);
    // Same inputs and params in another work dir: byte-identical shards and index.
    run(b.path(), false);
    let da = mg3d_core::fsutil::hash_dir(&out).unwrap();
    let db = mg3d_core::fsutil::hash_dir(&b.path().join("shards")).unwrap();
    assert_eq!(da, db);
}

#[test]
fn shards_stage_keeps_curate_splits_and_graph_neighbours() {
    let a = tempfile::tempdir().unwrap();
    let summary = run(a.path(), true);
    assert_eq!(summary["graph"], true, "{summary}");
    let out = a.path().join("shards");
    let idx = ShardIndex::open(&out).unwrap();
    assert_eq!(idx.file.split_source, "given");
    assert!(idx.file.has_neighbors);
    assert_eq!(
        idx.file.fields[0].shape,
        vec![1, 48, 96, 96],
        "shape param (R, A, S), which must agree with the preprocess plan"
    );
    assert_eq!(idx.file.fields[0].dtype, mg3d_shard::Dtype::BF16);
    let sig = idx.fields().iter().find(|f| f.name == "signature").unwrap();
    assert_eq!(sig.shape, vec![6]);
    // Splits are curate's.
    let cur = a.path().join("curate");
    let corpus: BTreeMap<String, String> = strings(&cur, "corpus.parquet", "corpus", "volume_id")
        .into_iter()
        .zip(strings(&cur, "corpus.parquet", "corpus", "split"))
        .collect();
    let mut total = 0;
    for (name, s) in &idx.file.splits {
        for e in &s.samples {
            assert_eq!(&corpus[&e.volume_id], name);
            total += 1;
            for &nb in &e.neighbors {
                assert_ne!(s.samples[nb as usize].patient_id, e.patient_id);
            }
        }
    }
    assert_eq!(total, corpus.len());
    let split = idx
        .file
        .splits
        .iter()
        .max_by_key(|(_, s)| s.samples.len())
        .unwrap()
        .0
        .clone();
    let mut l = Loader::new(
        &idx,
        LoaderConfig {
            split,
            batch_size: 4,
            neighbor_sampler: Some(NeighborSampler { per_anchor: 1 }),
            ..Default::default()
        },
    )
    .unwrap();
    let b = l.next().unwrap().unwrap();
    assert_eq!(b.field("signature").unwrap().shape[1], 6);
}
