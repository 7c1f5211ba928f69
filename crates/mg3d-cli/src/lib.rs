//! The `mg3d` command: run declarative pipelines, show what is stale and why, check tables, make
//! synthetic data.
//!
//! Two binaries share this library. `mg3d` does not link libtorch, so the commands that do not
//! need it start in milliseconds instead of the 0.3 s and 0.45 GB that loading libtorch costs;
//! a command that needs it (a pipeline with a `train` or `eval` stage, `export-encoder`,
//! `doctor`, `stages`, the train benchmark) is handed, with the same arguments, to `mg3d-torch`
//! beside it, which brings the libtorch parts through [`Torch`].
//!
//! Exit codes: 0 success; 1 a stage or command failed; 2 invalid command line or pipeline file;
//! 3 `schema check` found a mismatch; 130 cancelled with Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

/// mimalloc instead of glibc malloc (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod bench_partition;
mod describe;
pub mod scans;
mod slurm;

pub use bench::row as bench_row;
use clap::{Args, Parser, Subcommand};
use mg3d_core::engine::{EngineError, StageState};
use mg3d_core::table::TableSchema;
use mg3d_core::{Engine, Pipeline, RunOptions, StageRegistry};

#[derive(Parser)]
#[command(
    name = "mg3d",
    version,
    about = "Curated, reproducible CT + report corpora and MG-3D pre-training"
)]
struct Cli {
    /// Only warnings and errors; no progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the stale stages of a pipeline (or the selected ones).
    Run(RunArgs),
    /// Write the pipeline as Slurm batch jobs: a job array (`--partition auto`) and a merge job per
    /// partitioned stage, one job per other stage, chained by `--dependency=afterok`; prints the
    /// sbatch lines (`--submit` runs them).
    Slurm(SlurmArgs),
    /// Score the entity extractor on annotated reports (tests/report-eval/*.jsonl): micro-F1 of
    /// "present" over the 18 CT-RATE labels, per-label F1, uncertain-only findings found.
    ReportEval {
        /// Annotated report files (JSON lines).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also list every disagreement with the mentions behind it.
        #[arg(long)]
        errors: bool,
    },
    /// Show each stage as fresh, stale or missing, with the reasons.
    Status {
        /// Pipeline file (default: pipelines/demo.toml, or the copy built into mg3d).
        pipeline: Option<PathBuf>,
        /// Check outputs by content hash.
        #[arg(long)]
        verify: bool,
        /// Override the pipeline's work_dir.
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// SQL (polars) over every table the pipeline's stages wrote, by file stem: `volumes`,
    /// `entities`, `edges`, `corpus`, ... (also `<stage>_<stem>`).
    Query(QueryArgs),
    /// Write a trained image encoder in MONAI's SwinViT layout (SwinUNETR checkpoints' `swinViT.*`).
    ExportEncoder(ExportEncoderArgs),
    /// Image features of scans (DICOM series folders, NIfTI files) from a trained model, through
    /// the same ingest, preprocess and shard code as the pipeline (Parquet or safetensors).
    Embed(scans::EmbedArgs),
    /// Zero-shot label probabilities and the nearest training reports of scans, from an eval
    /// stage's output.
    Predict(scans::PredictArgs),
    /// List the stage kinds and their params.
    Stages,
    /// What a DICOM file, DICOM series folder or NIfTI file holds (JSON).
    Inspect {
        /// File or folder.
        path: PathBuf,
    },
    /// Print the input paths behind `path_ref`s of ingest rejects (rejects tables never hold
    /// paths, since folder and file names can identify patients). Prints to the terminal only.
    Locate {
        /// Pipeline file.
        pipeline: PathBuf,
        /// path_ref values from a rejects table.
        #[arg(required = true)]
        refs: Vec<String>,
    },
    /// Describe the runtime: libtorch (CUDA, threads), the Python reference environment.
    Doctor,
    /// Benchmarks: synthetic corpus generation, output hashing, table writing (use a release build).
    Bench {
        /// Patients for the generation benchmark.
        #[arg(long, default_value_t = 20)]
        patients: u32,
        /// Report-only rows for the text-stage benchmark.
        #[arg(long, default_value_t = 50_000)]
        reports: u32,
        /// Items (tiny volumes and reports) of the partition simulation.
        #[arg(long, default_value_t = 100_000)]
        items: u32,
        /// Run only these sections (synth, volumes, text, shards, train, hash, table; and
        /// partition, the 100,000-item simulation, only when named); default all but partition.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Table contracts (schemas/).
    Schema {
        #[command(subcommand)]
        cmd: SchemaCmd,
    },
    /// Write a synthetic chest-CT corpus with ground truth.
    Synth(SynthArgs),
}

#[derive(Subcommand)]
enum SchemaCmd {
    /// Check a Parquet file against its table contract (from its metadata, or its file name).
    Check {
        /// The Parquet file.
        file: PathBuf,
        /// Table name, when the file does not say.
        #[arg(long)]
        table: Option<String>,
    },
    /// List the table contracts.
    List,
    /// Show one table contract.
    Show {
        /// Table name.
        table: String,
    },
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn parse_range(s: &str) -> Result<[f64; 2], String> {
    let (a, b) = s.split_once(',').ok_or("expected MIN,MAX")?;
    let p = |x: &str| x.trim().parse::<f64>().map_err(|e| format!("{x:?}: {e}"));
    Ok([p(a)?, p(b)?])
}

/// What only the libtorch binary (`mg3d-torch`) brings.
pub trait Torch {
    /// Registers the stage kinds that run on libtorch.
    fn register(&self, registry: &mut StageRegistry);
    /// `mg3d export-encoder`: writes the encoder of a train output in MONAI's SwinViT layout and
    /// says what it wrote.
    fn export_encoder(&self, train_dir: &Path, out: &Path, prefix: &str) -> Result<String>;
    /// libtorch's version, devices and threads (`mg3d doctor`).
    fn describe(&self) -> serde_json::Value;
    /// `mg3d embed`: writes the features of the scans; says what it wrote. `salt` keys the ids.
    fn embed(&self, a: &scans::EmbedArgs, salt: &str, quiet: bool) -> Result<String>;
    /// `mg3d predict`: prints (and with `--out` writes) the predictions for the scans.
    fn predict(&self, a: &scans::PredictArgs, salt: &str, json: bool) -> Result<()>;
    /// The train section of `mg3d bench` (rows through [`bench_row`]).
    fn bench_train(&self, json: bool) -> Result<()>;
}

/// Replaces this process by `mg3d-torch` (beside this binary, or else on `PATH`) with the same
/// arguments, for `what`, which needs libtorch.
fn hand_to_torch(what: &str) -> Fail {
    let exe = std::env::current_exe().unwrap_or_default();
    let beside = exe.with_file_name("mg3d-torch");
    let on_path = || {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("mg3d-torch"))
                .find(|f| f.is_file())
        })
    };
    let Some(torch) = Some(beside.clone())
        .filter(|f| f.is_file())
        .or_else(on_path)
    else {
        return Fail(
            2,
            anyhow::anyhow!(
                "{what} needs libtorch, which {} does not load, and mg3d-torch is neither at {} nor on PATH: install both binaries side by side",
                exe.display(),
                beside.display()
            ),
        );
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "mg3d".into());
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&torch)
        .arg0(arg0)
        .args(args)
        .exec();
    Fail(1, anyhow::anyhow!("running {}: {err}", torch.display()))
}

