//! Running a pipeline: stage keys, fresh/stale status with reasons, and atomic promotion of outputs.
//!
//! A stage key is blake3 over (kind, code version, canonical params, salt digest, the pipeline seed
//! for stages that use it ([`crate::stage::Stage::uses_seed`]), sources digest,
//! and for each input in name order: its name, key and output digest). No mtimes, no absolute paths.
//! Outputs are built in `WORK/.tmp/NAME-PID` and renamed to `WORK/NAME` only when the stage
//! succeeded; the lockfile is updated after the rename. A failing or killed stage therefore leaves
//! the previous output and the lockfile as they were.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressDrawTarget};
use serde::Serialize;
use serde_json::Value;

use crate::fsutil::{dir_digest, hash_dir, list_files};
use crate::items::{ItemProgress, ItemStore, Partition};
use crate::lock::{InputRecord, Lockfile, StageRecord};
use crate::pipeline::{Pipeline, StageSpec};
use crate::stage::{CancelFlag, StageContext, StageError, StageInput, StageRegistry};

/// Fresh, stale or missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageState {
    /// Output present and matches the current key.
    Fresh,
    /// Output present but made with other params, code, inputs or sources, or modified since.
    Stale,
    /// Never run, or output gone.
    Missing,
}

/// A stage's state and why.
#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    /// Stage name.
    pub name: String,
    /// Stage kind.
    pub kind: String,
    /// State.
    pub state: StageState,
    /// Reasons it is not fresh (empty when fresh).
    pub reasons: Vec<String>,
    /// The key it would run with now, when all inputs are fresh.
    pub key: Option<String>,
    /// What partition runs of this key left in the item store, when the stage is not fresh.
    pub items: Option<ItemProgress>,
}

/// What `run` should do.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run only this stage (always, even if fresh); its inputs must have outputs.
    pub only: Option<String>,
    /// Rerun this stage and everything downstream of it.
    pub from: Option<String>,
    /// Rerun every selected stage even if fresh.
    pub force: bool,
    /// Report what would run and why, run nothing.
    pub dry_run: bool,
    /// Hide progress bars.
    pub quiet: bool,
    /// Check output files by content (blake3) rather than by name and size.
    pub verify: bool,
    /// With `only`: compute just this partition's items into the item store (no output, no
    /// lockfile, no work-dir lock), for a later plain run to merge.
    pub partition: Option<Partition>,
}

/// One stage's outcome in a run.
#[derive(Debug, Clone, Serialize)]
pub struct StageOutcome {
    /// Stage name.
    pub name: String,
    /// "ran", "fresh" (skipped), or "would-run" (dry run).
    pub action: String,
    /// Why it ran (its stale reasons, or "forced").
    pub reasons: Vec<String>,
    /// Seconds spent.
    pub seconds: f64,
    /// The stage's summary when it ran.
    pub summary: Value,
}

/// The outcome of `run`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Pipeline name.
    pub pipeline: String,
    /// Per stage, in order.
    pub stages: Vec<StageOutcome>,
}

/// Engine errors: a stage failed, or the work dir could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A stage returned an error; its previous output and the lockfile are untouched.
    #[error(
        "stage {stage:?} failed: {source}\n  (its previous output and the lockfile are unchanged)"
    )]
    Stage {
        /// Stage name.
        stage: String,
        /// The stage's error.
        source: StageError,
    },
    /// A selection named no stage, or a stage's inputs have no output.
    #[error("{0}")]
    Usage(String),
    /// Work dir I/O.
    #[error("work dir {path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs pipelines against a registry of stage kinds.
pub struct Engine<'r> {
    registry: &'r StageRegistry,
    cancel: CancelFlag,
}

impl<'r> Engine<'r> {
    /// An engine over `registry`.
    pub fn new(registry: &'r StageRegistry) -> Self {
        Engine {
            registry,
            cancel: CancelFlag::default(),
        }
    }

    /// The flag a signal handler sets to cancel the running stage.
    pub fn cancel_flag(&self) -> CancelFlag {
        self.cancel.clone()
    }

