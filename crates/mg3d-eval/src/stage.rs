//! The `eval` stage: how well a trained model knows the corpus's findings.
//!
//! 1. **Features.** The trained model (train stage `final/`) encodes every sample of the train
//!    split and of the evaluated splits: frozen image features (per Swin stage the spatial mean and
//!    maximum, then the pooled unimodal image vector) and, per report, its clauses' text features
//!    (each distinct clause encoded alone by the frozen text encoder, as a prompt is).
//! 2. **Alignment** on the train split only (MG-3D's zero-shot protocol aligns the pre-trained
//!    encoder on the train split first). Two methods:
//!    - `entity` (default; MG-3D's entity grain, see `entity_align.rs`): the aligned space has one
//!      axis per CT-RATE finding. A clause-level text head is fitted to the entities stage's
//!      assertions placed in their clauses (+1 present, -1 absent, 0 not mentioned); a report is the
//!      clipped sum of its clauses; a linear image head regresses its report's embedding.
//!    - `clip` (CT-CLIP): a linear image head and a clause-level MLP text head trained with the
//!      symmetric InfoNCE of CLIP and a learned temperature.
//!
//!    Either can fine-tune the image encoder through the image head (`align_encoder`).
//!    Initialisation and batches come from the stage seed, so reruns are identical.
//! 3. **Zero-shot labels** (CT-CLIP): per label, the two templates ("{label} is present." /
//!    "{label} is not present.") go through the same text path; a volume's score is the softmax
//!    probability of the first. AUC, and F1 / accuracy / precision at the label's Youden point,
//!    each with a 95% percentile bootstrap interval (1,000 seeded resamples; the threshold is the
//!    one chosen on all samples). A diagnostic "text ceiling" scores the reports' own embeddings
//!    with the same prompts.
//! 4. **Retrieval.** Report→volume Recall@K in the aligned space with its random baseline K/N;
//!    volume→volume MAP@K with relevance by label overlap (see [`crate::metrics::label_overlap`])
//!    against the mean of seeded random rankings.
//! 5. **Linear probe.** Per label, L2 logistic regression on the frozen image features of the
//!    train split, AUC on the evaluated splits (with bootstrap interval).
//!
//! Outputs: `eval.parquet` (schemas/eval.json) and `eval.json` (summary, settings);
//! `features.parquet` (schemas/embeddings.json: every encoded sample's frozen image features),
//! `predictions.parquet` (schemas/predictions.json: the evaluated samples' zero-shot
//! probabilities) and `predictor/` (see [`crate::predictor`]), which `mg3d predict` loads.

use std::collections::BTreeMap;
use std::path::Path;

use mg3d_core::labels::CT_RATE_LABELS;
use mg3d_core::stage::{InputDecl, ParamDef, Params, Stage, StageContext, StageError};
use mg3d_shard::ShardIndex;
use mg3d_train::stage::{TrainedModel, load_trained};
use serde_json::{Value, json};
use tch::{Device, Tensor};

use crate::EvalError;
use crate::align::ImageHead;
use crate::align::{Aligner, l2, matrix};
use crate::entity_align::{
    ClauseTargets, EntityAlignConfig, EntityAligner, read_clause_targets, target_row,
};
use crate::features::{ClauseBank, Encoded, bank_prompts, encode_split, rows};
use crate::metrics::{label_overlap, map_at_k, random_map_at_k, random_recall_at_k, recall_at_k};
use crate::params::EvalParams;
use crate::predictor::{Fitted as PredictorParts, present_probability, write_predictor};
use crate::probe::fit_logistic;
use crate::tasks::{label_task, read_report_labels};
use mg3d_core::rows::{EmbeddingsRow, EvalRow, PredictionsRow};
use mg3d_core::table::write_rows;

/// The `eval` stage.
pub struct EvalStage;