/// The stage kinds and commands a binary has: all but the libtorch ones in `mg3d`, all in
/// `mg3d-torch`.
struct App<'a> {
    reg: StageRegistry,
    torch: Option<&'a dyn Torch>,
}

impl<'a> App<'a> {
    fn new(torch: Option<&'a dyn Torch>) -> Self {
        let mut reg = registry();
        if let Some(t) = torch {
            t.register(&mut reg);
        }
        App { reg, torch }
    }

    /// The libtorch parts, or (in `mg3d`) the command handed to `mg3d-torch`.
    fn torch(&self, what: &str) -> Result<&'a dyn Torch, Fail> {
        self.torch.ok_or_else(|| hand_to_torch(what))
    }

    /// Loads a pipeline (default: pipelines/demo.toml, or the copy built in); one with a stage
    /// kind only `mg3d-torch` knows is handed to it.
    fn load(&self, path: Option<PathBuf>, work_dir: Option<PathBuf>) -> Result<Pipeline, Fail> {
        let reg = &self.reg;
        let default = Path::new("pipelines/demo.toml");
        let mut p = match path {
            Some(path) => Pipeline::load(&path, reg),
            None if default.exists() => Pipeline::load(default, reg),
            None => Pipeline::parse(Path::new("demo.toml (built into mg3d)"), EMBEDDED_DEMO, reg),
        }
        .map_err(|e| match &e.unknown_kind {
            Some(kind) if self.torch.is_none() => hand_to_torch(&format!("stage kind {kind:?}")),
            _ => Fail(2, e.into()),
        })?;
        if let Some(w) = work_dir {
            p.work_dir = w;
        }
        Ok(p)
    }
}

