//! Pipeline files: `[pipeline]` (name, work dir, salt, seed) and `[stages.NAME]` (kind, inputs, params).
//!
//! Loading validates everything that can be checked before a stage runs: unknown keys, unknown stage
//! kinds, unknown or ill-typed params, inputs that name no stage, missing required input kinds, and
//! cycles. Each error names the file, the line and how to fix it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::stage::{Params, StageRegistry};

/// A pipeline file error: where it is and what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineError {
    /// The pipeline file as the user named it.
    pub file: PathBuf,
    /// 1-based line, when the error has a place in the file.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
    /// The stage kind the registry does not know, when that is the error (a binary without
    /// libtorch hands such a pipeline to the one with it).
    pub unknown_kind: Option<String>,
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.message)?,
            None => write!(f, "{}: {}", self.file.display(), self.message)?,
        }
        write!(f, "\n  fix: {}", self.fix)
    }
}

impl std::error::Error for PipelineError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    pipeline: RawHeader,
    #[serde(default)]
    stages: BTreeMap<String, Spanned<RawStage>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    #[serde(default)]
    work_dir: Option<String>,
    #[serde(default)]
    salt: Option<String>,
    #[serde(default)]
    salt_env: Option<String>,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    threads: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    kind: Spanned<String>,
    #[serde(default)]
    inputs: Vec<Spanned<String>>,
    #[serde(default)]
    params: Option<Spanned<toml::Table>>,
}

/// One stage of a loaded pipeline, with params validated and defaults filled in.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// The stage's name (the `NAME` of `[stages.NAME]`), also its output directory name.
    pub name: String,
    /// The stage kind (a key of the [`StageRegistry`]).
    pub kind: String,
    /// Upstream stage names, sorted.
    pub inputs: Vec<String>,
    /// Normalised params: every declared param, defaults filled in, keys sorted.
    pub params: Params,
    /// Line of the stage's table in the pipeline file.
    pub line: usize,
}

/// Shortest salt accepted: ids are keyed hashes, and a short key can be brute-forced.
pub const MIN_SALT_BYTES: usize = 16;

/// A validated pipeline: stages in a deterministic topological order.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The pipeline file.
    pub file: PathBuf,
    /// `[pipeline] name`.
    pub name: String,
    /// Where stage outputs and the lockfile live (relative paths resolve against the current directory).
    pub work_dir: PathBuf,
    /// Secret used for keyed pseudonymous ids. Never written anywhere.
    pub salt: String,
    /// Pipeline-wide seed that stages derive their randomness from.
    pub seed: u64,
    /// Worker threads for stage pools (0 = all cores).
    pub threads: usize,
    /// Stages, each after all of its inputs; ties broken by name.
    pub stages: Vec<StageSpec>,
}

fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

impl Pipeline {
    /// Reads and validates a pipeline file against the registry of stage kinds.
    pub fn load(path: &Path, registry: &StageRegistry) -> Result<Pipeline, PipelineError> {
        let src = std::fs::read_to_string(path).map_err(|e| PipelineError {
            file: path.to_path_buf(),
            line: None,
            message: format!("cannot read pipeline file: {e}"),
            fix: "check the path; pipelines live in pipelines/*.toml".into(),
            unknown_kind: None,
        })?;
        Self::parse(path, &src, registry)
    }

    /// Parses pipeline text; `path` is only used in messages.
    pub fn parse(
        path: &Path,
        src: &str,
        registry: &StageRegistry,
    ) -> Result<Pipeline, PipelineError> {
        let err = |line: Option<usize>, message: String, fix: String| PipelineError {
            file: path.to_path_buf(),
            line,
            message,
            fix,
            unknown_kind: None,
        };
        let raw: RawFile = toml::from_str(src).map_err(|e| {
            let line = e.span().map(|s| line_of(src, s.start));
            let msg = e.message().to_string();
            let fix = if msg.contains("unknown field") {
                "remove or rename the key; [pipeline] takes name, work_dir, salt or salt_env, seed, threads; \
                 [stages.NAME] takes kind, inputs, params"
                    .to_string()
            } else if msg.contains("missing field") {
                "add the missing key".to_string()
            } else {
                "fix the TOML syntax at that line".to_string()
            };
            err(line, msg, fix)
        })?;

        let salt = resolve_salt(&raw.pipeline, &err)?;

        let names: BTreeSet<&str> = raw.stages.keys().map(|s| s.as_str()).collect();
        let mut specs: BTreeMap<String, StageSpec> = BTreeMap::new();
        for (name, st) in &raw.stages {
            let spec = stage_spec(name, st, src, registry, &names, &err)?;
            specs.insert(name.clone(), spec);
        }

        // Required upstream kinds.
        check_required_inputs(&specs, registry, &err)?;

        let order = topo_order(&specs).map_err(|cycle| {
            let first = &specs[&cycle[0]];
            err(
                Some(first.line),
                format!("stages form a cycle: {}", cycle.join(" -> ")),
                "remove one of these inputs; a pipeline must be acyclic".into(),
            )
        })?;
        let stages = order
            .into_iter()
            .map(|n| specs.remove(&n).unwrap())
            .collect();
        Ok(Pipeline {
            file: path.to_path_buf(),
            name: raw.pipeline.name,
            work_dir: PathBuf::from(raw.pipeline.work_dir.unwrap_or_else(|| "work".to_string())),
            salt,
            seed: raw.pipeline.seed,
            threads: raw.pipeline.threads.unwrap_or(0),
            stages,
        })
    }

    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The stage named `name`, or an error message that lists the pipeline's stages.
    pub fn require_stage(&self, name: &str) -> Result<&StageSpec, String> {
        self.stage(name).ok_or_else(|| {
            let names: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
            format!(
                "{}: no stage named {name:?}; stages are: {}",
                self.file.display(),
                names.join(", ")
            )
        })
    }