    /// Hash of what defines a stage's behaviour apart from its inputs: kind, code, params, salt.
    fn stage_fingerprint(&self, spec: &StageSpec, salt: &str, seed: u64) -> String {
        let stage = self.registry.get(&spec.kind).expect("validated pipeline");
        let mut h = blake3::Hasher::new();
        if stage.uses_seed() {
            h.update(format!("seed={seed}").as_bytes());
            h.update(&[0]);
        }
        for part in [
            spec.kind.as_str(),
            stage.code_version(),
            &spec.params.canonical(),
            blake3::hash(salt.as_bytes()).to_hex().as_str(),
        ] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
        h.finalize().to_hex().to_string()
    }

    /// Hash of what defines one item's result: kind, code, salt and the params the stage names.
    fn item_fingerprint(&self, spec: &StageSpec, salt: &str) -> String {
        let stage = self.registry.get(&spec.kind).expect("validated pipeline");
        let params: serde_json::Map<String, Value> = match stage.item_params() {
            None => spec.params.as_map().clone(),
            Some(keys) => spec
                .params
                .as_map()
                .iter()
                .filter(|(k, _)| keys.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let mut h = blake3::Hasher::new();
        for part in [
            spec.kind.as_str(),
            stage.code_version(),
            &Value::Object(params).to_string(),
            blake3::hash(salt.as_bytes()).to_hex().as_str(),
        ] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
        h.finalize().to_hex().to_string()
    }

    fn key_of(
        &self,
        spec: &StageSpec,
        salt: &str,
        seed: u64,
        inputs: &BTreeMap<String, InputRecord>,
    ) -> Result<(String, Option<String>), StageError> {
        let fp = self.stage_fingerprint(spec, salt, seed);
        let sources = self
            .registry
            .get(&spec.kind)
            .unwrap()
            .sources_fingerprint(&spec.params)?;
        let mut h = blake3::Hasher::new();
        h.update(fp.as_bytes());
        h.update(&[0]);
        h.update(sources.as_deref().unwrap_or("").as_bytes());
        for (name, rec) in inputs {
            for part in [name.as_str(), &rec.key, &rec.output_digest] {
                h.update(&[0]);
                h.update(part.as_bytes());
            }
        }
        Ok((h.finalize().to_hex().to_string(), sources))
    }

    /// Status of every stage, in pipeline order.
    pub fn status(&self, p: &Pipeline, verify: bool) -> Result<Vec<StageStatus>, EngineError> {
        let lock = Lockfile::load(&p.work_dir).map_err(io_err(&p.work_dir))?;
        let mut out: Vec<StageStatus> = Vec::new();
        for spec in &p.stages {
            let st = self.status_of(p, spec, &lock, &out, verify)?;
            out.push(st);
        }
        Ok(out)
    }

    fn status_of(
        &self,
        p: &Pipeline,
        spec: &StageSpec,
        lock: &Lockfile,
        upstream: &[StageStatus],
        verify: bool,
    ) -> Result<StageStatus, EngineError> {
        let mut reasons = Vec::new();
        let mut inputs = BTreeMap::new();
        for i in &spec.inputs {
            let up = upstream.iter().find(|s| &s.name == i);
            match (up.map(|u| u.state), lock.stages.get(i)) {
                (Some(StageState::Fresh), Some(rec)) => {
                    inputs.insert(
                        i.clone(),
                        InputRecord {
                            key: rec.key.clone(),
                            output_digest: rec.output_digest.clone(),
                        },
                    );
                }
                (Some(StageState::Missing), _) | (_, None) => {
                    reasons.push(format!("input {i} has no output yet"))
                }
                _ => reasons.push(format!("input {i} is stale")),
            }
        }
        let key = if reasons.is_empty() {
            match self.key_of(spec, &p.salt, p.seed, &inputs) {
                Ok((k, _)) => Some(k),
                Err(e) => {
                    reasons.push(format!("cannot fingerprint sources: {e}"));
                    None
                }
            }
        } else {
            None
        };
        let mk = |state, reasons| StageStatus {
            name: spec.name.clone(),
            kind: spec.kind.clone(),
            state,
            reasons,
            key: key.clone(),
            items: key
                .as_ref()
                .filter(|_| state != StageState::Fresh)
                .and_then(|k| crate::items::progress(&item_dir(p, spec), k)),
        };
        let Some(rec) = lock.stages.get(&spec.name) else {
            return Ok(mk(StageState::Missing, vec!["never run".to_string()]));
        };
        let out_dir = p.work_dir.join(&spec.name);
        if !out_dir.is_dir() {
            return Ok(mk(
                StageState::Missing,
                vec![format!("output {} is missing", out_dir.display())],
            ));
        }
        let stage = self.registry.get(&spec.kind).unwrap();
        if rec.kind != spec.kind {
            reasons.push(format!("kind changed: {} -> {}", rec.kind, spec.kind));
        }
        if rec.code_version != stage.code_version() {
            reasons.push(format!(
                "code changed: {} version {} -> {}",
                spec.kind,
                rec.code_version,
                stage.code_version()
            ));
        }
        let now = Value::Object(spec.params.as_map().clone());
        if rec.params != now {
            reasons.push(format!(
                "params changed: {}",
                diff_params(&rec.params, &now)
            ));
        }
        for (name, r) in &rec.inputs {
            match inputs.get(name) {
                Some(cur) if cur != r => reasons.push(format!("input {name} changed")),
                None if !spec.inputs.contains(name) => {
                    reasons.push(format!("input {name} removed"))
                }
                _ => {}
            }
        }
        for name in &spec.inputs {
            if !rec.inputs.contains_key(name) {
                reasons.push(format!("input {name} added"));
            }
        }
        if reasons.is_empty() && key.as_ref() != Some(&rec.key) {
            let sources = self
                .registry
                .get(&spec.kind)
                .unwrap()
                .sources_fingerprint(&spec.params)
                .ok()
                .flatten();
            reasons.push(if sources != rec.sources {
                "sources changed".to_string()
            } else {
                "key changed (salt, seed or stage fingerprint)".to_string()
            });
        }
        // Output integrity.
        match check_outputs(&out_dir, rec, verify) {
            Ok(None) => {}
            Ok(Some(why)) => reasons.push(why),
            Err(e) => reasons.push(format!("cannot read output: {e}")),
        }
        let state = if reasons.is_empty() {
            StageState::Fresh
        } else {
            StageState::Stale
        };
        Ok(mk(state, reasons))
    }

    /// Runs the stale (or selected) stages in order. Stops at the first failing stage.
    pub fn run(&self, p: &Pipeline, opts: &RunOptions) -> Result<RunReport, EngineError> {
        if let Some(part) = opts.partition {
            return self.run_partition(p, opts, part);
        }
        for sel in [&opts.only, &opts.from].into_iter().flatten() {
            p.require_stage(sel).map_err(EngineError::Usage)?;
        }
        fs::create_dir_all(&p.work_dir).map_err(io_err(&p.work_dir))?;
        let _guard = if opts.dry_run {
            None
        } else {
            Some(WorkDirLock::acquire(&p.work_dir)?)
        };
        let forced: Vec<String> = match (&opts.only, &opts.from) {
            (Some(o), _) => vec![o.clone()],
            (None, Some(f)) => p.descendants(f),
            _ if opts.force => p.stages.iter().map(|s| s.name.clone()).collect(),
            _ => vec![],
        };
        let (pool, progress) = pool_and_progress(p, opts)?;
        let mut lock = Lockfile::load(&p.work_dir).map_err(io_err(&p.work_dir))?;
        let mut statuses: Vec<StageStatus> = Vec::new();
        let mut report = RunReport {
            pipeline: p.name.clone(),
            stages: vec![],
        };
        for spec in &p.stages {
            let mut st = self.status_of(p, spec, &lock, &statuses, opts.verify)?;
            let selected = match &opts.only {
                Some(o) => o == &spec.name,
                None => true,
            };
            let force = forced.contains(&spec.name);
            if !selected || (st.state == StageState::Fresh && !force) {
                if selected {
                    report.stages.push(StageOutcome {
                        name: spec.name.clone(),
                        action: "fresh".into(),
                        reasons: vec![],
                        seconds: 0.0,
                        summary: Value::Null,
                    });
                }
                statuses.push(st);
                continue;
            }
            let mut reasons = st.reasons.clone();
            if force && st.state == StageState::Fresh {
                reasons = vec!["forced".into()];
            }
            // Inputs must have outputs (an --only stage runs against whatever its inputs hold now).
            let (inputs, ctx_inputs) = stage_inputs(p, spec, &lock, opts.dry_run)?;
            if opts.dry_run {
                report.stages.push(StageOutcome {
                    name: spec.name.clone(),
                    action: "would-run".into(),
                    reasons,
                    seconds: 0.0,
                    summary: Value::Null,
                });
                st.state = StageState::Stale;
                statuses.push(st);
                continue;
            }
            let t0 = Instant::now();
            tracing::info!(stage = %spec.name, kind = %spec.kind, reasons = ?reasons, "running");
            let (rec, this_run) = self.run_stage(p, spec, inputs, ctx_inputs, &pool, &progress)?;
            lock.stages.insert(spec.name.clone(), rec.clone());
            lock.format = 1;
            lock.save(&p.work_dir).map_err(io_err(&p.work_dir))?;
            let seconds = t0.elapsed().as_secs_f64();
            tracing::info!(stage = %spec.name, seconds, "done");
            report.stages.push(StageOutcome {
                name: spec.name.clone(),
                action: "ran".into(),
                reasons,
                seconds,
                summary: with_this_run(rec.summary.clone(), this_run),
            });
            st.state = StageState::Fresh;
            st.reasons.clear();
            st.key = Some(rec.key);
            statuses.push(st);
        }
        Ok(report)
    }

    /// `--stage S --partition K/N`: computes partition K's items of S into the item store and
    /// nothing else. It takes no work-dir lock (N of them run at once, on other hosts too), writes
    /// no output and leaves the lockfile alone; its scratch output is deleted. A plain run of S
    /// afterwards merges the items.
    fn run_partition(
        &self,
        p: &Pipeline,
        opts: &RunOptions,
        part: Partition,
    ) -> Result<RunReport, EngineError> {
        let Some(name) = &opts.only else {
            return Err(EngineError::Usage(
                "--partition needs --stage NAME: partitions run one stage at a time".into(),
            ));
        };
        let spec = p.require_stage(name).map_err(EngineError::Usage)?;
        let stage = self.registry.get(&spec.kind).unwrap().clone();
        if !stage.partitioned() {
            return Err(EngineError::Usage(format!(
                "stage {name:?} (kind {}) works on the whole corpus and does not partition; run it without --partition (partitioned kinds: {})",
                spec.kind,
                self.registry
                    .kinds()
                    .into_iter()
                    .filter(|k| self.registry.get(k).is_some_and(|s| s.partitioned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let lock = Lockfile::load(&p.work_dir).map_err(io_err(&p.work_dir))?;
        let (inputs, ctx_inputs) = stage_inputs(p, spec, &lock, opts.dry_run)?;
        let fail = |source: StageError| EngineError::Stage {
            stage: spec.name.clone(),
            source,
        };
        let outcome = |action: String, seconds, summary| RunReport {
            pipeline: p.name.clone(),
            stages: vec![StageOutcome {
                name: spec.name.clone(),
                action,
                reasons: vec![format!("partition {part}")],
                seconds,
                summary,
            }],
        };
        if opts.dry_run {
            return Ok(outcome("would-run".into(), 0.0, Value::Null));
        }
        let t0 = Instant::now();
        let (key, _) = self.key_of(spec, &p.salt, p.seed, &inputs).map_err(fail)?;
        let store = item_dir(p, spec);
        let scratch = store.join(".scratch").join(crate::fsutil::writer_tag());
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch).map_err(io_err(&scratch))?;
        let (pool, progress) = pool_and_progress(p, opts)?;
        let ctx = StageContext {
            name: &spec.name,
            params: &spec.params,
            inputs: ctx_inputs,
            out_dir: scratch.clone(),
            seed: p.seed,
            salt: &p.salt,
            pool: &pool,
            progress: &progress,
            cancel: &self.cancel,
            items: ItemStore::new(store, self.item_fingerprint(spec, &p.salt))
                .for_run(Some(part), &key),
        };
        tracing::info!(stage = %spec.name, partition = %part, "running a partition");
        let result = run_caught(stage.as_ref(), &ctx, &pool);
        let _ = fs::remove_dir_all(&scratch);
        result.map_err(fail)?;
        ctx.items.write_progress(true);
        let counts = ctx.items.counts();
        Ok(outcome(
            format!("partition {part}"),
            t0.elapsed().as_secs_f64(),
            serde_json::json!({ "items": counts }),
        ))
    }

    fn run_stage(
        &self,
        p: &Pipeline,
        spec: &StageSpec,
        inputs: BTreeMap<String, InputRecord>,
        ctx_inputs: Vec<StageInput>,
        pool: &rayon::ThreadPool,
        progress: &MultiProgress,
    ) -> Result<(StageRecord, Option<Value>), EngineError> {
        let stage = self.registry.get(&spec.kind).unwrap().clone();
        let fail = |source: StageError| EngineError::Stage {
            stage: spec.name.clone(),
            source,
        };
        let (key, sources) = self.key_of(spec, &p.salt, p.seed, &inputs).map_err(fail)?;
        let fingerprint = self.item_fingerprint(spec, &p.salt);
        let tmp_root = p.work_dir.join(".tmp");
        let tmp = tmp_root.join(format!("{}-{}", spec.name, std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let ctx = StageContext {
            name: &spec.name,
            params: &spec.params,
            inputs: ctx_inputs,
            out_dir: tmp.clone(),
            seed: p.seed,
            salt: &p.salt,
            pool,
            progress,
            cancel: &self.cancel,
            items: ItemStore::new(item_dir(p, spec), fingerprint).for_run(None, &key),
        };
        let result = run_caught(stage.as_ref(), &ctx, pool);
        let mut summary = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(fail(e));
            }
        };
        // What only this run knows (wall times, a resume) is reported, not kept in the lockfile,
        // so the same inputs give the same lockfile however the run went.
        let mut this_run = summary
            .as_object_mut()
            .and_then(|o| o.remove(crate::stage::THIS_RUN));
        let counts = ctx.items.counts();
        if counts.seen + counts.made + counts.reused > 0 {
            let o = this_run.get_or_insert_with(|| Value::Object(Default::default()));
            if let Some(o) = o.as_object_mut() {
                o.insert(
                    "items".into(),
                    serde_json::to_value(&counts).unwrap_or_default(),
                );
            }
        }
        let files = hash_dir(&tmp).map_err(io_err(&tmp))?;
        let output_digest = dir_digest(&files);
        // Promote: old -> trash, tmp -> final, drop trash.
        let final_dir = p.work_dir.join(&spec.name);
        let trash = tmp_root.join(format!("{}-old-{}", spec.name, std::process::id()));
        if final_dir.exists() {
            let _ = fs::remove_dir_all(&trash);
            fs::rename(&final_dir, &trash).map_err(io_err(&final_dir))?;
        }
        fs::rename(&tmp, &final_dir).map_err(io_err(&final_dir))?;
        let _ = fs::remove_dir_all(&trash);
        let _ = ctx.items.prune_unused();
        let record = StageRecord {
            kind: spec.kind.clone(),
            key,
            code_version: stage.code_version().to_string(),
            params: Value::Object(spec.params.as_map().clone()),
            sources,
            inputs,
            output_digest,
            files,
            summary,
        };
        Ok((record, this_run))
    }
}

/// Runs `stage` in `pool`; a panic becomes [`StageError::Panicked`]. The panic's message is not
/// repeated: it may quote input data (the panic hook of the binary logs where it happened).
fn run_caught(
    stage: &dyn crate::stage::Stage,
    ctx: &StageContext,
    pool: &rayon::ThreadPool,
) -> Result<Value, StageError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.install(|| stage.run(ctx))
    }))
    .unwrap_or(Err(StageError::Panicked))
}

/// The stages' thread pool (`threads`, 0 = all cores or `RAYON_NUM_THREADS`) and progress bars.
fn pool_and_progress(
    p: &Pipeline,
    opts: &RunOptions,
) -> Result<(rayon::ThreadPool, MultiProgress), EngineError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(p.threads)
        .build()
        .map_err(|e| EngineError::Usage(format!("cannot build thread pool: {e}")))?;
    let progress = MultiProgress::with_draw_target(if opts.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    Ok((pool, progress))
}

/// The item store of a stage: `WORK/.items/NAME/`.
fn item_dir(p: &Pipeline, spec: &StageSpec) -> PathBuf {
    p.work_dir.join(".items").join(&spec.name)
}

/// A stage's summary with its run-only part put back, for the run report.
fn with_this_run(mut summary: Value, this_run: Option<Value>) -> Value {
    if let (Some(o), Some(r)) = (summary.as_object_mut(), this_run) {
        o.insert(crate::stage::THIS_RUN.into(), r);
    }
    summary
}

/// One `run` per work dir at a time: an exclusive `flock` on `WORK/.mg3d.lock`, which the kernel
/// releases when the holder exits (even by kill -9), so a stale lock cannot block a restart and two
/// starts cannot both proceed. Once held, promotions a kill interrupted are finished or undone and
/// leftover temporary outputs are removed.
struct WorkDirLock {
    /// Held open for the lock's lifetime; closing it releases the lock.
    _file: fs::File,
}

impl WorkDirLock {
    fn acquire(work: &Path) -> Result<WorkDirLock, EngineError> {
        let path = work.join(".mg3d.lock");
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        if let Err(e) = file.try_lock() {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            return Err(EngineError::Usage(match e {
                fs::TryLockError::WouldBlock => format!(
                    "another mg3d run (pid {}) is using {}; wait for it to finish",
                    holder.trim(),
                    work.display()
                ),
                fs::TryLockError::Error(e) => format!("cannot lock {}: {e}", path.display()),
            }));
        }
        use std::io::Write;
        let _ = file.set_len(0);
        let _ = write!(file, "{}", std::process::id());
        let tmp = work.join(".tmp");
        if tmp.exists() {
            recover_promotions(work, &tmp).map_err(io_err(&tmp))?;
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        Ok(WorkDirLock { _file: file })
    }
}

/// A kill between "old output -> .tmp/NAME-old-PID" and "new output -> NAME" leaves NAME missing:
/// the previous output is moved back (the lockfile still describes it, so it is fresh again).
fn recover_promotions(work: &Path, tmp: &Path) -> std::io::Result<()> {
    for e in fs::read_dir(tmp)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some((stage, _pid)) = name.rsplit_once("-old-") {
            let final_dir = work.join(stage);
            if !final_dir.exists() {
                fs::rename(e.path(), &final_dir)?;
                tracing::warn!(
                    stage,
                    "restored the previous output of an interrupted promotion"
                );
            }
        }
    }
    Ok(())
}

fn check_outputs(dir: &Path, rec: &StageRecord, verify: bool) -> std::io::Result<Option<String>> {
    let names = list_files(dir)?;
    let expected: Vec<&String> = rec.files.keys().collect();
    if names.iter().collect::<Vec<_>>() != expected {
        let missing = rec.files.keys().filter(|k| !names.contains(k)).count();
        let extra = names.iter().filter(|n| !rec.files.contains_key(*n)).count();
        return Ok(Some(format!(
            "output modified: {missing} file(s) missing, {extra} unexpected"
        )));
    }
    for n in &names {
        let len = fs::metadata(dir.join(n))?.len();
        if len != rec.files[n].bytes {
            return Ok(Some(format!("output modified: {n} changed size")));
        }
    }
    if verify {
        let files = hash_dir(dir)?;
        if let Some((n, _)) = files.iter().find(|(n, d)| rec.files.get(*n) != Some(d)) {
            return Ok(Some(format!("output modified: {n} changed content")));
        }
    }
    Ok(None)
}

fn diff_params(old: &Value, new: &Value) -> String {
    let empty = serde_json::Map::new();
    let o = old.as_object().unwrap_or(&empty);
    let n = new.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| {
            let show =
                |v: Option<&Value>| v.map(|v| v.to_string()).unwrap_or_else(|| "(none)".into());
            format!("{k}: {} -> {}", show(o.get(k)), show(n.get(k)))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The recorded inputs of `spec` (key and output digest of each, for its key) and their
/// directories for its context. An input without an output is an error (a dry run skips it).
fn stage_inputs(
    p: &Pipeline,
    spec: &StageSpec,
    lock: &Lockfile,
    dry_run: bool,
) -> Result<(BTreeMap<String, InputRecord>, Vec<StageInput>), EngineError> {
    let mut inputs = BTreeMap::new();
    let mut ctx_inputs = Vec::new();
    for i in &spec.inputs {
        let rec = lock.stages.get(i).filter(|_| p.work_dir.join(i).is_dir());
        let Some(rec) = rec else {
            if dry_run {
                continue;
            }
            return Err(EngineError::Usage(format!(
                "stage {:?} needs the output of {i:?}, which has none; run the pipeline without --stage first",
                spec.name
            )));
        };
        inputs.insert(
            i.clone(),
            InputRecord {
                key: rec.key.clone(),
                output_digest: rec.output_digest.clone(),
            },
        );
        ctx_inputs.push(StageInput {
            name: i.clone(),
            kind: p.stage(i).unwrap().kind.clone(),
            dir: p.work_dir.join(i),
        });
    }
    Ok((inputs, ctx_inputs))
}