/// Runs the whole evaluation; returns the rows and the JSON summary. With `clause_targets` the
/// alignment is the entity one, without it CT-CLIP's.
fn evaluate(
    tm: &mut TrainedModel,
    index: &ShardIndex,
    report_labels: Option<&BTreeMap<String, Vec<Option<bool>>>>,
    clause_targets: Option<&ClauseTargets>,
    p: &EvalParams,
    dirs: (&Path, &Path),
) -> Result<(Vec<EvalRow>, Value), EvalError> {
    let clock = std::time::Instant::now();
    let label_set = p.label_set();
    let (mut train, mut test, prompt_text, distinct_clauses) =
        encode_samples(tm, index, report_labels, &label_set, p)?;
    tracing::info!(
        seconds = clock.elapsed().as_secs_f64(),
        distinct_clauses,
        "encoded"
    );
    let n = test.image.len();
    if n == 0 {
        return Err(EvalError::NoSamples(p.splits.clone()));
    }
    if train.image.len() < 2 {
        return Err(EvalError::TooFewTrainSamples);
    }
    let (aligner, align_json) = fit_alignment(tm, &train, clause_targets, p);
    tracing::info!(seconds = clock.elapsed().as_secs_f64(), "aligned");
    // The linear probe measures the pre-trained features; zero-shot and retrieval use the
    // aligned model's.
    let frozen_train_image = std::mem::take(&mut train.image);
    let frozen_test_image = test.image.clone();
    if p.align_encoder {
        test.image = features_of(tm, &test.volumes);
    }
    let mut rows_out = vec![];

    // Zero-shot: per scored label, the softmax over its present/absent prompts.
    let prompt_z = aligner.text(&prompt_text);
    let img_z = aligner.image_head().embed(&test.image);
    let probabilities = |z: &Tensor| -> Vec<Vec<f64>> {
        (0..label_set.len())
            .map(|j| present_probability(z, &prompt_z, aligner.scale(), j))
            .collect()
    };
    let position = |li: usize| label_set.iter().position(|&x| x == li).expect("scored");
    let img_p = probabilities(&img_z);
    let zero_shot = label_task(
        "zero_shot",
        |li| img_p[position(li)].clone(),
        &test.labels,
        &label_set,
        p,
        &mut rows_out,
    );
    // Diagnostic: the same prompts scoring the reports' own aligned embeddings, i.e. what the
    // zero-shot protocol reaches with an image embedding equal to its report's (text side only).
    let text_z = aligner.text(&test.text);
    let text_p = probabilities(&text_z);
    let text_ceiling = label_task(
        "zero_shot",
        |li| text_p[position(li)].clone(),
        &test.labels,
        &label_set,
        &EvalParams {
            bootstrap: 0,
            ..p.clone()
        },
        &mut Vec::new(),
    );
    tracing::info!(seconds = clock.elapsed().as_secs_f64(), "zero-shot scored");

    let r2v_json = report_to_volume(&text_z, &img_z, p, &mut rows_out);
    let v2v_json = volume_to_volume(&img_z, &test.labels, &label_set, p, &mut rows_out);

    tracing::info!(seconds = clock.elapsed().as_secs_f64(), "retrieval scored");
    let probe = linear_probe(
        (&frozen_train_image, &train.labels),
        (&frozen_test_image, &test.labels),
        &label_set,
        p,
        &mut rows_out,
    );

    tracing::info!(seconds = clock.elapsed().as_secs_f64(), "probes scored");
    write_volume_outputs(
        dirs.0,
        (&train, &frozen_train_image),
        (&test, &frozen_test_image),
        &img_p,
        &label_set,
    )?;
    save_predictor(dirs, tm, p, &aligner, &prompt_z, &train)?;
    let summary = json!({
        "splits": p.splits,
        "label_source": if report_labels.is_some() { "entities labels.parquet" } else { "shard labels" },
        "unmentioned_as_negative": p.unmentioned_as_negative,
        "samples": n,
        "train_samples": frozen_train_image.len(),
        "labels": label_set.iter().map(|&i| CT_RATE_LABELS[i]).collect::<Vec<_>>(),
        "templates": p.templates,
        "alignment": align_json,
        "zero_shot": zero_shot,
        "zero_shot_text_ceiling": text_ceiling["mean_auc"],
        "zero_shot_text_ceiling_per_label": text_ceiling["per_label"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v["auc"].clone()))
                    .collect::<serde_json::Map<_, _>>()
            }),
        "report_to_volume": r2v_json,
        "volume_to_volume": v2v_json,
        "linear_probe": probe,
    });
    Ok((rows_out, summary))
}

