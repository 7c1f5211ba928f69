//! Per-item work that survives a killed stage.
//!
//! A stage over many items (volumes, reports) asks the [`ItemStore`] for each item: the item's key is
//! a hash of the stage's fingerprint (kind, code version, params) and the item's own content digest, so
//! a rerun skips items already done, a killed run resumes, and adding 100 studies processes those 100.
//! Each finished item is a directory, promoted atomically. Which machine of N takes an item is
//! [`partition_of`], a pure function of the item id, so `--partition K/N` needs no redesign.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Content-addressed storage for one stage's finished items (`WORK/.items/STAGE/`).
#[derive(Debug)]
pub struct ItemStore {
    dir: PathBuf,
    fingerprint: String,
    used: Mutex<BTreeSet<String>>,
}

/// Outcome of [`ItemStore::get_or_make`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Found from an earlier run.
    Reused(PathBuf),
    /// Made now.
    Made(PathBuf),
}

impl ItemOutcome {
    /// The item's directory.
    pub fn dir(&self) -> &Path {
        match self {
            ItemOutcome::Reused(p) | ItemOutcome::Made(p) => p,
        }
    }
}

impl ItemStore {
    /// A store rooted at `dir` for a stage whose fingerprint (kind + code + params) is `fingerprint`.
    pub fn new(dir: PathBuf, fingerprint: String) -> Self {
        ItemStore {
            dir,
            fingerprint,
            used: Mutex::new(BTreeSet::new()),
        }
    }

    /// The store's directory (stages may keep resumable state, e.g. checkpoints, beneath it).
    pub fn root(&self) -> &Path {
        &self.dir
    }

    /// Key of an item: stage fingerprint + item id + the item's input digest.
    pub fn key(&self, item_id: &str, content_digest: &str) -> String {
        let mut h = blake3::Hasher::new();
        for part in [self.fingerprint.as_str(), item_id, content_digest] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
        h.finalize().to_hex()[..32].to_string()
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(key)
    }

    /// Returns the finished item with `key`, or runs `make` into a fresh temporary directory and
    /// promotes it. Safe to call from many threads; a failed `make` leaves nothing behind.
    pub fn get_or_make<E: From<io::Error>>(
        &self,
        key: &str,
        make: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<ItemOutcome, E> {
        self.used.lock().unwrap().insert(key.to_string());
        let final_dir = self.path_of(key);
        if final_dir.is_dir() {
            return Ok(ItemOutcome::Reused(final_dir));
        }
        let parent = final_dir.parent().unwrap();
        fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(
            ".{key}.tmp-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        match make(&tmp) {
            Ok(()) => {
                if let Err(e) = fs::rename(&tmp, &final_dir) {
                    let _ = fs::remove_dir_all(&tmp);
                    if !final_dir.is_dir() {
                        return Err(e.into());
                    }
                }
                Ok(ItemOutcome::Made(final_dir))
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    /// Deletes finished items not requested in this run (after the stage succeeded), keeping the
    /// store bounded by the current corpus. Returns how many were removed.
    pub fn prune_unused(&self) -> io::Result<usize> {
        let used = self.used.lock().unwrap();
        let mut removed = 0;
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        for shard in rd.flatten() {
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for e in fs::read_dir(shard.path())?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !used.contains(&name) {
                    fs::remove_dir_all(e.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// The partition (0..n) that owns `item_id`: a pure function of the id, stable across runs and machines.
pub fn partition_of(item_id: &str, n: u32) -> u32 {
    assert!(n > 0, "partition count must be positive");
    let h = blake3::hash(item_id.as_bytes());
    let v = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap());
    (v % n as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_pure_and_balanced() {
        let counts = (0..4000).fold([0u32; 4], |mut c, i| {
            c[partition_of(&format!("item{i}"), 4) as usize] += 1;
            c
        });
        assert!(counts.iter().all(|&c| c > 850 && c < 1150), "{counts:?}");
        assert_eq!(partition_of("abc", 7), partition_of("abc", 7));
    }

    #[test]
    fn failed_item_leaves_nothing_and_done_item_is_reused() {
        let d = tempfile::tempdir().unwrap();
        let s = ItemStore::new(d.path().to_path_buf(), "fp".into());
        let k = s.key("a", "digest");
        let r: Result<ItemOutcome, io::Error> = s.get_or_make(&k, |p| {
            fs::write(p.join("x"), b"1")?;
            Err(io::Error::other("boom"))
        });
        assert!(r.is_err());
        let made = s
            .get_or_make::<io::Error>(&k, |p| fs::write(p.join("x"), b"2"))
            .unwrap();
        assert!(matches!(made, ItemOutcome::Made(_)));
        let again = s
            .get_or_make::<io::Error>(&k, |_| panic!("must not run"))
            .unwrap();
        assert!(matches!(again, ItemOutcome::Reused(_)));
        assert_eq!(fs::read(again.dir().join("x")).unwrap(), b"2");
    }
}