/// The stage kinds that do not need libtorch.
fn registry() -> StageRegistry {
    let mut r = StageRegistry::new();
    r.register(Arc::new(mg3d_synth::SynthStage));
    r.register(Arc::new(mg3d_ingest::ingest::IngestStage));
    r.register(Arc::new(mg3d_ingest::preprocess::PreprocessStage));
    r.register(Arc::new(mg3d_report::reports::ReportsStage));
    r.register(Arc::new(mg3d_report::entities_stage::EntitiesStage));
    r.register(Arc::new(mg3d_report::tokens::TokensStage));
    r.register(Arc::new(mg3d_graph::GraphStage));
    r.register(Arc::new(mg3d_curate::CurateStage));
    r.register(Arc::new(mg3d_shard::ShardsStage));
    r.register(Arc::new(mg3d_qc::QcStage));
    r
}

/// An error with the exit code it maps to.
struct Fail(u8, anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(1, e.into())
    }
}

/// The demo pipeline, built in so `mg3d run` works from any directory.
const EMBEDDED_DEMO: &str = include_str!("../../../pipelines/demo.toml");

/// Runs the command line; `torch` is `None` in the `mg3d` binary (see the crate docs).
pub fn main(torch: Option<&dyn Torch>) -> ExitCode {
    // A panic's message can quote what was being parsed (a report's text, a file name): the log
    // gets only where it happened unless MG3D_PANIC_DETAIL=1 asks for the message.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if std::env::var_os("MG3D_PANIC_DETAIL").is_some_and(|v| v == "1") {
            eprintln!("internal error at {at}: {info}");
        } else {
            eprintln!(
                "internal error at {at} (message withheld, it may quote input data; MG3D_PANIC_DETAIL=1 shows it)"
            );
        }
    }));
    let cli = Cli::parse();
    let level = if cli.quiet { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a log written to a file or a pipe stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    match run(cli, &App::new(torch)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, e)) => {
            eprintln!("error: {}", chain_text(&e));
            ExitCode::from(code)
        }
    }
}

/// An error and its causes, joined with ": " as anyhow's `{:#}` does, but leaving out a cause
/// whose text the error before it already shows: the libraries' typed errors both name their
/// source in their message and keep it as `source()`.
fn chain_text(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    let mut prev = out.clone();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !prev.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        prev = text;
    }
    out
}

/// The arguments of `mg3d run` (see [`Cmd`]).
#[derive(Args)]
struct RunArgs {
    /// Pipeline file (default: pipelines/demo.toml, or the copy built into mg3d).
    pipeline: Option<PathBuf>,
    /// Run only this stage (always), against its inputs' current outputs.
    #[arg(long, conflicts_with = "from")]
    stage: Option<String>,
    /// Rerun this stage and everything downstream of it.
    #[arg(long)]
    from: Option<String>,
    /// Rerun the selected stages even if fresh.
    #[arg(long)]
    force: bool,
    /// Show what would run and why; run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Check outputs by content hash, not only by name and size.
    #[arg(long)]
    verify: bool,
    /// Override the pipeline's work_dir.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// With --stage: compute only partition K of N of the stage's items into the shared item
    /// store (K/N, or `auto` inside a Slurm job array or a Kubernetes indexed Job); a later run
    /// without --partition merges them.
    #[arg(long, requires = "stage", value_name = "K/N|auto")]
    partition: Option<String>,
}

