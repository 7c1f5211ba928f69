//! `mg3d slurm`: a pipeline as Slurm batch jobs. Each stage that partitions becomes a job array
//! (`--array=0-(N-1)`, each task `mg3d run --stage S --partition auto`) and a merge job after it;
//! every other stage one job. Jobs are chained by the pipeline's inputs with
//! `--dependency=afterok`, so a failed task stops what depends on it and leaves the rest of the
//! array's items in the store for a rerun. The jobs that write stage outputs and the lockfile
//! (merges and whole-corpus stages) also run one after another (`afterany` on the previous one):
//! the work-dir lock is a `flock`, which a network file system may not carry across hosts.
//! Array tasks take no lock and run side by side. Slurm schedules; mg3d only writes the scripts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use mg3d_core::{Pipeline, StageRegistry};

/// What to write.
pub struct SlurmPlan<'a> {
    /// The pipeline (its work dir already overridden, if asked).
    pub pipeline: &'a Pipeline,
    /// Partitions per partitioned stage (array tasks).
    pub partitions: u32,
    /// Stages to schedule, in pipeline order; empty = all. Inputs outside the selection must
    /// already have outputs.
    pub stages: Vec<String>,
    /// `#SBATCH` options for every job (e.g. `--partition=cpu --time=04:00:00`).
    pub sbatch_args: String,
    /// Extra `#SBATCH` options for one stage (e.g. `train` = `--gres=gpu:1`).
    pub stage_args: Vec<(String, String)>,
    /// Where the scripts go.
    pub out: PathBuf,
}

