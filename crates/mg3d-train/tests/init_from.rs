//! `init_from`: a model starts from a train output (every weight) or from MONAI-layout Swin
//! weights, as safetensors or as a `torch.save` checkpoint nesting a DataParallel state dict
//! (`{"state_dict": {"module.swinViT....": ...}, "epoch": ...}`, written by the project's Python).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use mg3d_testkit::{minilm, python_with};
use mg3d_train::stage::init_weights;
use mg3d_train::swin::export_encoder;
use tch::{Tensor, nn};

use crate::train::model;

/// Whether the variables of `a` and `b` whose names start with `prefix` are all equal.
fn same(a: &nn::VarStore, b: &nn::VarStore, prefix: &str) -> bool {
    let (a, b): (HashMap<String, Tensor>, HashMap<String, Tensor>) = (a.variables(), b.variables());
    let names: Vec<&String> = a.keys().filter(|n| n.starts_with(prefix)).collect();
    assert!(!names.is_empty(), "no variable under {prefix:?}");
    names.iter().all(|n| a[*n].equal(&b[*n]))
}

#[test]
fn init_from_a_train_output_or_monai_swin_weights() {
    let Some(text) = minilm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (vs_a, a) = model(&text, 1);

    // MONAI layout, safetensors: the encoder only.
    let st = dir.path().join("encoder.safetensors");
    export_encoder(a.encoder(), &st, "swinViT.").unwrap();
    let (mut vs_b, b) = model(&text, 2);
    assert!(!same(&vs_a, &vs_b, "swinViT."));
    let what = init_weights(&mut vs_b, &b, &st).unwrap();
    assert!(what.contains("image encoder"), "{what}");
    assert!(same(&vs_a, &vs_b, "swinViT."));
    assert!(
        !same(&vs_a, &vs_b, "multi_modal_text_proj"),
        "only the encoder is loaded"
    );

    // The same weights as a torch.save checkpoint (zip, nested, `module.` prefix).
    let py = python_with(&["torch", "safetensors"]).expect("torch in the venv");
    let pt = dir.path().join("model_swinvit.pt");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/save_checkpoint.py");
    let o = Command::new(py)
        .arg(&script)
        .arg(&st)
        .arg(&pt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (mut vs_c, c) = model(&text, 3);
    init_weights(&mut vs_c, &c, &pt).unwrap();
    assert!(same(&vs_a, &vs_c, "swinViT."));

    // A train output folder: every weight.
    let out = dir.path().join("train");
    std::fs::create_dir_all(out.join("final")).unwrap();
    vs_a.save(out.join("final/model.safetensors")).unwrap();
    let (mut vs_d, d) = model(&text, 4);
    init_weights(&mut vs_d, &d, &out).unwrap();
    assert!(same(&vs_a, &vs_d, ""));

    // Weights of another encoder size are refused with the names at fault.
    let other = dir.path().join("other.safetensors");
    Tensor::write_safetensors(
        &[(
            "swinViT.patch_embed.proj.weight",
            Tensor::zeros([7, 1, 2, 2, 2], tch::kind::FLOAT_CPU),
        )],
        &other,
    )
    .unwrap();
    let e = init_weights(&mut vs_d, &d, &other).unwrap_err().to_string();
    assert!(e.contains("patch_embed.proj.weight"), "{e}");
}