/// The arguments of `mg3d slurm` (see [`Cmd`]).
#[derive(Args)]
struct SlurmArgs {
    /// Pipeline file.
    pipeline: PathBuf,
    /// Array tasks per partitioned stage.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Only these stages (comma-separated); inputs outside them must already have outputs.
    #[arg(long, value_delimiter = ',')]
    stages: Vec<String>,
    /// `#SBATCH` options for every job, e.g. "--partition=cpu --cpus-per-task=4 --mem=16G".
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    sbatch_args: String,
    /// `#SBATCH` options for one stage, as STAGE=OPTIONS (repeatable), e.g.
    /// train="--gres=gpu:1 --time=2-00:00:00".
    #[arg(
        long = "stage-args",
        value_name = "STAGE=OPTIONS",
        allow_hyphen_values = true
    )]
    stage_args: Vec<String>,
    /// Directory for the scripts and job logs (default: WORK/.slurm).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override the pipeline's work_dir (it must be on a file system every node shares).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Submit the jobs now (runs the written submit.sh).
    #[arg(long)]
    submit: bool,
}

/// The arguments of `mg3d query` (see [`Cmd`]).
#[derive(Args)]
struct QueryArgs {
    /// Pipeline file.
    pipeline: PathBuf,
    /// The query, e.g. "SELECT label, count(*) FROM labels WHERE value = 1 GROUP BY label".
    sql: String,
    /// Write the result to FILE.parquet or FILE.csv instead of printing it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rows to print.
    #[arg(long, default_value_t = 25)]
    limit: usize,
    /// Override the pipeline's work_dir.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// The arguments of `mg3d exportencoder` (see [`Cmd`]).
#[derive(Args)]
struct ExportEncoderArgs {
    /// The train stage's output directory (e.g. work/demo/train).
    train_dir: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Name prefix in the output ("" for a bare SwinViT state dict).
    #[arg(long, default_value = "swinViT.")]
    prefix: String,
}

/// The arguments of `mg3d synth` (see [`Cmd`]).
#[derive(Args)]
struct SynthArgs {
    /// Number of patients.
    #[arg(long, default_value_t = 20)]
    patients: u32,
    /// Seed (same seed, same bytes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (created; must be empty or absent).
    #[arg(long)]
    out: PathBuf,
    /// Also write the fault cases with their expected reject reasons.
    #[arg(long)]
    faults: bool,
    /// Body width range in mm, "MIN,MAX" (adults 280-360; smaller is faster).
    #[arg(long, value_parser = parse_range)]
    body_width_mm: Option<[f64; 2]>,
    /// Scanned length range in mm, "MIN,MAX".
    #[arg(long, value_parser = parse_range)]
    z_extent_mm: Option<[f64; 2]>,
    /// In-plane spacing range in mm, "MIN,MAX".
    #[arg(long, value_parser = parse_range)]
    in_plane_spacing_mm: Option<[f64; 2]>,
    /// Slice spacing range in mm, "MIN,MAX".
    #[arg(long, value_parser = parse_range)]
    slice_spacing_mm: Option<[f64; 2]>,
    /// Share of patients written as DICOM.
    #[arg(long)]
    dicom_fraction: Option<f64>,
    /// Prevalence of each drawn finding.
    #[arg(long)]
    prevalence: Option<f64>,
    /// Report template file (default: the embedded configs/synth/reports.toml).
    #[arg(long)]
    templates: Option<PathBuf>,
    /// Write only a CT-RATE-format reports CSV of this many rows (`OUT/reports.csv`), no volumes
    /// (text benchmarks).
    #[arg(long)]
    reports_only: Option<u32>,
}

/// `mg3d report-eval`.
fn cmd_report_eval(files: &[PathBuf], errors: bool, json: bool) -> Result<(), Fail> {
    use mg3d_report::evalset;
    let mut reports = Vec::new();
    for f in files {
        reports.extend(evalset::load(f).map_err(|e| Fail(2, e.into()))?);
    }
    let s = evalset::score(
        &mg3d_report::entities::Extractor::default_config(),
        &reports,
    );
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    if errors {
        for e in &s.errors {
            println!("{e}");
        }
    }
    println!(
        "{} reports: present micro-F1 {:.3} (precision {:.3}, recall {:.3}); uncertain-only found as uncertain {}/{}",
        s.reports, s.micro_f1, s.precision, s.recall, s.uncertain_found, s.uncertain_only
    );
    for (label, c) in &s.per_label {
        println!(
            "  {label:<36} F1 {:.3}  positives {:>3}  tp {:>3} fp {:>3} fn {:>3}",
            c.f1, c.positives, c.tp, c.fp, c.fn_
        );
    }
    Ok(())
}

/// `mg3d slurm`.
fn cmd_slurm(app: &App, json: bool, a: SlurmArgs) -> Result<(), Fail> {
    let p = app.load(Some(a.pipeline), a.work_dir)?;
    let stage_args = a
        .stage_args
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Fail(2, anyhow::anyhow!("--stage-args {s:?}: give STAGE=OPTIONS")))
        })
        .collect::<Result<Vec<_>, Fail>>()?;
    let plan = slurm::SlurmPlan {
        pipeline: &p,
        partitions: a.partitions,
        stages: a.stages,
        sbatch_args: a.sbatch_args,
        stage_args,
        out: a.out.unwrap_or_else(|| p.work_dir.join(".slurm")),
    };
    let (submit, lines) = slurm::write_plan(&app.reg, &plan).map_err(|e| Fail(2, e))?;
    if !a.submit {
        if json {
            println!("{}", serde_json::json!({"submit": submit, "sbatch": lines}));
        } else {
            println!(
                "# jobs written; submit them with: bash {}",
                submit.display()
            );
            println!("# which runs, in order (each $NAME is the job id sbatch printed):");
            for l in &lines {
                println!("{l}");
            }
        }
        return Ok(());
    }
    let o = std::process::Command::new("bash")
        .arg(&submit)
        .output()
        .map_err(|e| Fail(1, anyhow::anyhow!("running {}: {e}", submit.display())))?;
    if !o.status.success() {
        return Err(Fail(
            1,
            anyhow::anyhow!(
                "{} failed: {}{}",
                submit.display(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ));
    }
    let jobs: Vec<(String, String)> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    if json {
        let map: serde_json::Map<String, serde_json::Value> =
            jobs.into_iter().map(|(k, v)| (k, v.into())).collect();
        println!("{}", serde_json::json!({"submit": submit, "jobs": map}));
    } else {
        for (name, id) in jobs {
            println!("{name:<24} job {id}");
        }
    }
    Ok(())
}

/// `mg3d run`.
fn cmd_run(app: &App, quiet: bool, json: bool, a: RunArgs) -> Result<(), Fail> {
    let RunArgs {
        pipeline,
        stage,
        from,
        force,
        dry_run,
        verify,
        work_dir,
        partition,
    } = a;
    let partition = partition
        .map(|s| mg3d_core::items::Partition::parse(&s, |k| std::env::var(k).ok()))
        .transpose()
        .map_err(|e| Fail(2, anyhow::anyhow!(e)))?;
    let p = app.load(pipeline, work_dir)?;
    let engine = Engine::new(&app.reg);
    let flag = engine.cancel_flag();
    let _ = ctrlc::set_handler(move || {
        eprintln!(
            "cancelling: the running stage stops at its next item; outputs stay as they were"
        );
        flag.cancel();
    });
    let opts = RunOptions {
        only: stage,
        from,
        force,
        dry_run,
        quiet: quiet || json,
        verify,
        partition,
    };
    let t0 = Instant::now();
    let report = engine.run(&p, &opts).map_err(|e| match e {
        EngineError::Usage(_) => Fail(2, e.into()),
        EngineError::Stage {
            source: mg3d_core::StageError::Cancelled,
            ..
        } => Fail(130, e.into()),
        e => Fail(1, e.into()),
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for s in &report.stages {
            match s.action.as_str() {
                "ran" => println!(
                    "{:<12} ran in {:.1}s ({})  {}",
                    s.name,
                    s.seconds,
                    s.reasons.join("; "),
                    s.summary
                ),
                "would-run" => {
                    println!("{:<12} would run: {}", s.name, s.reasons.join("; "))
                }
                a if a.starts_with("partition") => println!(
                    "{:<12} {a} done in {:.1}s  {}",
                    s.name, s.seconds, s.summary
                ),
                _ => println!("{:<12} fresh", s.name),
            }
        }
        println!(
            "pipeline {} done in {:.1}s; outputs in {}",
            p.name,
            t0.elapsed().as_secs_f64(),
            p.work_dir.display()
        );
    }
    Ok(())
}

/// `mg3d status`.
fn cmd_status(
    app: &App,
    json: bool,
    pipeline: Option<PathBuf>,
    verify: bool,
    work_dir: Option<PathBuf>,
) -> Result<(), Fail> {
    let p = app.load(pipeline, work_dir)?;
    let st = Engine::new(&app.reg).status(&p, verify)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    for s in &st {
        let state = match s.state {
            StageState::Fresh => "fresh",
            StageState::Stale => "stale",
            StageState::Missing => "missing",
        };
        let mut why = s.reasons.join("; ");
        if let Some(items) = &s.items {
            why = format!("{why}; {items}");
        }
        println!("{:<12} {:<8} {why}", s.name, state);
    }
    Ok(())
}

/// `mg3d query`.
fn cmd_query(app: &App, quiet: bool, json: bool, a: QueryArgs) -> Result<(), Fail> {
    let QueryArgs {
        pipeline,
        sql,
        out,
        limit,
        work_dir,
    } = a;
    let p = app.load(Some(pipeline), work_dir)?;
    let names: Vec<String> = p.stages.iter().map(|s| s.name.clone()).collect();
    let tables = mg3d_curate::query::tables(&p.work_dir, &names);
    if tables.is_empty() {
        return Err(Fail(
            1,
            anyhow::anyhow!(
                "no tables under {}: run the pipeline first (mg3d run {})",
                p.work_dir.display(),
                p.file.display()
            ),
        ));
    }
    let mut df = mg3d_curate::query::query(&tables, &sql)?;
    match out {
        Some(path) => {
            mg3d_curate::query::write_result(&mut df, &path)?;
            if !quiet {
                println!("{} rows -> {}", df.height(), path.display());
            }
        }
        None if json => {
            for line in mg3d_curate::query::json_lines(&df)? {
                println!("{line}");
            }
        }
        None => {
            // SAFETY: set before polars formats anything; no other thread reads the
            // environment at this point of the command.
            unsafe {
                std::env::set_var("POLARS_FMT_MAX_ROWS", limit.to_string());
                std::env::set_var("POLARS_FMT_STR_LEN", "60");
                std::env::set_var("POLARS_FMT_MAX_COLS", "20");
            }
            println!("{}", df.head(Some(limit)));
            if df.height() > limit {
                println!(
                    "({} rows; showing {limit}, use --limit or --out)",
                    df.height()
                );
            }
        }
    }
    Ok(())
}

/// `mg3d synth`.
fn cmd_synth(json: bool, a: SynthArgs) -> Result<(), Fail> {
    let SynthArgs {
        patients,
        seed,
        out,
        faults,
        body_width_mm,
        z_extent_mm,
        in_plane_spacing_mm,
        slice_spacing_mm,
        dicom_fraction,
        prevalence,
        templates,
        reports_only,
    } = a;
    let mut cfg = mg3d_synth::SynthConfig {
        patients,
        seed,
        faults,
        ..Default::default()
    };
    if let Some(v) = body_width_mm {
        cfg.body_width_mm = v;
    }
    if let Some(v) = z_extent_mm {
        cfg.z_extent_mm = v;
    }
    if let Some(v) = in_plane_spacing_mm {
        cfg.in_plane_spacing_mm = v;
    }
    if let Some(v) = slice_spacing_mm {
        cfg.slice_spacing_mm = v;
    }
    if let Some(v) = dicom_fraction {
        cfg.dicom_fraction = v;
    }
    if let Some(v) = prevalence {
        cfg.prevalence = v;
    }
    let text = match &templates {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading templates {}", p.display()))?,
        None => mg3d_synth::report::DEFAULT_TEMPLATES.to_string(),
    };
    let t = mg3d_synth::report::Templates::parse(&text)
        .map_err(|e| Fail(2, anyhow::anyhow!("templates: {e}")))?;
    if out.exists() && std::fs::read_dir(&out)?.next().is_some() {
        return Err(Fail(
            2,
            anyhow::anyhow!(
                "{} is not empty; choose a new --out directory",
                out.display()
            ),
        ));
    }
    std::fs::create_dir_all(&out)?;
    if let Some(n) = reports_only {
        mg3d_synth::write_reports_only(n, seed, &t, &out.join("reports.csv"))
            .map_err(|e| Fail(1, e.into()))?;
        println!("wrote {n} reports to {}", out.join("reports.csv").display());
        return Ok(());
    }
    let t0 = Instant::now();
    let s = mg3d_synth::generate(&cfg, &t, &out).map_err(|e| Fail(1, e.into()))?;
    let secs = t0.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({"summary": s, "seconds": secs, "patients_per_second": s.patients as f64 / secs})
        );
    } else {
        println!(
            "wrote {} patients ({} volumes: {} DICOM series / {} files, {} NIfTI; {} faults) to {} in {:.1}s ({:.2} patients/s, {:.1} Mvoxel/s)",
            s.patients,
            s.volumes,
            s.dicom_series,
            s.dicom_files,
            s.nifti_files,
            s.faults,
            out.display(),
            secs,
            s.patients as f64 / secs,
            s.voxels as f64 / 1e6 / secs
        );
    }
    Ok(())
}