/// One job of the plan.
struct Job {
    /// Shell variable holding its job id in submit.sh.
    var: String,
    script: String,
    /// Jobs whose success it needs (its inputs, or its array).
    after_ok: Vec<String>,
    /// The previous job that writes outputs, which it must not overlap.
    after_any: Option<String>,
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,@+%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// Writes one sbatch script per job and `submit.sh` into `plan.out`; returns the submit script's
/// path and the `sbatch` lines it runs.
pub fn write_plan(reg: &StageRegistry, plan: &SlurmPlan) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let p = plan.pipeline;
    if plan.partitions == 0 {
        bail!("--partitions must be at least 1");
    }
    for s in plan
        .stages
        .iter()
        .chain(plan.stage_args.iter().map(|(s, _)| s))
    {
        if p.stage(s).is_none() {
            bail!(
                "no stage named {s:?} in {}; stages are: {}",
                p.file.display(),
                p.stages
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let exe = std::env::current_exe().context("locating the mg3d binary")?;
    let cwd = std::env::current_dir()?;
    let pipeline = absolute(&p.file)?;
    let work = absolute(&p.work_dir)?;
    std::fs::create_dir_all(plan.out.join("logs"))
        .with_context(|| format!("creating {}", plan.out.display()))?;
    let out = absolute(&plan.out)?;
    let run = format!(
        "{} run {} --work-dir {} --quiet",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(&pipeline.to_string_lossy()),
        shell_quote(&work.to_string_lossy())
    );
    let selected = |name: &str| plan.stages.is_empty() || plan.stages.iter().any(|s| s == name);
    let mut jobs: Vec<Job> = Vec::new();
    let mut prev_writer: Option<String> = None;
    // The job each scheduled stage's dependents wait for (its merge, or its only job).
    let mut last_of: std::collections::BTreeMap<&str, String> = Default::default();
    for (n, spec) in p.stages.iter().enumerate() {
        if !selected(&spec.name) {
            continue;
        }
        let stage = reg.get(&spec.kind).expect("validated pipeline");
        let extra: Vec<&str> = plan
            .stage_args
            .iter()
            .filter(|(s, _)| *s == spec.name)
            .map(|(_, a)| a.as_str())
            .collect();
        let var_base: String = spec
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let after: Vec<String> = spec
            .inputs
            .iter()
            .filter_map(|i| last_of.get(i.as_str()).cloned())
            .collect();
        let header = |job: &str, array: bool| {
            let mut h = String::from("#!/bin/bash\n");
            let log = if array { "%A_%a" } else { "%j" };
            let _ = writeln!(h, "#SBATCH --job-name=mg3d-{}-{}-{job}", p.name, spec.name);
            let _ = writeln!(
                h,
                "#SBATCH --output={}/logs/{}-{job}-{log}.out",
                out.display(),
                spec.name
            );
            let _ = writeln!(h, "#SBATCH --chdir={}", cwd.display());
            if array {
                let _ = writeln!(h, "#SBATCH --array=0-{}", plan.partitions - 1);
            }
            for a in std::iter::once(plan.sbatch_args.as_str()).chain(extra.iter().copied()) {
                for opt in a.split_whitespace() {
                    let _ = writeln!(h, "#SBATCH {opt}");
                }
            }
            h.push_str(
                "set -euo pipefail\n\
                 # One task's threads: what Slurm allotted it (--cpus-per-task), not the whole node.\n\
                 if [ -n \"${SLURM_CPUS_PER_TASK:-}\" ]; then export RAYON_NUM_THREADS=$SLURM_CPUS_PER_TASK; fi\n",
            );
            h
        };
        let prefix = format!("{:02}-{}", n, spec.name);
        if stage.partitioned() && plan.partitions > 1 {
            let script = out.join(format!("{prefix}.array.sbatch"));
            let mut s = header("part", true);
            let _ = writeln!(
                s,
                "# Partition $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT of the stage's items into the item store.\n\
                 exec {run} --stage {} --partition auto",
                shell_quote(&spec.name)
            );
            write_script(&script, &s)?;
            jobs.push(Job {
                var: format!("{var_base}_array"),
                script: script.to_string_lossy().into_owned(),
                after_ok: after,
                after_any: None,
            });
            let merge = out.join(format!("{prefix}.merge.sbatch"));
            let mut s = header("merge", false);
            let _ = writeln!(
                s,
                "# The stage's output from the items its partitions stored (none is computed again).\n\
                 exec {run} --stage {}",
                shell_quote(&spec.name)
            );
            write_script(&merge, &s)?;
            let var = format!("{var_base}_merge");
            jobs.push(Job {
                var: var.clone(),
                script: merge.to_string_lossy().into_owned(),
                after_ok: vec![format!("{var_base}_array")],
                after_any: prev_writer.replace(var.clone()),
            });
            last_of.insert(&spec.name, var);
        } else {
            let script = out.join(format!("{prefix}.sbatch"));
            let mut s = header("run", false);
            let what = if stage.partitioned() {
                "One partition: the whole stage in one job."
            } else {
                "A whole-corpus stage: one job."
            };
            let _ = writeln!(
                s,
                "# {what}\nexec {run} --stage {}",
                shell_quote(&spec.name)
            );
            write_script(&script, &s)?;
            jobs.push(Job {
                var: var_base.clone(),
                script: script.to_string_lossy().into_owned(),
                after_ok: after,
                after_any: prev_writer.replace(var_base.clone()),
            });
            last_of.insert(&spec.name, var_base);
        }
    }
    if jobs.is_empty() {
        bail!("no stage selected");
    }
    let mut lines = Vec::new();
    let mut submit = String::from(
        "#!/bin/bash\n\
         # Submits the pipeline's jobs in order, each after the jobs of its inputs (afterok).\n\
         # Written by `mg3d slurm`; prints one line per job: NAME JOBID.\n\
         set -euo pipefail\n",
    );
    for j in &jobs {
        let mut deps = Vec::new();
        if !j.after_ok.is_empty() {
            let ids: Vec<String> = j.after_ok.iter().map(|v| format!("${v}")).collect();
            deps.push(format!("afterok:{}", ids.join(":")));
        }
        if let Some(v) = &j.after_any {
            deps.push(format!("afterany:${v}"));
        }
        let dep = if deps.is_empty() {
            String::new()
        } else {
            format!(" --dependency={}", deps.join(","))
        };
        let line = format!("sbatch --parsable{dep} {}", shell_quote(&j.script));
        let _ = writeln!(submit, "{}=$({line} | cut -d';' -f1)", j.var);
        let _ = writeln!(submit, "echo \"{} ${}\"", j.var, j.var);
        lines.push(line);
    }
    let submit_path = out.join("submit.sh");
    write_script(&submit_path, &submit)?;
    Ok((submit_path, lines))
}

fn write_script(path: &Path, text: &str) -> anyhow::Result<()> {
    mg3d_core::fsutil::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}
