//! Per-item work that survives a killed stage, and that many processes share.
//!
//! A stage over many items (volumes, reports, shards) asks the [`ItemStore`] for each item: the
//! item's key is a hash of the stage's fingerprint (kind, code version, params) and the item's own
//! content digest, so a rerun skips items already done, a killed run resumes, and adding 100
//! studies processes those 100. Each finished item is a directory (or one JSON file) promoted
//! atomically by a rename within its folder.
//!
//! A partition run (`mg3d run --stage S --partition K/N`) makes only the items [`Partition::owns`]
//! gives it: a keyed hash of the item id, so N processes on N hosts split a stage without talking
//! to each other. They share the store over a network file system: every writer has its own
//! temporary names (host, process, thread), nothing is locked, and a rename within one folder is
//! the only atomic step relied on. A later plain run merges: it finds every item in the store and
//! computes none of them again, so its output is the unpartitioned output, byte for byte.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::fsutil::{write_atomic, writer_tag};

/// Partition `index` of `count` (`--partition K/N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// K, in 0..count.
    pub index: u32,
    /// N.
    pub count: u32,
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Partition {
    /// The whole stage as one partition (a run without `--partition`).
    pub const WHOLE: Partition = Partition { index: 0, count: 1 };

    /// Partition `index` of `count`; `index` must be below `count`.
    pub fn new(index: u32, count: u32) -> Result<Partition, String> {
        if count == 0 || index >= count {
            return Err(format!(
                "partition {index}/{count}: give K/N with N >= 1 and K in 0..N-1"
            ));
        }
        Ok(Partition { index, count })
    }

    /// `K/N`, or `auto`: the array task of the job engine running this process, read from `env`
    /// (Slurm: `SLURM_ARRAY_TASK_ID` and `SLURM_ARRAY_TASK_COUNT`, or the task range
    /// `SLURM_ARRAY_TASK_MIN`..`MAX`; a Kubernetes indexed Job: `JOB_COMPLETION_INDEX` and
    /// `MG3D_PARTITIONS`, the Job's `completions`).
    pub fn parse(s: &str, env: impl Fn(&str) -> Option<String>) -> Result<Partition, String> {
        let num = |name: &str, v: &str| -> Result<u32, String> {
            v.trim()
                .parse()
                .map_err(|_| format!("{name} = {v:?} is not a number"))
        };
        if s == "auto" {
            let get = |n: &str| env(n).filter(|v| !v.trim().is_empty());
            if let Some(id) = get("SLURM_ARRAY_TASK_ID") {
                let id = num("SLURM_ARRAY_TASK_ID", &id)?;
                let count = match (
                    get("SLURM_ARRAY_TASK_COUNT"),
                    get("SLURM_ARRAY_TASK_MIN"),
                    get("SLURM_ARRAY_TASK_MAX"),
                ) {
                    (Some(c), _, _) => num("SLURM_ARRAY_TASK_COUNT", &c)?,
                    (None, Some(lo), Some(hi)) => {
                        let (lo, hi) = (
                            num("SLURM_ARRAY_TASK_MIN", &lo)?,
                            num("SLURM_ARRAY_TASK_MAX", &hi)?,
                        );
                        if lo != 0 {
                            return Err(format!(
                                "--partition auto needs a job array starting at 0 (--array=0-{}), not at {lo}",
                                hi.saturating_sub(lo)
                            ));
                        }
                        hi + 1
                    }
                    _ => {
                        return Err("--partition auto: SLURM_ARRAY_TASK_ID is set but neither \
                             SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MIN/MAX"
                            .into());
                    }
                };
                return Partition::new(id, count);
            }
            if let Some(id) = get("JOB_COMPLETION_INDEX") {
                let Some(count) = get("MG3D_PARTITIONS") else {
                    return Err(
                        "--partition auto: JOB_COMPLETION_INDEX is set (a Kubernetes \
                         indexed Job); set MG3D_PARTITIONS to the Job's completions too"
                            .into(),
                    );
                };
                return Partition::new(
                    num("JOB_COMPLETION_INDEX", &id)?,
                    num("MG3D_PARTITIONS", &count)?,
                );
            }
            return Err(
                "--partition auto: not in a Slurm job array (no SLURM_ARRAY_TASK_ID) \
                 nor a Kubernetes indexed Job (no JOB_COMPLETION_INDEX); give K/N"
                    .into(),
            );
        }
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--partition {s:?}: give K/N (e.g. 0/4) or auto"))?;
        Partition::new(num("K", k)?, num("N", n)?)
    }

    /// Whether this partition owns the item of a store with `fingerprint`: a keyed hash of the
    /// item id (the fingerprint holds the salt's digest), so the assignment is stable across runs
    /// and hosts and says nothing about the id.
    pub fn owns(&self, fingerprint: &str, item_id: &str) -> bool {
        partition_of(&format!("{fingerprint}\0{item_id}"), self.count) == self.index
    }
}