    /// `name` and every stage downstream of it, in pipeline order.
    pub fn descendants(&self, name: &str) -> Vec<String> {
        let mut set: BTreeSet<String> = BTreeSet::from([name.to_string()]);
        for s in &self.stages {
            if s.inputs.iter().any(|i| set.contains(i)) {
                set.insert(s.name.clone());
            }
        }
        self.stages
            .iter()
            .filter(|s| set.contains(&s.name))
            .map(|s| s.name.clone())
            .collect()
    }
}

fn find_key_line(src: &str, span: std::ops::Range<usize>, key: &str) -> Option<usize> {
    let region = src.get(span.clone())?;
    let mut off = 0;
    for l in region.split_inclusive('\n') {
        let t = l.trim_start();
        if t.starts_with(key) && t[key.len()..].trim_start().starts_with('=') {
            return Some(line_of(src, span.start + off));
        }
        off += l.len();
    }
    None
}

/// The line of `key = ...` in the table whose header is on line `from` (headers' spans are not
/// always the table body's, so scan forward to the next header).
fn find_key_after(src: &str, from: usize, key: &str) -> Option<usize> {
    for (i, l) in src.lines().enumerate().skip(from) {
        let t = l.trim_start();
        if t.starts_with('[') {
            return None;
        }
        if t.starts_with(key) && t[key.len()..].trim_start().starts_with('=') {
            return Some(i + 1);
        }
    }
    None
}

/// Kahn's algorithm with a sorted ready set, so the order is a pure function of the graph.
/// On a cycle, returns one cycle's stage names (first repeated at the end).
fn topo_order(specs: &BTreeMap<String, StageSpec>) -> Result<Vec<String>, Vec<String>> {
    let mut indeg: BTreeMap<&str, usize> = specs
        .iter()
        .map(|(n, s)| (n.as_str(), s.inputs.len()))
        .collect();
    let mut ready: BTreeSet<&str> = indeg
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| *n)
        .collect();
    let mut out = Vec::new();
    while let Some(n) = ready.pop_first() {
        out.push(n.to_string());
        for (m, s) in specs {
            if s.inputs.iter().any(|i| i == n) {
                let d = indeg.get_mut(m.as_str()).unwrap();
                *d -= 1;
                if *d == 0 {
                    ready.insert(m.as_str());
                }
            }
        }
    }
    if out.len() == specs.len() {
        return Ok(out);
    }
    // Walk inputs from any stage left over until a node repeats.
    let left: BTreeSet<&str> = indeg
        .iter()
        .filter(|(_, d)| **d > 0)
        .map(|(n, _)| *n)
        .collect();
    let mut path: Vec<String> = Vec::new();
    let mut cur = *left.iter().next().unwrap();
    loop {
        if let Some(pos) = path.iter().position(|p| p == cur) {
            let mut cycle: Vec<String> = path[pos..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0].clone());
            return Err(cycle);
        }
        path.push(cur.to_string());
        cur = specs[cur]
            .inputs
            .iter()
            .map(|s| s.as_str())
            .find(|i| left.contains(i))
            .unwrap();
    }
}

