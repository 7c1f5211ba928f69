//! A mutation fuzzer for the input parsers on stable Rust: seed files (crafted NIfTI-1 in both
//! byte orders, plain and gzip; DICOM in explicit and implicit VR; real files from pydicom's and
//! nibabel's test data when the project's Python is set up; report texts with odd Unicode) are
//! mutated (bit flips, interesting bytes, deletions, duplications, insertions, truncation) and fed
//! to the NIfTI reader, the DICOM header reader, and sentence/clause segmentation. Any panic, or
//! any input taking over 10 s, fails. `make test` runs MG3D_FUZZ_ITERS (default 30,000) inputs;
//! `make fuzz` runs 1,000,000.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use mg3d_volume::dicom_io::read_header_bytes;
use mg3d_volume::nifti_io::{ReadOptions, read_nifti_from};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn nifti_seed(big: bool) -> Vec<u8> {
    let mut b = vec![0u8; 352];
    let e16 = |v: i16| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let e32 = |v: i32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let f32b = |v: f32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    b[0..4].copy_from_slice(&e32(348));
    for (i, d) in [3i16, 4, 4, 3, 1, 1, 1, 1].iter().enumerate() {
        b[40 + 2 * i..42 + 2 * i].copy_from_slice(&e16(*d));
    }
    b[70..72].copy_from_slice(&e16(4));
    b[72..74].copy_from_slice(&e16(16));
    for i in 0..8 {
        b[76 + 4 * i..80 + 4 * i].copy_from_slice(&f32b(0.8));
    }
    b[108..112].copy_from_slice(&f32b(352.0));
    b[112..116].copy_from_slice(&f32b(1.0));
    b[252..254].copy_from_slice(&e16(1));
    b[254..256].copy_from_slice(&e16(1));
    b[256..260].copy_from_slice(&f32b(0.1));
    for r in 0..3 {
        b[280 + 20 * r..284 + 20 * r].copy_from_slice(&f32b(0.8));
    }
    b[344..348].copy_from_slice(b"n+1\0");
    for v in 0..48i16 {
        b.extend(e16(v * 37 - 900));
    }
    b
}

fn gz(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn dicom_seed(ts: &str) -> Vec<u8> {
    let ds = |v: &[f64]| {
        PrimitiveValue::Strs(v.iter().map(|x| x.to_string()).collect::<Vec<_>>().into())
    };
    let o = InMemDicomObject::from_element_iter([
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "2.25.7"),
        DataElement::new(tags::MODALITY, VR::CS, "CT"),
        DataElement::new(tags::PATIENT_NAME, VR::PN, "DOE^JANE"),
        DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, "2.25.8"),
        DataElement::new(tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&[0.0, 0.0, 1.0])),
        DataElement::new(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            ds(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        ),
        DataElement::new(tags::PIXEL_SPACING, VR::DS, ds(&[0.7, 0.7])),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(4u16)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(4u16)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16)),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(1u16),
        ),
        DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, "-1024"),
        DataElement::new(tags::RESCALE_SLOPE, VR::DS, "1"),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(vec![7u16; 16].into()),
        ),
    ]);
    let f = o
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(ts)
                .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
                .media_storage_sop_instance_uid("2.25.7"),
        )
        .unwrap();
    let mut out = Vec::new();
    f.write_all(&mut out).unwrap();
    out
}

/// Real files from the reference libraries' own test data (small ones), when Python is set up.
fn real_seeds() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let Some(py) = mg3d_testkit::python_with(&["pydicom", "nibabel"]) else {
        return (vec![], vec![]);
    };
    let out = std::process::Command::new(py)
        .args(["-c", "import os, pydicom, nibabel; print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files')); print(os.path.join(os.path.dirname(nibabel.__file__), 'tests', 'data'))"])
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    let dirs: Vec<&str> = s.lines().collect();
    let small = |dir: &str, ext: &[&str]| -> Vec<Vec<u8>> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
            .into_iter()
            .filter(|p| ext.iter().any(|e| p.to_string_lossy().ends_with(e)))
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() < 64 << 10))
            .filter_map(|p| std::fs::read(p).ok())
            .collect()
    };
    (
        small(dirs[0], &[".dcm"]),
        small(dirs[1], &[".nii", ".nii.gz"]),
    )
}

const TEXTS: [&str; 4] = [
    "No\u{a0}effusion. Heart\u{202f}normal.\u{3000}Dr.\u{a0}X no. 3 (e.g. 2019).",
    "1.\u{a0}Nodule 3,5 cm; stable (µ, β). 2. Effusion, right.\nIMPRESSION: none.",
    "Größe 3.5 x 2 cm; Läsion unverändert. Keine Ergüsse — gut!? \u{feff}Ok.",
    "approx. 4 mm. St. post CABG, i.e. sternotomy wires; vs. prior.",
];

