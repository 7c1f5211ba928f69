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

/// Where and how the scripts of one plan run.
struct Writer<'a> {
    plan: &'a SlurmPlan<'a>,
    /// Absolute script directory.
    out: PathBuf,
    /// The jobs' working directory (where `mg3d slurm` ran).
    cwd: PathBuf,
    /// `mg3d run PIPELINE --work-dir WORK --quiet`, absolute paths.
    run: String,
}

impl Writer<'_> {
    /// Writes `NN-STAGE.<suffix>.sbatch`: the header (`#SBATCH` lines, one array of
    /// `plan.partitions` tasks when `array`), a comment and `exec mg3d run ... ARGS`.
    fn script(
        &self,
        (n, stage): (usize, &str),
        (job, suffix): (&str, &str),
        array: bool,
        (comment, args): (&str, &str),
    ) -> anyhow::Result<String> {
        let extra: Vec<&str> = self
            .plan
            .stage_args
            .iter()
            .filter(|(s, _)| s == stage)
            .map(|(_, a)| a.as_str())
            .collect();
        let mut h = String::from("#!/bin/bash\n");
        let log = if array { "%A_%a" } else { "%j" };
        let name = &self.plan.pipeline.name;
        let _ = writeln!(h, "#SBATCH --job-name=mg3d-{name}-{stage}-{job}");
        let _ = writeln!(
            h,
            "#SBATCH --output={}/logs/{stage}-{job}-{log}.out",
            self.out.display()
        );
        let _ = writeln!(h, "#SBATCH --chdir={}", self.cwd.display());
        if array {
            let _ = writeln!(h, "#SBATCH --array=0-{}", self.plan.partitions - 1);
        }
        for opt in sbatch_options(&self.plan.sbatch_args, &extra) {
            let _ = writeln!(h, "#SBATCH {opt}");
        }
        h.push_str(
            "set -euo pipefail\n\
             # One task's threads: what Slurm allotted it (--cpus-per-task), not the whole node.\n\
             if [ -n \"${SLURM_CPUS_PER_TASK:-}\" ]; then export RAYON_NUM_THREADS=$SLURM_CPUS_PER_TASK; fi\n",
        );
        let args = if args.is_empty() {
            String::new()
        } else {
            format!(" {args}")
        };
        let _ = writeln!(
            h,
            "# {comment}\nexec {} --stage {}{args}",
            self.run,
            shell_quote(stage)
        );
        let path = self.out.join(format!("{n:02}-{stage}.{suffix}"));
        write_script(&path, &h)?;
        Ok(path.to_string_lossy().into_owned())
    }
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
        p.require_stage(s).map_err(anyhow::Error::msg)?;
    }
    std::fs::create_dir_all(plan.out.join("logs"))
        .with_context(|| format!("creating {}", plan.out.display()))?;
    let exe = std::env::current_exe().context("locating the mg3d binary")?;
    let w = Writer {
        plan,
        out: std::path::absolute(&plan.out)?,
        cwd: std::env::current_dir()?,
        run: format!(
            "{} run {} --work-dir {} --quiet",
            shell_quote(&exe.to_string_lossy()),
            shell_quote(&std::path::absolute(&p.file)?.to_string_lossy()),
            shell_quote(&std::path::absolute(&p.work_dir)?.to_string_lossy())
        ),
    };
    let selected = |name: &str| plan.stages.is_empty() || plan.stages.iter().any(|s| s == name);
    let mut jobs: Vec<Job> = Vec::new();
    let mut prev_writer: Option<String> = None;
    // The job each scheduled stage's dependents wait for (its merge, or its only job).
    let mut last_of: std::collections::BTreeMap<&str, String> = Default::default();
    for (n, spec) in p
        .stages
        .iter()
        .enumerate()
        .filter(|(_, s)| selected(&s.name))
    {
        let stage = reg.get(&spec.kind).expect("validated pipeline");
        let var: String = spec
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let after_ok: Vec<String> = spec
            .inputs
            .iter()
            .filter_map(|i| last_of.get(i.as_str()).cloned())
            .collect();
        let at = (n, spec.name.as_str());
        let var = if stage.partitioned() && plan.partitions > 1 {
            let part = "Partition $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT of the stage's items into the item store.";
            let script = w.script(
                at,
                ("part", "array.sbatch"),
                true,
                (part, "--partition auto"),
            )?;
            let array = format!("{var}_array");
            jobs.push(Job {
                var: array.clone(),
                script,
                after_ok,
                after_any: None,
            });
            let merge =
                "The stage's output from the items its partitions stored (none is computed again).";
            let script = w.script(at, ("merge", "merge.sbatch"), false, (merge, ""))?;
            let var = format!("{var}_merge");
            let after_any = prev_writer.replace(var.clone());
            jobs.push(Job {
                var: var.clone(),
                script,
                after_ok: vec![array],
                after_any,
            });
            var
        } else {
            let what = if stage.partitioned() {
                "One partition: the whole stage in one job."
            } else {
                "A whole-corpus stage: one job."
            };
            let script = w.script(at, ("run", "sbatch"), false, (what, ""))?;
            let after_any = prev_writer.replace(var.clone());
            jobs.push(Job {
                var: var.clone(),
                script,
                after_ok,
                after_any,
            });
            var
        };
        last_of.insert(&spec.name, var);
    }
    if jobs.is_empty() {
        bail!("no stage selected");
    }
    write_submit(&w.out, &jobs)
}

/// `submit.sh`: one `sbatch --parsable --dependency=...` per job in order, each job id kept in
/// its variable and printed as `NAME JOBID`.
fn write_submit(out: &Path, jobs: &[Job]) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let mut lines = Vec::new();
    let mut submit = String::from(
        "#!/bin/bash\n\
         # Submits the pipeline's jobs in order, each after the jobs of its inputs (afterok).\n\
         # Written by `mg3d slurm`; prints one line per job: NAME JOBID.\n\
         set -euo pipefail\n",
    );
    for j in jobs {
        let mut deps = Vec::new();
        if !j.after_ok.is_empty() {
            let ids: Vec<String> = j.after_ok.iter().map(|v| format!("${v}")).collect();
            deps.push(format!("afterok:{}", ids.join(":")));
        }
        if let Some(v) = j.after_any.as_ref().filter(|v| !j.after_ok.contains(v)) {
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

/// The `#SBATCH` options of one job: the common ones, then the stage's own, where a stage option
/// `--name=value` replaces a common `--name=...` (options are whitespace-separated `--name=value`
/// or single flags).
fn sbatch_options<'a>(common: &'a str, stage: &[&'a str]) -> Vec<&'a str> {
    let name = |o: &str| o.split('=').next().unwrap_or(o).to_string();
    let own: Vec<&str> = stage.iter().flat_map(|a| a.split_whitespace()).collect();
    common
        .split_whitespace()
        .filter(|c| !own.iter().any(|o| name(o) == name(c)))
        .chain(own.iter().copied())
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_options_replace_common_ones_of_the_same_name() {
        let got = sbatch_options(
            "--partition=cpu --mem=8G --requeue",
            &["--partition=gpu --gres=gpu:1"],
        );
        assert_eq!(
            got,
            ["--mem=8G", "--requeue", "--partition=gpu", "--gres=gpu:1"]
        );
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("/a/b-c.toml"), "/a/b-c.toml");
        assert_eq!(shell_quote("/my data/it's"), "'/my data/it'\\''s'");
    }
}
