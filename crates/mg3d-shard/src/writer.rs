//! The shard writer: sample records -> `shards/<split>-NNNNN.safetensors`, `index.json`,
//! `splits.parquet`.
//!
//! Per split, samples are sorted by (volume id, report id) (pseudonyms, so patients are spread
//! over shards) and cut into shards of `floor(shard_bytes / sample_bytes)` samples (at least 1).
//! Every field is one tensor per shard with the samples stacked on the first axis. Output is a
//! function of the records and the config only: same inputs, same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mg3d_core::rows::SplitsRow;
use mg3d_core::table::write_rows;
use mg3d_volume::Volume;
use rayon::prelude::*;

use crate::ShardError;
use crate::format::{
    Dtype, FORMAT, FieldSpec, IndexFile, SCHEMA_VERSION, SPLITS, SampleEntry, ShardEntry,
    SplitIndex, TensorData, VolumeSpec, write_safetensors,
};
use crate::split::{normalise_ratios, split_of};

/// Where a sample's volume comes from.
#[derive(Debug, Clone)]
pub enum VolumeSource {
    /// An int16 HU NIfTI (the preprocess stage's output), RAS-canonical.
    Nifti(PathBuf),
    /// HU values in (k, j, i) order with dims along (i, j, k) = (R, A, S) (tests, in-memory use).
    Hu {
        /// Voxels along R, A, S.
        dims: [usize; 3],
        /// Values, i fastest.
        data: Vec<i16>,
    },
}

/// One volume–report pair with everything its shard row holds.
#[derive(Debug, Clone)]
pub struct SampleRecord {
    /// Patient pseudonym (decides the split).
    pub patient_id: String,
    /// Study pseudonym.
    pub study_id: String,
    /// Volume pseudonym.
    pub volume_id: String,
    /// Report pseudonym.
    pub report_id: String,
    /// The volume.
    pub volume: VolumeSource,
    /// Token ids, fixed length for all records.
    pub input_ids: Vec<i32>,
    /// Attention mask (same length).
    pub attention_mask: Vec<i8>,
    /// Clause of each token (-1 for specials and padding).
    pub clause_index: Vec<i32>,
    /// Word-start flags.
    pub word_start: Vec<i8>,
    /// The 18 CT-RATE labels (1 present, 0 absent, -1 uncertain or unknown).
    pub labels: Vec<i8>,
    /// Region signature (codes 0-3), same length for all records; `None` for all when no graph.
    pub signature: Option<Vec<i8>>,
    /// A split already assigned (0 train, 1 val, 2 test; e.g. from curate's corpus); `None` = the
    /// hash of (seed, patient id). All records of a patient must agree.
    pub split: Option<usize>,
}

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Seed of the patient split (recorded as the default loader seed).
    pub seed: u64,
    /// Train / val / test ratios.
    pub ratios: [f64; 3],
    /// Target shard size in bytes (a shard holds at least one sample).
    pub shard_bytes: u64,
    /// Volume element type: F16, BF16 or F32.
    pub dtype: Dtype,
    /// HU window mapped to [0, 1].
    pub window: [f64; 2],
    /// Voxels along R, A, S; `None` = the first volume's dims. Other volumes are centre-cropped or
    /// padded (with the window's low end, i.e. 0) to it.
    pub shape_ras: Option<[usize; 3]>,
    /// Graph neighbours kept per sample.
    pub max_neighbors: usize,
    /// The preprocess preset of the volumes, recorded in the index (a model trained on the shards
    /// needs it to embed a new scan the same way).
    pub preset: Option<String>,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            seed: 0,
            ratios: [0.8, 0.1, 0.1],
            shard_bytes: 256 << 20,
            dtype: Dtype::F16,
            window: [-1000.0, 1000.0],
            shape_ras: None,
            max_neighbors: 8,
            preset: None,
        }
    }
}

