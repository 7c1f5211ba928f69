//! `mg3d bench`: throughput of the pieces that exist, measured in one run on this machine.
//! Numbers are printed, never asserted; use a release build (`make bench`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use mg3d_core::table::{TableSchema, TableWriter};

/// Samples the process' resident set size every 5 ms on a thread (Linux /proc).
struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
    base: u64,
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

impl RssSampler {
    fn start() -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let base = rss_bytes();
        let handle = std::thread::spawn(move || {
            let mut peak = rss_bytes();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_bytes());
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            peak.max(rss_bytes())
        });
        RssSampler { stop, handle, base }
    }
    /// (RSS at start, peak RSS) in bytes.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (self.base, self.handle.join().unwrap_or(0))
    }
}

/// Runs a pipeline given as TOML text, quietly.
fn run_quiet(text: &str, registry: &mg3d_core::StageRegistry) -> Result<mg3d_core::RunReport> {
    let p = mg3d_core::Pipeline::parse(Path::new("bench.toml"), text, registry)?;
    let opts = mg3d_core::RunOptions {
        quiet: true,
        ..Default::default()
    };
    Ok(mg3d_core::Engine::new(registry).run(&p, &opts)?)
}

/// Prints one measurement (a JSON line with `--json`).
pub fn row(name: &str, value: f64, unit: &str, note: &str, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({"bench": name, "value": value, "unit": unit, "note": note})
        );
    } else {
        println!("{name:<28} {value:>12.2} {unit:<14} {note}");
    }
}

/// The synthetic corpus at the demo size: patients and voxels per second.
fn bench_synth(
    cfg: &mg3d_synth::SynthConfig,
    t: &mg3d_synth::report::Templates,
    out: &Path,
    json: bool,
) -> Result<()> {
    let t0 = Instant::now();
    let s = mg3d_synth::generate(cfg, t, out)?;
    let secs = t0.elapsed().as_secs_f64();
    row(
        "synth.patients_per_s",
        s.patients as f64 / secs,
        "patients/s",
        &format!("{} patients, demo phantom size", s.patients),
        json,
    );
    row(
        "synth.mvoxel_per_s",
        s.voxels as f64 / 1e6 / secs,
        "Mvoxel/s",
        "rendered + written (DICOM/NIfTI)",
        json,
    );
    Ok(())
}

/// Ingest + preprocess (demo preset) on the corpus, 1 and 2 threads, cold item caches.
fn bench_volumes(
    dir: &Path,
    out: &Path,
    json: bool,
    registry: &mg3d_core::StageRegistry,
) -> Result<()> {
    for threads in [1, 2] {
        let work = dir.join(format!("work{threads}"));
        let text = format!(
            "[pipeline]\nname = \"bench\"\nwork_dir = \"{}\"\nsalt = \"bench-salt-0123456789\"\nthreads = {threads}\n\
             [stages.ingest]\nkind = \"ingest\"\nparams = {{ dicom_roots = [\"{d}/dicom\"], nifti_roots = [\"{d}/nifti\"], ctrate_metadata = [\"{d}/metadata/train_metadata.csv\"] }}\n\
             [stages.preprocess]\nkind = \"preprocess\"\ninputs = [\"ingest\"]\nparams = {{ preset = \"demo\" }}\n",
            work.display(),
            d = out.display()
        );
        let report = run_quiet(&text, registry)?;
        let vols = report.stages[0].summary["volumes"].as_f64().unwrap_or(0.0);
        let (ti, tp) = (report.stages[0].seconds, report.stages[1].seconds);
        row(
            &format!("ingest.volumes_per_s.t{threads}"),
            vols / ti,
            "volumes/s",
            &format!("{vols} volumes, {threads} thread(s)"),
            json,
        );
        row(
            &format!("preprocess.volumes_per_s.t{threads}"),
            vols / tp,
            "volumes/s",
            &format!("demo preset, {threads} thread(s)"),
            json,
        );
        row(
            &format!("ingest+preprocess.vol_per_s.t{threads}"),
            vols / (ti + tp),
            "volumes/s",
            "both stages",
            json,
        );
    }
    Ok(())
}

