//! The on-disk format: `index.json` and safetensors shard files.
//!
//! A shard is a plain safetensors file: 8-byte little-endian header length, a JSON header
//! (`dtype`, `shape`, `data_offsets` per tensor, plus `__metadata__`), then the raw little-endian
//! tensor bytes. mg3d writes the header with sorted keys, padded with spaces to a multiple of 8
//! bytes, and the tensors ordered by element size (largest first) then name, so every tensor is
//! aligned to its element size when the file is memory-mapped, and identical inputs give
//! identical bytes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ShardError;

/// The `format` value of `index.json` and of each shard's `__metadata__`.
pub const FORMAT: &str = "mg3d-shard";
/// Version of the shard layout; readers refuse other versions.
pub const SCHEMA_VERSION: u32 = 1;
/// The three splits, in the order ratios are given.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// Element types used in shards (safetensors names in [`Dtype::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dtype {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// 32-bit float.
    F32,
    /// Signed 8-bit integer.
    I8,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::I8 => 1,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::I64 => 8,
        }
    }
    /// The safetensors dtype string.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F32 => "F32",
            Dtype::I8 => "I8",
            Dtype::I32 => "I32",
            Dtype::I64 => "I64",
        }
    }
    /// Parses a safetensors dtype string.
    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "F32" => Dtype::F32,
            "I8" => Dtype::I8,
            "I32" => Dtype::I32,
            "I64" => Dtype::I64,
            _ => return None,
        })
    }
}

/// One field (tensor) of every sample: name, element type and per-sample shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSpec {
    /// Tensor name in the shard (`volume`, `input_ids`, ...).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape of one sample (the shard tensor is `[samples] + shape`).
    pub shape: Vec<usize>,
}

impl FieldSpec {
    /// Bytes of one sample of this field.
    pub fn row_bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// How volumes were turned into the `volume` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// Voxels along R, A, S (the preprocessed NIfTI's i, j, k) after crop/pad.
    pub shape_ras: [usize; 3],
    /// HU window mapped linearly to [0, 1]: `(clamp(hu, lo, hi) - lo) / (hi - lo)` in f32.
    pub window: [f64; 2],
    /// Tensor layout in words.
    pub layout: String,
    /// The preprocess preset the volumes came from (a built-in name or a preset file), when the
    /// shards stage knew it; index files written before it existed lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
}

/// One shard file of a split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Path relative to the directory holding `index.json`.
    pub file: String,
    /// sha256 of the whole file (hex).
    pub sha256: String,
    /// Samples stacked in it.
    pub samples: usize,
    /// File size.
    pub bytes: u64,
}

/// One sample: where it is and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleEntry {
    /// Shard number in its split.
    pub shard: usize,
    /// Row inside the shard's tensors.
    pub row: usize,
    /// Patient pseudonym.
    pub patient_id: String,
    /// Study pseudonym.
    pub study_id: String,
    /// Volume pseudonym.
    pub volume_id: String,
    /// Report pseudonym.
    pub report_id: String,
    /// Graph neighbours in the same split (sample numbers, best first; other patients only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighbors: Vec<u32>,
}

/// The shards and samples of one split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SplitIndex {
    /// Samples per shard (every shard but the last holds exactly this many).
    pub samples_per_shard: usize,
    /// Shard files in order.
    pub shards: Vec<ShardEntry>,
    /// Samples in shard order; a sample's number is its position here (the `sample_index` field).
    pub samples: Vec<SampleEntry>,
}

/// `index.json`: everything a reader needs besides the shard bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`SCHEMA_VERSION`] at writing time.
    pub schema_version: u32,
    /// Seed of the hashed patient split and the default seed of the sample order.
    pub seed: u64,
    /// Train / val / test ratios (normalised to sum 1).
    pub ratios: [f64; 3],
    /// The volume normalisation.
    pub volume: VolumeSpec,
    /// Fields of every sample, in shard tensor order.
    pub fields: Vec<FieldSpec>,
    /// Whether graph neighbours were available (the neighbour sampler needs them).
    pub has_neighbors: bool,
    /// Where splits came from: `hash` (of seed and patient id), `given` (curate's corpus) or
    /// `mixed`.
    pub split_source: String,
    /// `train`, `val`, `test` (always all three, possibly empty).
    pub splits: BTreeMap<String, SplitIndex>,
}

/// One tensor to write: name, dtype, full shape and little-endian bytes.
pub struct TensorData<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Full shape.
    pub shape: Vec<usize>,
    /// Raw bytes (`shape.product() * dtype.size()` of them).
    pub data: &'a [u8],
}

/// Builds the safetensors header bytes (length prefix included) and the tensor write order of
/// the file at `path`.
fn header(
    path: &Path,
    tensors: &[TensorData<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<(Vec<u8>, Vec<usize>), ShardError> {
    let bad = |detail: String| ShardError::Format {
        path: path.to_path_buf(),
        detail,
    };
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        tensors[b]
            .dtype
            .size()
            .cmp(&tensors[a].dtype.size())
            .then(tensors[a].name.cmp(tensors[b].name))
    });
    let mut map = serde_json::Map::new();
    let mut offset = 0usize;
    for &i in &order {
        let t = &tensors[i];
        let n = t.shape.iter().product::<usize>() * t.dtype.size();
        if n != t.data.len() {
            return Err(bad(format!(
                "tensor {}: {} bytes for shape {:?} {}, expected {n}",
                t.name,
                t.data.len(),
                t.shape,
                t.dtype.name()
            )));
        }
        map.insert(
            t.name.to_string(),
            serde_json::json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    map.insert(
        "__metadata__".into(),
        serde_json::to_value(metadata).map_err(|e| bad(e.to_string()))?,
    );
    // Keys come out sorted (BTreeMap) or, if some crate turns on serde_json's preserve_order, in
    // the insertion order above: deterministic either way.
    let mut json =
        serde_json::to_vec(&serde_json::Value::Object(map)).map_err(|e| bad(e.to_string()))?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    Ok((out, order))
}

/// Writes a safetensors file atomically (temporary sibling, fsync, rename).
/// Returns its size and sha256 (hex), computed from the bytes written.
pub fn write_safetensors(
    path: &Path,
    tensors: &[TensorData<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<(u64, String), ShardError> {
    let (head, order) = header(path, tensors, metadata)?;
    let io = |e: std::io::Error| ShardError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let tmp = mg3d_core::fsutil::tmp_sibling(path);
    let mut sha = Sha256::new();
    let mut bytes = 0u64;
    {
        let f = std::fs::File::create(&tmp).map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let mut put = |b: &[u8]| -> Result<(), ShardError> {
            sha.update(b);
            bytes += b.len() as u64;
            w.write_all(b).map_err(io)
        };
        put(&head)?;
        for &i in &order {
            put(tensors[i].data)?;
        }
        let f = w.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok((bytes, hex(&sha.finalize())))
}

/// Lower-case hex of bytes.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// sha256 (hex) of a byte slice.
pub fn sha256_hex(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}
