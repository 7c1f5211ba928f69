//! Read throughput of the loader against `cat` of the same shard files (the physical limit of
//! this machine for data already in the page cache, or on disk when it is not).
//!
//! Both are timed in the same run, best of `repeats`, after one warm-up read of every file, so
//! both read from the page cache. Numbers are reported, never asserted.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;

use crate::ShardError;
use crate::reader::{Loader, LoaderConfig, ShardIndex};

/// The result of [`bench_read`].
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Shard files.
    pub files: usize,
    /// Bytes of those files.
    pub file_bytes: u64,
    /// Samples over all splits.
    pub samples: usize,
    /// Passes over the data per timed run (so each run reads about 1 GB or more).
    pub passes: usize,
    /// Best wall time of `cat FILES... (passes times) > /dev/null`.
    pub cat_seconds: f64,
    /// `passes * file_bytes / cat_seconds` in GB/s (10^9).
    pub cat_gbps: f64,
    /// Best wall time of `passes` epochs of every split through the open loaders.
    pub loader_seconds: f64,
    /// Bytes the loader delivered per run (all fields of all samples, `passes` epochs).
    pub loader_bytes: u64,
    /// `loader_bytes / loader_seconds` in GB/s.
    pub loader_gbps: f64,
    /// Samples per second through the loader.
    pub samples_per_s: f64,
    /// `loader_gbps / cat_gbps` (goal >= 0.8).
    pub ratio: f64,
    /// Best time to open the loaders of every split (map, check headers), without `verify`.
    pub open_seconds: f64,
    /// Throughput of opening with `verify = true` (sha256 of every shard), GB/s.
    pub verify_gbps: f64,
    /// Loader settings used, in words.
    pub settings: String,
}

fn cat(files: &[std::path::PathBuf]) -> Result<f64, ShardError> {
    let t = Instant::now();
    let status = Command::new("cat")
        .args(files)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| ShardError::Io {
            path: "cat".into(),
            source: e,
        })?;
    if !status.success() {
        return Err(ShardError::Config(format!("cat exited with {status}")));
    }
    Ok(t.elapsed().as_secs_f64())
}

fn open_all(
    index: &ShardIndex,
    batch_size: usize,
    workers: usize,
    verify: bool,
) -> Result<Vec<Loader>, ShardError> {
    index
        .file
        .splits
        .iter()
        .filter(|(_, s)| !s.samples.is_empty())
        .map(|(name, _)| {
            Loader::new(
                index,
                LoaderConfig {
                    split: name.clone(),
                    seed: index.file.seed,
                    batch_size,
                    workers,
                    prefetch: 2,
                    verify,
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// Measures loader read throughput over the shards in `dir` against `cat` of the same files.
///
/// Every file is read once first (warm page cache). A timed run reads the data `passes` times
/// (enough for about 1 GB): `cat` gets the file list repeated `passes` times in one process; the
/// loaders (opened once, timed separately) run `passes` epochs of every split. Best of `repeats`.
pub fn bench_read(dir: &Path, repeats: usize) -> Result<BenchReport, ShardError> {
    let index = ShardIndex::open(dir)?;
    let files = index.shard_paths();
    let file_bytes: u64 = index
        .file
        .splits
        .values()
        .flat_map(|s| s.shards.iter().map(|e| e.bytes))
        .sum();
    if files.is_empty() {
        return Err(ShardError::Config(format!(
            "{}: no shards to read",
            dir.display()
        )));
    }
    let passes = (1_000_000_000u64.div_ceil(file_bytes.max(1)) as usize).clamp(1, 1000);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(4);
    let batch_size = 4;
    let repeated: Vec<_> = (0..passes).flat_map(|_| files.iter().cloned()).collect();
    cat(&files)?; // warm-up: both measurements read from the page cache
    let repeats = repeats.max(1);
    let (mut best_cat, mut best_loader, mut best_open, mut best_verify) =
        (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    let (mut bytes, mut samples) = (0u64, 0usize);
    for _ in 0..repeats {
        best_cat = best_cat.min(cat(&repeated)?);
        let t = Instant::now();
        let mut loaders = open_all(&index, batch_size, workers, false)?;
        best_open = best_open.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        (bytes, samples) = (0, 0);
        for _ in 0..passes {
            for l in loaders.iter_mut() {
                for b in l.by_ref() {
                    let b = b?;
                    bytes += b.bytes() as u64;
                    samples += b.len();
                }
            }
        }
        best_loader = best_loader.min(t.elapsed().as_secs_f64());
        drop(loaders);
        let t = Instant::now();
        open_all(&index, batch_size, workers, true)?;
        best_verify = best_verify.min(t.elapsed().as_secs_f64());
    }
    let gbps = |b: u64, s: f64| b as f64 / s.max(1e-9) / 1e9;
    let cat_gbps = gbps(file_bytes * passes as u64, best_cat);
    let loader_gbps = gbps(bytes, best_loader);
    Ok(BenchReport {
        files: files.len(),
        file_bytes,
        samples: samples / passes,
        passes,
        cat_seconds: best_cat,
        cat_gbps,
        loader_seconds: best_loader,
        loader_bytes: bytes,
        loader_gbps,
        samples_per_s: samples as f64 / best_loader.max(1e-9),
        ratio: loader_gbps / cat_gbps.max(1e-12),
        open_seconds: best_open,
        verify_gbps: gbps(file_bytes, best_verify),
        settings: format!(
            "batch_size {batch_size}, {workers} workers, prefetch 2, shuffled, all fields, \
             {passes} passes per run, best of {repeats}"
        ),
    })
}