/// The report stages, then the graph with its peak memory, on the demo corpus' reports (`n` = 0) or on `n` report-only rows.
fn bench_text(
    run: (&str, u32),
    dir: &Path,
    out: &Path,
    t: &mg3d_synth::report::Templates,
    json: bool,
    registry: &mg3d_core::StageRegistry,
) -> Result<()> {
    let (name, n) = run;
    let tok = Path::new(".venv/minilm");
    let csv = if n == 0 {
        out.join("reports/train_reports.csv")
    } else {
        let p = dir.join("reports_only.csv");
        mg3d_synth::write_reports_only(n, 7, t, &p)?;
        p
    };
    let work = dir.join(format!("text-{name}"));
    let tokens = if tok.join("tokenizer.json").exists() {
        format!(
            "[stages.tokens]\nkind = \"tokens\"\ninputs = [\"reports\"]\nparams = {{ tokenizer = \"{}\" }}\n",
            tok.display()
        )
    } else {
        String::new()
    };
    let text = format!(
        "[pipeline]\nname = \"bench-text\"\nwork_dir = \"{}\"\nsalt = \"bench-salt-0123456789\"\n\
         [stages.reports]\nkind = \"reports\"\nparams = {{ files = [\"{}\"] }}\n\
         [stages.entities]\nkind = \"entities\"\ninputs = [\"reports\"]\n{tokens}",
        work.display(),
        csv.display()
    );
    let report = run_quiet(&text, registry)?;
    let reports = report
        .stages
        .iter()
        .find(|s| s.name == "reports")
        .unwrap()
        .summary["reports"]
        .as_f64()
        .unwrap_or(0.0);
    for st in &report.stages {
        row(
            &format!("{}.reports_per_s.{name}", st.name),
            reports / st.seconds.max(1e-9),
            "reports/s",
            &format!("{reports} reports"),
            json,
        );
    }
    // The cross-patient graph on the same reports, with the process' peak RSS sampled while
    // it runs (the report stages above are already fresh, so only the graph runs here).
    let text =
        format!("{text}[stages.graph]\nkind = \"graph\"\ninputs = [\"reports\", \"entities\"]\n");
    let sampler = RssSampler::start();
    let report = run_quiet(&text, registry)?;
    let (base, peak) = sampler.stop();
    let g = report.stages.iter().find(|s| s.name == "graph").unwrap();
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        work.join("graph/graph_stats.json"),
    )?)?;
    row(
        &format!("graph.seconds.{name}"),
        g.seconds,
        "s",
        &format!(
            "{reports} reports -> {} nodes, {} edges, {} pairs scored",
            stats["nodes"], stats["edges"], stats["scored_pairs"]
        ),
        json,
    );
    row(
        &format!("graph.peak_rss_mb.{name}"),
        peak as f64 / 1e6,
        "MB",
        &format!(
            "process peak while the graph ran (before: {} MB)",
            base / 1_000_000
        ),
        json,
    );
    Ok(())
}

/// The shard loader against `cat` of the same files (the demo's shards; run `make pipeline` first).
fn bench_shards(json: bool) -> Result<()> {
    let shards = Path::new("work/demo/shards");
    if shards.join("index.json").is_file() {
        let r = mg3d_shard::bench_read(shards, 5)?;
        let note = format!(
            "{} files, {:.1} MB, {} passes",
            r.files,
            r.file_bytes as f64 / 1e6,
            r.passes
        );
        row("shards.cat_gbps", r.cat_gbps, "GB/s", &note, json);
        row(
            "shards.loader_gbps",
            r.loader_gbps,
            "GB/s",
            &r.settings,
            json,
        );
        row(
            "shards.loader_samples_per_s",
            r.samples_per_s,
            "samples/s",
            "",
            json,
        );
        row(
            "shards.loader_vs_cat",
            r.ratio,
            "ratio",
            "goal >= 0.8",
            json,
        );
        row(
            "shards.verify_gbps",
            r.verify_gbps,
            "GB/s",
            "sha256 of every shard at open",
            json,
        );
    } else {
        eprintln!("shards: skipped (no work/demo/shards/index.json; run `make pipeline`)");
    }
    Ok(())
}

