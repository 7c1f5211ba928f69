//! `mg3d bench --only partition`: what partitioning costs at scale. A generated corpus of `items`
//! tiny NIfTI volumes and as many short reports goes through ingest, reports, entities and tokens
//! as 4 partitions each plus the merge, in one process one after another (as array tasks on one
//! node would, minus the parallelism), and once unpartitioned for comparison; the item store is
//! also timed alone. The CT-RATE projection combines these with the per-volume time that
//! `make bench-peers` measured.

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};
use mg3d_core::items::{ItemStore, Partition};
use mg3d_core::{Engine, Pipeline, RunOptions, StageRegistry};

use crate::bench::row;

/// Partitions per stage in the simulation.
const N: u32 = 4;
/// ingest + preprocess of one 512 x 512 x 300 CT volume with the ct-clip preset on one thread,
/// from `make bench-peers` (README, "Measured"): the work an array task does per CT-RATE volume.
const CT_VOLUME_SECONDS: f64 = 15.3;
/// CT-RATE's volumes and the array tasks of the projection.
const CT_RATE_VOLUMES: f64 = 50_000.0;
const TASKS: f64 = 64.0;

/// `items` tiny int16 NIfTI volumes (4 x 4 x 4, distinct values) in folders of 1,000.
fn write_volumes(root: &Path, items: u32) -> Result<()> {
    use rayon::prelude::*;
    (0..items).into_par_iter().try_for_each(|i| -> Result<()> {
        let dir = root.join(format!("{:04}", i / 1000));
        std::fs::create_dir_all(&dir)?;
        let mut affine = [[0.0; 4]; 4];
        for (a, row) in affine.iter_mut().enumerate() {
            row[a] = 1.0;
        }
        let v = mg3d_volume::Volume {
            dims: [4, 4, 4],
            data: (0..64)
                .map(|k| ((i as usize * 7 + k) % 2000) as f32 - 1000.0)
                .collect(),
            affine,
        };
        mg3d_volume::nifti_write::write_nifti_i16(&dir.join(format!("vol_{i:06}.nii.gz")), &v)?;
        Ok(())
    })
}

fn pipeline(work: &Path, data: &Path, registry: &StageRegistry) -> Result<Pipeline> {
    let text = format!(
        "[pipeline]\nname = \"bench-partition\"\nwork_dir = \"{w}\"\nsalt = \"bench-salt-0123456789\"\n\
         [stages.ingest]\nkind = \"ingest\"\nparams = {{ nifti_roots = [\"{d}/nifti\"] }}\n\
         [stages.reports]\nkind = \"reports\"\nparams = {{ files = [\"{d}/reports.csv\"] }}\n\
         [stages.entities]\nkind = \"entities\"\ninputs = [\"reports\"]\n\
         [stages.tokens]\nkind = \"tokens\"\ninputs = [\"reports\"]\nparams = {{ train_vocab_size = 2000 }}\n",
        w = work.display(),
        d = data.display()
    );
    Ok(Pipeline::parse(
        Path::new("bench-partition.toml"),
        &text,
        registry,
    )?)
}

/// Runs `opts` and returns (seconds, the one stage's item counts).
fn timed(engine: &Engine, p: &Pipeline, opts: &RunOptions) -> Result<(f64, serde_json::Value)> {
    let t0 = Instant::now();
    let r = engine.run(p, opts)?;
    let s = &r.stages[0].summary;
    let items = if s["items"].is_null() {
        s["this_run"]["items"].clone()
    } else {
        s["items"].clone()
    };
    Ok((t0.elapsed().as_secs_f64(), items))
}

/// The item store alone: `items` small values written, then read back by a fresh store.
fn bench_store(dir: &Path, items: u32, json: bool) -> Result<()> {
    use rayon::prelude::*;
    let value = "x".repeat(400);
    let store = ItemStore::new(dir.join("store"), "bench".into());
    let t0 = Instant::now();
    (0..items).into_par_iter().try_for_each(|i| {
        let key = store.key(&i.to_string(), "");
        store
            .get_or_make_value::<String, std::io::Error>(&key, || Ok(value.clone()))
            .map(|_| ())
    })?;
    let write = t0.elapsed().as_secs_f64();
    let store = ItemStore::new(dir.join("store"), "bench".into());
    let t0 = Instant::now();
    (0..items).into_par_iter().try_for_each(|i| {
        let key = store.key(&i.to_string(), "");
        store
            .get_or_make_value::<String, std::io::Error>(&key, || {
                Err(std::io::Error::other("missing"))
            })
            .map(|_| ())
    })?;
    let read = t0.elapsed().as_secs_f64();
    let per = |s: f64| s * 1e6 / items as f64;
    row(
        "partition.store_write",
        per(write),
        "us/item",
        &format!("{items} JSON items of 400 bytes, all threads"),
        json,
    );
    row(
        "partition.store_read",
        per(read),
        "us/item",
        "the same items found by a fresh store",
        json,
    );
    Ok(())
}

