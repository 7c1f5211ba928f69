//! A mutation fuzzer for the volume parsers on stable Rust: seed files (crafted NIfTI-1 in both
//! byte orders, plain and gzip; DICOM in explicit and implicit VR; real files from pydicom's and
//! nibabel's test data when the project's Python is set up) are mutated
//! ([`mg3d_testkit::crafted::mutate`]) and fed to the NIfTI reader and the DICOM header reader
//! (report segmentation has its own in mg3d-report's tests). Any panic, or
//! any input taking over 10 s, fails. `make test` runs MG3D_FUZZ_ITERS (default 30,000) inputs;
//! `make fuzz` runs 1,000,000.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dicom_dictionary_std::uids;
use mg3d_dicom::header::read_header_bytes;
use mg3d_testkit::crafted::{Nii, ct_slice, fuzz_iters, gz, mutate};
use mg3d_volume::nifti_io::{NiftiReader, ReadOptions, read_nifti_from};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

/// Equal dims, and values and affine equal bit for bit (a mutated header's affine may hold NaN).
fn same_bits(a: &mg3d_volume::Volume, b: &mg3d_volume::Volume) -> bool {
    let bits = |v: &mg3d_volume::Volume| {
        let affine: Vec<u64> = v.affine.iter().flatten().map(|x| x.to_bits()).collect();
        let data: Vec<u32> = v.data.iter().map(|x| x.to_bits()).collect();
        (v.dims, affine, data)
    };
    bits(a) == bits(b)
}

#[test]
fn parsers_survive_mutated_inputs() {
    let iters = fuzz_iters(30_000);
    let (real_dcm, real_nii) = real_seeds();
    let vals: Vec<i16> = (0..48).map(|v| v * 37 - 900).collect();
    let mut nii = vec![
        Nii::int16(&[4, 4, 3], &vals).bytes(),
        Nii {
            big: true,
            ..Nii::int16(&[4, 4, 3], &vals)
        }
        .bytes(),
    ];
    nii.push(gz(&nii[0]));
    nii.extend(real_nii);
    let mut dcm = vec![
        ct_slice("2.25.8", 0, uids::EXPLICIT_VR_LITTLE_ENDIAN, |_| {}),
        ct_slice("2.25.8", 1, uids::IMPLICIT_VR_LITTLE_ENDIAN, |_| {}),
    ];
    dcm.extend(real_dcm);
    let opts = ReadOptions {
        first_of_4d: true,
        max_voxels: 1 << 22,
    };
    let panics = AtomicU64::new(0);
    let slowest_us = [AtomicU64::new(0), AtomicU64::new(0)];
    let total_us = [AtomicU64::new(0), AtomicU64::new(0)];
    let t0 = Instant::now();
    use rayon::prelude::*;
    (0..iters).into_par_iter().for_each(|i| {
        let mut rng = ChaCha8Rng::seed_from_u64(i);
        let start = Instant::now();
        let seeds = if i % 2 == 0 { &nii } else { &dcm };
        let input = mutate(&seeds[rng.random_range(0..seeds.len())], &mut rng);
        let ok = std::panic::catch_unwind(|| {
            if i % 2 == 0 {
                // The whole-file path (one-call inflate) reads what the stream reads, or rejects
                // it with the same reason.
                let streamed = read_nifti_from(&input[..], &opts);
                let whole = NiftiReader::from_bytes(input.clone().into(), String::new())
                    .and_then(|r| r.read(&opts));
                match (&streamed, &whole) {
                    (Ok(a), Ok(b)) => assert!(same_bits(&a.0, &b.0), "input {i}: volumes differ"),
                    (Err(a), Err(b)) => assert_eq!(a.code, b.code, "input {i}"),
                    _ => panic!("input {i}: {:?} vs {:?}", streamed.err(), whole.err()),
                }
            } else {
                let _ = read_header_bytes(&input);
            }
        });
        let us = start.elapsed().as_micros() as u64;
        if ok.is_err() || us > 1_000_000 {
            // MG3D_FUZZ_DUMP=DIR keeps failing and slow inputs for a reproduction.
            if let Some(dir) = std::env::var_os("MG3D_FUZZ_DUMP") {
                let _ = std::fs::write(
                    std::path::Path::new(&dir).join(format!("input-{i}.bin")),
                    &input,
                );
            }
            eprintln!(
                "input {i} (case {}): {:.1} s{}",
                i % 2,
                us as f64 / 1e6,
                if ok.is_err() { ", panicked" } else { "" }
            );
        }
        slowest_us[(i % 2) as usize].fetch_max(us, Ordering::Relaxed);
        total_us[(i % 2) as usize].fetch_add(us, Ordering::Relaxed);
        if ok.is_err() {
            panics.fetch_add(1, Ordering::Relaxed);
        }
    });
    let ms = |a: &[AtomicU64; 2]| {
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
        "fuzz: {iters} inputs ({} NIfTI, {} DICOM seeds) in {:.1} s; {} panics; slowest ms (NIfTI, DICOM) {:?}; total ms {:?}",
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
