//! The `shards` stage: volume–report pairs -> `shards/*.safetensors`, `index.json`,
//! `splits.parquet`.
//!
//! Inputs: `preprocess` (int16 HU NIfTI per volume), `tokens`, `entities` (labels), optionally
//! `graph` (signatures + neighbours) and `curate` (the selected pairs). Without `curate`, each
//! preprocessed volume is paired with the report whose `report_key` matches the volume's (from
//! `ingest` and `reports`, which are then required); volumes without a report are counted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use mg3d_core::labels::CT_RATE_LABELS;
use mg3d_core::stage::{InputDecl, ParamDef, Stage, StageContext, StageError};
use mg3d_core::table::{TableError, TableSchema, read_table};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};

use crate::format::Dtype;
use crate::split::split_number;
use crate::writer::{SampleRecord, VolumeSource, WriterConfig, write_shards};

/// Stage kind `shards`.
pub struct ShardsStage;

mg3d_core::stage_params! {
    /// The parameters of the stage, declared once: `mg3d stages` lists them from here.
    pub(crate) struct ShardsParams {
        /// seed of the patient split when there is no curate input (curate's corpus brings its own
        /// split), and the default loader seed in index.json
        seed: i64 = json!(0),
        /// train, val, test shares of patients (normalised); unused with a curate input
        ratios: Vec<f64> = json!([0.8, 0.1, 0.1]),
        /// target shard size in MiB (at least one sample per shard)
        shard_mb: f64 = json!(256.0),
        /// volume element type: f16, bf16 or f32
        dtype: String = json!("f16"),
        /// HU window [low, high] mapped linearly to [0, 1]
        window: Vec<f64> = json!([-1000.0, 1000.0]),
        /// voxels along R, A, S; volumes are centre-cropped/padded to it; [] = the first volume's
        shape: Vec<i64> = json!([]),
        /// graph neighbours kept per sample for the neighbour sampler
        max_neighbors: i64 = json!(8),
    }
}

fn fail(path: &Path, detail: impl std::fmt::Display) -> StageError {
    StageError::msg(format!("{}: {detail}", path.display()))
}

/// Reads a table: checked against its contract when `schemas/` has one, else as it is.
fn read_any(path: &Path, table: &str) -> Result<Vec<RecordBatch>, StageError> {
    if !path.exists() {
        return Err(fail(path, "missing; rerun the stage that writes it"));
    }
    match TableSchema::get(table) {
        Ok(schema) => Ok(read_table(path, &schema)?),
        Err(TableError::Unknown(_)) => {
            let f = std::fs::File::open(path).map_err(|e| fail(path, e))?;
            ParquetRecordBatchReaderBuilder::try_new(f)
                .and_then(|b| b.build())
                .map_err(|e| fail(path, e))?
                .map(|r| r.map_err(|e| fail(path, e)))
                .collect()
        }
        Err(e) => Err(e.into()),
    }
}

fn column<'a>(b: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a ArrayRef, StageError> {
    b.column_by_name(name)
        .ok_or_else(|| fail(path, format!("no column {name:?}")))
}

/// A string column (any string type) as optional strings.
fn strings(b: &RecordBatch, name: &str, path: &Path) -> Result<Vec<Option<String>>, StageError> {
    let c = arrow::compute::cast(column(b, name, path)?, &DataType::Utf8)
        .map_err(|e| fail(path, format!("column {name:?}: {e}")))?;
    let s = c.as_string::<i32>();
    Ok((0..s.len())
        .map(|i| s.is_valid(i).then(|| s.value(i).to_string()))
        .collect())
}

/// A non-null string column.
fn strings_nn(b: &RecordBatch, name: &str, path: &Path) -> Result<Vec<String>, StageError> {
    strings(b, name, path)?
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.ok_or_else(|| fail(path, format!("column {name:?} row {i} is null"))))
        .collect()
}

/// An integer column as optional i64.
fn ints(b: &RecordBatch, name: &str, path: &Path) -> Result<Vec<Option<i64>>, StageError> {
    let c = arrow::compute::cast(column(b, name, path)?, &DataType::Int64)
        .map_err(|e| fail(path, format!("column {name:?}: {e}")))?;
    let a = c.as_primitive::<Int64Type>();
    Ok((0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i)))
        .collect())
}

