//! Shards written from small in-memory records: split leakage (property test), byte-identical
//! rewrites, values, order independent of workers, ranks, resume, checksums, neighbour batches.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, Int32Array, StringArray};
use mg3d_core::table::{TableSchema, read_table};
use mg3d_shard::format::SPLITS;
use mg3d_shard::writer::normalise_hu;
use mg3d_shard::{
    Dtype, Loader, LoaderConfig, NeighborSampler, ShardError, ShardIndex, VolumeSource,
    WriterConfig, write_shards,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn cfg(split: &str, batch: usize, workers: usize) -> LoaderConfig {
    LoaderConfig {
        split: split.into(),
        seed: 11,
        batch_size: batch,
        workers,
        ..Default::default()
    }
}

/// Samples and a digest of every buffer, per batch, for one pass.
fn pass(loader: &mut Loader) -> Vec<(Vec<u32>, String)> {
    loader
        .by_ref()
        .map(|b| {
            let b = b.unwrap();
            let mut h = blake3::Hasher::new();
            for (name, t) in &b.fields {
                h.update(name.as_bytes());
                h.update(&t.data);
            }
            (b.samples.clone(), h.finalize().to_hex().to_string())
        })
        .collect()
}

#[test]
fn split_leakage_is_impossible_property() {
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    for case in 0..40 {
        let patients = rng.random_range(1..25);
        let mut recs = common::records(case, patients, 4, [3, 2, 2]);
        // Shuffle the rows: the split must not depend on row order.
        for i in (1..recs.len()).rev() {
            let j = rng.random_range(0..=i);
            recs.swap(i, j);
        }
        let ratios = [
            rng.random_range(0..4) as f64,
            rng.random_range(0..3) as f64,
            rng.random_range(0..3) as f64 + 0.5,
        ];
        let c = WriterConfig {
            seed: rng.random(),
            ratios,
            shard_bytes: rng.random_range(100..5000),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let idx = common::write(recs.clone(), None, &c, dir.path());
        let mut split_of_patient: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut n = 0;
        for (name, s) in &idx.splits {
            for e in &s.samples {
                split_of_patient
                    .entry(&e.patient_id)
                    .or_default()
                    .insert(name);
                n += 1;
            }
        }
        assert_eq!(
            n,
            recs.len(),
            "case {case}: every record is in exactly one split"
        );
        for (p, s) in &split_of_patient {
            assert_eq!(s.len(), 1, "case {case}: patient {p} in {s:?}");
        }
        // splits.parquet says the same.
        let batches = read_table(
            &dir.path().join("splits.parquet"),
            &TableSchema::get("splits").unwrap(),
        )
        .unwrap();
        let mut rows = 0;
        for b in &batches {
            let p = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let s = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
            let k = b.column(2).as_any().downcast_ref::<Int32Array>().unwrap();
            for i in 0..b.num_rows() {
                let want = split_of_patient[p.value(i)].iter().next().unwrap();
                assert_eq!(s.value(i), *want);
                assert!(k.value(i) >= 1);
                rows += 1;
            }
        }
        assert_eq!(rows, patients);
        // Adding patients never moves existing ones.
        let mut more = recs.clone();
        more.extend(
            common::records(case + 1000, 5, 2, [3, 2, 2])
                .into_iter()
                .map(|mut r| {
                    r.patient_id = format!("new_{}", r.patient_id);
                    r.volume_id = format!("new_{}", r.volume_id);
                    r
                }),
        );
        let dir2 = tempfile::tempdir().unwrap();
        let idx2 = common::write(more, None, &c, dir2.path());
        for (name, s) in &idx2.splits {
            for e in &s.samples {
                if let Some(old) = split_of_patient.get(e.patient_id.as_str()) {
                    assert!(
                        old.contains(name.as_str()),
                        "case {case}: {} moved",
                        e.patient_id
                    );
                }
            }
        }
    }
}

#[test]
fn a_patient_in_two_given_splits_is_refused() {
    let mut recs = common::records(1, 2, 3, [2, 2, 2]);
    recs.retain(|r| r.patient_id == "patient000");
    if recs.len() < 2 {
        recs.push(recs[0].clone());
        recs[1].volume_id.push('b');
    }
    recs[0].split = Some(0);
    recs[1].split = Some(1);
    let dir = tempfile::tempdir().unwrap();
    let e = write_shards(
        recs,
        None,
        &WriterConfig::default(),
        dir.path(),
        None,
        &|| false,
        &|_| {},
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("patient000") && msg.contains("cross splits"),
        "{msg}"
    );
}

#[test]
fn identical_inputs_give_identical_bytes() {
    let recs = common::records(3, 12, 3, [5, 4, 3]);
    let nb = common::neighbors(&recs);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write(recs.clone(), Some(&nb), &common::small_cfg(), a.path());
    let mut rev = recs;
    rev.reverse();
    common::write(rev, Some(&nb), &common::small_cfg(), b.path());
    let la = mg3d_core::fsutil::hash_dir(a.path()).unwrap();
    let lb = mg3d_core::fsutil::hash_dir(b.path()).unwrap();
    assert!(
        la.keys().filter(|k| k.ends_with(".safetensors")).count() > 3,
        "{la:?}"
    );
    assert_eq!(la, lb);
}

#[test]
fn values_round_trip_and_volumes_are_normalised() {
    for dtype in [Dtype::F16, Dtype::BF16, Dtype::F32] {
        let recs = common::records(4, 6, 2, [5, 4, 3]);
        let dir = tempfile::tempdir().unwrap();
        let c = WriterConfig {
            dtype,
            ratios: [1.0, 0.0, 0.0],
            ..common::small_cfg()
        };
        let idx_file = common::write(recs.clone(), None, &c, dir.path());
        assert_eq!(idx_file.fields[0].shape, vec![1, 3, 4, 5]);
        let idx = ShardIndex::open(dir.path()).unwrap();
        let loader = Loader::new(&idx, cfg("train", 1, 0)).unwrap();
        let by_vol: BTreeMap<&str, _> = recs.iter().map(|r| (r.volume_id.as_str(), r)).collect();
        let samples = &idx.split("train").unwrap().samples;
        for (i, e) in samples.iter().enumerate() {
            let r = by_vol[e.volume_id.as_str()];
            let f = loader.read_samples(&[i as u32]).unwrap();
            let VolumeSource::Hu { data, .. } = &r.volume else {
                unreachable!()
            };
            let want: Vec<f32> = data
                .iter()
                .map(|&x| {
                    let y = normalise_hu(x as f32, -1000.0, 1000.0);
                    match dtype {
                        Dtype::F16 => half::f16::from_f32(y).to_f32(),
                        Dtype::BF16 => half::bf16::from_f32(y).to_f32(),
                        _ => y,
                    }
                })
                .collect();
            let got = f["volume"].to_f32();
            assert_eq!(got, want);
            assert!(got.iter().all(|v| (0.0..=1.0).contains(v)));
            let ints = |n: &str| f[n].to_i64().unwrap();
            assert_eq!(
                ints("input_ids"),
                r.input_ids.iter().map(|&x| x as i64).collect::<Vec<_>>()
            );
            assert_eq!(
                ints("attention_mask"),
                r.attention_mask
                    .iter()
                    .map(|&x| x as i64)
                    .collect::<Vec<_>>()
            );
            assert_eq!(
                ints("clause_index"),
                r.clause_index.iter().map(|&x| x as i64).collect::<Vec<_>>()
            );
            assert_eq!(
                ints("word_start"),
                r.word_start.iter().map(|&x| x as i64).collect::<Vec<_>>()
            );
            assert_eq!(
                ints("labels"),
                r.labels.iter().map(|&x| x as i64).collect::<Vec<_>>()
            );
            assert_eq!(
                ints("signature"),
                r.signature
                    .as_ref()
                    .unwrap()
                    .iter()
                    .map(|&x| x as i64)
                    .collect::<Vec<_>>()
            );
            assert_eq!(ints("sample_index"), vec![i as i64]);
            assert_eq!(f["volume"].shape, vec![1, 1, 3, 4, 5]);
        }
    }
}

#[test]
fn volumes_of_other_shapes_are_cropped_or_padded() {
    let mut recs = common::records(8, 3, 1, [4, 4, 4]);
    recs[1].volume = VolumeSource::Hu {
        dims: [6, 2, 4],
        data: vec![500; 48],
    };
    let dir = tempfile::tempdir().unwrap();
    let c = WriterConfig {
        shape_ras: Some([4, 4, 4]),
        ratios: [1.0, 0.0, 0.0],
        ..Default::default()
    };
    let (_, s) = write_shards(recs, None, &c, dir.path(), None, &|| false, &|_| {}).unwrap();
    assert_eq!(s.resized, 1);
    let idx = ShardIndex::open(dir.path()).unwrap();
    let e = idx
        .split("train")
        .unwrap()
        .samples
        .iter()
        .position(|e| e.volume_id == "vol001_0")
        .unwrap();
    let l = Loader::new(&idx, cfg("train", 1, 0)).unwrap();
    let v = l.read_samples(&[e as u32]).unwrap()["volume"].to_f32();
    // Along A the 2 rows are padded to 4 with the window's low end (0); along R 6 are cropped to 4.
    let on = half::f16::from_f32(normalise_hu(500.0, -1000.0, 1000.0)).to_f32();
    assert_eq!(v.iter().filter(|&&x| x == on).count(), 4 * 2 * 4);
    assert_eq!(v.iter().filter(|&&x| x == 0.0).count(), 4 * 2 * 4);
}

#[test]
fn order_is_identical_for_1_2_4_workers() {
    let recs = common::records(5, 20, 3, [4, 3, 2]);
    let dir = tempfile::tempdir().unwrap();
    common::write(recs, None, &common::small_cfg(), dir.path());
    let idx = ShardIndex::open(dir.path()).unwrap();
    let mut runs = Vec::new();
    for workers in [0, 1, 2, 4] {
        let mut l = Loader::new(&idx, cfg("train", 3, workers)).unwrap();
        let e0 = pass(&mut l);
        let e1 = pass(&mut l);
        assert_eq!(l.state().epoch, 2);
        runs.push((workers, e0, e1));
    }
    let n = idx.split("train").unwrap().samples.len();
    let all: BTreeSet<u32> = runs[0].1.iter().flat_map(|b| b.0.clone()).collect();
    assert_eq!(all.len(), n, "an epoch covers every sample once");
    assert_ne!(runs[0].1, runs[0].2, "epochs differ");
    for (w, e0, e1) in &runs[1..] {
        assert_eq!(e0, &runs[0].1, "{w} workers, epoch 0");
        assert_eq!(e1, &runs[0].2, "{w} workers, epoch 1");
    }
}

#[test]
fn ranks_partition_every_epoch() {
    let recs = common::records(6, 25, 3, [2, 2, 2]);
    let dir = tempfile::tempdir().unwrap();
    common::write(recs, None, &common::small_cfg(), dir.path());
    let idx = ShardIndex::open(dir.path()).unwrap();
    let n = idx.split("train").unwrap().samples.len();
    let single: Vec<u32> = {
        let mut l = Loader::new(&idx, cfg("train", 2, 2)).unwrap();
        pass(&mut l).into_iter().flat_map(|b| b.0).collect()
    };
    for world in [2, 3, 4] {
        let mut seen = Vec::new();
        let mut counts = Vec::new();
        for rank in 0..world {
            let mut l = Loader::new(
                &idx,
                LoaderConfig {
                    rank,
                    world,
                    ..cfg("train", 2, 2)
                },
            )
            .unwrap();
            let batches = pass(&mut l);
            counts.push(batches.len());
            seen.extend(batches.into_iter().flat_map(|b| b.0));
        }
        seen.sort();
        assert_eq!(seen, (0..n as u32).collect::<Vec<_>>(), "world {world}");
        // The global order is the single-process order whatever the world size.
        let mut s2 = single.clone();
        s2.sort();
        assert_eq!(seen, s2);
        assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
        // drop_last: equal batch counts on every rank.
        let dl: Vec<usize> = (0..world)
            .map(|rank| {
                let mut l = Loader::new(
                    &idx,
                    LoaderConfig {
                        rank,
                        world,
                        drop_last: true,
                        ..cfg("train", 2, 1)
                    },
                )
                .unwrap();
                pass(&mut l).len()
            })
            .collect();
        assert!(dl.windows(2).all(|w| w[0] == w[1]), "{dl:?}");
    }
}

#[test]
fn resume_from_the_middle_gives_exactly_the_remaining_sequence() {
    let recs = common::records(7, 15, 3, [3, 3, 2]);
    let dir = tempfile::tempdir().unwrap();
    common::write(recs, None, &common::small_cfg(), dir.path());
    let idx = ShardIndex::open(dir.path()).unwrap();
    let mut l = Loader::new(&idx, cfg("train", 1, 2)).unwrap();
    l.skip_to(3, 0).unwrap();
    let full = pass(&mut l);
    let n = full.len();
    assert!(n > 5);
    for k in 0..=n {
        let mut r = Loader::new(&idx, cfg("train", 1, 2)).unwrap();
        r.skip_to(3, k).unwrap();
        assert_eq!(pass(&mut r), full[k..].to_vec(), "resume at {k}");
        assert_eq!(r.state().epoch, 4);
    }
    // Checkpoint-style: stop after some batches, save state_after, resume in a new loader.
    for world in [1, 2] {
        for stop in [0, 1, 2] {
            for rank in 0..world {
                let c = LoaderConfig {
                    rank,
                    world,
                    ..cfg("train", 3, 2)
                };
                let mut a = Loader::new(&idx, c.clone()).unwrap();
                let whole = pass(&mut a);
                let mut a = Loader::new(&idx, c.clone()).unwrap();
                let mut state = a.state();
                for _ in 0..stop {
                    state = a.next().unwrap().unwrap().state_after;
                }
                assert_eq!(a.state(), state);
                drop(a); // killed mid-epoch, prefetch threads in flight
                let mut b = Loader::new(&idx, c).unwrap();
                b.skip_to(state.epoch, state.sample_in_epoch).unwrap();
                if stop < whole.len() {
                    assert_eq!(
                        pass(&mut b),
                        whole[stop..].to_vec(),
                        "world {world} rank {rank} stop {stop}"
                    );
                } else {
                    // This rank's epoch is done: the state points at the next epoch.
                    assert_eq!((state.epoch, state.sample_in_epoch), (1, 0));
                }
            }
        }
    }
    let mut r = Loader::new(&idx, cfg("train", 1, 2)).unwrap();
    assert!(r.skip_to(0, n + 1).is_err());
}

#[test]
fn corrupted_shard_is_detected_by_checksum() {
    let recs = common::records(9, 10, 2, [4, 4, 4]);
    let dir = tempfile::tempdir().unwrap();
    let idx_file = common::write(recs, None, &common::small_cfg(), dir.path());
    let entry = idx_file.splits["train"].shards[1].clone();
    let path = dir.path().join(&entry.file);
    let mut bytes = std::fs::read(&path).unwrap();
    let k = bytes.len() - 100; // inside the tensor data
    bytes[k] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let idx = ShardIndex::open(dir.path()).unwrap();
    let err = Loader::new(
        &idx,
        LoaderConfig {
            verify: true,
            ..cfg("train", 2, 1)
        },
    )
    .err()
    .expect("corruption detected");
    assert!(matches!(err, ShardError::Checksum { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&entry.file)
            && msg.contains("sha256")
            && msg.contains(&entry.sha256)
            && msg.contains("rebuild"),
        "{msg}"
    );
    // Without verify the bytes are not hashed (fast open), but a truncated file is still caught.
    assert!(Loader::new(&idx, cfg("train", 2, 1)).is_ok());
    std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
    let msg = Loader::new(&idx, cfg("train", 2, 1))
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(&entry.file) && msg.contains("truncated"),
        "{msg}"
    );
    // A damaged header is a clear error too.
    let mut bad = bytes.clone();
    bad[12] = b'#';
    std::fs::write(&path, &bad).unwrap();
    let msg = Loader::new(&idx, cfg("train", 2, 1))
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(&entry.file) && msg.contains("safetensors"),
        "{msg}"
    );
}

#[test]
fn neighbour_sampler_puts_graph_neighbours_in_the_batch() {
    let recs = common::records(10, 30, 1, [2, 2, 2]);
    let nb = common::neighbors(&recs);
    let dir = tempfile::tempdir().unwrap();
    let c = WriterConfig {
        ratios: [1.0, 0.0, 0.0],
        ..common::small_cfg()
    };
    common::write(recs, Some(&nb), &c, dir.path());
    let idx = ShardIndex::open(dir.path()).unwrap();
    let samples = &idx.split("train").unwrap().samples;
    assert!(samples.iter().all(|s| s.neighbors.len() == 2));
    let pairs_in_batches = |sampler: Option<NeighborSampler>| -> usize {
        let mut l = Loader::new(
            &idx,
            LoaderConfig {
                neighbor_sampler: sampler,
                ..cfg("train", 4, 2)
            },
        )
        .unwrap();
        let mut n = 0;
        let mut all = Vec::new();
        for b in l.by_ref() {
            let b = b.unwrap();
            for &s in &b.samples {
                n += samples[s as usize]
                    .neighbors
                    .iter()
                    .filter(|x| b.samples.contains(x))
                    .count();
            }
            all.extend(b.samples);
        }
        all.sort();
        assert_eq!(all, (0..samples.len() as u32).collect::<Vec<_>>());
        n
    };
    let with = pairs_in_batches(Some(NeighborSampler { per_anchor: 1 }));
    let without = pairs_in_batches(None);
    assert!(with >= samples.len() / 4, "with {with}, without {without}");
    assert!(with > 2 * without, "with {with}, without {without}");
    // Without a graph the sampler is refused with a reason.
    let dir2 = tempfile::tempdir().unwrap();
    common::write(common::records(10, 5, 1, [2, 2, 2]), None, &c, dir2.path());
    let idx2 = ShardIndex::open(dir2.path()).unwrap();
    let msg = Loader::new(
        &idx2,
        LoaderConfig {
            neighbor_sampler: Some(NeighborSampler { per_anchor: 1 }),
            ..cfg("train", 4, 0)
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(msg.contains("graph"), "{msg}");
}

#[test]
fn bad_settings_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    common::write(
        common::records(11, 4, 1, [2, 2, 2]),
        None,
        &common::small_cfg(),
        dir.path(),
    );
    let idx = ShardIndex::open(dir.path()).unwrap();
    for c in [
        cfg("train", 0, 1),
        cfg("nope", 1, 1),
        LoaderConfig {
            rank: 2,
            world: 2,
            ..cfg("train", 1, 1)
        },
        LoaderConfig {
            fields: Some(vec!["pixels".into()]),
            ..cfg("train", 1, 1)
        },
    ] {
        assert!(Loader::new(&idx, c).is_err());
    }
    let l = Loader::new(&idx, cfg("train", 1, 1)).unwrap();
    assert!(l.read_samples(&[10_000]).is_err());
    // Empty splits load and yield nothing.
    for s in SPLITS {
        let mut l = Loader::new(&idx, cfg(s, 2, 2)).unwrap();
        let n = l.by_ref().count();
        assert_eq!(n, l.num_samples().div_ceil(2));
    }
    assert!(ShardIndex::open(&dir.path().join("missing")).is_err());
    std::fs::write(dir.path().join("index.json"), b"{}").unwrap();
    let msg = ShardIndex::open(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("index.json"), "{msg}");
}

#[test]
fn field_subset_loads_only_those_fields() {
    let dir = tempfile::tempdir().unwrap();
    common::write(
        common::records(12, 6, 2, [3, 3, 3]),
        None,
        &common::small_cfg(),
        dir.path(),
    );
    let idx = ShardIndex::open(dir.path()).unwrap();
    let mut l = Loader::new(
        &idx,
        LoaderConfig {
            fields: Some(vec!["input_ids".into(), "labels".into()]),
            ..cfg("train", 2, 1)
        },
    )
    .unwrap();
    let b = l.next().unwrap().unwrap();
    assert_eq!(
        b.fields.keys().collect::<Vec<_>>(),
        vec!["input_ids", "labels"]
    );
    assert_eq!(b.field("labels").unwrap().shape, vec![2, 18]);
}
