//! `mg3d embed` and `mg3d predict` in `mg3d-torch`: scans through [`ScanEncoder`] in batches,
//! then written (embed) or scored by the eval stage's predictor (predict). A scan that cannot be
//! read is reported by its position on the command line (never its path) and the others go on.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use mg3d_cli::scans::{EmbedArgs, PredictArgs, ScanArgs};
use mg3d_core::rows::{EmbeddingsRow, PredictionsRow};
use mg3d_core::table::write_rows;
use mg3d_eval::predictor::Predictor;
use mg3d_eval::scans::ScanEncoder;
use mg3d_ingest::scan::ScanOptions;
use rayon::prelude::*;

/// One scan's features, with what identifies it.
struct Embedded {
    input_index: usize,
    volume_id: String,
    source: &'static str,
    preprocess_hash: String,
    features: Vec<f32>,
}

/// Reads, preprocesses and encodes every scan, `batch` at a time (read in parallel). Returns
/// the encoded scans and the number rejected (each reported on stderr).
fn encode_all(enc: &ScanEncoder, a: &ScanArgs, salt: &str, quiet: bool) -> (Vec<Embedded>, usize) {
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(a.paths.len() as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} scans {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let mut out = Vec::new();
    let mut rejected = 0;
    let indexed: Vec<(usize, &Path)> = a.paths.iter().map(|p| p.as_path()).enumerate().collect();
    let reader = enc.reader();
    for chunk in indexed.chunks(a.batch.max(1)) {
        let prepared: Vec<_> = chunk
            .par_iter()
            .map(|&(i, p)| (i, reader.prepare(p)))
            .collect();
        let mut ok = Vec::new();
        for (i, r) in prepared {
            match r {
                Ok(s) => ok.push((i, s)),
                Err(r) => {
                    rejected += 1;
                    pb.suspend(|| eprintln!("input {i}: rejected: {} ({})", r.code, r.message));
                }
            }
        }
        let scans: Vec<_> = ok.iter().map(|(_, s)| s).collect();
        let features = enc.features(&scans);
        for ((i, s), f) in ok.into_iter().zip(features) {
            out.push(Embedded {
                input_index: i,
                volume_id: mg3d_core::ids::pseudonym(salt, "volume", &s.source_key),
                source: s.source_kind,
                preprocess_hash: s.preprocess_hash,
                features: f,
            });
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    (out, rejected)
}

fn options(a: &ScanArgs) -> Result<ScanOptions> {
    Ok(ScanOptions::with_ctrate_metadata(&a.ctrate_metadata)?)
}

/// After writing what could be made: an error when some inputs were rejected.
fn check_rejects(rejected: usize, total: usize) -> Result<()> {
    if rejected > 0 {
        bail!("{rejected} of {total} inputs rejected (reasons above); the others were processed");
    }
    Ok(())
}

/// `mg3d embed`.
pub(crate) fn embed(a: &EmbedArgs, salt: &str, quiet: bool) -> Result<String> {
    let tm = mg3d_train::stage::load_trained(&a.model, &a.scans.device)?;
    let enc = ScanEncoder::new(&tm, &a.model, options(&a.scans)?)?;
    let (done, rejected) = encode_all(&enc, &a.scans, salt, quiet);
    let name = a.out.to_string_lossy().to_lowercase();
    if name.ends_with(".safetensors") {
        write_safetensors(&a.out, &done)?;
    } else if name.ends_with(".parquet") {
        let rows: Vec<EmbeddingsRow> = done
            .iter()
            .map(|e| EmbeddingsRow {
                volume_id: e.volume_id.clone(),
                source: e.source.into(),
                input_index: Some(e.input_index as i32),
                preprocess_hash: Some(e.preprocess_hash.clone()),
                features: e.features.clone(),
            })
            .collect();
        write_rows(&a.out, &rows)?;
    } else {
        bail!("--out must end in .parquet or .safetensors");
    }
    check_rejects(rejected, a.scans.paths.len())?;
    Ok(format!(
        "{} scans -> {} ({} features each)",
        done.len(),
        a.out.display(),
        done.first().map_or(0, |e| e.features.len())
    ))
}

/// Tensor `features` (N x F, f32) with the rows' ids, sources, input positions and hashes as
/// JSON arrays in the header's metadata; written whole to a temporary file, then renamed.
fn write_safetensors(out: &Path, done: &[Embedded]) -> Result<()> {
    let f = done.first().map_or(0, |e| e.features.len());
    let bytes: Vec<u8> = done
        .iter()
        .flat_map(|e| e.features.iter().flat_map(|x| x.to_le_bytes()))
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![done.len(), f], &bytes)?;
    let list = |g: &dyn Fn(&Embedded) -> serde_json::Value| {
        serde_json::Value::Array(done.iter().map(g).collect()).to_string()
    };
    let metadata = HashMap::from([
        (
            "volume_ids".to_string(),
            list(&|e| e.volume_id.clone().into()),
        ),
        ("sources".to_string(), list(&|e| e.source.into())),
        ("input_indices".to_string(), list(&|e| e.input_index.into())),
        (
            "preprocess_hashes".to_string(),
            list(&|e| e.preprocess_hash.clone().into()),
        ),
    ]);
    let data = safetensors::serialize([("features", view)], Some(metadata))?;
    mg3d_core::fsutil::write_atomic(out, &data)?;
    Ok(())
}

/// `mg3d predict`.
pub(crate) fn predict(a: &PredictArgs, salt: &str, json: bool) -> Result<()> {
    let pred = Predictor::load(&a.model, &a.scans.device)?;
    let enc = ScanEncoder::new(&pred.model, &a.model, options(&a.scans)?)?;
    let (done, rejected) = encode_all(&enc, &a.scans, salt, json);
    let features: Vec<Vec<f32>> = done.iter().map(|e| e.features.clone()).collect();
    let mut rows = Vec::new();
    for (e, p) in done.iter().zip(pred.predict(&features, a.top_k)) {
        let row = |task: &str, name: &str, rank: Option<i32>, value: f64| PredictionsRow {
            volume_id: e.volume_id.clone(),
            input_index: Some(e.input_index as i32),
            task: task.into(),
            name: name.into(),
            rank,
            value,
        };
        for (label, v) in pred.labels().iter().zip(&p.zero_shot) {
            rows.push(row("zero_shot", label, None, *v));
        }
        for (k, (report, sim)) in p.nearest_reports.iter().enumerate() {
            rows.push(row("nearest_report", report, Some(k as i32 + 1), *sim));
        }
    }
    for r in &rows {
        if json {
            println!(
                "{}",
                serde_json::json!({"input": r.input_index, "volume_id": r.volume_id,
                    "task": r.task, "name": r.name, "rank": r.rank, "value": r.value})
            );
        } else {
            let rank = r.rank.map(|k| format!("#{k} ")).unwrap_or_default();
            println!(
                "input {:<3} {:<14} {rank}{:<40} {:.4}",
                r.input_index.unwrap_or(-1),
                r.task,
                r.name,
                r.value
            );
        }
    }
    if let Some(out) = &a.out {
        write_rows(out, &rows)?;
    }
    check_rejects(rejected, a.scans.paths.len())
}