fn mutate(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..=8) {
        if b.is_empty() {
            b.push(rng.random());
            continue;
        }
        let at = rng.random_range(0..b.len());
        match rng.random_range(0..7) {
            0 => b[at] ^= 1 << rng.random_range(0..8),
            1 => b[at] = [0, 0xff, 0x7f, 0x80, 1, 0xfe][rng.random_range(0..6)],
            2 => {
                let n = rng.random_range(1..=16.min(b.len() - at));
                b.drain(at..at + n);
            }
            3 => {
                let n = rng.random_range(1..=32.min(b.len() - at));
                let chunk = b[at..at + n].to_vec();
                b.splice(at..at, chunk);
            }
            4 => {
                let n = rng.random_range(1..=8);
                b.splice(at..at, (0..n).map(|_| rng.random::<u8>()));
            }
            5 => b.truncate(at),
            _ => {
                // A 16- or 32-bit field set to an extreme (dims, lengths, offsets).
                let v: u32 = [0, u32::MAX, 0x7fff_ffff, 0x8000_0000, 0xffff, 348, 540]
                    [rng.random_range(0..7)];
                for (k, x) in v.to_le_bytes().iter().enumerate() {
                    if let Some(y) = b.get_mut(at + k) {
                        *y = *x;
                    }
                }
            }
        }
    }
    b
}

#[test]
fn parsers_survive_mutated_inputs() {
    let iters: u64 = std::env::var("MG3D_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let (real_dcm, real_nii) = real_seeds();
    let mut nii = vec![nifti_seed(false), nifti_seed(true)];
    nii.push(gz(&nii[0]));
    nii.extend(real_nii);
    let mut dcm = vec![
        dicom_seed(uids::EXPLICIT_VR_LITTLE_ENDIAN),
        dicom_seed(uids::IMPLICIT_VR_LITTLE_ENDIAN),
    ];
    dcm.extend(real_dcm);
    let opts = ReadOptions {
        first_of_4d: true,
        max_voxels: 1 << 22,
    };
    let panics = AtomicU64::new(0);
    let slowest_us = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    let total_us = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    let t0 = Instant::now();
    use rayon::prelude::*;
    (0..iters).into_par_iter().for_each(|i| {
        let mut rng = ChaCha8Rng::seed_from_u64(i);
        let start = Instant::now();
        let ok = match i % 3 {
            0 => {
                let input = mutate(&nii[rng.random_range(0..nii.len())], &mut rng);
                std::panic::catch_unwind(|| {
                    let _ = read_nifti_from(&input[..], &opts);
                })
            }
            1 => {
                let input = mutate(&dcm[rng.random_range(0..dcm.len())], &mut rng);
                std::panic::catch_unwind(|| {
                    let _ = read_header_bytes(&input);
                })
            }
            _ => {
                let raw = mutate(TEXTS[rng.random_range(0..TEXTS.len())].as_bytes(), &mut rng);
                let text = String::from_utf8_lossy(&raw).into_owned();
                std::panic::catch_unwind(|| {
                    for s in mg3d_report::text::sentences(&text) {
                        let _ = mg3d_report::text::clauses(&text, s);
                    }
                })
            }
        };
        let us = start.elapsed().as_micros() as u64;
        slowest_us[(i % 3) as usize].fetch_max(us, Ordering::Relaxed);
        total_us[(i % 3) as usize].fetch_add(us, Ordering::Relaxed);
        if ok.is_err() {
            panics.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "panic on input {i} (rerun: ChaCha8 seed {i}, case {})",
                i % 3
            );
        }
    });
    let ms = |a: &[AtomicU64; 3]| {
        a.iter()
            .map(|x| x.load(Ordering::Relaxed) as f64 / 1e3)
            .collect::<Vec<_>>()
    };
    let slowest = Duration::from_micros(
        slowest_us
            .iter()
            .map(|x| x.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0),
    );
    eprintln!(
        "fuzz: {iters} inputs ({} NIfTI, {} DICOM seeds) in {:.1} s; {} panics; slowest ms (NIfTI, DICOM, text) {:?}; total ms {:?}",
        nii.len(),
        dcm.len(),
        t0.elapsed().as_secs_f64(),
        panics.load(Ordering::Relaxed),
        ms(&slowest_us),
        ms(&total_us)
    );
    assert_eq!(panics.load(Ordering::Relaxed), 0);
    assert!(
        slowest < Duration::from_secs(10),
        "an input took {slowest:?}"
    );
}
