//! A train output is a model folder: with `config.json` and the tokenizer beside
//! `final/model.safetensors`, it loads after the text folder it was trained from is gone, with
//! every weight and the image features unchanged.

use std::collections::HashMap;

use mg3d_report::tokens::load_tokenizer;
use mg3d_shard::format::VolumeSpec;
use mg3d_testkit::minilm;
use mg3d_train::model::{Mg3d, ModelConfig};
use mg3d_train::stage::{ModelVolume, load_trained, write_model_folder};
use mg3d_train::swin::SwinConfig;
use serde_json::json;
use tch::{Device, Tensor, nn};

#[test]
fn a_train_output_loads_without_its_text_folder() {
    let Some(minilm) = minilm() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A private copy of the text folder, deleted before loading.
    let text = dir.path().join("text");
    std::fs::create_dir_all(&text).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(minilm.join(f), text.join(f)).unwrap();
    }
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    // What the train params below resolve to (hidden 32: 8 pooling heads).
    let cfg = ModelConfig {
        swin: SwinConfig::tiny(),
        hidden: 32,
        fusion_layers: 2,
        pool_heads: 8,
        input: [32, 64, 64],
        text_trainable: false,
    };
    let model = Mg3d::new(&vs, cfg, &text).unwrap();
    let out = dir.path().join("train");
    std::fs::create_dir_all(out.join("final")).unwrap();
    vs.save(out.join("final/model.safetensors")).unwrap();
    // Every train param, as the stage's validated params hold them.
    let params = json!({
        "model": "tiny", "text_model": text, "text_trainable": false, "hidden": 32,
        "input": [32, 64, 64], "device": "cpu", "steps": 1, "batch_size": 2, "accumulate": 1,
        "lr": 1e-4, "warmup": 0, "clip": 1.0, "checkpoint_every": 1, "seed": 0, "workers": 1,
        "objectives": {}, "init_from": "",
    });
    let volume = ModelVolume {
        spec: VolumeSpec {
            shape_ras: [64, 64, 32],
            window: [-1000.0, 1000.0],
            layout: "test".into(),
            preset: Some("demo-64".into()),
        },
        dtype: mg3d_shard::Dtype::BF16,
    };
    write_model_folder(&out, params.as_object().unwrap(), &model, &text, &volume).unwrap();
    std::fs::remove_dir_all(&text).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["format"], "mg3d-model");
    assert_eq!(config["volume"]["preset"], "demo-64");
    assert_eq!(config["volume"]["dtype"], "BF16");

    let tm = load_trained(&out, "cpu").unwrap();
    assert_eq!(tm.input, [32, 64, 64]);
    assert_eq!(tm.volume.as_ref(), Some(&volume));
    let (a, b): (HashMap<String, Tensor>, HashMap<String, Tensor>) =
        (vs.variables(), tm.vs.variables());
    assert_eq!(a.len(), b.len());
    for (n, t) in &a {
        assert!(t.equal(&b[n]), "{n} differs");
    }
    tch::manual_seed(1);
    let x = Tensor::rand([2, 1, 32, 64, 64], tch::kind::FLOAT_CPU);
    let (fa, fb) = tch::no_grad(|| (model.image_features(&x), tm.model.image_features(&x)));
    // Equal weights; the features agree to float rounding (freshly loaded tensors can sit at
    // other alignments, so vectorised reductions may sum in another order).
    let diff = (&fa - &fb).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "image features differ by {diff}");
    // The tokenizer comes from the folder too.
    let tk = load_tokenizer(&tm.text_model, 16).unwrap();
    assert_eq!(
        tk.encode("pleural effusion", true).unwrap().get_ids()[0],
        101
    );
}
