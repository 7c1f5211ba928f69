//! The [`Stage`] trait, its declared parameters and inputs, and the context a run receives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::items::ItemStore;

/// The type a declared parameter must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// A TOML integer.
    Int,
    /// A number (integers are accepted and stored as floats).
    Float,
    /// `true` / `false`.
    Bool,
    /// A string.
    Str,
    /// An array of any values.
    List,
    /// A table of any values.
    Table,
}

/// The [`ParamType`] a Rust field type is declared as (see [`stage_params!`](crate::stage_params)).
pub trait ParamKind {
    /// The declared type.
    const KIND: ParamType;
}

macro_rules! param_kind {
    ($kind:ident: $($t:ty),+) => {
        $(impl ParamKind for $t {
            const KIND: ParamType = ParamType::$kind;
        })+
    };
}
param_kind!(Int: i64, i32, u64, u32, usize);
param_kind!(Float: f64, f32);
param_kind!(Bool: bool);
param_kind!(Str: String);
param_kind!(Table: Map<String, Value>);
impl<T> ParamKind for Vec<T> {
    const KIND: ParamType = ParamType::List;
}
impl<T, const N: usize> ParamKind for [T; N] {
    const KIND: ParamType = ParamType::List;
}
impl<T> ParamKind for BTreeMap<String, T> {
    const KIND: ParamType = ParamType::Table;
}

/// Declares a stage's parameters once: a typed struct (deserialized from the resolved params)
/// whose fields carry their doc (shown by `mg3d stages`) and default (a JSON value; none makes
/// the parameter required), and `defs()`, the [`ParamDef`]s the engine checks pipeline files
/// against, derived from the same fields.
///
/// ```
/// mg3d_core::stage_params! {
///     /// The `example` stage's parameters.
///     pub struct ExampleParams {
///         /// How many items.
///         count: i64 = serde_json::json!(3),
///         /// Where the inputs are (required).
///         root: String,
///     }
/// }
/// let defs = ExampleParams::defs();
/// assert_eq!(defs[0].name, "count");
/// assert_eq!(defs[1].default, None);
/// ```
#[macro_export]
macro_rules! stage_params {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                $field:ident : $ty:ty $(= $default:expr)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize)]
        $vis struct $name {
            $( $(#[doc = $doc])+ pub $field: $ty, )*
        }

        impl $name {
            /// The declared parameters, in field order: name, type, default and doc of each field.
            pub fn defs() -> Vec<$crate::stage::ParamDef> {
                vec![$(
                    $crate::stage::ParamDef {
                        name: stringify!($field),
                        ty: <$ty as $crate::stage::ParamKind>::KIND,
                        default: $crate::stage_params!(@default $($default)?),
                        doc: concat!($($doc, "\n"),+),
                    },
                )*]
            }
        }
    };
    (@default) => { None };
    (@default $d:expr) => { Some($d) };
}

/// One declared parameter of a stage kind.
#[derive(Debug, Clone)]
pub struct ParamDef {
    /// Key in `[stages.NAME.params]`.
    pub name: &'static str,
    /// Required type.
    pub ty: ParamType,
    /// Default when absent; `None` makes the param required.
    pub default: Option<Value>,
    /// Meaning, shown by `mg3d stages` (from doc comments: lines end in newlines, see
    /// [`ParamDef::summary`]).
    pub doc: &'static str,
}

impl ParamDef {
    /// The doc on one line, as `mg3d stages` shows it.
    pub fn summary(&self) -> String {
        self.doc.split_whitespace().collect::<Vec<_>>().join(" ")
    }
    /// A param with a default.
    pub fn new(name: &'static str, ty: ParamType, default: Value, doc: &'static str) -> Self {
        ParamDef {
            name,
            ty,
            default: Some(default),
            doc,
        }
    }
    /// A param the pipeline file must set.
    pub fn required(name: &'static str, ty: ParamType, doc: &'static str) -> Self {
        ParamDef {
            name,
            ty,
            default: None,
            doc,
        }
    }
}

/// An upstream stage kind a stage reads.
#[derive(Debug, Clone)]
pub struct InputDecl {
    /// Kind of the upstream stage.
    pub kind: &'static str,
    /// Whether the pipeline must provide one.
    pub required: bool,
}

/// Normalised stage params: every declared key, defaults filled, keys sorted (canonical JSON).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params(Map<String, Value>);

fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