/// What the writer did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WriteSummary {
    /// Samples per split (train, val, test).
    pub samples: [usize; 3],
    /// Patients per split.
    pub patients: [usize; 3],
    /// Shard files written.
    pub shards: usize,
    /// Bytes of all shard files.
    pub bytes: u64,
    /// Volumes cropped or padded to the shape.
    pub resized: usize,
    /// Samples with at least one graph neighbour in their split.
    pub with_neighbors: usize,
}

fn input_err(what: &str, detail: String) -> ShardError {
    ShardError::Input {
        path: PathBuf::from(what),
        detail,
    }
}

/// Loads a record's volume as f32 HU.
fn load_volume(src: &VolumeSource) -> Result<Volume, ShardError> {
    match src {
        VolumeSource::Nifti(p) => mg3d_volume::nifti_io::read_nifti(p, false)
            .map(|(v, _)| v)
            .map_err(|e| ShardError::Input {
                path: p.clone(),
                detail: format!(
                    "{e}; rerun the preprocess stage (`mg3d run PIPELINE --from preprocess`)"
                ),
            }),
        VolumeSource::Hu { dims, data } => {
            if dims.iter().product::<usize>() != data.len() {
                return Err(input_err(
                    "volume",
                    format!("{} HU values for dims {dims:?}", data.len()),
                ));
            }
            let mut affine = [[0.0; 4]; 4];
            for (i, row) in affine.iter_mut().enumerate() {
                row[i] = 1.0;
            }
            Ok(Volume {
                dims: *dims,
                data: data.iter().map(|&x| x as f32).collect(),
                affine,
            })
        }
    }
}

/// The `[0, 1]` value of one HU voxel: `(clamp(hu, lo, hi) - lo) / (hi - lo)`, in f32.
#[inline]
pub fn normalise_hu(hu: f32, lo: f32, hi: f32) -> f32 {
    (hu.clamp(lo, hi) - lo) / (hi - lo)
}

/// Normalises a volume into `out` (little-endian `dtype` elements), cropping/padding to `shape`
/// around the volume centre. Returns whether it was resized.
fn encode_volume(
    v: &Volume,
    shape: [usize; 3],
    window: [f64; 2],
    dtype: Dtype,
    out: &mut [u8],
) -> bool {
    let (lo, hi) = (window[0] as f32, window[1] as f32);
    let resized = v.dims != shape;
    let cropped;
    let v = if resized {
        let center = [
            v.dims[0] as f64 / 2.0,
            v.dims[1] as f64 / 2.0,
            v.dims[2] as f64 / 2.0,
        ];
        cropped = mg3d_volume::ops::crop_pad(v, shape, center, lo);
        &cropped
    } else {
        v
    };
    let es = dtype.size();
    for (x, o) in v.data.iter().zip(out.chunks_exact_mut(es)) {
        let y = normalise_hu(*x, lo, hi);
        match dtype {
            Dtype::F16 => o.copy_from_slice(&half::f16::from_f32(y).to_le_bytes()),
            Dtype::BF16 => o.copy_from_slice(&half::bf16::from_f32(y).to_le_bytes()),
            _ => o.copy_from_slice(&y.to_le_bytes()),
        }
    }
    resized
}

/// One preprocessed volume as a shard's `volume` field holds it (crop/pad to `spec`'s shape,
/// its window to `[0, 1]`, stored as `dtype`), as a batch of one: what the loader would give for
/// it. Used to feed a model a scan that is in no shard (`mg3d embed`).
pub fn volume_field(
    v: &Volume,
    spec: &crate::format::VolumeSpec,
    dtype: Dtype,
) -> crate::reader::TensorBuf {
    let [r, a, s] = spec.shape_ras;
    let mut data = vec![0u8; r * a * s * dtype.size()];
    encode_volume(v, spec.shape_ras, spec.window, dtype, &mut data);
    crate::reader::TensorBuf {
        dtype,
        shape: vec![1, 1, s, a, r],
        data,
    }
}