/// `--stage S --partition K/N` (or the whole stage without `part`), quietly.
fn stage_opts(stage: &str, part: Option<(u32, u32)>) -> Result<RunOptions> {
    Ok(RunOptions {
        only: Some(stage.into()),
        partition: part
            .map(|(k, n)| Partition::new(k, n))
            .transpose()
            .map_err(anyhow::Error::msg)?,
        quiet: true,
        ..Default::default()
    })
}

/// One stage as N partitions, then its merge: returns (seconds in all, merge seconds).
fn partitions_then_merge(
    engine: &Engine,
    p: &Pipeline,
    stage: &str,
    items: u32,
    json: bool,
) -> Result<(f64, f64)> {
    let mut slowest: f64 = 0.0;
    let mut total = 0.0;
    for k in 0..N {
        let (s, _) = timed(engine, p, &stage_opts(stage, Some((k, N)))?)?;
        slowest = slowest.max(s);
        total += s;
    }
    if stage == "ingest" {
        // The partial state a user watches: N partitions done, no merge yet.
        let t0 = Instant::now();
        let st = engine.status(p, false)?;
        let secs = t0.elapsed().as_secs_f64();
        let progress = st[0]
            .items
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_default();
        let note = format!("mg3d status over {items} files: {progress}");
        row("partition.status_s", secs, "s", &note, json);
    }
    let (merge, counts) = timed(engine, p, &stage_opts(stage, None)?)?;
    if counts["made"] != 0 {
        bail!("the {stage} merge computed items again: {counts}");
    }
    let part_note = format!("1 of {N} partitions of {items} items");
    row(
        &format!("partition.{stage}.slowest_task_s"),
        slowest,
        "s",
        &part_note,
        json,
    );
    let merge_note = format!("{} items reused, none made", counts["reused"]);
    row(
        &format!("partition.{stage}.merge_s"),
        merge,
        "s",
        &merge_note,
        json,
    );
    let per = merge * 1e6 / items as f64;
    row(
        &format!("partition.{stage}.merge_us_per_item"),
        per,
        "us/item",
        "",
        json,
    );
    Ok((total + merge, merge))
}

/// The simulation (see the module doc).
pub fn bench_partition(dir: &Path, items: u32, json: bool, registry: &StageRegistry) -> Result<()> {
    let data = dir.join("partition-data");
    let t0 = Instant::now();
    write_volumes(&data.join("nifti"), items)?;
    let t = mg3d_synth::report::Templates::parse(mg3d_synth::report::DEFAULT_TEMPLATES)
        .map_err(anyhow::Error::msg)?;
    mg3d_synth::write_reports_only(items, 11, &t, &data.join("reports.csv"))?;
    let note = format!("{items} tiny NIfTI volumes and {items} reports");
    row(
        "partition.generate",
        t0.elapsed().as_secs_f64(),
        "s",
        &note,
        json,
    );
    bench_store(dir, items, json)?;

    let engine = Engine::new(registry);
    let p = pipeline(&dir.join("partition-work"), &data, registry)?;
    let mut partitioned_total = 0.0;
    let mut ingest_merge = 0.0;
    for stage in ["ingest", "reports", "entities", "tokens"] {
        let (total, merge) = partitions_then_merge(&engine, &p, stage, items, json)?;
        partitioned_total += total;
        if stage == "ingest" {
            ingest_merge = merge;
        }
    }
    // The same stages unpartitioned, cold, for the overhead of partitioning.
    let p1 = pipeline(&dir.join("plain-work"), &data, registry)?;
    let t0 = Instant::now();
    engine.run(
        &p1,
        &RunOptions {
            quiet: true,
            ..Default::default()
        },
    )?;
    let plain = t0.elapsed().as_secs_f64();
    let note = format!(
        "{N} partitions + merge, run one after another, over one unpartitioned run ({plain:.1} s)"
    );
    row(
        "partition.overhead",
        partitioned_total / plain,
        "x",
        &note,
        json,
    );
    // What an array task pays before its first item: the walk of all files (a partition owning
    // about one item of the corpus).
    let (enumerate, _) = timed(&engine, &p, &stage_opts("ingest", Some((0, items.max(1))))?)?;
    let note = format!("one ingest task's walk and enumeration of {items} files");
    row("partition.task_fixed_s", enumerate, "s", &note, json);
    // CT-RATE on 64 array tasks (one CPU each): each walks everything and computes 1/64 of the
    // volumes; the ingest and preprocess merges each link every item (preprocess's taken as
    // ingest's, both being a directory per volume).
    let task = enumerate * CT_RATE_VOLUMES / items as f64
        + (CT_RATE_VOLUMES / TASKS).ceil() * CT_VOLUME_SECONDS;
    let merge = 2.0 * ingest_merge / items as f64 * CT_RATE_VOLUMES;
    let note = format!(
        "ingest + preprocess of 50K volumes: {:.2} h per task + {merge:.0} s merge (vs {:.0} h on one core)",
        task / 3600.0,
        CT_RATE_VOLUMES * CT_VOLUME_SECONDS / 3600.0
    );
    row(
        "partition.ctrate_64_tasks_h",
        (task + merge) / 3600.0,
        "h",
        &note,
        json,
    );
    Ok(())
}
