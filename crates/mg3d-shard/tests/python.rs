//! Python (safetensors + torch, installed by `make setup`) reads the shards and gets the same
//! values and the same order as the Rust loader: python/mg3d_shards.py's permutation, its batches
//! (byte digests per field), and the volume normalisation recomputed in torch from the int16 HU.
//! Skipped without the Python environment unless MG3D_REQUIRE_PYTHON=1.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use mg3d_shard::{Loader, LoaderConfig, ShardIndex, VolumeSource, WriterConfig};
use mg3d_testkit::repo_root as root;

fn python() -> Option<PathBuf> {
    mg3d_testkit::python_with(&["safetensors", "torch"])
}

const SCRIPT: &str = r#"
import hashlib, json, sys
import torch
sys.path.insert(0, sys.argv[1])
import mg3d_shards as m
shard_dir, hu_dir = sys.argv[2], sys.argv[3]
out = {"orders": {}, "batches": [], "volume_mismatch": 0, "volumes_checked": 0}
for n, seed, epoch in [(10, 42, 0), (37, 11, 2), (1000, 123456789, 7), (5, 2**64 - 1, 2**63)]:
    out["orders"][f"{n}/{seed}/{epoch}"] = m.epoch_order(n, seed, epoch)
idx = m.load_index(shard_dir)
lo, hi = idx["volume"]["window"]
for nums, batch in m.batches(idx, "train", seed=11, epoch=1, batch_size=3):
    digest = {}
    for name, t in batch.items():
        digest[name] = [str(t.dtype), list(t.shape), hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()]
    out["batches"].append([nums, digest])
    for k, s in enumerate(nums):
        vid = idx["splits"]["train"]["samples"][s]["volume_id"]
        raw = open(f"{hu_dir}/{vid}.i16", "rb").read()
        hu = torch.frombuffer(bytearray(raw), dtype=torch.int16).to(torch.float32)
        want = ((hu.clamp(lo, hi) - lo) / (hi - lo)).to(torch.float16)
        got = batch["volume"][k].reshape(-1)
        out["volumes_checked"] += 1
        out["volume_mismatch"] += int((got != want).sum())
print(json.dumps(out))
"#;

#[test]
fn python_reads_equal_values_in_the_same_order() {
    let Some(py) = python() else { return };
    let recs = common::records(21, 9, 3, [6, 5, 4]);
    let dir = tempfile::tempdir().unwrap();
    let hu = dir.path().join("hu");
    std::fs::create_dir_all(&hu).unwrap();
    for r in &recs {
        let VolumeSource::Hu { data, .. } = &r.volume else {
            unreachable!()
        };
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(hu.join(format!("{}.i16", r.volume_id)), bytes).unwrap();
    }
    let shards = dir.path().join("out");
    common::write(
        recs,
        None,
        &WriterConfig {
            ratios: [1.0, 0.0, 0.0],
            ..common::small_cfg()
        },
        &shards,
    );
    let out = Command::new(&py)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-c", SCRIPT])
        .arg(root().join("crates/mg3d-shard/python"))
        .arg(&shards)
        .arg(&hu)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    for (key, order) in v["orders"].as_object().unwrap() {
        let p: Vec<u64> = key.split('/').map(|x| x.parse().unwrap()).collect();
        let rust = mg3d_shard::order::epoch_permutation(p[0] as usize, p[1], p[2]);
        let py: Vec<u32> = serde_json::from_value(order.clone()).unwrap();
        assert_eq!(py, rust, "permutation {key}");
    }

    let idx = ShardIndex::open(&shards).unwrap();
    let mut l = Loader::new(
        &idx,
        LoaderConfig {
            split: "train".into(),
            seed: 11,
            batch_size: 3,
            workers: 2,
            ..Default::default()
        },
    )
    .unwrap();
    l.skip_to(1, 0).unwrap();
    let torch_dtype = |d: mg3d_shard::Dtype| match d {
        mg3d_shard::Dtype::F16 => "torch.float16",
        mg3d_shard::Dtype::BF16 => "torch.bfloat16",
        mg3d_shard::Dtype::F32 => "torch.float32",
        mg3d_shard::Dtype::I8 => "torch.int8",
        mg3d_shard::Dtype::I32 => "torch.int32",
        mg3d_shard::Dtype::I64 => "torch.int64",
    };
    let py_batches = v["batches"].as_array().unwrap();
    let mut n = 0;
    for (b, pb) in l.by_ref().zip(py_batches) {
        let b = b.unwrap();
        let nums: Vec<u32> = serde_json::from_value(pb[0].clone()).unwrap();
        assert_eq!(nums, b.samples, "batch {} order", b.batch);
        for (name, t) in &b.fields {
            let d = &pb[1][name];
            assert_eq!(d[0], torch_dtype(t.dtype), "{name}");
            assert_eq!(
                serde_json::from_value::<Vec<usize>>(d[1].clone()).unwrap(),
                t.shape,
                "{name}"
            );
            assert_eq!(
                d[2].as_str().unwrap(),
                mg3d_shard::format::sha256_hex(&t.data),
                "{name} values of batch {}",
                b.batch
            );
        }
        n += 1;
    }
    assert_eq!(n, py_batches.len());
    assert!(n >= 3);
    assert!(v["volumes_checked"].as_u64().unwrap() > 10);
    assert_eq!(
        v["volume_mismatch"], 0,
        "torch's (clamp(hu) - lo) / (hi - lo) -> float16 equals the shard's volume"
    );
}