impl Params {
    /// Checks `table` against `defs` and fills defaults. Errors give the offending key (if any) and a message.
    pub fn resolve(
        defs: Vec<ParamDef>,
        table: &toml::Table,
    ) -> Result<Params, (Option<String>, String)> {
        let mut out = Map::new();
        for (k, v) in table {
            let Some(def) = defs.iter().find(|d| d.name == k) else {
                return Err((Some(k.clone()), format!("unknown param {k:?}")));
            };
            let ok = matches!(
                (def.ty, v),
                (ParamType::Int, toml::Value::Integer(_))
                    | (
                        ParamType::Float,
                        toml::Value::Integer(_) | toml::Value::Float(_)
                    )
                    | (ParamType::Bool, toml::Value::Boolean(_))
                    | (ParamType::Str, toml::Value::String(_))
                    | (ParamType::List, toml::Value::Array(_))
                    | (ParamType::Table, toml::Value::Table(_))
            );
            if !ok {
                return Err((
                    Some(k.clone()),
                    format!("param {k:?} must be {:?}, got {}", def.ty, v.type_str()),
                ));
            }
            let j = match (def.ty, v) {
                (ParamType::Float, toml::Value::Integer(i)) => Value::from(*i as f64),
                _ => toml_to_json(v),
            };
            out.insert(k.clone(), j);
        }
        for d in &defs {
            if !out.contains_key(d.name) {
                match &d.default {
                    Some(v) => {
                        out.insert(d.name.to_string(), v.clone());
                    }
                    None => return Err((None, format!("missing required param {:?}", d.name))),
                }
            }
        }
        Ok(Params(out))
    }

    /// Builds params directly (tests, CLI commands that run a stage outside a pipeline).
    pub fn from_json(map: Map<String, Value>) -> Params {
        Params(map)
    }

    /// The canonical JSON text (sorted keys) that enters the stage key.
    pub fn canonical(&self) -> String {
        serde_json::to_string(&self.0).expect("json")
    }

    /// The params as a JSON map.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Deserialises the params into a stage's typed struct.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, StageError> {
        serde_json::from_value(Value::Object(self.0.clone())).map_err(StageError::Params)
    }
}

