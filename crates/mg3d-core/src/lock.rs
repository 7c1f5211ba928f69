//! The lockfile (`WORK/mg3d.lock.json`): per stage, the key it last ran with, what went into that
//! key (to explain staleness) and the digests of what it wrote.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fsutil::{FileDigest, write_atomic};

/// What an input looked like when a stage ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    /// The upstream stage key.
    pub key: String,
    /// The upstream output digest.
    pub output_digest: String,
}

/// One stage's last successful run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Stage kind.
    pub kind: String,
    /// The stage key.
    pub key: String,
    /// Code version of the kind.
    pub code_version: String,
    /// Canonical params (kept whole so `status` can say which param changed).
    pub params: Value,
    /// Digest of external sources, if the kind has any.
    pub sources: Option<String>,
    /// Inputs by stage name.
    pub inputs: BTreeMap<String, InputRecord>,
    /// Digest over all output files.
    pub output_digest: String,
    /// Every output file.
    pub files: BTreeMap<String, FileDigest>,
    /// The stage's own summary (counts).
    pub summary: Value,
}

/// The whole lockfile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lockfile {
    /// Format version of this file.
    pub format: u32,
    /// Stage records by stage name.
    pub stages: BTreeMap<String, StageRecord>,
}

impl Lockfile {
    /// The lockfile path inside a work dir.
    pub fn path(work_dir: &Path) -> PathBuf {
        work_dir.join("mg3d.lock.json")
    }

    /// Loads the lockfile, or an empty one if there is none yet.
    pub fn load(work_dir: &Path) -> io::Result<Lockfile> {
        let p = Self::path(work_dir);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                io::Error::other(format!(
                    "{} is not a valid lockfile ({e}); delete it to rerun every stage",
                    p.display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Lockfile {
                format: 1,
                ..Default::default()
            }),
            Err(e) => Err(e),
        }
    }

    /// Writes the lockfile atomically.
    pub fn save(&self, work_dir: &Path) -> io::Result<()> {
        let mut text = serde_json::to_vec_pretty(self).expect("json");
        text.push(b'\n');
        write_atomic(&Self::path(work_dir), &text)
    }
}