/// The pipeline's salt, from `salt` or the variable `salt_env` names, at least
/// [`MIN_SALT_BYTES`] long.
fn resolve_salt(
    header: &RawHeader,
    err: &dyn Fn(Option<usize>, String, String) -> PipelineError,
) -> Result<String, PipelineError> {
    let salt = match (&header.salt, &header.salt_env) {
        (Some(s), None) => s.clone(),
        (None, Some(var)) => std::env::var(var).map_err(|_| {
            err(
                None,
                format!("salt_env names ${var}, which is not set"),
                format!("export {var}=<secret> before running, or use salt = \"...\""),
            )
        })?,
        (Some(_), Some(_)) => {
            return Err(err(
                None,
                "both salt and salt_env are set".into(),
                "keep one of them".into(),
            ));
        }
        _ => {
            return Err(err(
                None,
                "[pipeline] has no salt".into(),
                "add salt = \"<secret>\" (or salt_env = \"VAR\"): ids in outputs are keyed hashes with it"
                    .into(),
            ));
        }
    };

    if salt.len() < MIN_SALT_BYTES {
        let from = match &header.salt_env {
            Some(var) => format!("${var}"),
            None => "salt".into(),
        };
        return Err(err(
            None,
            format!(
                "{from} is {} bytes; a salt must be at least {MIN_SALT_BYTES} (a short or empty key lets anyone recompute the ids)",
                salt.len()
            ),
            "use a long random secret, e.g. export MG3D_SALT=$(openssl rand -hex 16) with salt_env = \"MG3D_SALT\"".into(),
        ));
    }
    Ok(salt)
}

/// Every stage has an input of each kind it requires.
fn check_required_inputs(
    specs: &BTreeMap<String, StageSpec>,
    registry: &StageRegistry,
    err: &dyn Fn(Option<usize>, String, String) -> PipelineError,
) -> Result<(), PipelineError> {
    for spec in specs.values() {
        let stage = registry.get(&spec.kind).expect("checked above");
        for decl in stage.inputs() {
            let n = spec
                .inputs
                .iter()
                .filter(|i| specs[i.as_str()].kind == decl.kind)
                .count();
            if decl.required && n == 0 {
                return Err(err(
                    Some(spec.line),
                    format!(
                        "stage {:?} (kind {}) needs an input of kind {:?}",
                        spec.name, spec.kind, decl.kind
                    ),
                    format!("add the name of a {} stage to its inputs", decl.kind),
                ));
            }
        }
    }
    Ok(())
}

/// One `[stages.NAME]` table checked against the registry: a plain name, a known kind, inputs
/// that are other stages of the pipeline, params of the right names and types.
fn stage_spec(
    name: &str,
    st: &Spanned<RawStage>,
    src: &str,
    registry: &StageRegistry,
    names: &BTreeSet<&str>,
    err: &dyn Fn(Option<usize>, String, String) -> PipelineError,
) -> Result<StageSpec, PipelineError> {
    let list = |set: &BTreeSet<&str>| set.iter().copied().collect::<Vec<_>>().join(", ");
    let st_line = line_of(src, st.span().start);
    let r = st.get_ref();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(err(
            Some(st_line),
            format!("stage name {name:?} is not a plain identifier"),
            "use letters, digits, '_' or '-' (the name is also a directory)".into(),
        ));
    }
    let kind = r.kind.get_ref();
    let Some(stage) = registry.get(kind) else {
        return Err(PipelineError {
            unknown_kind: Some(kind.clone()),
            ..err(
                Some(line_of(src, r.kind.span().start)),
                format!("stage {name:?} has unknown kind {kind:?}"),
                format!("use one of: {}", registry.kinds().join(", ")),
            )
        });
    };
    let mut inputs = Vec::new();
    for inp in &r.inputs {
        let i = inp.get_ref();
        if !names.contains(i.as_str()) {
            return Err(err(
                Some(line_of(src, inp.span().start)),
                format!("stage {name:?} has input {i:?}, which is not a stage of this pipeline"),
                format!("define [stages.{i}] or use one of: {}", list(names)),
            ));
        }
        if i == name {
            return Err(err(
                Some(line_of(src, inp.span().start)),
                format!("stage {name:?} lists itself as an input"),
                "remove it from inputs".into(),
            ));
        }
        inputs.push(i.clone());
    }
    inputs.sort();
    inputs.dedup();
    let (table, table_line, table_span) = match &r.params {
        Some(p) => (p.get_ref().clone(), line_of(src, p.span().start), p.span()),
        None => (toml::Table::new(), st_line, st.span()),
    };
    let params = Params::resolve(stage.params(), &table).map_err(|(key, msg)| {
        let line = key
            .as_ref()
            .and_then(|k| {
                find_key_line(src, table_span.clone(), k)
                    .or_else(|| find_key_after(src, table_line, k))
            })
            .unwrap_or(table_line);
        let valid: Vec<String> = stage.params().iter().map(|p| p.name.to_string()).collect();
        err(
            Some(line),
            format!("stage {name:?} (kind {kind}): {msg}"),
            format!("valid params of {kind}: {}", valid.join(", ")),
        )
    })?;
    stage.check_params(&params).map_err(|e| {
        err(
            Some(table_line),
            format!("stage {name:?} (kind {kind}): {e}"),
            format!("see `mg3d stages` for the params of {kind}"),
        )
    })?;
    Ok(StageSpec {
        name: name.to_string(),
        kind: kind.clone(),
        inputs,
        params,
        line: st_line,
    })
}
