//! Small in-memory records for the loader tests (tiny volumes, random tokens and labels).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use mg3d_shard::{IndexFile, SampleRecord, VolumeSource, WriterConfig, write_shards};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Token length of the test records.
pub const L: usize = 12;
/// Signature length of the test records.
pub const SIG: usize = 10;

/// `patients` patients with 1..=max_vols volumes each; volumes of `dims` (R, A, S) with HU values
/// over the whole int16 range near the window.
pub fn records(seed: u64, patients: usize, max_vols: usize, dims: [usize; 3]) -> Vec<SampleRecord> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for p in 0..patients {
        let nv = rng.random_range(1..=max_vols);
        for v in 0..nv {
            let n = dims.iter().product::<usize>();
            let data: Vec<i16> = (0..n).map(|_| rng.random_range(-1200..1200)).collect();
            let len = rng.random_range(3..L);
            let ids: Vec<i32> = (0..L)
                .map(|i| {
                    if i < len {
                        rng.random_range(100..30000)
                    } else {
                        0
                    }
                })
                .collect();
            out.push(SampleRecord {
                patient_id: format!("patient{p:03}"),
                study_id: format!("study{p:03}"),
                volume_id: format!("vol{p:03}_{v}"),
                report_id: format!("rep{p:03}_{v}"),
                volume: VolumeSource::Hu { dims, data },
                attention_mask: (0..L).map(|i| (i < len) as i8).collect(),
                clause_index: (0..L)
                    .map(|i| {
                        if i == 0 || i + 1 >= len {
                            -1
                        } else {
                            (i / 3) as i32
                        }
                    })
                    .collect(),
                word_start: (0..L).map(|_| rng.random_range(0..2)).collect(),
                input_ids: ids,
                labels: (0..18).map(|_| rng.random_range(-1..=1)).collect(),
                signature: Some((0..SIG).map(|_| rng.random_range(0..4)).collect()),
                split: None,
            });
        }
    }
    out
}

/// Report -> neighbour reports: the next two patients' first reports.
pub fn neighbors(records: &[SampleRecord]) -> BTreeMap<String, Vec<String>> {
    let firsts: Vec<&SampleRecord> = records
        .iter()
        .filter(|r| r.report_id.ends_with("_0"))
        .collect();
    let mut out = BTreeMap::new();
    for r in records {
        let p = firsts
            .iter()
            .position(|f| f.patient_id == r.patient_id)
            .unwrap();
        let nb: Vec<String> = (1..=2)
            .map(|d| firsts[(p + d) % firsts.len()].report_id.clone())
            .collect();
        out.insert(r.report_id.clone(), nb);
    }
    out
}

/// Writes shards of `records` into `dir`.
pub fn write(
    records: Vec<SampleRecord>,
    nb: Option<&BTreeMap<String, Vec<String>>>,
    cfg: &WriterConfig,
    dir: &Path,
) -> IndexFile {
    write_shards(records, nb, cfg, dir, None, &|| false, &|_| {})
        .unwrap()
        .0
}

/// A config giving several shards for the test records.
pub fn small_cfg() -> WriterConfig {
    WriterConfig {
        seed: 5,
        ratios: [0.6, 0.2, 0.2],
        shard_bytes: 1000,
        ..Default::default()
    }
}