/// The image features of kept volume batches (after the alignment fine-tuned the encoder).
fn features_of(tm: &TrainedModel, volumes: &[Tensor]) -> Vec<Vec<f32>> {
    volumes
        .iter()
        .flat_map(|v| {
            let v = v.to_device(tm.model.device());
            rows(&tch::no_grad(|| tm.model.image_features(&v)))
        })
        .collect()
}

/// Writes `predictor/` (see [`crate::predictor`]) into `dirs.0` from the train output `dirs.1`:
/// the fitted image head, the prompts' aligned embeddings `prompt_z` and the aligned embeddings
/// of the train split's reports (each report once) for retrieval.
fn save_predictor(
    (out_dir, train_dir): (&Path, &Path),
    tm: &TrainedModel,
    p: &EvalParams,
    aligner: &Fitted,
    prompt_z: &Tensor,
    train: &Encoded,
) -> Result<(), EvalError> {
    let mut report_ids = vec![];
    let mut report_rows = vec![];
    for (k, r) in train.report_ids.iter().enumerate() {
        if !report_ids.contains(r) {
            report_ids.push(r.clone());
            report_rows.push(k as i64);
        }
    }
    let reports = aligner
        .text(&train.text)
        .index_select(0, &Tensor::from_slice(&report_rows));
    write_predictor(
        out_dir,
        train_dir,
        p.align_encoder.then_some(&tm.vs),
        &PredictorParts {
            method: aligner.method(),
            head: &aligner.image_head(),
            labels: p
                .label_set()
                .iter()
                .map(|&i| CT_RATE_LABELS[i].to_string())
                .collect(),
            templates: &p.templates,
            scale: aligner.scale(),
            prompts: prompt_z,
            reports: &reports,
            report_ids: &report_ids,
        },
    )
}

/// `features.parquet` (the frozen image features of every encoded sample, train split first) and
/// `predictions.parquet` (the zero-shot probabilities of the evaluated samples; `probabilities`
/// per scored label, per sample). `train`/`test`: the samples and their frozen features.
fn write_volume_outputs(
    out_dir: &Path,
    train: (&Encoded, &[Vec<f32>]),
    test: (&Encoded, &[Vec<f32>]),
    probabilities: &[Vec<f64>],
    label_set: &[usize],
) -> Result<(), EvalError> {
    let features: Vec<EmbeddingsRow> = [train, test]
        .into_iter()
        .flat_map(|(e, f)| {
            e.volume_ids
                .iter()
                .zip(&e.splits)
                .zip(f)
                .map(|((v, s), x)| EmbeddingsRow {
                    volume_id: v.clone(),
                    source: s.clone(),
                    features: x.clone(),
                    ..EmbeddingsRow::default()
                })
        })
        .collect();
    let predictions: Vec<PredictionsRow> = test
        .0
        .volume_ids
        .iter()
        .enumerate()
        .flat_map(|(k, v)| {
            label_set
                .iter()
                .zip(probabilities)
                .map(move |(&li, p)| PredictionsRow {
                    volume_id: v.clone(),
                    task: "zero_shot".into(),
                    name: CT_RATE_LABELS[li].into(),
                    value: p[k],
                    ..PredictionsRow::default()
                })
        })
        .collect();
    write_rows(&out_dir.join("features.parquet"), &features)?;
    write_rows(&out_dir.join("predictions.parquet"), &predictions)?;
    Ok(())
}

/// Train samples, evaluated samples, the prompts' features, the number of distinct clauses.
type EncodedSamples = (Encoded, Encoded, Vec<Vec<Vec<f32>>>, usize);

