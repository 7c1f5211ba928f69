//! Reading shards: [`ShardIndex`] (the parsed `index.json`) and the [`Loader`].
//!
//! The loader memory-maps a split's shards, checks every header against the index (and, with
//! `verify`, every file's sha256), and yields [`Batch`]es of raw little-endian buffers that a
//! trainer turns into tensors without conversion (`tch::Tensor::from_data_size`).
//!
//! Order: the epoch's permutation (see [`crate::order`]) is cut into global batches of
//! `batch_size` from the resume position; global batch `c` goes to rank `c % world`. Workers only
//! decode: worker `w` builds the rank's batches `w, w + workers, ...` and the consumer takes them
//! round-robin, so the sequence is the same for any number of workers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ShardError;
use crate::format::{Dtype, FORMAT, FieldSpec, IndexFile, SCHEMA_VERSION, SplitIndex, sha256_hex};
use crate::order::{epoch_permutation, group_neighbors, rank_batches};

/// A shard directory's parsed `index.json`.
#[derive(Debug, Clone)]
pub struct ShardIndex {
    dir: PathBuf,
    /// The index contents.
    pub file: IndexFile,
}

impl ShardIndex {
    /// Opens `dir/index.json` (or `dir` itself when it is the index file) and checks its format
    /// and schema version.
    pub fn open(dir: &Path) -> Result<ShardIndex, ShardError> {
        let (dir, path) = if dir.is_file() {
            (
                dir.parent().unwrap_or(Path::new(".")).to_path_buf(),
                dir.to_path_buf(),
            )
        } else {
            (dir.to_path_buf(), dir.join("index.json"))
        };
        let text = std::fs::read(&path).map_err(|e| ShardError::Io {
            path: path.clone(),
            source: e,
        })?;
        let file: IndexFile = serde_json::from_slice(&text).map_err(|e| ShardError::Format {
            path: path.clone(),
            detail: format!("not an mg3d shard index: {e}"),
        })?;
        if file.format != FORMAT || file.schema_version != SCHEMA_VERSION {
            return Err(ShardError::Format {
                path,
                detail: format!(
                    "format {:?} version {}, this reader reads {FORMAT:?} version {SCHEMA_VERSION}",
                    file.format, file.schema_version
                ),
            });
        }
        Ok(ShardIndex { dir, file })
    }

    /// The directory shard paths are relative to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shards and samples of `split` (`train`, `val` or `test`).
    pub fn split(&self, name: &str) -> Result<&SplitIndex, ShardError> {
        self.file.splits.get(name).ok_or_else(|| {
            ShardError::Config(format!(
                "{}: no split {name:?}; the index has {:?}",
                self.dir.join("index.json").display(),
                self.file.splits.keys().collect::<Vec<_>>()
            ))
        })
    }

    /// The fields of every sample.
    pub fn fields(&self) -> &[FieldSpec] {
        &self.file.fields
    }

    /// Every shard file of every split (absolute or relative to the working directory).
    pub fn shard_paths(&self) -> Vec<PathBuf> {
        self.file
            .splits
            .values()
            .flat_map(|s| s.shards.iter().map(|e| self.dir.join(&e.file)))
            .collect()
    }
}

/// A batch of one field: raw little-endian elements and the batch shape (`[batch] + field shape`).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorBuf {
    /// Element type.
    pub dtype: Dtype,
    /// Shape, batch first.
    pub shape: Vec<usize>,
    /// Little-endian bytes, C order.
    pub data: Vec<u8>,
}

impl TensorBuf {
    /// The values as f32 (half types widened exactly, integers converted).
    pub fn to_f32(&self) -> Vec<f32> {
        let d = &self.data;
        match self.dtype {
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            _ => self
                .to_i64()
                .unwrap_or_default()
                .into_iter()
                .map(|x| x as f32)
                .collect(),
        }
    }