/// A list (or fixed-size list) of integers per row.
fn int_lists(b: &RecordBatch, name: &str, path: &Path) -> Result<Vec<Vec<i64>>, StageError> {
    let c = column(b, name, path)?;
    let row = |v: ArrayRef| -> Result<Vec<i64>, StageError> {
        let v = arrow::compute::cast(&v, &DataType::Int64)
            .map_err(|e| fail(path, format!("column {name:?}: {e}")))?;
        Ok(v.as_primitive::<Int64Type>().values().to_vec())
    };
    if let Some(l) = c.as_list_opt::<i32>() {
        (0..l.len()).map(|i| row(l.value(i))).collect()
    } else if let Some(l) = c.as_list_opt::<i64>() {
        (0..l.len()).map(|i| row(l.value(i))).collect()
    } else if let Some(l) = c.as_fixed_size_list_opt() {
        (0..l.len()).map(|i| row(l.value(i))).collect()
    } else {
        Err(fail(
            path,
            format!(
                "column {name:?} is {}, expected a list of integers",
                c.data_type()
            ),
        ))
    }
}

fn to_i32(v: Vec<i64>) -> Vec<i32> {
    v.into_iter().map(|x| x as i32).collect()
}
fn to_i8(v: Vec<i64>) -> Vec<i8> {
    v.into_iter().map(|x| x as i8).collect()
}

/// Tokens of one report.
struct Tok {
    ids: Vec<i32>,
    mask: Vec<i8>,
    clause: Vec<i32>,
    ws: Vec<i8>,
}

/// One volume–report pair before its tokens and labels are attached.
struct Pair {
    patient_id: String,
    study_id: String,
    volume_id: String,
    report_id: String,
    split: Option<usize>,
}

/// The preprocessed volumes: volume_id -> its file.
fn read_volume_files(pre: &Path) -> Result<BTreeMap<String, PathBuf>, StageError> {
    let path = pre.join("preprocessed.parquet");
    let mut volume_file: BTreeMap<String, PathBuf> = BTreeMap::new();
    for b in read_any(&path, "preprocessed")? {
        for (v, f) in strings_nn(&b, "volume_id", &path)?
            .into_iter()
            .zip(strings_nn(&b, "file", &path)?)
        {
            volume_file.insert(v, pre.join(f));
        }
    }
    Ok(volume_file)
}

/// The volume–report pairs: curate's corpus, else every preprocessed volume whose
/// `report_key` matches a report's (`volumes.report_key = reports.report_key`); what cannot be
/// paired is counted in `counts`.
fn read_pairs(
    ctx: &StageContext,
    volume_file: &BTreeMap<String, PathBuf>,
    counts: &mut BTreeMap<&'static str, usize>,
) -> Result<Vec<Pair>, StageError> {
    let mut pairs: Vec<Pair> = Vec::new();
    if let Ok(cur) = ctx.input("curate") {
        let path = cur.join("corpus.parquet");
        for b in read_any(&path, "corpus")? {
            let cols = [
                strings_nn(&b, "patient_id", &path)?,
                strings_nn(&b, "study_id", &path)?,
                strings_nn(&b, "volume_id", &path)?,
                strings_nn(&b, "report_id", &path)?,
            ];
            let [pa, st, vo, re] = cols;
            let splits: Vec<Option<usize>> = match b.column_by_name("split") {
                None => vec![None; b.num_rows()],
                Some(_) => strings_nn(&b, "split", &path)?
                    .into_iter()
                    .map(|s| {
                        split_number(&s).map(Some).ok_or_else(|| {
                            fail(&path, format!("split {s:?} is not train, val or test"))
                        })
                    })
                    .collect::<Result<_, _>>()?,
            };
            for ((((patient_id, study_id), volume_id), report_id), split) in
                pa.into_iter().zip(st).zip(vo).zip(re).zip(splits)
            {
                pairs.push(Pair {
                    patient_id,
                    study_id,
                    volume_id,
                    report_id,
                    split,
                });
            }
        }
    } else {
        let (Ok(ing), Ok(rep)) = (ctx.input("ingest"), ctx.input("reports")) else {
            return Err(StageError::msg(
                "without a curate input, the shards stage pairs volumes with reports itself: \
                 add the ingest and reports stages to its inputs (or a curate stage)",
            ));
        };
        let path = rep.join("reports.parquet");
        let mut report_of_key: BTreeMap<String, String> = BTreeMap::new();
        for b in read_any(&path, "reports")? {
            for (id, key) in strings_nn(&b, "report_id", &path)?
                .into_iter()
                .zip(strings_nn(&b, "report_key", &path)?)
            {
                report_of_key.entry(key).or_insert(id);
            }
        }
        let path = ing.join("volumes.parquet");
        let mut vols: BTreeMap<String, (String, String, Option<String>)> = BTreeMap::new();
        for b in read_any(&path, "volumes")? {
            let v = strings_nn(&b, "volume_id", &path)?;
            let pa = strings_nn(&b, "patient_id", &path)?;
            let st = strings_nn(&b, "study_id", &path)?;
            let rk = strings(&b, "report_key", &path)?;
            for (((v, pa), st), rk) in v.into_iter().zip(pa).zip(st).zip(rk) {
                vols.insert(v, (pa, st, rk));
            }
        }
        for volume_id in volume_file.keys() {
            let Some((patient_id, study_id, key)) = vols.get(volume_id) else {
                *counts.entry("volumes_not_in_ingest").or_default() += 1;
                continue;
            };
            let Some(report_id) = key.as_ref().and_then(|k| report_of_key.get(k)) else {
                *counts.entry("volumes_without_report").or_default() += 1;
                continue;
            };
            pairs.push(Pair {
                patient_id: patient_id.clone(),
                study_id: study_id.clone(),
                volume_id: volume_id.clone(),
                report_id: report_id.clone(),
                split: None,
            });
        }
    }
    Ok(pairs)
}