/// Encodes the train split and the evaluated splits with the frozen model: image features, and
/// the text features of every distinct clause and prompt (each encoded once). The prompts are in
/// label order, present then absent.
fn encode_samples(
    tm: &mut TrainedModel,
    index: &ShardIndex,
    report_labels: Option<&BTreeMap<String, Vec<Option<bool>>>>,
    label_set: &[usize],
    p: &EvalParams,
) -> Result<EncodedSamples, EvalError> {
    let bs = p.batch_size as usize;
    let mut bank = ClauseBank::default();
    let mut train = Encoded::empty();
    encode_split(
        tm,
        index,
        "train",
        bs,
        p.align_encoder,
        &mut bank,
        &mut train,
    )?;
    let mut test = Encoded::empty();
    for s in &p.splits {
        encode_split(tm, index, s, bs, p.align_encoder, &mut bank, &mut test)?;
    }
    // Zero-shot prompts: per scored label, the present and the absent template.
    let prompts: Vec<String> = label_set
        .iter()
        .flat_map(|&l| {
            p.templates
                .iter()
                .map(move |t| t.replace("{label}", CT_RATE_LABELS[l]))
        })
        .collect();
    let prompt_ids = bank_prompts(tm, &prompts, &mut bank)?;
    let clause_features = bank.encode(tm, 64);
    let prompt_text: Vec<Vec<Vec<f32>>> = prompt_ids
        .iter()
        .map(|&id| vec![clause_features[id].clone()])
        .collect();
    for e in [&mut train, &mut test] {
        e.text = e
            .clauses
            .iter()
            .map(|c| {
                c.iter()
                    .map(|&(_, id)| clause_features[id].clone())
                    .collect()
            })
            .collect();
    }
    if let Some(l) = report_labels {
        for e in [&mut train, &mut test] {
            for (k, r) in e.report_ids.iter().enumerate() {
                if let Some(v) = l.get(r) {
                    e.labels[k] = v.clone();
                }
            }
        }
    }
    Ok((train, test, prompt_text, bank.sequences.len()))
}

/// Fits the alignment on the train split: entity-grounded when clause targets exist, else CLIP.
/// Returns the fitted heads and their summary.
fn fit_alignment(
    tm: &mut TrainedModel,
    train: &Encoded,
    clause_targets: Option<&ClauseTargets>,
    p: &EvalParams,
) -> (Fitted, Value) {
    match clause_targets {
        Some(targets) => {
            let none = BTreeMap::new();
            let train_targets: Vec<Vec<Vec<f32>>> = train
                .clauses
                .iter()
                .zip(&train.report_ids)
                .map(|(c, r)| {
                    let t = targets.get(r).unwrap_or(&none);
                    c.iter().map(|&(k, _)| target_row(Some(t), k)).collect()
                })
                .collect();
            let cfg = EntityAlignConfig {
                hidden: 2 * p.embed_dim,
                text_steps: p.align_text_steps,
                steps: p.align_steps,
                text_batch: 256,
                image_batch: p.align_batch as usize,
                lr: p.align_lr,
                encoder_lr: p.align_encoder_lr,
                seed: p.seed as u64,
            };
            let volumes = train.volume_tensor();
            if p.align_encoder {
                tm.vs.unfreeze();
            }
            let dev = tm.model.device();
            let encode = |idx: &Tensor| {
                tm.model
                    .image_features(&volumes.index_select(0, idx).to_device(dev))
                    .to_device(Device::Cpu)
            };
            let (a, r) = EntityAligner::fit(
                &train.image,
                &train.text,
                &train_targets,
                &cfg,
                p.align_encoder
                    .then_some((&tm.vs, &encode as &dyn Fn(&Tensor) -> Tensor)),
            );
            tm.vs.freeze();
            let mentioned = train_targets
                .iter()
                .flatten()
                .filter(|r| r.iter().any(|&x| x != 0.0))
                .count();
            (
                Fitted::Entity(a),
                json!({
                    "method": "entity",
                    "steps": p.align_steps,
                    "text_steps": p.align_text_steps,
                    "train_clauses": train_targets.iter().map(Vec::len).sum::<usize>(),
                    "train_clauses_with_findings": mentioned,
                    "text_first_loss": r.text_first_loss,
                    "text_last_loss": r.text_last_loss,
                    "image_first_loss": r.image_first_loss,
                    "image_last_loss": r.image_last_loss,
                    "encoder_fine_tuned": p.align_encoder,
                }),
            )
        }
        None => {
            let (a, r) = Aligner::fit(train, p, p.align_encoder.then_some(&mut *tm));
            (
                Fitted::Clip(a),
                json!({
                    "method": "clip",
                    "steps": p.align_steps,
                    "first_loss": r.first_loss,
                    "last_loss": r.last_loss,
                    "temperature": r.temperature,
                    "embed_dim": p.embed_dim,
                    "encoder_fine_tuned": p.align_encoder,
                }),
            )
        }
    }
}