/// How many items a run of a stage asked for, and what became of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemCounts {
    /// Items the stage enumerated (all partitions' items: every partition sees the whole corpus).
    pub seen: u64,
    /// Items of other partitions, left to them.
    pub other_partitions: u64,
    /// Items computed in this run.
    pub made: u64,
    /// Items found in the store.
    pub reused: u64,
}

/// One partition's progress record: `STORE/.progress/<stage key>/<K>-of-<N>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProgressRecord {
    partition: Partition,
    counts: ItemCounts,
    finished: bool,
}

/// What the partitions of a stage have done so far (`mg3d status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemProgress {
    /// Items finished in the store.
    pub done: u64,
    /// Items of the stage (as far as the partitions enumerated them).
    pub total: u64,
    /// Partitions that reported, and the partition count they were run with.
    pub reporting: u32,
    /// N.
    pub partitions: u32,
    /// Partitions that finished.
    pub finished: u32,
}

impl std::fmt::Display for ItemProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "items {}/{} done in the store", self.done, self.total)?;
        if self.partitions > 1 {
            write!(
                f,
                " ({} of {} partitions reported, {} finished)",
                self.reporting, self.partitions, self.finished
            )?;
        }
        Ok(())
    }
}

/// Content-addressed storage for one stage's finished items (`WORK/.items/STAGE/`).
#[derive(Debug)]
pub struct ItemStore {
    dir: PathBuf,
    fingerprint: String,
    partition: Option<Partition>,
    used: Mutex<BTreeSet<String>>,
    seen: AtomicU64,
    other_partitions: AtomicU64,
    made: AtomicU64,
    reused: AtomicU64,
    /// Where this run's progress record goes, and when it was last written.
    progress: Option<(PathBuf, Mutex<Instant>)>,
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

/// Progress records are rewritten at most this often during a run.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

impl ItemStore {
    /// A store rooted at `dir` for a stage whose fingerprint (kind + code + params) is `fingerprint`.
    pub fn new(dir: PathBuf, fingerprint: String) -> Self {
        ItemStore {
            dir,
            fingerprint,
            partition: None,
            used: Mutex::new(BTreeSet::new()),
            seen: AtomicU64::new(0),
            other_partitions: AtomicU64::new(0),
            made: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            progress: None,
        }
    }

    /// The same store for a run of one partition (`None`: the whole stage) of the stage run with
    /// key `stage_key`, which reports its progress for `mg3d status`.
    pub fn for_run(mut self, partition: Option<Partition>, stage_key: &str) -> Self {
        let p = partition.unwrap_or(Partition::WHOLE);
        let file =
            progress_dir(&self.dir, stage_key).join(format!("{}-of-{}.json", p.index, p.count));
        self.partition = partition;
        self.progress = Some((file, Mutex::new(Instant::now() - PROGRESS_EVERY)));
        self
    }