/// Why a stage run failed.
///
/// A stage crate's own error enum converts into [`StageError::Stage`] (each crate writes
/// `impl From<ItsError> for StageError` with [`StageError::wrap`]), so stage code returns typed
/// errors with `?` and the message and source chain reach the user unchanged.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The run was cancelled (Ctrl-C); nothing was promoted.
    #[error("cancelled")]
    Cancelled,
    /// A file operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A table could not be read or written, or breaks its contract.
    #[error(transparent)]
    Table(#[from] crate::table::TableError),
    /// The params do not fit the stage's params struct.
    #[error("invalid params: {0}")]
    Params(#[source] serde_json::Error),
    /// The stage has no input of a kind it reads.
    #[error("no input of kind {0:?}")]
    NoInput(String),
    /// A `@stage/path` param names a stage that is not an input of this stage.
    #[error("{path:?} names stage {stage:?}, which is not an input of this stage")]
    NotAnInput {
        /// The param's value.
        path: String,
        /// The stage it names.
        stage: String,
    },
    /// The stage panicked outside any single item (the panic's message may quote input data, so it
    /// is not kept).
    #[error("internal error (panic) outside any single item; please report it")]
    Panicked,
    /// A stage crate's own error, with its source chain.
    #[error(transparent)]
    Stage(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// Anything else, with its context.
    #[error("{0}")]
    Failed(String),
}

impl StageError {
    /// A failure with a message.
    pub fn msg(m: impl Into<String>) -> Self {
        StageError::Failed(m.into())
    }
    /// Wraps an error with what was being done.
    pub fn ctx(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        StageError::Failed(format!("{what}: {e}"))
    }
    /// A stage crate's own error (see [`StageError::Stage`]).
    pub fn wrap(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StageError::Stage(Box::new(e))
    }
}

/// The groups small items are stored in (see [`StageContext::map_items`]): enough for 64
/// partitions to share them evenly, few enough that a merge reads a few hundred files.
pub const ITEM_GROUPS: u32 = 256;

/// The summary key for what only this run knows (see [`Stage::run`]).
pub const THIS_RUN: &str = "this_run";

/// A stage kind: what the engine needs to validate, key and run it.
pub trait Stage: Send + Sync {
    /// Kind name used in pipeline files (`kind = "..."`).
    fn kind(&self) -> &'static str;
    /// Bump when the stage's outputs change for the same inputs and params: it reruns everywhere.
    fn code_version(&self) -> &'static str;
    /// One line describing what the stage does.
    fn describe(&self) -> &'static str;
    /// Declared params (unknown keys in a pipeline file are errors).
    fn params(&self) -> Vec<ParamDef>;
    /// Upstream kinds it reads.
    fn inputs(&self) -> Vec<InputDecl> {
        Vec::new()
    }
    /// Whether the stage reads the pipeline seed (`ctx.seed`); if so the seed enters its key, so a
    /// new seed reruns it (and what depends on it) and nothing else.
    fn uses_seed(&self) -> bool {
        false
    }
    /// Checks params beyond their types when the pipeline is parsed, before anything runs (e.g.
    /// that a rule names only known columns). The error says what is wrong and how to fix it.
    fn check_params(&self, _params: &Params) -> Result<(), StageError> {
        Ok(())
    }
    /// A digest of external sources (files outside the work dir) named by params, if any.
    /// It enters the stage key, so changed sources make the stage stale.
    fn sources_fingerprint(&self, _params: &Params) -> Result<Option<String>, StageError> {
        Ok(None)
    }
    /// The params that change a single item's result (see [`crate::items`]); `None` = all of them.
    /// Params like a row limit or a thread count should be left out, so changing them reuses items.
    fn item_params(&self) -> Option<Vec<&'static str>> {
        None
    }
    /// Whether the stage runs over items of its own that `--partition K/N` can split across
    /// processes (see [`crate::items`]): its per-item work goes through [`StageContext::items`],
    /// skipping the items [`ItemStore::owns`] says are another partition's. Whole-corpus stages
    /// (a graph, a selection, training) keep the default, and the engine refuses to partition them.
    fn partitioned(&self) -> bool {
        false
    }
    /// Does the work, writing only under `ctx.out_dir`. Returns a JSON summary (counts); what
    /// depends on how this run went rather than on the inputs (wall times, a resumed checkpoint)
    /// goes under the key [`THIS_RUN`], which the run report shows and the lockfile leaves out.
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError>;
}

/// The stage kinds a binary knows.
#[derive(Default, Clone)]
pub struct StageRegistry {
    kinds: BTreeMap<&'static str, Arc<dyn Stage>>,
}

impl StageRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a stage kind (replacing one of the same name).
    pub fn register(&mut self, stage: Arc<dyn Stage>) -> &mut Self {
        self.kinds.insert(stage.kind(), stage);
        self
    }
    /// The stage kind called `kind`.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Stage>> {
        self.kinds.get(kind)
    }
    /// Known kinds, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }
}

/// A cancellation flag shared between the engine (e.g. a Ctrl-C handler) and running stages.
#[derive(Clone, Default, Debug)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// One upstream output available to a stage.
#[derive(Debug, Clone)]
pub struct StageInput {
    /// Upstream stage name.
    pub name: String,
    /// Upstream kind.
    pub kind: String,
    /// Its promoted output directory.
    pub dir: PathBuf,
}

/// What a running stage gets from the engine.
pub struct StageContext<'a> {
    /// The stage's name in the pipeline.
    pub name: &'a str,
    /// Validated params.
    pub params: &'a Params,
    /// Upstream outputs.
    pub inputs: Vec<StageInput>,
    /// Temporary output directory; promoted atomically on success.
    pub out_dir: PathBuf,
    /// Pipeline seed.
    pub seed: u64,
    pub(crate) salt: &'a str,
    /// Thread pool for per-item parallel work.
    pub pool: &'a rayon::ThreadPool,
    pub(crate) progress: &'a MultiProgress,
    pub(crate) cancel: &'a CancelFlag,
    pub(crate) items: ItemStore,
}