/// Report → volume Recall@K (and its random baseline) in the aligned space; one row per metric.
fn report_to_volume(
    text_z: &Tensor,
    img_z: &Tensor,
    p: &EvalParams,
    rows_out: &mut Vec<EvalRow>,
) -> serde_json::Map<String, Value> {
    let n = img_z.size()[0] as usize;
    let r2v = matrix(&text_z.matmul(&img_z.tr()));
    let targets: Vec<usize> = (0..n).collect();
    let mut r2v_json = serde_json::Map::new();
    for &k in &p.recall_k {
        let k = k as usize;
        for (metric, value) in [
            (format!("recall@{k}"), recall_at_k(&r2v, &targets, k)),
            (format!("random_recall@{k}"), random_recall_at_k(n, k)),
        ] {
            r2v_json.insert(metric.clone(), json!(value));
            rows_out.push(EvalRow {
                task: "report_to_volume".into(),
                metric,
                value,
                n: n as i64,
                ..EvalRow::default()
            });
        }
    }
    r2v_json
}

/// Volume → volume MAP@K with relevance by overlap of the scored labels, against seeded random
/// rankings; one row per metric.
fn volume_to_volume(
    img_z: &Tensor,
    labels: &[Vec<Option<bool>>],
    label_set: &[usize],
    p: &EvalParams,
    rows_out: &mut Vec<EvalRow>,
) -> serde_json::Map<String, Value> {
    let n = labels.len();
    let v2v = matrix(&img_z.matmul(&img_z.tr()));
    let restrict = |l: &Vec<Option<bool>>| label_set.iter().map(|&i| l[i]).collect::<Vec<_>>();
    let labs: Vec<Vec<Option<bool>>> = labels.iter().map(restrict).collect();
    let queries: Vec<(Vec<f64>, Vec<bool>)> = (0..n)
        .map(|q| {
            let others: Vec<usize> = (0..n).filter(|&c| c != q).collect();
            (
                others.iter().map(|&c| v2v[q][c]).collect(),
                others
                    .iter()
                    .map(|&c| label_overlap(&labs[q], &labs[c]))
                    .collect(),
            )
        })
        .collect();
    let relevance: Vec<Vec<bool>> = queries.iter().map(|(_, r)| r.clone()).collect();
    let mut v2v_json = serde_json::Map::new();
    for &k in &p.map_k {
        let k = k as usize;
        let (map, used) = map_at_k(&queries, k);
        let random = random_map_at_k(&relevance, k, 100, p.seed as u64 ^ 0x6d6170);
        for (metric, value) in [
            (format!("map@{k}"), map),
            (format!("random_map@{k}"), random),
        ] {
            v2v_json.insert(metric.clone(), json!(value));
            rows_out.push(EvalRow {
                task: "volume_to_volume".into(),
                metric,
                value,
                n: used as i64,
                ..EvalRow::default()
            });
        }
    }
    v2v_json
}

/// Per label, an L2 logistic regression on the frozen image features of the train split, scored
/// on the evaluated splits. `train` and `test` are (features, labels).
fn linear_probe(
    train: (&[Vec<f32>], &[Vec<Option<bool>>]),
    test: (&[Vec<f32>], &[Vec<Option<bool>>]),
    label_set: &[usize],
    p: &EvalParams,
    rows_out: &mut Vec<EvalRow>,
) -> Value {
    let x_train: Vec<Vec<f64>> = train
        .0
        .iter()
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    let x_test: Vec<Vec<f64>> = test
        .0
        .iter()
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    let probes: BTreeMap<usize, Option<crate::probe::Logistic>> = label_set
        .iter()
        .map(|&li| {
            let (mut x, mut y) = (vec![], vec![]);
            for (k, l) in train.1.iter().enumerate() {
                if let Some(v) = l[li] {
                    x.push(x_train[k].clone());
                    y.push(v);
                }
            }
            (li, fit_logistic(&x, &y, p.probe_c, 50))
        })
        .collect();
    let probe_labels: Vec<usize> = label_set
        .iter()
        .copied()
        .filter(|li| probes[li].is_some())
        .collect();
    label_task(
        "linear_probe",
        |li| {
            let m = probes[&li].as_ref().expect("fitted probe");
            x_test.iter().map(|r| m.predict(r)).collect()
        },
        test.1,
        &probe_labels,
        p,
        rows_out,
    )
}