    /// The store's directory (stages may keep resumable state, e.g. checkpoints, beneath it).
    pub fn root(&self) -> &Path {
        &self.dir
    }

    /// The partition this run computes, if it is a partition run.
    pub fn partition(&self) -> Option<Partition> {
        self.partition
    }

    /// Whether this run computes item `item_id` (every item outside a partition run). A stage
    /// asks before computing the item's digest, so a partition reads only its own items' inputs;
    /// it skips the items it does not own.
    pub fn owns(&self, item_id: &str) -> bool {
        self.owns_group(item_id, 1)
    }

    /// [`ItemStore::owns`] for a group of `n` items stored as one (see [`ItemStore::group_of`]).
    pub fn owns_group(&self, group_id: &str, n: u64) -> bool {
        self.seen.fetch_add(n, Ordering::Relaxed);
        let mine = self
            .partition
            .is_none_or(|p| p.owns(&self.fingerprint, group_id));
        if !mine {
            self.other_partitions.fetch_add(n, Ordering::Relaxed);
        }
        mine
    }

    /// The group (0..groups) of a small item: a keyed hash of its id, independent of any
    /// partition count, so groups and their stored values are the same however the stage runs.
    pub fn group_of(&self, item_id: &str, groups: u32) -> u32 {
        partition_of(&format!("{}\0{item_id}", self.fingerprint), groups)
    }