    /// The values as i64, for integer fields (`None` for float fields).
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        let d = &self.data;
        Some(match self.dtype {
            Dtype::I8 => d.iter().map(|&x| x as i8 as i64).collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            _ => return None,
        })
    }
}

/// Where the loader is in its sequence: the resume state to checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Epoch.
    pub epoch: u64,
    /// Samples of the epoch's global order consumed by all ranks together.
    pub sample_in_epoch: usize,
}

/// One batch of one rank.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Epoch it belongs to.
    pub epoch: u64,
    /// Its number among this rank's batches of the epoch, counted from the resume point.
    pub batch: usize,
    /// Sample numbers (positions in the split's `samples`), in batch order.
    pub samples: Vec<u32>,
    /// The state to save to resume right after this batch.
    pub state_after: LoaderState,
    /// One buffer per loaded field.
    pub fields: BTreeMap<String, TensorBuf>,
}

impl Batch {
    /// The buffer of `name`.
    pub fn field(&self, name: &str) -> Option<&TensorBuf> {
        self.fields.get(name)
    }
    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.samples.len()
    }
    /// Whether the batch is empty (never, for batches the loader yields).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
    /// Bytes of all buffers.
    pub fn bytes(&self) -> usize {
        self.fields.values().map(|t| t.data.len()).sum()
    }
}

/// Graph-neighbour batching: each anchor is followed by up to `per_anchor` of its graph
/// neighbours (other patients, same split), so inter-patient positives exist in small batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborSampler {
    /// Neighbours placed after each anchor.
    pub per_anchor: usize,
}

/// Loader settings.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// `train`, `val` or `test`.
    pub split: String,
    /// Seed of the sample order (the index's `seed` is a sensible default).
    pub seed: u64,
    /// Samples per batch (per rank).
    pub batch_size: usize,
    /// Shuffle per epoch; `false` reads samples in index order.
    pub shuffle: bool,
    /// Drop an incomplete last global batch and equalise batch counts across ranks.
    pub drop_last: bool,
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks (data-parallel processes).
    pub world: usize,
    /// Decode threads (0 = build batches in the calling thread).
    pub workers: usize,
    /// Batches each worker may build ahead.
    pub prefetch: usize,
    /// Check every shard's sha256 against the index when opening.
    pub verify: bool,
    /// Put graph neighbours into the same batch (needs an index built with a graph).
    pub neighbor_sampler: Option<NeighborSampler>,
    /// Fields to load (`None` = all).
    pub fields: Option<Vec<String>>,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            split: "train".into(),
            seed: 0,
            batch_size: 2,
            shuffle: true,
            drop_last: false,
            rank: 0,
            world: 1,
            workers: 2,
            prefetch: 2,
            verify: false,
            neighbor_sampler: None,
            fields: None,
        }
    }
}

/// A field's place in every shard of a split.
#[derive(Debug)]
struct FieldLayout {
    spec: FieldSpec,
    row_bytes: usize,
    /// Byte offset of the tensor data in each shard file.
    offsets: Vec<usize>,
}

/// The mapped shards of one split.
#[derive(Debug)]
struct SplitData {
    maps: Vec<Mmap>,
    fields: Vec<FieldLayout>,
    /// (shard, row) per sample.
    location: Vec<(u32, u32)>,
}