/// The fitted alignment: CT-CLIP's contrastive heads or the entity-grounded ones.
enum Fitted {
    Clip(Aligner),
    Entity(EntityAligner),
}

impl Fitted {
    /// The image head (unit-norm image embeddings).
    fn image_head(&self) -> ImageHead {
        match self {
            Fitted::Clip(a) => a.image_head(),
            Fitted::Entity(a) => a.image_head(),
        }
    }

    /// The alignment method's name.
    fn method(&self) -> &'static str {
        match self {
            Fitted::Clip(_) => "clip",
            Fitted::Entity(_) => "entity",
        }
    }

    /// Unit-norm embeddings of clause lists (reports, or one-clause prompts).
    fn text(&self, x: &[Vec<Vec<f32>>]) -> Tensor {
        match self {
            Fitted::Clip(a) => a.text(x),
            Fitted::Entity(a) => tch::no_grad(|| l2(&a.reports(x))),
        }
    }

    /// Logit scale of the prompt softmax (AUC and the Youden point do not depend on it).
    fn scale(&self) -> f64 {
        match self {
            Fitted::Clip(a) => a.scale(),
            Fitted::Entity(_) => 10.0,
        }
    }
}

impl Stage for EvalStage {
    fn kind(&self) -> &'static str {
        "eval"
    }
    fn code_version(&self) -> &'static str {
        "4"
    }
    fn describe(&self) -> &'static str {
        "zero-shot labels, report->volume and volume->volume retrieval, linear probe -> eval.parquet, eval.json; features.parquet, predictions.parquet and predictor/ (for mg3d predict)"
    }
    fn params(&self) -> Vec<ParamDef> {
        EvalParams::defs()
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![
            InputDecl {
                kind: "train",
                required: true,
            },
            InputDecl {
                kind: "shards",
                required: true,
            },
            InputDecl {
                kind: "entities",
                required: false,
            },
            InputDecl {
                kind: "reports",
                required: false,
            },
        ]
    }
    fn check_params(&self, params: &Params) -> Result<(), StageError> {
        let p: EvalParams = params.parse()?;
        Ok(p.check()?)
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: EvalParams = ctx.params.parse()?;
        p.check()?;
        // Before any encoding: the entity alignment's clause targets.
        let clause_targets = match (ctx.input("reports"), ctx.input("entities")) {
            _ if p.alignment != "entity" => None,
            (Ok(reports), Ok(entities)) => Some(read_clause_targets(
                &reports.join("clauses.parquet"),
                &entities.join("entities.parquet"),
            )?),
            _ => return Err(EvalError::EntityInputs.into()),
        };
        let train_dir = ctx.input("train")?;
        let mut tm = load_trained(train_dir, &p.device)?;
        let index = ShardIndex::open(ctx.input("shards")?)?;
        let report_labels = match ctx.input("entities") {
            Ok(dir) => Some(read_report_labels(
                &dir.join("labels.parquet"),
                p.unmentioned_as_negative,
            )?),
            Err(_) => None,
        };
        let (rows_out, summary) = evaluate(
            &mut tm,
            &index,
            report_labels.as_ref(),
            clause_targets.as_ref(),
            &p,
            (&ctx.out_dir, train_dir),
        )?;
        write_rows(&ctx.out_dir.join("eval.parquet"), &rows_out)?;
        std::fs::write(
            ctx.out_dir.join("eval.json"),
            serde_json::to_string_pretty(&summary).unwrap_or_default() + "\n",
        )?;
        Ok(json!({
            "samples": summary["samples"],
            "zero_shot_mean_auc": summary["zero_shot"]["mean_auc"],
            "linear_probe_mean_auc": summary["linear_probe"]["mean_auc"],
            "report_to_volume": summary["report_to_volume"],
        }))
    }
}