impl<'a> StageContext<'a> {
    /// The output directory of the (first) input of `kind`.
    pub fn input(&self, kind: &str) -> Result<&Path, StageError> {
        self.inputs
            .iter()
            .find(|i| i.kind == kind)
            .map(|i| i.dir.as_path())
            .ok_or_else(|| StageError::NoInput(kind.to_string()))
    }
    /// Resolves a path param: `@stage/sub/path` points into an input stage's output, anything else
    /// is taken as given (relative to the current directory).
    pub fn resolve(&self, s: &str) -> Result<PathBuf, StageError> {
        match s.strip_prefix('@') {
            Some(rest) => {
                let (name, sub) = rest.split_once('/').unwrap_or((rest, ""));
                let input = self.inputs.iter().find(|i| i.name == name).ok_or_else(|| {
                    StageError::NotAnInput {
                        path: s.to_string(),
                        stage: name.to_string(),
                    }
                })?;
                Ok(input.dir.join(sub))
            }
            None => Ok(PathBuf::from(s)),
        }
    }
    /// All inputs of `kind`.
    pub fn inputs_of(&self, kind: &str) -> impl Iterator<Item = &StageInput> {
        let kind = kind.to_string();
        self.inputs.iter().filter(move |i| i.kind == kind)
    }
    /// A progress bar over `len` steps (hidden with `--quiet` or without a terminal).
    pub fn progress_bar(&self, len: u64, what: &str) -> ProgressBar {
        let pb = self.progress.add(ProgressBar::new(len));
        pb.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({eta})")
                .unwrap()
                .progress_chars("=> "),
        );
        pb.set_prefix(self.name.to_string());
        pb.set_message(what.to_string());
        pb
    }
    /// Returns `Err(Cancelled)` once cancellation was requested; call between items.
    pub fn check_cancelled(&self) -> Result<(), StageError> {
        if self.cancel.is_cancelled() {
            Err(StageError::Cancelled)
        } else {
            Ok(())
        }
    }
    /// Keyed pseudonym for a source identifier (see [`crate::ids`]).
    pub fn pseudonym(&self, namespace: &str, source_id: &str) -> String {
        crate::ids::pseudonym(self.salt, namespace, source_id)
    }
    /// The per-item store of this stage (see [`crate::items`]).
    pub fn items(&self) -> &ItemStore {
        &self.items
    }
    /// Whether this is a partition run (`--partition K/N`): its outputs are thrown away, only the
    /// items it puts in the store count.
    pub fn is_partition(&self) -> bool {
        self.items.partition().is_some()
    }
    /// Maps small items through the store, in parallel with a progress bar and cancellation
    /// checks: each item `i` has `id_digest(i)` = (item id, digest of everything its result
    /// depends on). Items are stored in [`ITEM_GROUPS`] groups by a keyed hash of their id (one
    /// bincode file per group, keyed by its items' ids and digests): a report costs microseconds, a
    /// file per report would cost more than the work. A group is found in the store or made by
    /// `make` on each of its items; a changed item remakes its group. Items of groups another
    /// partition owns are `None` (outside a partition run, none is).
    pub fn map_items<I, T>(
        &self,
        items: &[I],
        what: &str,
        id_digest: impl Fn(&I) -> (String, String) + Sync,
        make: impl Fn(&I) -> Result<T, StageError> + Sync,
    ) -> Result<Vec<Option<T>>, StageError>
    where
        I: Sync,
        T: Send + Serialize + DeserializeOwned,
    {
        use rayon::prelude::*;
        let keys: Vec<(String, String)> = items.par_iter().map(&id_digest).collect();
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); ITEM_GROUPS as usize];
        for (i, (id, _)) in keys.iter().enumerate() {
            groups[self.items.group_of(id, ITEM_GROUPS) as usize].push(i);
        }
        let pb = self.progress_bar(items.len() as u64, what);
        let done: Vec<Result<Option<Vec<T>>, StageError>> = groups
            .par_iter()
            .enumerate()
            .map(|(g, members)| {
                self.check_cancelled()?;
                let n = members.len() as u64;
                let id = format!("group-{g:03}");
                if members.is_empty() || !self.items.owns_group(&id, n) {
                    return Ok(None);
                }
                let mut h = blake3::Hasher::new();
                for &i in members {
                    for part in [&keys[i].0, &keys[i].1] {
                        h.update(part.as_bytes());
                        h.update(&[0]);
                    }
                }
                let key = self.items.key(&id, &h.finalize().to_hex());
                let values = self.items.get_or_make_group(&key, n, || {
                    members.iter().map(|&i| make(&items[i])).collect()
                })?;
                pb.inc(n);
                Ok(Some(values))
            })
            .collect();
        let mut out: Vec<Option<T>> = std::iter::repeat_with(|| None).take(items.len()).collect();
        for (members, values) in groups.iter().zip(done) {
            for (&i, v) in members.iter().zip(values?.into_iter().flatten()) {
                out[i] = Some(v);
            }
        }
        pb.finish_and_clear();
        Ok(out)
    }
}