    /// What this run did with its items so far.
    pub fn counts(&self) -> ItemCounts {
        ItemCounts {
            seen: self.seen.load(Ordering::Relaxed),
            other_partitions: self.other_partitions.load(Ordering::Relaxed),
            made: self.made.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
        }
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

    fn tmp_for(&self, key: &str) -> io::Result<PathBuf> {
        let parent = self.dir.join(&key[..2]);
        fs::create_dir_all(&parent)?;
        Ok(parent.join(format!(".{key}.tmp-{}", writer_tag())))
    }

    fn finished(&self, made: bool, n: u64) {
        let c = if made { &self.made } else { &self.reused };
        c.fetch_add(n, Ordering::Relaxed);
        self.write_progress(false);
    }

    /// Returns the finished item with `key`, or runs `make` into a fresh temporary directory and
    /// promotes it. Safe to call from many threads and processes; a failed `make` leaves nothing
    /// behind.
    pub fn get_or_make<E: From<io::Error>>(
        &self,
        key: &str,
        make: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<ItemOutcome, E> {
        let o = self.get_or_make_dir(key, make)?;
        self.finished(matches!(o, ItemOutcome::Made(_)), 1);
        Ok(o)
    }

    /// Like [`ItemStore::get_or_make`] for an intermediate result of the whole stage that every
    /// partition needs (a vocabulary trained on all reports): the first run to need it makes it,
    /// the others (and the merge) find it. Not counted as an item.
    pub fn get_or_make_shared<E: From<io::Error>>(
        &self,
        key: &str,
        make: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<ItemOutcome, E> {
        self.get_or_make_dir(key, make)
    }

    fn get_or_make_dir<E: From<io::Error>>(
        &self,
        key: &str,
        make: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<ItemOutcome, E> {
        self.used.lock().unwrap().insert(key.to_string());
        let final_dir = self.path_of(key);
        if final_dir.is_dir() {
            return Ok(ItemOutcome::Reused(final_dir));
        }
        let tmp = self.tmp_for(key)?;
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        match make(&tmp) {
            Ok(()) => {
                // Another process may have promoted the same item meanwhile: a rename onto a
                // non-empty directory fails, and theirs is as good as ours.
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

    /// Like [`ItemStore::get_or_make`] for an item that is one value: kept as a bincode file
    /// (`values/KEY.bin`), read back when found. For small items (a report's rows), where a directory
    /// per item would cost more than the work.
    pub fn get_or_make_value<T, E>(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<io::Error>,
    {
        self.get_or_make_group(key, 1, make)
    }

    /// [`ItemStore::get_or_make_value`] for a group of `n` items kept as one value.
    pub fn get_or_make_group<T, E>(
        &self,
        key: &str,
        n: u64,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<io::Error>,
    {
        self.used.lock().unwrap().insert(key.to_string());
        let values = self.dir.join(VALUES_DIR);
        let file = values.join(format!("{key}.{VALUE_EXT}"));
        match fs::read(&file) {
            Ok(bytes) => {
                let decode = BINCODE.with_limit::<VALUE_LIMIT>();
                let (v, _) = bincode::serde::decode_from_slice(&bytes, decode).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("item {}: {e}", file.display()),
                    )
                })?;
                self.finished(false, n);
                return Ok(v);
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            Err(_) => {}
        }
        let v = make()?;
        let tmp = values.join(format!(".{key}.tmp-{}", writer_tag()));
        let created = match fs::File::create(&tmp) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&values)?;
                fs::File::create(&tmp)
            }
            r => r,
        }?;
        // Streamed to the file: a group is megabytes, and a buffer of that size per group costs
        // more in fresh pages than the encoding itself (so does a 64 KiB one).
        let mut w = io::BufWriter::new(created);
        bincode::serde::encode_into_std_write(&v, &mut w, BINCODE).map_err(io::Error::other)?;
        w.into_inner().map_err(io::IntoInnerError::into_error)?;
        // Replacing a file by rename is atomic; a concurrent maker wrote the same bytes.
        fs::rename(&tmp, &file)?;
        self.finished(true, n);
        Ok(v)
    }

    /// Writes this run's progress record (throttled unless `last`).
    pub fn write_progress(&self, last: bool) {
        let Some((file, at)) = &self.progress else {
            return;
        };
        {
            let mut at = at.lock().unwrap();
            if !last && at.elapsed() < PROGRESS_EVERY {
                return;
            }
            *at = Instant::now();
        }
        let rec = ProgressRecord {
            partition: self.partition.unwrap_or(Partition::WHOLE),
            counts: self.counts(),
            finished: last,
        };
        // Progress is advisory: a record that cannot be written costs a status line, not the run.
        if let Some(parent) = file.parent() {
            let _ = fs::create_dir_all(parent);
        }
        if let Ok(json) = serde_json::to_vec(&rec) {
            let _ = write_atomic(file, &json);
        }
    }

    /// Deletes finished items not requested in this run (after the stage succeeded), keeping the
    /// store bounded by the current corpus, and what partition runs left: their progress records
    /// and the scratch outputs of killed ones (`.progress/`, `.scratch/`). Returns how many items
    /// were removed. Only a run of the whole stage calls it, after its partitions finished.
    pub fn prune_unused(&self) -> io::Result<usize> {
        let used = self.used.lock().unwrap();
        let mut removed = 0;
        for leftover in [".progress", ".scratch"] {
            let _ = fs::remove_dir_all(self.dir.join(leftover));
        }
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        for shard in rd.flatten() {
            let name = shard.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !shard.file_type()?.is_dir() {
                continue;
            }
            for e in fs::read_dir(shard.path())?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let key = name.strip_suffix(&format!(".{VALUE_EXT}")).unwrap_or(&name);
                if !used.contains(key) {
                    if e.file_type()?.is_dir() {
                        fs::remove_dir_all(e.path())?;
                    } else {
                        fs::remove_file(e.path())?;
                    }
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// The extension of value items. They are bincode, not JSON: a stage's rows are written to the
/// store on every fresh run, and JSON cost a sixth of the text stages' time.
const VALUE_EXT: &str = "bin";
/// The folder of value items, flat: a stage has a few hundred (groups of small items), and a
/// folder for each cost as much as writing it.
const VALUES_DIR: &str = "values";
const BINCODE: bincode::config::Configuration = bincode::config::standard();
/// The most memory a value item may claim while decoding (16 GiB): a damaged length prefix is an
/// error, not an allocation of whatever it says.
const VALUE_LIMIT: usize = 1 << 34;

fn progress_dir(store: &Path, stage_key: &str) -> PathBuf {
    store
        .join(".progress")
        .join(&stage_key[..stage_key.len().min(32)])
}

/// The progress partition runs of the stage run with `stage_key` reported into the store at
/// `store` (`None` when none did). Of records made with different partition counts, the count
/// that got furthest is shown.
pub fn progress(store: &Path, stage_key: &str) -> Option<ItemProgress> {
    let rd = fs::read_dir(progress_dir(store, stage_key)).ok()?;
    let mut by_count: std::collections::BTreeMap<u32, ItemProgress> = Default::default();
    for e in rd.flatten() {
        let Ok(bytes) = fs::read(e.path()) else {
            continue;
        };
        let Ok(rec) = serde_json::from_slice::<ProgressRecord>(&bytes) else {
            continue;
        };
        let n = rec.partition.count;
        let p = by_count.entry(n).or_insert(ItemProgress {
            done: 0,
            total: 0,
            reporting: 0,
            partitions: n,
            finished: 0,
        });
        p.done += rec.counts.made + rec.counts.reused;
        p.total = p.total.max(rec.counts.seen);
        p.reporting += 1;
        p.finished += rec.finished as u32;
    }
    by_count
        .into_values()
        .max_by_key(|p| (p.done, p.partitions))
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
    fn partitions_parse_from_k_n_and_from_job_arrays() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let none = env(&[]);
        assert_eq!(Partition::parse("2/5", none), Partition::new(2, 5));
        for bad in ["5/5", "a/2", "1", "0/0", "-1/2"] {
            assert!(Partition::parse(bad, none).is_err(), "{bad}");
        }
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ]);
        assert_eq!(Partition::parse("auto", slurm), Partition::new(3, 8));
        let range = env(&[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "3"),
        ]);
        assert_eq!(Partition::parse("auto", range), Partition::new(1, 4));
        let k8s = env(&[("JOB_COMPLETION_INDEX", "0"), ("MG3D_PARTITIONS", "2")]);
        assert_eq!(Partition::parse("auto", k8s), Partition::new(0, 2));
        let k8s_no_count = env(&[("JOB_COMPLETION_INDEX", "0")]);
        assert!(
            Partition::parse("auto", k8s_no_count)
                .unwrap_err()
                .contains("MG3D_PARTITIONS")
        );
        assert!(Partition::parse("auto", none).is_err());
    }

    #[test]
    fn partitions_split_items_exactly_once() {
        let parts: Vec<Partition> = (0..3).map(|k| Partition::new(k, 3).unwrap()).collect();
        for i in 0..300 {
            let id = format!("item{i}");
            assert_eq!(parts.iter().filter(|p| p.owns("fp", &id)).count(), 1);
        }
    }

    #[test]
    fn value_items_are_kept_and_pruned() {
        let d = tempfile::tempdir().unwrap();
        let s = ItemStore::new(d.path().to_path_buf(), "fp".into());
        let k = s.key("a", "digest");
        let v: Vec<u32> = s
            .get_or_make_value::<_, io::Error>(&k, || Ok(vec![1, 2]))
            .unwrap();
        let again: Vec<u32> = s
            .get_or_make_value::<_, io::Error>(&k, || panic!("must not run"))
            .unwrap();
        assert_eq!((v, again.clone()), (vec![1, 2], vec![1, 2]));
        assert_eq!(s.counts().made, 1);
        assert_eq!(s.counts().reused, 1);
        let fresh = ItemStore::new(d.path().to_path_buf(), "fp".into());
        assert_eq!(fresh.prune_unused().unwrap(), 1);
        assert!(!d.path().join(VALUES_DIR).join(format!("{k}.bin")).exists());
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
