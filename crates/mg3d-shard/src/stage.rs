//! The `shards` stage: volume–report pairs -> `shards/*.safetensors`, `index.json`,
//! `splits.parquet`.
//!
//! Inputs: `preprocess` (int16 HU NIfTI per volume), `tokens`, `entities` (labels), optionally
//! `graph` (signatures + neighbours) and `curate` (the selected pairs). Without `curate`, each
//! preprocessed volume is paired with the report whose `report_key` matches the volume's (from
//! `ingest` and `reports`, which are then required); volumes without a report are counted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mg3d_core::labels::CT_RATE_LABELS;
use mg3d_core::rows::{
    CorpusRow, LabelsRow, NeighborsRow, PreprocessedRow, ReportsRow, SignaturesRow, TokensRow,
    VolumesRow,
};
use mg3d_core::stage::{InputDecl, ParamDef, Stage, StageContext, StageError};
use mg3d_core::table::{Row, read_rows};
use serde_json::{Value, json};

use crate::ShardError;
use crate::format::Dtype;
use crate::split::split_number;
use crate::writer::{SampleRecord, ShardCache, VolumeSource, WriterConfig, write_shards};

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
    ShardError::Input {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
    .into()
}

/// A setting or input choice the stage cannot work with.
fn config(detail: impl Into<String>) -> StageError {
    ShardError::Config(detail.into()).into()
}

/// Reads a table as typed rows (checked against its contract); a missing file names the fix.
fn read<R: Row>(path: &Path) -> Result<Vec<R>, StageError> {
    if !path.exists() {
        return Err(fail(path, "missing; rerun the stage that writes it"));
    }
    Ok(read_rows(path)?)
}

/// One volume–report pair before its tokens and labels are attached.
struct Pair {
    patient_id: String,
    study_id: String,
    volume_id: String,
    report_id: String,
    split: Option<usize>,
}

/// The preprocessed volumes (volume_id -> its file) and their preprocess preset(s), joined by
/// `+` in the unusual case of several.
fn read_volume_files(pre: &Path) -> Result<(BTreeMap<String, PathBuf>, String), StageError> {
    let path = pre.join("preprocessed.parquet");
    let rows = read::<PreprocessedRow>(&path)?;
    let presets: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r.preset.as_str()).collect();
    let preset = presets.into_iter().collect::<Vec<_>>().join("+");
    let volume_file = rows
        .into_iter()
        .map(|r| (r.volume_id, pre.join(r.file)))
        .collect();
    Ok((volume_file, preset))
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
        for c in read::<CorpusRow>(&path)? {
            let split = split_number(&c.split).ok_or_else(|| {
                fail(
                    &path,
                    format!("split {:?} is not train, val or test", c.split),
                )
            })?;
            pairs.push(Pair {
                patient_id: c.patient_id,
                study_id: c.study_id,
                volume_id: c.volume_id,
                report_id: c.report_id,
                split: Some(split),
            });
        }
    } else {
        let (Ok(ing), Ok(rep)) = (ctx.input("ingest"), ctx.input("reports")) else {
            return Err(config(
                "without a curate input, the shards stage pairs volumes with reports itself: \
                 add the ingest and reports stages to its inputs (or a curate stage)",
            ));
        };
        let path = rep.join("reports.parquet");
        let mut report_of_key: BTreeMap<String, String> = BTreeMap::new();
        for r in read::<ReportsRow>(&path)? {
            report_of_key.entry(r.report_key).or_insert(r.report_id);
        }
        let path = ing.join("volumes.parquet");
        let vols: BTreeMap<String, (String, String, Option<String>)> = read::<VolumesRow>(&path)?
            .into_iter()
            .map(|v| (v.volume_id, (v.patient_id, v.study_id, v.report_key)))
            .collect();
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
fn read_tokens(path: &Path) -> Result<BTreeMap<String, TokensRow>, StageError> {
    Ok(read::<TokensRow>(path)?
        .into_iter()
        .map(|t| (t.report_id.clone(), t))
        .collect())
}

/// The 18 labels of every report from the long-form labels table (null and uncertain -> -1).
fn read_labels(path: &Path) -> Result<BTreeMap<String, Vec<i8>>, StageError> {
    let mut labels: BTreeMap<String, Vec<i8>> = BTreeMap::new();
    for row in read::<LabelsRow>(path)? {
        let Some(k) = CT_RATE_LABELS.iter().position(|x| *x == row.label) else {
            continue;
        };
        let vec = labels
            .entry(row.report_id)
            .or_insert_with(|| vec![-1; CT_RATE_LABELS.len()]);
        vec[k] = match row.value {
            Some(1) => 1,
            Some(0) => 0,
            _ => -1,
        };
    }
    Ok(labels)
}

/// One record per pair whose volume and tokens exist (labels and signature defaulted when
/// missing); every gap is counted in `counts`.
fn sample_records(
    pairs: Vec<Pair>,
    volume_file: &BTreeMap<String, PathBuf>,
    tokens: &BTreeMap<String, TokensRow>,
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
            input_ids: t.input_ids.clone(),
            attention_mask: t.attention_mask.clone(),
            clause_index: t.clause_index.clone(),
            word_start: t.word_start.clone(),
            labels: lab,
            signature,
            split: pr.split,
        });
    }
    records
}