/// Schema-checked table writing (1,000,000 rows).
fn bench_table(dir: &Path, json: bool) -> Result<()> {
    let schema = TableSchema::from_json(
        "bench",
        r#"{"table": "bench", "version": 1, "description": "bench", "columns": [
            {"name": "id", "type": "utf8", "nullable": false, "meaning": "id"},
            {"name": "x", "type": "float64", "nullable": true, "meaning": "x"}]}"#,
    )?;
    let n = 1_000_000usize;
    let ids: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..n).map(|i| format!("{i:016x}")),
    ));
    let xs: ArrayRef = Arc::new(Float64Array::from_iter_values(
        (0..n).map(|i| i as f64 * 0.5),
    ));
    let batch = RecordBatch::try_from_iter([("id", ids), ("x", xs)])?;
    let t0 = Instant::now();
    let mut w = TableWriter::create(&dir.join("bench.parquet"), &schema)?;
    for chunk in 0..10 {
        w.write(&batch.slice(chunk * n / 10, n / 10))?;
    }
    w.finish()?;
    row(
        "table.write_rows_per_s",
        n as f64 / t0.elapsed().as_secs_f64() / 1e6,
        "Mrows/s",
        "utf8 + float64, zstd, page statistics",
        json,
    );
    Ok(())
}

/// Runs every benchmark.
pub fn run(
    patients: u32,
    text_reports: u32,
    only: &[String],
    json: bool,
    registry: &mg3d_core::StageRegistry,
    torch: Option<&dyn crate::Torch>,
) -> Result<()> {
    let on = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let dir = tempfile::tempdir()?;
    // 1. Synthetic corpus at the demo size (the volume and demo text benches read it).
    let need_corpus = on("synth") || on("volumes") || on("hash");
    let cfg = mg3d_synth::SynthConfig {
        patients,
        seed: 1,
        body_width_mm: [110.0, 140.0],
        z_extent_mm: [80.0, 110.0],
        in_plane_spacing_mm: [0.6, 1.0],
        ..Default::default()
    };
    let t = mg3d_synth::report::Templates::parse(mg3d_synth::report::DEFAULT_TEMPLATES)
        .map_err(anyhow::Error::msg)?;
    let out = dir.path().join("synth");
    std::fs::create_dir_all(&out)?;
    if need_corpus {
        bench_synth(&cfg, &t, &out, json)?;
    }
    // 2. Ingest + preprocess (demo preset) on that corpus, 1 and 2 threads, cold item caches.
    if on("volumes") {
        bench_volumes(dir.path(), &out, json, registry)?;
    }
    // 3. Report stages on the demo corpus' reports and on `text_reports` report-only rows.
    let text_runs: Vec<(&str, u32)> = [("demo", 0u32), ("large", text_reports)]
        .into_iter()
        .filter(|(name, _)| on("text") && (*name != "demo" || need_corpus))
        .collect();
    for run in text_runs {
        bench_text(run, dir.path(), &out, &t, json, registry)?;
    }
    // Shard loader vs `cat` of the same files (the demo's shards; run `make pipeline` first).
    if on("shards") {
        bench_shards(json)?;
    }
    // Training step time on the CPU (random inputs): the tiny model's full five-objective step and
    // the swin-b encoder's forward + backward at MG-3D's input size, batch 2.
    if let Some(torch) = torch.filter(|_| on("train")) {
        torch.bench_train(json)?;
    }
    // 4. Output hashing (what the engine does after each stage).
    if on("hash") {
        let t0 = Instant::now();
        let files = mg3d_core::fsutil::hash_dir(&out)?;
        let bytes: u64 = files.values().map(|f| f.bytes).sum();
        row(
            "engine.hash_outputs",
            bytes as f64 / 1e6 / t0.elapsed().as_secs_f64(),
            "MB/s",
            &format!("{} files, blake3", files.len()),
            json,
        );
    }
    // 5. Schema-checked table writing.
    if on("table") {
        bench_table(dir.path(), json)?;
    }
    Ok(())
}
