//! The 3D Swin encoder has MONAI SwinViT's layout and computation: shapes per stage (48 tokens x
//! 768 for Swin-B at 128x96x128), parameter counts (8.06M / 31.6M), parameter and buffer names and
//! shapes equal to MONAI's state_dict (a checked-in list from MONAI 1.6.1), safetensors load/export
//! with and without the `swinViT.` prefix, and, when `.venv` has monai, outputs equal to MONAI's for
//! shared random weights and exports that MONAI loads strictly. The Python part is skipped without
//! monai unless MG3D_REQUIRE_PYTHON=1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mg3d_testkit::repo_root as root;
use mg3d_train::swin::{
    LoadOptions, Merging, SwinConfig, SwinError, SwinViT, export_encoder, load_encoder,
    load_encoder_with,
};
use tch::{Device, Kind, Tensor, nn};

fn build(cfg: &SwinConfig, seed: i64) -> (nn::VarStore, SwinViT) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = SwinViT::new(&(vs.root() / "swinViT"), cfg);
    (vs, model)
}

fn shapes(outs: &[Tensor]) -> Vec<Vec<i64>> {
    outs.iter().map(Tensor::size).collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// `name shape dtype` lines in MONAI's spelling, sorted.
fn rust_names(model: &SwinViT) -> Vec<String> {
    let mut v: Vec<String> = model
        .named_parameters()
        .iter()
        .chain(model.named_buffers())
        .map(|(n, t)| {
            let shape: Vec<String> = t.size().iter().map(i64::to_string).collect();
            let kind = match t.kind() {
                Kind::Float => "float32",
                Kind::Int64 => "int64",
                k => panic!("unexpected kind {k:?}"),
            };
            format!("{n} {} {kind}", shape.join("x"))
        })
        .collect();
    v.sort();
    v
}

fn read_names(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn model_configs_parse_to_the_presets() {
    for (file, want) in [
        ("tiny", SwinConfig::tiny()),
        ("swin-b", SwinConfig::swin_b()),
        ("swin-l", SwinConfig::swin_l()),
    ] {
        let path = root().join(format!("configs/model/{file}.toml"));
        assert_eq!(SwinConfig::from_file(&path).unwrap(), want, "{file}");
        assert_eq!(SwinConfig::preset(file).unwrap(), want);
    }
    assert!(SwinConfig::preset("swin-h").is_err());
    let bad = "[swin]\nin_chans = 1\nembed_dim = 48\ndepths = [2, 2, 2, 2]\nheads = [5, 6, 12, 24]\nwindow = 7\npatch = 2\nmlp_ratio = 4.0\n";
    let err = SwinConfig::from_toml_str(bad, "bad.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.toml") && err.contains("heads must divide"),
        "{err}"
    );
    let typo = "[swin]\nin_chans = 1\nembed_dims = 48\n";
    let err = SwinConfig::from_toml_str(typo, "typo.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("typo.toml") && err.contains("embed_dims"),
        "{err}"
    );
    // Other tables (text encoder, fusion) may share the file.
    let shared = format!("[text]\nmodel = \"x\"\n{}", &bad.replace("[5,", "[3,"));
    assert_eq!(
        SwinConfig::from_toml_str(&shared, "shared.toml").unwrap(),
        SwinConfig::swin_b()
    );
}

#[test]
fn tiny_shapes_and_tokens() {
    let cfg = SwinConfig::tiny();
    let (_vs, model) = build(&cfg, 0);
    tch::no_grad(|| {
        let x = Tensor::randn([2, 1, 32, 32, 32], (Kind::Float, Device::Cpu));
        let outs = model.forward(&x);
        assert_eq!(
            shapes(&outs),
            vec![
                vec![2, 12, 16, 16, 16],
                vec![2, 24, 8, 8, 8],
                vec![2, 48, 4, 4, 4],
                vec![2, 96, 2, 2, 2],
                vec![2, 192, 1, 1, 1],
            ]
        );
        // Each output is layer-normed over channels (no affine): mean 0, variance 1 per voxel.
        let mean = outs[1].mean_dim(1, false, Kind::Float).abs().max();
        assert!(mean.double_value(&[]) < 1e-5);
        // MG-3D's input size: 4x3x4 = 48 tokens.
        let x = Tensor::randn([1, 1, 128, 96, 128], (Kind::Float, Device::Cpu));
        let tokens = model.tokens(&x);
        assert_eq!(tokens.size(), vec![1, 48, 192]);
        // Odd sizes: the patch embedding and merging pad like MONAI.
        let x = Tensor::randn([1, 1, 21, 28, 36], (Kind::Float, Device::Cpu));
        let outs = model.forward(&x);
        for (k, o) in outs.iter().enumerate() {
            let g = cfg.stage_grid([21, 28, 36], k);
            assert_eq!(o.size()[2..], g[..], "stage {k}");
        }
        assert_eq!(outs[4].size(), vec![1, 192, 1, 1, 2]);
    });
}

#[test]
fn swin_b_at_128x96x128_gives_48_tokens_of_768() {
    let cfg = SwinConfig::swin_b();
    let (_vs, model) = build(&cfg, 0);
    assert_eq!(model.num_parameters(), 8_062_002);
    let t = std::time::Instant::now();
    tch::no_grad(|| {
        let x = Tensor::randn([1, 1, 128, 96, 128], (Kind::Float, Device::Cpu));
        let outs = model.forward(&x);
        assert_eq!(
            shapes(&outs),
            vec![
                vec![1, 48, 64, 48, 64],
                vec![1, 96, 32, 24, 32],
                vec![1, 192, 16, 12, 16],
                vec![1, 384, 8, 6, 8],
                vec![1, 768, 4, 3, 4],
            ]
        );
        let tokens = outs[4].flatten(2, -1).transpose(1, 2);
        assert_eq!(tokens.size(), vec![1, 48, 768]);
        assert_eq!(tokens.isfinite().all().int64_value(&[]), 1);
    });
    eprintln!("swin-b forward at 128x96x128 on CPU: {:.1?}", t.elapsed());
}

#[test]
fn parameter_counts_and_monai_names() {
    let (vs, b) = build(&SwinConfig::swin_b(), 0);
    assert_eq!(b.num_parameters(), 8_062_002, "Swin-B: ~8.06M");
    assert_eq!(b.named_parameters().len(), 118);
    assert_eq!(b.named_buffers().len(), 8);
    // Names, shapes and dtypes equal MONAI's SwinTransformer state_dict (checked-in list).
    let want = read_names(&root().join("crates/mg3d-train/tests/data/monai_swinvit_swin_b.txt"));
    assert_eq!(want.len(), 126);
    assert_eq!(rust_names(&b), want);
    // The VarStore holds exactly the parameters, under the path the encoder was built at.
    let mut vars: Vec<String> = vs.variables().into_keys().collect();
    vars.sort();
    let mut named: Vec<String> = b
        .named_parameters()
        .iter()
        .map(|(n, _)| format!("swinViT.{n}"))
        .collect();
    named.sort();
    assert_eq!(vars, named);
    for n in [
        "swinViT.patch_embed.proj.weight",
        "swinViT.layers1.0.blocks.0.norm1.weight",
        "swinViT.layers1.0.blocks.0.attn.relative_position_bias_table",
        "swinViT.layers1.0.blocks.0.attn.qkv.weight",
        "swinViT.layers1.0.blocks.1.mlp.linear1.weight",
        "swinViT.layers4.0.downsample.reduction.weight",
    ] {
        assert!(vars.iter().any(|v| v == n), "{n}");
    }
    drop((vs, b));
    let (_vs, l) = build(&SwinConfig::swin_l(), 0);
    assert_eq!(l.num_parameters(), 31_593_474, "Swin-L: ~31.6M");
}

#[test]
fn export_and_load_round_trip_with_and_without_prefix() {
    let cfg = SwinConfig::tiny();
    let (_vs_a, a) = build(&cfg, 1);
    let (_vs_b, b) = build(&cfg, 2);
    let dir = tempfile::tempdir().unwrap();
    let x = Tensor::randn([1, 1, 32, 32, 32], (Kind::Float, Device::Cpu));
    let want = tch::no_grad(|| a.forward(&x));
    for prefix in ["swinViT.", ""] {
        let file = dir.path().join(format!("enc{prefix}safetensors"));
        export_encoder(&a, &file, prefix).unwrap();
        let report = load_encoder(&b, &file).unwrap();
        assert_eq!(report.prefix, prefix);
        assert_eq!(report.loaded, a.named_parameters().len());
        assert_eq!(report.buffers_checked, 8);
        assert!(report.missing.is_empty() && report.unexpected.is_empty());
        let got = tch::no_grad(|| b.forward(&x));
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(max_diff(g, w), 0.0);
        }
    }

    // Missing, unexpected and mis-shaped tensors are named in the error.
    let file = dir.path().join("enc.safetensors");
    let mut tensors = Tensor::read_safetensors(dir.path().join("encswinViT.safetensors")).unwrap();
    tensors.retain(|(n, _)| n != "swinViT.layers2.0.blocks.1.attn.qkv.bias");
    tensors.push((
        "swinViT.layers2.0.blocks.9.attn.qkv.bias".into(),
        Tensor::zeros([3], (Kind::Float, Device::Cpu)),
    ));
    tensors.push((
        "decoder1.conv.weight".into(),
        Tensor::zeros([3], (Kind::Float, Device::Cpu)),
    ));
    Tensor::write_safetensors(&tensors, &file).unwrap();
    let err = load_encoder(&b, &file).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SwinError::Mismatch { .. }), "{msg}");
    assert!(
        msg.contains("missing: swinViT.layers2.0.blocks.1.attn.qkv.bias")
            && msg.contains("unexpected: swinViT.layers2.0.blocks.9.attn.qkv.bias")
            && msg.contains("enc.safetensors"),
        "{msg}"
    );
    // Non-strict: loads the rest, reports the names, ignores tensors outside the prefix.
    let report = load_encoder_with(
        &b,
        &file,
        &LoadOptions {
            prefix: None,
            strict: false,
        },
    )
    .unwrap();
    assert_eq!(
        report.missing,
        vec!["swinViT.layers2.0.blocks.1.attn.qkv.bias"]
    );
    assert_eq!(report.unexpected.len(), 1);
    assert_eq!(report.ignored, 1);

    // Weights of another size (window 7 tables into a window-4 model) fail with shapes named.
    let (_vs_c, c) = build(
        &SwinConfig {
            window: 7,
            ..SwinConfig::tiny()
        },
        3,
    );
    let file7 = dir.path().join("w7.safetensors");
    export_encoder(&c, &file7, "swinViT.").unwrap();
    let msg = load_encoder(&b, &file7).unwrap_err().to_string();
    assert!(
        msg.contains("relative_position_bias_table: file [2197, 1] vs model [343, 1]")
            && msg.contains("another window size"),
        "{msg}"
    );
    // A file without an encoder.
    let other = dir.path().join("other.safetensors");
    Tensor::write_safetensors(
        &[("x", Tensor::zeros([1], (Kind::Float, Device::Cpu)))],
        &other,
    )
    .unwrap();
    let msg = load_encoder(&b, &other).unwrap_err().to_string();
    assert!(msg.contains("patch_embed.proj.weight"), "{msg}");
}