fn le_bytes_i32(v: &[i32], out: &mut Vec<u8>) {
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn le_bytes_i8(v: &[i8], out: &mut Vec<u8>) {
    out.extend(v.iter().map(|&x| x as u8));
}

/// Checks records against each other; returns (token length, signature length).
fn check_records(records: &[SampleRecord]) -> Result<(usize, Option<usize>), ShardError> {
    let Some(first) = records.first() else {
        return Ok((0, None));
    };
    let l = first.input_ids.len();
    let sig = first.signature.as_ref().map(|s| s.len());
    for r in records {
        let who = format!("report {} / volume {}", r.report_id, r.volume_id);
        if r.input_ids.len() != l
            || r.attention_mask.len() != l
            || r.clause_index.len() != l
            || r.word_start.len() != l
        {
            return Err(input_err(
                &who,
                format!(
                    "token lists have lengths {}/{}/{}/{}, expected {l} for every report; \
                     rerun the tokens stage so every report is padded to max_length",
                    r.input_ids.len(),
                    r.attention_mask.len(),
                    r.clause_index.len(),
                    r.word_start.len()
                ),
            ));
        }
        if r.labels.len() != mg3d_core::labels::CT_RATE_LABELS.len() {
            return Err(input_err(
                &who,
                format!("{} labels, expected 18 (CT-RATE order)", r.labels.len()),
            ));
        }
        if r.signature.as_ref().map(|s| s.len()) != sig {
            return Err(input_err(
                &who,
                format!(
                    "signature length {:?} differs from the first record's {sig:?}; \
                     every report needs a signature of the same length (rerun the graph stage)",
                    r.signature.as_ref().map(|s| s.len())
                ),
            ));
        }
    }
    Ok((l, sig))
}

/// The fields of every sample, in the order the index lists them.
fn field_specs(
    dtype: Dtype,
    shape: [usize; 3],
    l: usize,
    sig_len: Option<usize>,
) -> Vec<FieldSpec> {
    let mut fields = vec![
        FieldSpec {
            name: "volume".into(),
            dtype,
            shape: vec![1, shape[2], shape[1], shape[0]],
        },
        FieldSpec {
            name: "input_ids".into(),
            dtype: Dtype::I32,
            shape: vec![l],
        },
        FieldSpec {
            name: "attention_mask".into(),
            dtype: Dtype::I8,
            shape: vec![l],
        },
        FieldSpec {
            name: "clause_index".into(),
            dtype: Dtype::I32,
            shape: vec![l],
        },
        FieldSpec {
            name: "word_start".into(),
            dtype: Dtype::I8,
            shape: vec![l],
        },
        FieldSpec {
            name: "labels".into(),
            dtype: Dtype::I8,
            shape: vec![mg3d_core::labels::CT_RATE_LABELS.len()],
        },
    ];
    if let Some(s) = sig_len {
        fields.push(FieldSpec {
            name: "signature".into(),
            dtype: Dtype::I8,
            shape: vec![s],
        });
    }
    fields.push(FieldSpec {
        name: "sample_index".into(),
        dtype: Dtype::I64,
        shape: vec![],
    });
    fields
}

/// Records split by patient (the given split, else hashed from the seed), each split in a
/// stable order; with each patient's split and sample count, and where the splits came from.
type Splits = (
    [Vec<SampleRecord>; 3],
    BTreeMap<String, (usize, usize)>,
    &'static str,
);

fn split_records(
    records: Vec<SampleRecord>,
    seed: u64,
    ratios: &[f64; 3],
) -> Result<Splits, ShardError> {
    let mut by_split: [Vec<SampleRecord>; 3] = Default::default();
    let mut patients: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let given = records.iter().filter(|r| r.split.is_some()).count();
    let split_source = match given {
        0 => "hash",
        g if g == records.len() => "given",
        _ => "mixed",
    };
    for r in records {
        let s = match r.split {
            Some(s) if s < 3 => s,
            Some(s) => {
                return Err(input_err(
                    &format!("patient {}", r.patient_id),
                    format!("split number {s}, expected 0 (train), 1 (val) or 2 (test)"),
                ));
            }
            None => split_of(seed, &r.patient_id, ratios),
        };
        let e = patients.entry(r.patient_id.clone()).or_insert((s, 0));
        if e.0 != s {
            return Err(input_err(
                &format!("patient {}", r.patient_id),
                format!(
                    "assigned to both {} and {}: a patient must not cross splits; \
                     rerun curate (its corpus.parquet gives every row of a patient one split)",
                    SPLITS[e.0], SPLITS[s]
                ),
            ));
        }
        e.1 += 1;
        by_split[s].push(r);
    }
    for v in by_split.iter_mut() {
        v.sort_by(|a, b| {
            (&a.volume_id, &a.report_id, &a.patient_id, &a.study_id).cmp(&(
                &b.volume_id,
                &b.report_id,
                &b.patient_id,
                &b.study_id,
            ))
        });
    }
    Ok((by_split, patients, split_source))
}

/// Each sample's graph neighbours within its split, other patients only, at most
/// `max_neighbors`; returns how many samples have any.
fn link_neighbors(
    splits: &mut BTreeMap<String, SplitIndex>,
    nb: &BTreeMap<String, Vec<String>>,
    max_neighbors: usize,
) -> usize {
    let mut with_neighbors = 0;

    for split in splits.values_mut() {
        let mut by_report: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (i, s) in split.samples.iter().enumerate() {
            by_report.entry(&s.report_id).or_default().push(i as u32);
        }
        let lists: Vec<Vec<u32>> = split
            .samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut out: Vec<u32> = Vec::new();
                for r in nb.get(&s.report_id).map(|v| v.as_slice()).unwrap_or(&[]) {
                    for &t in by_report
                        .get(r.as_str())
                        .map(|v| v.as_slice())
                        .unwrap_or(&[])
                    {
                        if out.len() < max_neighbors
                            && t as usize != i
                            && split.samples[t as usize].patient_id != s.patient_id
                            && !out.contains(&t)
                        {
                            out.push(t);
                        }
                    }
                }
                out
            })
            .collect();
        for (s, l) in split.samples.iter_mut().zip(lists) {
            with_neighbors += (!l.is_empty()) as usize;
            s.neighbors = l;
        }
    }
    with_neighbors
}