/// The token sequences of every report, by report_id.
fn read_tokens(path: &Path) -> Result<BTreeMap<String, Tok>, StageError> {
    let mut tokens: BTreeMap<String, Tok> = BTreeMap::new();
    for b in read_any(path, "tokens")? {
        let ids = int_lists(&b, "input_ids", path)?;
        let mask = int_lists(&b, "attention_mask", path)?;
        let clause = int_lists(&b, "clause_index", path)?;
        let ws = int_lists(&b, "word_start", path)?;
        for ((((r, ids), mask), clause), ws) in strings_nn(&b, "report_id", path)?
            .into_iter()
            .zip(ids)
            .zip(mask)
            .zip(clause)
            .zip(ws)
        {
            tokens.insert(
                r,
                Tok {
                    ids: to_i32(ids),
                    mask: to_i8(mask),
                    clause: to_i32(clause),
                    ws: to_i8(ws),
                },
            );
        }
    }
    Ok(tokens)
}

/// The 18 labels of every report from the long-form labels table (null and uncertain -> -1).
fn read_labels(path: &Path) -> Result<BTreeMap<String, Vec<i8>>, StageError> {
    let mut labels: BTreeMap<String, Vec<i8>> = BTreeMap::new();
    for b in read_any(path, "labels")? {
        let r = strings_nn(&b, "report_id", path)?;
        let l = strings_nn(&b, "label", path)?;
        let v = ints(&b, "value", path)?;
        for ((r, l), v) in r.into_iter().zip(l).zip(v) {
            let Some(k) = CT_RATE_LABELS.iter().position(|x| *x == l) else {
                continue;
            };
            let vec = labels
                .entry(r)
                .or_insert_with(|| vec![-1; CT_RATE_LABELS.len()]);
            vec[k] = match v {
                Some(1) => 1,
                Some(0) => 0,
                _ => -1,
            };
        }
    }
    Ok(labels)
}

/// One record per pair whose volume and tokens exist (labels and signature defaulted when
/// missing); every gap is counted in `counts`.
fn sample_records(
    pairs: Vec<Pair>,
    volume_file: &BTreeMap<String, PathBuf>,
    tokens: &BTreeMap<String, Tok>,
    labels: &BTreeMap<String, Vec<i8>>,
    signatures: Option<&BTreeMap<String, Vec<i8>>>,
    counts: &mut BTreeMap<&'static str, usize>,
) -> Vec<SampleRecord> {
    let sig_len = signatures.and_then(|s| s.values().next().map(|v| v.len()));
    let mut records = Vec::with_capacity(pairs.len());
    for pr in pairs {
        let Some(file) = volume_file.get(&pr.volume_id) else {
            *counts.entry("volumes_not_preprocessed").or_default() += 1;
            continue;
        };
        let Some(t) = tokens.get(&pr.report_id) else {
            *counts.entry("reports_without_tokens").or_default() += 1;
            continue;
        };
        let lab = match labels.get(&pr.report_id) {
            Some(l) => l.clone(),
            None => {
                *counts.entry("reports_without_labels").or_default() += 1;
                vec![-1; CT_RATE_LABELS.len()]
            }
        };
        let signature = match signatures {
            None => None,
            Some(s) => Some(match s.get(&pr.report_id) {
                Some(v) => v.clone(),
                None => {
                    *counts.entry("reports_without_signature").or_default() += 1;
                    vec![0; sig_len.unwrap_or(0)]
                }
            }),
        };
        records.push(SampleRecord {
            patient_id: pr.patient_id,
            study_id: pr.study_id,
            volume_id: pr.volume_id,
            report_id: pr.report_id,
            volume: VolumeSource::Nifti(file.clone()),
            input_ids: t.ids.clone(),
            attention_mask: t.mask.clone(),
            clause_index: t.clause.clone(),
            word_start: t.ws.clone(),
            labels: lab,
            signature,
            split: pr.split,
        });
    }
    records
}