#[test]
fn tiny_trains_every_parameter() {
    let (vs, model) = build(&SwinConfig::tiny(), 5);
    // Deterministic input and loss weights (the global RNG is shared by parallel tests). The
    // tokens are layer-normed, so their plain sum (or sum of squares) is constant per token and
    // would give zero gradients: weight them instead.
    let x = (Tensor::arange(2 * 32 * 32 * 32, (Kind::Float, Device::Cpu)) * 0.37)
        .sin()
        .view([2, 1, 32, 32, 32]);
    let tokens = model.tokens(&x);
    let w = (Tensor::arange(tokens.numel() as i64, (Kind::Float, Device::Cpu)) * 1.3)
        .cos()
        .view_as(&tokens);
    let loss = (tokens * w).sum(Kind::Float);
    loss.backward();
    for (n, t) in model.named_parameters() {
        let g = t.grad();
        assert!(g.defined(), "{n} has no gradient");
        assert!(
            g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "{n}: zero gradient"
        );
    }
    assert_eq!(
        vs.trainable_variables().len(),
        model.named_parameters().len()
    );
}

#[test]
fn mergingv2_differs_from_merging_only_in_order() {
    // Same weights, the other sub-volume order: the patch embedding is equal, the outputs after
    // layers1 (which end with the merge) differ.
    let (va, a) = build(&SwinConfig::tiny(), 4);
    let (mut vb, b) = build(
        &SwinConfig {
            downsample: Merging::MergingV2,
            ..SwinConfig::tiny()
        },
        4,
    );
    // Copy the weights: the global RNG is shared with tests running in parallel threads.
    vb.copy(&va).unwrap();
    let x = Tensor::randn([1, 1, 32, 32, 32], (Kind::Float, Device::Cpu));
    let (oa, ob) = tch::no_grad(|| (a.forward(&x), b.forward(&x)));
    assert_eq!(max_diff(&oa[0], &ob[0]), 0.0);
    assert!(max_diff(&oa[1], &ob[1]) > 1e-3);
}