/// The stage's item store as the writer's shard cache: one item per shard file.
struct StoredShards<'a, 'c>(&'a StageContext<'c>);

impl ShardCache for StoredShards<'_, '_> {
    fn shard(
        &self,
        id: &str,
        digest: &dyn Fn() -> Result<String, ShardError>,
        make: &dyn Fn(&Path) -> Result<(), ShardError>,
    ) -> Result<Option<PathBuf>, ShardError> {
        let items = self.0.items();
        if !items.owns(id) {
            return Ok(None);
        }
        let key = items.key(id, &digest()?);
        // The store speaks io::Error; the writer's own error is carried past it.
        let failed = std::sync::Mutex::new(None);
        let made = items.get_or_make::<std::io::Error>(&key, |dir| {
            make(dir).map_err(|e| {
                *failed.lock().unwrap() = Some(e);
                std::io::Error::other("shard not written")
            })
        });
        match (made, failed.into_inner().unwrap()) {
            (_, Some(e)) => Err(e),
            (Ok(o), None) => Ok(Some(o.dir().to_path_buf())),
            (Err(source), None) => Err(ShardError::Io {
                path: items.root().to_path_buf(),
                source,
            }),
        }
    }
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
        signatures = Some(
            read::<SignaturesRow>(&path)?
                .into_iter()
                .map(|r| (r.report_id, r.signature))
                .collect(),
        );
        let path = g.join("neighbors.parquet");
        let mut ranked: BTreeMap<String, Vec<(i32, String)>> = BTreeMap::new();
        for r in read::<NeighborsRow>(&path)? {
            ranked
                .entry(r.report_id)
                .or_default()
                .push((r.rank, r.neighbor_report_id));
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
        return Err(config(format!(
            "shape {s:?} differs from the {:?} preprocess made with preset {:?}: set shape = [] (the \
             volumes' shape) or change the preset",
            plan.shape_ras, plan.preset
        )));
    }
    if window[0] < plan.window[0] || window[1] > plan.window[1] {
        return Err(config(format!(
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
        // 2: index.json names the preprocess preset.
        "2"
    }
    fn describe(&self) -> &'static str {
        "volume-report pairs -> patient splits + safetensors shards (fixed shapes) + index.json"
    }
    fn partitioned(&self) -> bool {
        true
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
                return Err(config(format!("dtype {other:?}: use f16, bf16 or f32")));
            }
        };
        if p.window.len() != 2 {
            return Err(config(format!(
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
                return Err(config(format!(
                    "shape {:?} must be [] or three positive voxel counts [R, A, S]",
                    p.shape
                )));
            }
        };
        if let Some(plan) = mg3d_core::plan::VolumePlan::read(ctx.input("preprocess")?)? {
            check_plan(&plan, shape_ras, [p.window[0], p.window[1]])?;
        }
        if p.shard_mb.is_nan() || p.shard_mb <= 0.0 {
            return Err(config("shard_mb must be positive"));
        }
        if p.seed < 0 || p.max_neighbors < 0 {
            return Err(config("seed and max_neighbors must be >= 0"));
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();

        // Preprocessed volumes.
        let (volume_file, preset) = read_volume_files(ctx.input("preprocess")?)?;

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
            return Err(ShardError::NoPairs {
                counts: format!("{counts:?}"),
            }
            .into());
        }

        if p.ratios.len() != 3 {
            return Err(config(format!(
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
            preset: Some(preset).filter(|p| !p.is_empty()),
        };
        let pb = ctx.progress_bar(records.len() as u64, "samples");
        let cancelled = || ctx.check_cancelled().is_err();
        let progress = |n: usize| pb.set_position(n as u64);
        let (_, s) = write_shards(
            records,
            neighbors.as_ref(),
            &cfg,
            &ctx.out_dir,
            Some(&StoredShards(ctx)),
            &cancelled,
            &progress,
        )?;
        pb.finish_and_clear();
        if ctx.is_partition() {
            return Ok(Value::Null);
        }
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
