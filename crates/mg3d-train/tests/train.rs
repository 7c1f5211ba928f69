//! Training on real shards from a small synthetic pipeline: 30 CPU steps lower every loss, and
//! resuming from a checkpoint reproduces the uninterrupted run's losses exactly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mg3d_core::stage::StageRegistry;
use mg3d_shard::ShardIndex;
use mg3d_testkit::minilm;
use mg3d_train::model::{Mg3d, ModelConfig, Objectives};
use mg3d_train::swin::SwinConfig;
use mg3d_train::trainer::{StepMetrics, TrainConfig, train};
use tch::{Device, nn};

fn shards(work: &Path, text: &Path) -> PathBuf {
    let mut reg = StageRegistry::new();
    reg.register(Arc::new(mg3d_synth::SynthStage))
        .register(Arc::new(mg3d_ingest::ingest::IngestStage))
        .register(Arc::new(mg3d_ingest::preprocess::PreprocessStage))
        .register(Arc::new(mg3d_report::reports::ReportsStage))
        .register(Arc::new(mg3d_report::tokens::TokensStage))
        .register(Arc::new(mg3d_report::entities_stage::EntitiesStage))
        .register(Arc::new(mg3d_shard::ShardsStage));
    let text = format!(
        "[pipeline]\nname='t'\nwork_dir='{}'\nsalt='test-salt-0123456789'\nseed=3\n\
         [stages.synth]\nkind='synth'\nparams={{patients=10, faults=false, body_width_mm=[60.0, 70.0], z_extent_mm=[30.0, 40.0], in_plane_spacing_mm=[1.0, 1.5], slice_spacing_mm=[2.0, 3.0], second_recon_fraction=0.0}}\n\
         [stages.ingest]\nkind='ingest'\ninputs=['synth']\nparams={{dicom_roots=['@synth/dicom'], nifti_roots=['@synth/nifti'], ctrate_metadata=['@synth/metadata/train_metadata.csv'], accession_map='@synth/reports/accession_map.csv'}}\n\
         [stages.preprocess]\nkind='preprocess'\ninputs=['ingest']\nparams={{preset='demo'}}\n\
         [stages.reports]\nkind='reports'\ninputs=['synth']\nparams={{files=['@synth/reports/train_reports.csv']}}\n\
         [stages.entities]\nkind='entities'\ninputs=['reports']\n\
         [stages.tokens]\nkind='tokens'\ninputs=['reports']\nparams={{tokenizer='{}', max_length=96}}\n\
         [stages.shards]\nkind='shards'\ninputs=['preprocess', 'tokens', 'entities', 'ingest', 'reports']\n\
         params={{shard_mb=2.0, seed=1, ratios=[1.0, 0.0, 0.0]}}\n",
        work.display(),
        text.display()
    );
    let (_p, _) = mg3d_testkit::run_pipeline(&reg, &text);
    work.join("shards")
}

/// The tiny model on `text`, initialised from `seed`.
pub(crate) fn model(text: &Path, seed: i64) -> (nn::VarStore, Mg3d) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        swin: SwinConfig::tiny(),
        hidden: 32,
        fusion_layers: 2,
        pool_heads: 4,
        input: [32, 64, 64],
        text_trainable: false,
    };
    let m = Mg3d::new(&vs, cfg, text).unwrap();
    (vs, m)
}

fn run(
    text: &Path,
    index: &ShardIndex,
    ckpt: &Path,
    cfg: &TrainConfig,
    resume: Option<&Path>,
) -> Vec<StepMetrics> {
    let (mut vs, m) = model(text, 11);
    train(
        &m,
        &mut vs,
        &Objectives::default(),
        cfg,
        index,
        ckpt,
        resume,
        |s| {
            eprintln!(
                "step {:>3} total {:.4} mim {:.4} mlm {:.3} sal {:.4} cml {:.4} dcl {:.4} ssm {:.4} ({:.2} s, {:.1} samples/s)",
                s.step, s.total, s.mim, s.mlm, s.sal, s.cml, s.dcl, s.ssm, s.seconds, s.samples_per_s
            )
        },
    )
    .unwrap()
}

#[test]
fn thirty_steps_lower_every_loss_and_resume_is_exact() {
    let Some(text) = minilm() else { return };
    let t = tempfile::tempdir().unwrap();
    let dir = shards(&t.path().join("work"), &text);
    let index = ShardIndex::open(&dir).unwrap();
    let cfg = TrainConfig {
        steps: 30,
        batch_size: 2,
        lr: 1e-3,
        warmup: 3,
        checkpoint_every: 10,
        seed: 5,
        workers: 1,
        ..Default::default()
    };
    let full = run(&text, &index, &t.path().join("ck-full"), &cfg, None);
    assert_eq!(full.len(), 30);
    let mean = |f: &dyn Fn(&StepMetrics) -> f64, r: std::ops::Range<usize>| {
        full[r.clone()].iter().map(f).sum::<f64>() / r.len() as f64
    };
    type Getter = fn(&StepMetrics) -> f64;
    let getters: [(&str, Getter); 7] = [
        ("total", |s| s.total),
        ("mim", |s| s.mim),
        ("mlm", |s| s.mlm),
        ("sal", |s| s.sal),
        ("cml", |s| s.cml),
        ("dcl", |s| s.dcl),
        ("ssm", |s| s.ssm),
    ];
    for (name, g) in getters {
        let (first, last) = (mean(&g, 0..5), mean(&g, 25..30));
        eprintln!("{name}: first 5 steps {first:.5}, last 5 steps {last:.5}");
        assert!(last < first, "{name} did not decrease: {first} -> {last}");
    }
    // Resume from step 10 of an identical run: steps 11..30 give the same losses.
    let ck = t.path().join("ck-full/step-000010");
    assert!(ck.join("model.safetensors").is_file());
    let resumed = run(&text, &index, &t.path().join("ck-resumed"), &cfg, Some(&ck));
    assert_eq!(resumed.len(), 20);
    for (a, b) in full[10..].iter().zip(&resumed) {
        assert_eq!(a.step, b.step);
        assert_eq!(
            (a.total, a.mim, a.mlm, a.cml, a.dcl, a.ssm),
            (b.total, b.mim, b.mlm, b.cml, b.dcl, b.ssm),
            "step {}",
            a.step
        );
    }
    // The same run gives the same checkpoint bytes (no wall-clock times in state.json).
    for file in ["state.json", "model.safetensors", "optimizer.safetensors"] {
        let read = |run: &str| std::fs::read(t.path().join(run).join("step-000030").join(file));
        let (a, b) = (read("ck-full").unwrap(), read("ck-resumed").unwrap());
        assert!(
            a == b,
            "{file} of the resumed run differs from the uninterrupted one"
        );
    }
}