fn run(cli: Cli, app: &App) -> Result<(), Fail> {
    let reg = &app.reg;
    match cli.cmd {
        Cmd::Run(a) => cmd_run(app, cli.quiet, cli.json, a)?,
        Cmd::Status {
            pipeline,
            verify,
            work_dir,
        } => cmd_status(app, cli.json, pipeline, verify, work_dir)?,
        Cmd::Query(a) => cmd_query(app, cli.quiet, cli.json, a)?,
        Cmd::ReportEval { files, errors } => cmd_report_eval(&files, errors, cli.json)?,
        Cmd::Slurm(a) => cmd_slurm(app, cli.json, a)?,
        Cmd::ExportEncoder(a) => {
            let done =
                app.torch("export-encoder")?
                    .export_encoder(&a.train_dir, &a.out, &a.prefix)?;
            if !cli.quiet {
                println!("{done}");
            }
        }
        Cmd::Embed(a) => {
            let torch = app.torch("embed")?;
            let done = torch.embed(&a, &scans::salt(&a.scans, reg)?, cli.quiet)?;
            if !cli.quiet {
                println!("{done}");
            }
        }
        Cmd::Predict(a) => {
            let torch = app.torch("predict")?;
            torch.predict(&a, &scans::salt(&a.scans, reg)?, cli.json)?;
        }
        Cmd::Stages => {
            app.torch("listing every stage kind")?;
            describe::cmd_stages(reg)
        }
        Cmd::Inspect { path } => match mg3d_ingest::inspect::inspect(&path) {
            Ok(v) => println!(
                "{}",
                if cli.json {
                    serde_json::to_string(&v)?
                } else {
                    serde_json::to_string_pretty(&v)?
                }
            ),
            Err(r) => {
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({"error": r.code, "message": r.message})
                    );
                }
                return Err(Fail(1, anyhow::anyhow!("{}: {}", r.code, r.message)));
            }
        },
        Cmd::Locate { pipeline, refs } => {
            let p = app.load(Some(pipeline), None)?;
            let resolve = |r: &str| match r.strip_prefix('@') {
                Some(rest) => p.work_dir.join(rest),
                None => PathBuf::from(r),
            };
            let mut found = 0;
            for spec in p.stages.iter().filter(|s| s.kind == "ingest") {
                let hits = mg3d_ingest::ingest::locate(&spec.params, &p.salt, resolve, &refs)
                    .map_err(|e| Fail(1, e.into()))?;
                for (r, path) in hits {
                    println!("{r}\t{}", path.display());
                    found += 1;
                }
            }
            if found == 0 {
                return Err(Fail(
                    1,
                    anyhow::anyhow!("no input under the ingest roots has these refs"),
                ));
            }
        }
        Cmd::Doctor => {
            let py = Path::new(".venv/bin/python");
            let report = serde_json::json!({
                "mg3d": env!("CARGO_PKG_VERSION"),
                "libtorch": app.torch("doctor")?.describe(),
                "rayon_threads": rayon_threads(),
                "python_venv": py.exists(),
                "stage_kinds": reg.kinds(),
                "tables": TableSchema::names(),
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Cmd::Bench {
            patients,
            reports,
            items,
            only,
        } => {
            let others: Vec<String> = only.iter().filter(|o| *o != "partition").cloned().collect();
            if only.is_empty() || !others.is_empty() {
                let train = match others.is_empty() || others.iter().any(|o| o == "train") {
                    true => Some(app.torch("the train benchmark")?),
                    false => None,
                };
                bench::run(patients, reports, &others, cli.json, reg, train)?;
            }
            // Partitions and merges at scale: minutes, so only when named.
            if only.iter().any(|o| o == "partition") {
                let dir = tempfile::tempdir()?;
                bench_partition::bench_partition(dir.path(), items, cli.json, reg)?;
            }
        }
        Cmd::Schema { cmd } => describe::cmd_schema(cmd, cli.json)?,
        Cmd::Synth(a) => cmd_synth(cli.json, a)?,
    }
    Ok(())
}