fn python() -> Option<PathBuf> {
    mg3d_testkit::python_with(&["monai", "einops", "safetensors", "torch"])
}

fn run_py(py: &Path, args: &[&str]) -> serde_json::Value {
    let script = root().join("crates/mg3d-train/tests/python/swin_reference.py");
    let out = Command::new(py).arg(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "swin_reference.py {}: {}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn outputs_equal_monai_swinvit() {
    let Some(py) = python() else { return };
    let cases = [
        (SwinConfig::tiny(), [32, 32, 32]),
        (
            SwinConfig {
                downsample: Merging::MergingV2,
                ..SwinConfig::tiny()
            },
            [21, 28, 36],
        ),
        (SwinConfig::swin_b(), [64, 48, 64]),
    ];
    let json: Vec<serde_json::Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (cfg, input))| {
            let mut c = serde_json::json!({
                "in_chans": cfg.in_chans, "embed_dim": cfg.embed_dim, "depths": cfg.depths,
                "heads": cfg.heads, "window": cfg.window, "patch": cfg.patch,
                "mlp_ratio": cfg.mlp_ratio,
            });
            c["downsample"] = match cfg.downsample {
                Merging::Merging => "merging".into(),
                Merging::MergingV2 => "mergingv2".into(),
            };
            serde_json::json!({"cfg": c, "input": input, "seed": 10 + i})
        })
        .collect();
    let cases_json = serde_json::to_string(&json).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    run_py(&py, &["make", d, &cases_json]);
    for (i, (cfg, input)) in cases.iter().enumerate() {
        let (_vs, model) = build(cfg, 99);
        // Names and shapes equal MONAI's state_dict for this config.
        let names = read_names(&dir.path().join(format!("case{i}_names.txt")));
        assert_eq!(rust_names(&model), names, "case {i}");
        let report = load_encoder(
            &model,
            &dir.path().join(format!("case{i}_weights.safetensors")),
        )
        .unwrap();
        assert_eq!(report.prefix, "swinViT.");
        assert_eq!(report.ignored, 1, "the decoder tensor is left alone");
        let io: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(dir.path().join(format!("case{i}_io.safetensors")))
                .unwrap()
                .into_iter()
                .collect();
        let outs = tch::no_grad(|| model.forward(&io["input"]));
        let mut worst: f64 = 0.0;
        for (k, o) in outs.iter().enumerate() {
            let want = &io[&format!("out{k}")];
            assert_eq!(o.size(), want.size(), "case {i} out{k}");
            let diff = max_diff(o, want);
            worst = worst.max(diff);
            assert!(
                diff <= 1e-4,
                "case {i} ({input:?}) out{k}: max |diff| {diff:e}"
            );
        }
        eprintln!(
            "case {i} {input:?} embed {}: max |rust - monai| over 5 outputs = {worst:e}",
            cfg.embed_dim
        );
        export_encoder(
            &model,
            &dir.path().join(format!("case{i}_export.safetensors")),
            "swinViT.",
        )
        .unwrap();
    }
    // MONAI loads every export with strict=True and gets the original tensors back.
    let checked = run_py(&py, &["check", d, &cases_json]);
    for (i, r) in checked["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(r["max_diff"].as_f64(), Some(0.0), "case {i}: {r}");
    }
}