/// What every shard of a run shares.
struct ShardLayout<'a> {
    fields: &'a [FieldSpec],
    shape: [usize; 3],
    per_shard: usize,
    cfg: &'a WriterConfig,
}

/// What writing one shard file gave (kept beside a stored shard, so a reused one needs no rereading).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ShardMade {
    /// File size.
    pub bytes: u64,
    /// sha256 of the file.
    pub sha256: String,
    /// Samples whose volume was cropped or padded to the shape.
    pub resized: usize,
}

/// Finished shard files kept between runs, and which shards this process writes: the shards
/// stage passes its item store, so a partition run (`--partition K/N`) writes only its own shards
/// and a later run reuses them. Without one, every shard is written.
pub trait ShardCache: Sync {
    /// The directory holding shard `id` as `shard.safetensors`, made by `make` into a fresh
    /// directory when the store has none for `digest()`; `None` when another partition makes it.
    fn shard(
        &self,
        id: &str,
        digest: &dyn Fn() -> Result<String, ShardError>,
        make: &dyn Fn(&Path) -> Result<(), ShardError>,
    ) -> Result<Option<PathBuf>, ShardError>;
}

/// Everything a shard's bytes depend on: the layout, its place, and each record's fields and
/// volume (the file's blake3, or the HU values).
fn shard_digest(
    layout: &ShardLayout,
    name: &str,
    shard_no: usize,
    chunk: &[SampleRecord],
) -> Result<String, ShardError> {
    let mut h = blake3::Hasher::new();
    let cfg = layout.cfg;
    let head = serde_json::json!({
        "fields": layout.fields, "shape": layout.shape, "per_shard": layout.per_shard,
        "dtype": format!("{:?}", cfg.dtype), "window": cfg.window, "split": name, "shard": shard_no,
    });
    h.update(head.to_string().as_bytes());
    let mut buf = Vec::new();
    for r in chunk {
        for id in [&r.patient_id, &r.study_id, &r.volume_id, &r.report_id] {
            h.update(id.as_bytes());
            h.update(&[0]);
        }
        buf.clear();
        le_bytes_i32(&r.input_ids, &mut buf);
        le_bytes_i8(&r.attention_mask, &mut buf);
        le_bytes_i32(&r.clause_index, &mut buf);
        le_bytes_i8(&r.word_start, &mut buf);
        le_bytes_i8(&r.labels, &mut buf);
        if let Some(sig) = &r.signature {
            le_bytes_i8(sig, &mut buf);
        }
        h.update(&(buf.len() as u64).to_le_bytes());
        h.update(&buf);
        match &r.volume {
            VolumeSource::Nifti(p) => {
                let d = mg3d_core::fsutil::hash_file(p).map_err(|source| ShardError::Io {
                    path: p.clone(),
                    source,
                })?;
                h.update(d.blake3.as_bytes());
            }
            VolumeSource::Hu { dims, data } => {
                h.update(format!("{dims:?}").as_bytes());
                for x in data {
                    h.update(&x.to_le_bytes());
                }
            }
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Adds the samples of shard `shard_no` (`chunk`) to `split`.
fn add_samples(split: &mut SplitIndex, shard_no: usize, chunk: &[SampleRecord]) {
    for (row, r) in chunk.iter().enumerate() {
        split.samples.push(SampleEntry {
            shard: shard_no,
            row,
            patient_id: r.patient_id.clone(),
            study_id: r.study_id.clone(),
            volume_id: r.volume_id.clone(),
            report_id: r.report_id.clone(),
            neighbors: Vec::new(),
        });
    }
}

/// Writes shard `shard_no` of split `name` from `chunk` to `path`.
fn write_shard(
    layout: &ShardLayout,
    name: &str,
    shard_no: usize,
    chunk: &[SampleRecord],
    path: &Path,
) -> Result<ShardMade, ShardError> {
    let ShardLayout {
        fields,
        shape,
        per_shard,
        cfg,
    } = *layout;
    let vol_row = fields[0].row_bytes();
    // Token sequence length (capacity hint).
    let l = chunk.first().map_or(0, |r| r.input_ids.len());
    let n = chunk.len();
    let mut volume = vec![0u8; n * vol_row];
    let resized: Vec<bool> = volume
        .par_chunks_mut(vol_row)
        .zip(chunk.par_iter())
        .map(|(out, r)| {
            let v = load_volume(&r.volume)?;
            Ok(encode_volume(&v, shape, cfg.window, cfg.dtype, out))
        })
        .collect::<Result<_, ShardError>>()?;
    let resized = resized.iter().filter(|&&x| x).count();
    let (mut ids, mut mask, mut clause, mut ws, mut labels, mut sig, mut idx) = (
        Vec::with_capacity(n * l * 4),
        Vec::with_capacity(n * l),
        Vec::with_capacity(n * l * 4),
        Vec::with_capacity(n * l),
        Vec::with_capacity(n * 18),
        Vec::new(),
        Vec::with_capacity(n * 8),
    );
    for (row, r) in chunk.iter().enumerate() {
        le_bytes_i32(&r.input_ids, &mut ids);
        le_bytes_i8(&r.attention_mask, &mut mask);
        le_bytes_i32(&r.clause_index, &mut clause);
        le_bytes_i8(&r.word_start, &mut ws);
        le_bytes_i8(&r.labels, &mut labels);
        if let Some(s) = &r.signature {
            le_bytes_i8(s, &mut sig);
        }
        let sample = shard_no * per_shard + row;
        idx.extend_from_slice(&(sample as i64).to_le_bytes());
    }
    let data: BTreeMap<&str, &[u8]> = [
        ("volume", volume.as_slice()),
        ("input_ids", &ids),
        ("attention_mask", &mask),
        ("clause_index", &clause),
        ("word_start", &ws),
        ("labels", &labels),
        ("signature", &sig),
        ("sample_index", &idx),
    ]
    .into_iter()
    .collect();
    let tensors: Vec<TensorData> = fields
        .iter()
        .map(|f| {
            let mut s = vec![n];
            s.extend_from_slice(&f.shape);
            TensorData {
                name: &f.name,
                dtype: f.dtype,
                shape: s,
                data: data[f.name.as_str()],
            }
        })
        .collect();
    let meta: BTreeMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("schema_version", SCHEMA_VERSION.to_string()),
        ("split", name.to_string()),
        ("shard", shard_no.to_string()),
        ("first_sample", (shard_no * per_shard).to_string()),
        ("samples", n.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (bytes, sha256) = write_safetensors(path, &tensors, &meta)?;
    Ok(ShardMade {
        bytes,
        sha256,
        resized,
    })
}

/// Shard `shard_no` of split `name`: written into `out_dir`, or through `cache` (found or made
/// there, then linked into `out_dir`); `None` when another partition writes it.
fn place_shard(
    layout: &ShardLayout,
    (name, shard_no, chunk): (&str, usize, &[SampleRecord]),
    out_dir: &Path,
    cache: Option<&dyn ShardCache>,
) -> Result<Option<(String, ShardMade)>, ShardError> {
    let file = format!("shards/{name}-{shard_no:05}.safetensors");
    let dst = out_dir.join(&file);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ShardError::Io { path, source }
    };
    let Some(cache) = cache else {
        return Ok(Some((
            file,
            write_shard(layout, name, shard_no, chunk, &dst)?,
        )));
    };
    let made = cache.shard(
        &file,
        &|| shard_digest(layout, name, shard_no, chunk),
        &|dir| {
            let m = write_shard(
                layout,
                name,
                shard_no,
                chunk,
                &dir.join("shard.safetensors"),
            )?;
            let json = serde_json::to_vec(&m).map_err(|e| ShardError::Config(e.to_string()))?;
            let meta = dir.join("shard.json");
            std::fs::write(&meta, json).map_err(io(&meta))
        },
    )?;
    let Some(dir) = made else {
        return Ok(None);
    };
    let meta = dir.join("shard.json");
    let bytes = std::fs::read(&meta).map_err(io(&meta))?;
    let m: ShardMade = serde_json::from_slice(&bytes).map_err(|e| ShardError::Format {
        path: meta.clone(),
        detail: e.to_string(),
    })?;
    mg3d_core::fsutil::link_or_copy(&dir.join("shard.safetensors"), &dst).map_err(io(&dst))?;
    Ok(Some((file, m)))
}

/// Writes the shards, `index.json` and `splits.parquet` into `out_dir`.
///
/// `neighbors` maps a report id to its graph neighbours' report ids, best first (the graph
/// stage's `neighbors.parquet`); `None` means no graph (the neighbour sampler is then
/// unavailable). `cancelled` is polled between shards; `progress` gets the samples written so far.
/// `cache` keeps finished shards between runs and partitions (see [`ShardCache`]).
pub fn write_shards(
    records: Vec<SampleRecord>,
    neighbors: Option<&BTreeMap<String, Vec<String>>>,
    cfg: &WriterConfig,
    out_dir: &Path,
    cache: Option<&dyn ShardCache>,
    cancelled: &dyn Fn() -> bool,
    progress: &dyn Fn(usize),
) -> Result<(IndexFile, WriteSummary), ShardError> {
    let ratios = normalise_ratios(&cfg.ratios)?;
    if !cfg.window.iter().all(|w| w.is_finite()) || cfg.window[1] <= cfg.window[0] {
        return Err(ShardError::Config(format!(
            "window {:?} must be [low, high] with low < high (HU)",
            cfg.window
        )));
    }
    if !matches!(cfg.dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32) {
        return Err(ShardError::Config(format!(
            "volume dtype {:?} must be F16, BF16 or F32",
            cfg.dtype
        )));
    }
    let (l, sig_len) = check_records(&records)?;
    let shape = match (cfg.shape_ras, records.first()) {
        (Some(s), _) => s,
        (None, Some(r)) => load_volume(&r.volume)?.dims,
        (None, None) => [0, 0, 0],
    };
    if !records.is_empty() && shape.contains(&0) {
        return Err(ShardError::Config(format!(
            "volume shape {shape:?} has a zero axis; give shape = [R, A, S] voxels"
        )));
    }

    let fields = field_specs(cfg.dtype, shape, l, sig_len);
    let sample_bytes: usize = fields.iter().map(|f| f.row_bytes()).sum();
    let per_shard = ((cfg.shard_bytes / sample_bytes.max(1) as u64) as usize).max(1);

    let (by_split, patients, split_source) = split_records(records, cfg.seed, &ratios)?;

    let shard_dir = out_dir.join("shards");
    std::fs::create_dir_all(&shard_dir).map_err(|e| ShardError::Io {
        path: shard_dir.clone(),
        source: e,
    })?;
    let mut summary = WriteSummary::default();
    let mut splits = BTreeMap::new();
    let mut done = 0usize;
    for (si, recs) in by_split.iter().enumerate() {
        let name = SPLITS[si];
        let mut split = SplitIndex {
            samples_per_shard: per_shard,
            ..Default::default()
        };
        summary.samples[si] = recs.len();
        summary.patients[si] = recs
            .iter()
            .map(|r| r.patient_id.as_str())
            .collect::<BTreeSet<_>>()
            .len();
        for (shard_no, chunk) in recs.chunks(per_shard).enumerate() {
            if cancelled() {
                return Err(ShardError::Cancelled);
            }
            let layout = ShardLayout {
                fields: &fields,
                shape,
                per_shard,
                cfg,
            };
            add_samples(&mut split, shard_no, chunk);
            if let Some((file, m)) = place_shard(&layout, (name, shard_no, chunk), out_dir, cache)?
            {
                summary.shards += 1;
                summary.bytes += m.bytes;
                summary.resized += m.resized;
                split.shards.push(ShardEntry {
                    file,
                    sha256: m.sha256,
                    samples: chunk.len(),
                    bytes: m.bytes,
                });
            }
            done += chunk.len();
            progress(done);
        }
        splits.insert(name.to_string(), split);
    }

    // Graph neighbours within each split, other patients only.
    if let Some(nb) = neighbors {
        summary.with_neighbors = link_neighbors(&mut splits, nb, cfg.max_neighbors);
    }

    let index = IndexFile {
        format: FORMAT.into(),
        schema_version: SCHEMA_VERSION,
        seed: cfg.seed,
        ratios,
        volume: VolumeSpec {
            shape_ras: shape,
            window: cfg.window,
            preset: cfg.preset.clone(),
            layout: "volume[sample, C=1, D=S, H=A, W=R]: the preprocessed NIfTI's voxel order \
                     (k, j, i), values (clamp(HU, lo, hi) - lo) / (hi - lo)"
                .into(),
        },
        fields,
        has_neighbors: neighbors.is_some(),
        split_source: split_source.into(),
        splits,
    };
    write_splits_table(out_dir, &patients)?;
    let json = serde_json::to_vec_pretty(&index).map_err(|e| ShardError::Config(e.to_string()))?;
    let path = out_dir.join("index.json");
    mg3d_core::fsutil::write_atomic(&path, &json)
        .map_err(|e| ShardError::Io { path, source: e })?;
    Ok((index, summary))
}

/// `splits.parquet`: one row per patient (sorted by id).
fn write_splits_table(
    out_dir: &Path,
    patients: &BTreeMap<String, (usize, usize)>,
) -> Result<(), ShardError> {
    let path = out_dir.join("splits.parquet");
    let err = |e: mg3d_core::TableError| ShardError::Input {
        path: path.clone(),
        detail: e.to_string(),
    };
    let rows: Vec<SplitsRow> = patients
        .iter()
        .map(|(id, &(split, samples))| SplitsRow {
            patient_id: id.clone(),
            split: SPLITS[split].to_string(),
            samples: samples as i32,
        })
        .collect();
    write_rows(&path, &rows).map_err(err)
}