fn format_err(path: &Path, detail: impl Into<String>) -> ShardError {
    ShardError::Format {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Maps every shard of `split`, checking its size against the index (and, with `verify`, its
/// sha256).
fn map_shards(
    index: &ShardIndex,
    split: &SplitIndex,
    verify: bool,
) -> Result<Vec<Mmap>, ShardError> {
    let mut maps = Vec::with_capacity(split.shards.len());
    for e in &split.shards {
        let path = index.dir.join(&e.file);
        let io = |source| ShardError::Io {
            path: path.clone(),
            source,
        };
        let f = std::fs::File::open(&path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        if len != e.bytes {
            return Err(format_err(
                &path,
                format!(
                    "{len} bytes, index.json says {} (truncated or replaced)",
                    e.bytes
                ),
            ));
        }
        // SAFETY: shard files are never modified after the stage promotes them (a rebuild
        // writes new files and renames them into place, leaving mapped inodes intact).
        let m = unsafe { Mmap::map(&f) }.map_err(io)?;
        maps.push(m);
    }
    if verify {
        split
            .shards
            .par_iter()
            .zip(maps.par_iter())
            .try_for_each(|(e, m)| {
                let actual = sha256_hex(m);
                if actual != e.sha256 {
                    Err(ShardError::Checksum {
                        path: index.dir.join(&e.file),
                        expected: e.sha256.clone(),
                        actual,
                    })
                } else {
                    Ok(())
                }
            })?;
    }
    Ok(maps)
}

impl SplitData {
    fn open(
        index: &ShardIndex,
        split: &SplitIndex,
        verify: bool,
        want: Option<&[String]>,
    ) -> Result<SplitData, ShardError> {
        let specs: Vec<FieldSpec> = match want {
            None => index.fields().to_vec(),
            Some(names) => names
                .iter()
                .map(|n| {
                    index
                        .fields()
                        .iter()
                        .find(|f| &f.name == n)
                        .cloned()
                        .ok_or_else(|| {
                            ShardError::Config(format!(
                                "no field {n:?} in the shards; they have {:?}",
                                index.fields().iter().map(|f| &f.name).collect::<Vec<_>>()
                            ))
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        let maps = map_shards(index, split, verify)?;
        let mut fields: Vec<FieldLayout> = specs
            .into_iter()
            .map(|spec| FieldLayout {
                row_bytes: spec.row_bytes(),
                spec,
                offsets: Vec::new(),
            })
            .collect();
        for (e, m) in split.shards.iter().zip(&maps) {
            let path = index.dir.join(&e.file);
            let st = safetensors::SafeTensors::deserialize(m)
                .map_err(|err| format_err(&path, format!("not a valid safetensors file: {err}")))?;
            let (_, meta) = safetensors::SafeTensors::read_metadata(m)
                .map_err(|err| format_err(&path, format!("not a valid safetensors file: {err}")))?;
            let md = meta.metadata().clone().unwrap_or_default();
            if md.get("format").map(String::as_str) != Some(FORMAT)
                || md.get("schema_version") != Some(&SCHEMA_VERSION.to_string())
            {
                return Err(format_err(
                    &path,
                    format!(
                        "__metadata__ has format {:?} version {:?}, expected {FORMAT:?} {SCHEMA_VERSION}",
                        md.get("format"),
                        md.get("schema_version")
                    ),
                ));
            }
            for f in fields.iter_mut() {
                let t = st
                    .tensor(&f.spec.name)
                    .map_err(|err| format_err(&path, format!("tensor {:?}: {err}", f.spec.name)))?;
                let mut want_shape = vec![e.samples];
                want_shape.extend_from_slice(&f.spec.shape);
                if t.dtype().to_string() != f.spec.dtype.name() || t.shape() != want_shape {
                    return Err(format_err(
                        &path,
                        format!(
                            "tensor {:?} is {} {:?}, index.json says {} {:?}",
                            f.spec.name,
                            t.dtype(),
                            t.shape(),
                            f.spec.dtype.name(),
                            want_shape
                        ),
                    ));
                }
                f.offsets
                    .push(t.data().as_ptr() as usize - m.as_ptr() as usize);
            }
        }
        let mut location = Vec::with_capacity(split.samples.len());
        for (i, s) in split.samples.iter().enumerate() {
            let ok = split.shards.get(s.shard).is_some_and(|e| s.row < e.samples);
            if !ok {
                return Err(format_err(
                    &index.dir.join("index.json"),
                    format!(
                        "sample {i} points at shard {} row {}, which does not exist",
                        s.shard, s.row
                    ),
                ));
            }
            location.push((s.shard as u32, s.row as u32));
        }
        Ok(SplitData {
            maps,
            fields,
            location,
        })
    }

    /// Copies the rows of `samples` out of the mapped shards.
    fn read(&self, samples: &[u32]) -> BTreeMap<String, TensorBuf> {
        self.fields
            .iter()
            .map(|f| {
                let mut data = Vec::with_capacity(samples.len() * f.row_bytes);
                for &s in samples {
                    let (shard, row) = self.location[s as usize];
                    let start = f.offsets[shard as usize] + row as usize * f.row_bytes;
                    data.extend_from_slice(&self.maps[shard as usize][start..start + f.row_bytes]);
                }
                let mut shape = vec![samples.len()];
                shape.extend_from_slice(&f.spec.shape);
                (
                    f.spec.name.clone(),
                    TensorBuf {
                        dtype: f.spec.dtype,
                        shape,
                        data,
                    },
                )
            })
            .collect()
    }
}

/// The prefetching workers of one epoch pass.
struct Running {
    epoch: u64,
    plan: Arc<Vec<Vec<u32>>>,
    states: Vec<LoaderState>,
    next: usize,
    receivers: Vec<Receiver<Batch>>,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Dropping the receivers unblocks workers waiting to send.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// A deterministic, resumable, prefetching batch iterator over one split.
///
/// Iterating yields the batches of the current epoch from the current position, then `None`
/// once; the next iteration continues with the next epoch.
pub struct Loader {
    cfg: LoaderConfig,
    data: Arc<SplitData>,
    neighbors: Vec<Vec<u32>>,
    pos: LoaderState,
    running: Option<Running>,
}

impl Loader {
    /// Opens the split's shards (checking headers, and checksums with `verify`).
    pub fn new(index: &ShardIndex, cfg: LoaderConfig) -> Result<Loader, ShardError> {
        if cfg.batch_size == 0 {
            return Err(ShardError::Config("batch_size must be at least 1".into()));
        }
        if cfg.world == 0 || cfg.rank >= cfg.world {
            return Err(ShardError::Config(format!(
                "rank {} of world {}: need world >= 1 and 0 <= rank < world",
                cfg.rank, cfg.world
            )));
        }
        if cfg.neighbor_sampler.is_some() && !index.file.has_neighbors {
            return Err(ShardError::Config(
                "neighbor_sampler needs shards built with a graph input; add the graph stage to \
                 the shards stage's inputs and rebuild"
                    .into(),
            ));
        }
        let split = index.split(&cfg.split)?;
        let data = SplitData::open(index, split, cfg.verify, cfg.fields.as_deref())?;
        let neighbors = split.samples.iter().map(|s| s.neighbors.clone()).collect();
        Ok(Loader {
            cfg,
            data: Arc::new(data),
            neighbors,
            pos: LoaderState {
                epoch: 0,
                sample_in_epoch: 0,
            },
            running: None,
        })
    }

    /// Samples in the split.
    pub fn num_samples(&self) -> usize {
        self.data.location.len()
    }

    /// The epoch's global sample order (all ranks), neighbour grouping applied.
    pub fn epoch_order(&self, epoch: u64) -> Vec<u32> {
        let n = self.num_samples();
        let base = if self.cfg.shuffle {
            epoch_permutation(n, self.cfg.seed, epoch)
        } else {
            (0..n as u32).collect()
        };
        match self.cfg.neighbor_sampler {
            Some(ns) => group_neighbors(&base, &self.neighbors, self.cfg.batch_size, ns.per_anchor),
            None => base,
        }
    }

    /// This rank's batches (sample numbers) of `epoch` from global position `start`.
    pub fn plan(&self, epoch: u64, start: usize) -> Vec<Vec<u32>> {
        rank_batches(
            &self.epoch_order(epoch),
            start,
            self.cfg.batch_size,
            self.cfg.rank,
            self.cfg.world,
            self.cfg.drop_last,
        )
    }

    /// Where the next batch comes from (save it with a checkpoint).
    pub fn state(&self) -> LoaderState {
        match &self.running {
            Some(r) if r.next > 0 => r.states[r.next - 1],
            _ => self.pos,
        }
    }

    /// Continues from `sample_in_epoch` samples into `epoch` (a [`Batch::state_after`] or
    /// [`Loader::state`] saved earlier). Stops any prefetching in flight.
    pub fn skip_to(&mut self, epoch: u64, sample_in_epoch: usize) -> Result<(), ShardError> {
        if sample_in_epoch > self.num_samples() {
            return Err(ShardError::Config(format!(
                "sample_in_epoch {sample_in_epoch} is beyond the split's {} samples",
                self.num_samples()
            )));
        }
        self.running = None;
        self.pos = LoaderState {
            epoch,
            sample_in_epoch,
        };
        Ok(())
    }

    /// Reads the given samples directly (random access, no prefetching).
    pub fn read_samples(&self, samples: &[u32]) -> Result<BTreeMap<String, TensorBuf>, ShardError> {
        if let Some(&bad) = samples.iter().find(|&&s| s as usize >= self.num_samples()) {
            return Err(ShardError::Config(format!(
                "sample {bad} out of range (split has {})",
                self.num_samples()
            )));
        }
        Ok(self.data.read(samples))
    }

    fn start(&mut self) -> Option<Running> {
        let LoaderState {
            epoch,
            sample_in_epoch: start,
        } = self.pos;
        let plan = self.plan(epoch, start);
        if plan.is_empty() {
            return None;
        }
        let n = self.num_samples();
        let step = self.cfg.batch_size * self.cfg.world;
        let states: Vec<LoaderState> = (0..plan.len())
            .map(|m| {
                let p = start + (m + 1) * step;
                if m + 1 == plan.len() || p >= n {
                    LoaderState {
                        epoch: epoch + 1,
                        sample_in_epoch: 0,
                    }
                } else {
                    LoaderState {
                        epoch,
                        sample_in_epoch: p,
                    }
                }
            })
            .collect();
        let plan = Arc::new(plan);
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for w in 0..self.cfg.workers {
            let (tx, rx): (SyncSender<Batch>, Receiver<Batch>) =
                sync_channel(self.cfg.prefetch.max(1));
            receivers.push(rx);
            let (plan, data, stop, states) = (
                plan.clone(),
                self.data.clone(),
                stop.clone(),
                states.clone(),
            );
            let workers = self.cfg.workers;
            handles.push(std::thread::spawn(move || {
                let mut b = w;
                while b < plan.len() && !stop.load(Ordering::Relaxed) {
                    let batch = Batch {
                        epoch,
                        batch: b,
                        samples: plan[b].clone(),
                        state_after: states[b],
                        fields: data.read(&plan[b]),
                    };
                    if tx.send(batch).is_err() {
                        break;
                    }
                    b += workers;
                }
            }));
        }
        Some(Running {
            epoch,
            plan,
            states,
            next: 0,
            receivers,
            stop,
            handles,
        })
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, ShardError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.running.is_none() {
            match self.start() {
                Some(r) => self.running = Some(r),
                None => {
                    self.pos = LoaderState {
                        epoch: self.pos.epoch + 1,
                        sample_in_epoch: 0,
                    };
                    return None;
                }
            }
        }
        let r = self.running.as_mut().expect("started");
        if r.next >= r.plan.len() {
            self.pos = *r.states.last().expect("non-empty plan");
            self.running = None;
            return None;
        }
        let b = r.next;
        let batch = if r.receivers.is_empty() {
            Batch {
                epoch: r.epoch,
                batch: b,
                samples: r.plan[b].clone(),
                state_after: r.states[b],
                fields: self.data.read(&r.plan[b]),
            }
        } else {
            match r.receivers[b % r.receivers.len()].recv() {
                Ok(x) => x,
                Err(_) => {
                    return Some(Err(ShardError::Config(
                        "a loader worker thread stopped unexpectedly".into(),
                    )));
                }
            }
        };
        r.next += 1;
        Some(Ok(batch))
    }
}