/// Signatures and neighbours in rank order.
type GraphInputs = (
    Option<BTreeMap<String, Vec<i8>>>,
    Option<BTreeMap<String, Vec<String>>>,
);

/// The graph's signatures and each report's neighbours in rank order (both `None` without a
/// graph input).
fn read_graph(ctx: &StageContext) -> Result<GraphInputs, StageError> {
    let mut signatures: Option<BTreeMap<String, Vec<i8>>> = None;
    let mut neighbors: Option<BTreeMap<String, Vec<String>>> = None;
    if let Ok(g) = ctx.input("graph") {
        let path = g.join("signatures.parquet");
        let mut s = BTreeMap::new();
        for b in read_any(&path, "signatures")? {
            for (r, sig) in strings_nn(&b, "report_id", &path)?
                .into_iter()
                .zip(int_lists(&b, "signature", &path)?)
            {
                s.insert(r, to_i8(sig));
            }
        }
        signatures = Some(s);
        let path = g.join("neighbors.parquet");
        let mut ranked: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
        for b in read_any(&path, "neighbors")? {
            let r = strings_nn(&b, "report_id", &path)?;
            let n = strings_nn(&b, "neighbor_report_id", &path)?;
            let k = ints(&b, "rank", &path)?;
            for ((r, n), k) in r.into_iter().zip(n).zip(k) {
                ranked
                    .entry(r)
                    .or_default()
                    .push((k.unwrap_or(i64::MAX), n));
            }
        }
        neighbors = Some(
            ranked
                .into_iter()
                .map(|(r, mut v)| {
                    v.sort();
                    (r, v.into_iter().map(|x| x.1).collect())
                })
                .collect(),
        );
    }
    Ok((signatures, neighbors))
}

/// The shards' settings against the geometry preprocess planned: a `shape` other than the
/// volumes' (they would be cropped or padded again) or a window reaching outside the one they were
/// clipped to (values there do not exist) is an error before any work.
fn check_plan(
    plan: &mg3d_core::plan::VolumePlan,
    shape_ras: Option<[usize; 3]>,
    window: [f64; 2],
) -> Result<(), StageError> {
    if let Some(s) = shape_ras
        && s != plan.shape_ras
    {
        return Err(StageError::msg(format!(
            "shape {s:?} differs from the {:?} preprocess made with preset {:?}: set shape = [] (the \
             volumes' shape) or change the preset",
            plan.shape_ras, plan.preset
        )));
    }
    if window[0] < plan.window[0] || window[1] > plan.window[1] {
        return Err(StageError::msg(format!(
            "window {window:?} reaches outside the HU window {:?} preprocess clipped the volumes to \
             (preset {:?}): use a window within it",
            plan.window, plan.preset
        )));
    }
    Ok(())
}

impl Stage for ShardsStage {
    fn kind(&self) -> &'static str {
        "shards"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn describe(&self) -> &'static str {
        "volume-report pairs -> patient splits + safetensors shards (fixed shapes) + index.json"
    }
    fn params(&self) -> Vec<ParamDef> {
        ShardsParams::defs()
    }
    fn inputs(&self) -> Vec<InputDecl> {
        let d = |kind, required| InputDecl { kind, required };
        vec![
            d("preprocess", true),
            d("tokens", true),
            d("entities", true),
            d("ingest", false),
            d("reports", false),
            d("graph", false),
            d("curate", false),
        ]
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: ShardsParams = ctx.params.parse()?;
        let dtype = match p.dtype.to_ascii_lowercase().as_str() {
            "f16" | "float16" => Dtype::F16,
            "bf16" | "bfloat16" => Dtype::BF16,
            "f32" | "float32" => Dtype::F32,
            other => {
                return Err(StageError::msg(format!(
                    "dtype {other:?}: use f16, bf16 or f32"
                )));
            }
        };
        if p.window.len() != 2 {
            return Err(StageError::msg(format!(
                "window {:?} must be [low, high] in HU",
                p.window
            )));
        }
        let shape_ras = match p.shape.as_slice() {
            [] => None,
            [r, a, s] if *r > 0 && *a > 0 && *s > 0 => {
                Some([*r as usize, *a as usize, *s as usize])
            }
            _ => {
                return Err(StageError::msg(format!(
                    "shape {:?} must be [] or three positive voxel counts [R, A, S]",
                    p.shape
                )));
            }
        };
        if let Some(plan) = mg3d_core::plan::VolumePlan::read(ctx.input("preprocess")?)? {
            check_plan(&plan, shape_ras, [p.window[0], p.window[1]])?;
        }
        if p.shard_mb.is_nan() || p.shard_mb <= 0.0 {
            return Err(StageError::msg("shard_mb must be positive"));
        }
        if p.seed < 0 || p.max_neighbors < 0 {
            return Err(StageError::msg("seed and max_neighbors must be >= 0"));
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();

        // Preprocessed volumes.
        let volume_file = read_volume_files(ctx.input("preprocess")?)?;

        // Pairs: from curate, else volumes.report_key = reports.report_key.
        let pairs = read_pairs(ctx, &volume_file, &mut counts)?;

        let tokens = read_tokens(&ctx.input("tokens")?.join("tokens.parquet"))?;

        let labels = read_labels(&ctx.input("entities")?.join("labels.parquet"))?;

        // Graph: signatures and ranked neighbours.
        let (signatures, neighbors) = read_graph(ctx)?;

        let records = sample_records(
            pairs,
            &volume_file,
            &tokens,
            &labels,
            signatures.as_ref(),
            &mut counts,
        );
        if records.is_empty() {
            return Err(StageError::msg(format!(
                "no volume-report pairs to shard ({counts:?}); check that volumes have reports \
                 (volumes.report_key = reports.report_key) and that tokens exist"
            )));
        }

        if p.ratios.len() != 3 {
            return Err(StageError::msg(format!(
                "ratios {:?} must be [train, val, test]",
                p.ratios
            )));
        }
        let cfg = WriterConfig {
            seed: p.seed as u64,
            ratios: [p.ratios[0], p.ratios[1], p.ratios[2]],
            shard_bytes: (p.shard_mb * (1u64 << 20) as f64) as u64,
            dtype,
            window: [p.window[0], p.window[1]],
            shape_ras,
            max_neighbors: p.max_neighbors as usize,
        };
        let pb = ctx.progress_bar(records.len() as u64, "samples");
        let cancelled = || ctx.check_cancelled().is_err();
        let progress = |n: usize| pb.set_position(n as u64);
        let (_, s) = write_shards(
            records,
            neighbors.as_ref(),
            &cfg,
            &ctx.out_dir,
            &cancelled,
            &progress,
        )
        .map_err(|e| match e {
            crate::ShardError::Cancelled => StageError::Cancelled,
            e => StageError::msg(e.to_string()),
        })?;
        pb.finish_and_clear();
        let mut summary = json!({
            "samples": s.samples.iter().sum::<usize>(),
            "train": s.samples[0], "val": s.samples[1], "test": s.samples[2],
            "patients": {"train": s.patients[0], "val": s.patients[1], "test": s.patients[2]},
            "shards": s.shards,
            "bytes": s.bytes,
            "resized": s.resized,
            "graph": signatures.is_some(),
            "with_neighbors": s.with_neighbors,
        });
        for (k, v) in counts {
            summary[k] = json!(v);
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod plan_tests {
    use super::check_plan;
    use mg3d_core::plan::VolumePlan;

    #[test]
    fn settings_must_agree_with_the_preprocess_plan() {
        let plan = VolumePlan {
            preset: "demo-64".into(),
            axis_order: "RAS".into(),
            shape_ras: [64, 64, 32],
            spacing_mm: [2.25, 2.25, 3.0],
            window: [-1000.0, 1000.0],
        };
        assert!(check_plan(&plan, None, [-1000.0, 1000.0]).is_ok());
        assert!(check_plan(&plan, Some([64, 64, 32]), [-1350.0 + 350.0, 150.0]).is_ok());
        let e = check_plan(&plan, Some([128, 96, 128]), [-1000.0, 1000.0]).unwrap_err();
        assert!(e.to_string().contains("set shape = []"), "{e}");
        let e = check_plan(&plan, None, [-1350.0, 150.0]).unwrap_err();
        assert!(e.to_string().contains("outside the HU window"), "{e}");
    }
}
