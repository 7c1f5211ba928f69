#![allow(clippy::needless_range_loop)]
//! The synthetic corpus: determinism, readable standard files with the written geometry and values,
//! reports consistent with the truth, visible findings, and the fault catalogue.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::Array;
use std::fs;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use mg3d_synth::report::{DEFAULT_TEMPLATES, EntityTruth, Templates};
use mg3d_synth::{SynthConfig, VolumeTruth, generate};
use nifti::{IntoNdArray, NiftiObject, ReaderOptions};

fn config(seed: u64, faults: bool) -> SynthConfig {
    SynthConfig {
        patients: 8,
        seed,
        faults,
        body_width_mm: [100.0, 120.0],
        z_extent_mm: [50.0, 70.0],
        in_plane_spacing_mm: [0.7, 1.0],
        slice_spacing_mm: [0.8, 5.0],
        prevalence: 0.35,
        ..Default::default()
    }
}

fn make(seed: u64, faults: bool) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let t = Templates::parse(DEFAULT_TEMPLATES).unwrap();
    generate(&config(seed, faults), &t, d.path()).unwrap();
    d
}

fn jsonl<T: serde::de::DeserializeOwned>(p: &Path) -> Vec<T> {
    fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Minimal RFC 4180 CSV reader over bytes (quoted fields, doubled quotes).
fn csv(p: &Path) -> Vec<Vec<Vec<u8>>> {
    let b = fs::read(p).unwrap();
    let (mut rows, mut row, mut field, mut q, mut i) = (vec![], vec![], vec![], false, 0);
    while i < b.len() {
        let c = b[i];
        if q {
            if c == b'"' && b.get(i + 1) == Some(&b'"') {
                field.push(b'"');
                i += 1;
            } else if c == b'"' {
                q = false;
            } else {
                field.push(c);
            }
        } else if c == b'"' {
            q = true;
        } else if c == b',' {
            row.push(std::mem::take(&mut field));
        } else if c == b'\n' {
            row.push(std::mem::take(&mut field));
            rows.push(std::mem::take(&mut row));
        } else {
            field.push(c);
        }
        i += 1;
    }
    rows
}

fn digest(hu: impl Iterator<Item = i16>) -> String {
    let mut h = blake3::Hasher::new();
    for v in hu {
        h.update(&v.to_le_bytes());
    }
    h.finalize().to_hex().to_string()
}

#[test]
fn same_seed_same_bytes_other_seed_differs() {
    let a = make(3, true);
    let b = make(3, true);
    let c = make(4, false);
    let ha = mg3d_core::fsutil::hash_dir(a.path()).unwrap();
    let hb = mg3d_core::fsutil::hash_dir(b.path()).unwrap();
    assert_eq!(ha, hb);
    let hc = mg3d_core::fsutil::hash_dir(c.path()).unwrap();
    assert_ne!(
        ha.get("reports/train_reports.csv"),
        hc.get("reports/train_reports.csv")
    );
}

fn rle_decode16(frame: &[u8], n: usize) -> Vec<u16> {
    let nseg = u32::from_le_bytes(frame[0..4].try_into().unwrap()) as usize;
    assert_eq!(nseg, 2);
    let off =
        |s: usize| u32::from_le_bytes(frame[4 + 4 * s..8 + 4 * s].try_into().unwrap()) as usize;
    let mut planes = vec![];
    for s in 0..2 {
        let seg = &frame[off(s)..if s == 0 { off(1) } else { frame.len() }];
        let (mut out, mut i) = (Vec::with_capacity(n), 0);
        while out.len() < n {
            let h = seg[i] as i8;
            i += 1;
            if h >= 0 {
                out.extend_from_slice(&seg[i..i + h as usize + 1]);
                i += h as usize + 1;
            } else if h != -128 {
                out.extend(std::iter::repeat_n(seg[i], (1 - h as isize) as usize));
                i += 1;
            }
        }
        planes.push(out);
    }
    (0..n)
        .map(|k| ((planes[0][k] as u16) << 8) | planes[1][k] as u16)
        .collect()
}

fn floats(obj: &dicom_object::DefaultDicomObject, tag: dicom_core::Tag) -> Vec<f64> {
    obj.element(tag).unwrap().to_multi_float64().unwrap()
}

#[test]
fn dicom_series_read_back_with_written_geometry_and_values() {
    let d = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        enhanced_fraction: 0.0,
        ..config(11, false)
    };
    generate(
        &cfg,
        &Templates::parse(DEFAULT_TEMPLATES).unwrap(),
        d.path(),
    )
    .unwrap();
    let geo: Vec<VolumeTruth> = jsonl(&d.path().join("truth/geometry.jsonl"));
    // One file per slice here; enhanced multi-frame series are checked by the ingest and Python tests.
    let dicoms: Vec<&VolumeTruth> = geo
        .iter()
        .filter(|g| g.format == "dicom" && g.instance_order.as_deref() != Some("enhanced"))
        .collect();
    assert!(!dicoms.is_empty());
    let mut syntaxes = BTreeSet::new();
    for g in dicoms {
        let files: Vec<PathBuf> = fs::read_dir(d.path().join(&g.path))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), g.shape[2]);
        let mut objs: Vec<_> = files
            .iter()
            .map(|f| dicom_object::open_file(f).unwrap())
            .collect();
        let iop = floats(&objs[0], tags::IMAGE_ORIENTATION_PATIENT);
        let (r, c) = ([iop[0], iop[1], iop[2]], [iop[3], iop[4], iop[5]]);
        let n = mg3d_synth::geometry::cross(r, c);
        let proj = |o: &dicom_object::DefaultDicomObject| {
            let p = floats(o, tags::IMAGE_POSITION_PATIENT);
            p[0] * n[0] + p[1] * n[1] + p[2] * n[2]
        };
        objs.sort_by(|a, b| proj(a).partial_cmp(&proj(b)).unwrap());
        let ps = floats(&objs[0], tags::PIXEL_SPACING); // row spacing, column spacing
        let dz = (proj(objs.last().unwrap()) - proj(&objs[0])) / (objs.len() - 1) as f64;
        let p0 = floats(&objs[0], tags::IMAGE_POSITION_PATIENT);
        for ax in 0..3 {
            let flip = if ax < 2 { -1.0 } else { 1.0 };
            let row = [
                flip * r[ax] * ps[1],
                flip * c[ax] * ps[0],
                flip * n[ax] * dz,
                flip * p0[ax],
            ];
            for j in 0..4 {
                assert!(
                    (row[j] - g.affine_ras[ax][j]).abs() < 1e-3,
                    "{}: affine[{ax}][{j}] {} vs {}",
                    g.volume_name,
                    row[j],
                    g.affine_ras[ax][j]
                );
            }
        }
        let ts = objs[0]
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string();
        syntaxes.insert(ts.clone());
        let slope = objs[0]
            .element(tags::RESCALE_SLOPE)
            .unwrap()
            .to_float64()
            .unwrap();
        let inter = objs[0]
            .element(tags::RESCALE_INTERCEPT)
            .unwrap()
            .to_float64()
            .unwrap();
        assert_eq!((slope, inter), (g.slope, g.intercept));
        let plane = g.shape[0] * g.shape[1];
        let mut hu = Vec::with_capacity(plane * g.shape[2]);
        for o in &objs {
            let px = o.element(tags::PIXEL_DATA).unwrap();
            let stored: Vec<u16> = match px.value().fragments() {
                Some(frags) => rle_decode16(&frags[0], plane),
                None => px
                    .to_bytes()
                    .unwrap()
                    .chunks(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            };
            hu.extend(
                stored
                    .iter()
                    .map(|&s| (s as f64 * slope + inter).round() as i16),
            );
        }
        assert_eq!(
            digest(hu.into_iter()),
            g.hu_blake3,
            "{}: HU differ ({ts})",
            g.volume_name
        );
        // PHI-like values are there (ingest must drop them).
        assert!(
            objs[0]
                .element(tags::PATIENT_NAME)
                .unwrap()
                .to_str()
                .unwrap()
                .contains('^')
        );
    }
    assert!(
        syntaxes.len() >= 2,
        "several transfer syntaxes: {syntaxes:?}"
    );
}

#[test]
fn nifti_files_read_back_with_the_nifti_crate() {
    let d = make(12, false);
    let geo: Vec<VolumeTruth> = jsonl(&d.path().join("truth/geometry.jsonl"));
    let niftis: Vec<&VolumeTruth> = geo.iter().filter(|g| g.format == "nifti").collect();
    assert!(!niftis.is_empty());
    for g in niftis {
        let obj = ReaderOptions::new()
            .read_file(d.path().join(&g.path))
            .unwrap();
        let h = obj.header().clone();
        assert_eq!(h.sform_code, 1);
        let a = h.affine::<f64>();
        for i in 0..3 {
            for j in 0..4 {
                assert!(
                    (a[(i, j)] - g.affine_ras[i][j]).abs() < 1e-3,
                    "{}: affine",
                    g.volume_name
                );
            }
        }
        let q = h.qform_affine::<f64>();
        assert!((q - a).abs().max() < 1e-3, "qform agrees with sform");
        let arr = obj.into_volume().into_ndarray::<f32>().unwrap(); // applies scl_slope/scl_inter
        assert_eq!(arr.shape(), &g.shape[..]);
        let (s, b) = match g.nifti_variant.as_deref() {
            Some("raw") => (g.slope, g.intercept), // the metadata CSV's rescale
            _ => (1.0, 0.0),                       // already HU (after the header's scaling)
        };
        let [ni, nj, nk] = g.shape;
        let hu = (0..nk)
            .flat_map(|k| (0..nj).flat_map(move |j| (0..ni).map(move |i| (i, j, k))))
            .map(|(i, j, k)| (arr[[i, j, k]] as f64 * s + b).round() as i16);
        assert_eq!(
            digest(hu),
            g.hu_blake3,
            "{} ({:?})",
            g.volume_name,
            g.nifti_variant
        );
    }
}

#[test]
fn reports_agree_with_the_truth() {
    let d = make(13, false);
    let rows = csv(&d.path().join("reports/train_reports.csv"));
    assert_eq!(
        rows[0]
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect::<Vec<_>>(),
        [
            "VolumeName",
            "ClinicalInformation_EN",
            "Technique_EN",
            "Findings_EN",
            "Impressions_EN"
        ]
    );
    let reports: BTreeMap<String, (String, String)> = rows[1..]
        .iter()
        .map(|r| {
            (
                String::from_utf8(r[0].clone()).unwrap(),
                (
                    String::from_utf8(r[3].clone()).unwrap(),
                    String::from_utf8(r[4].clone()).unwrap(),
                ),
            )
        })
        .collect();
    let ents: Vec<EntityTruth> = jsonl(&d.path().join("truth/entities.jsonl"));
    for e in &ents {
        let (f, i) = &reports[&e.volume_name];
        let text = if e.section == "Findings_EN" { f } else { i };
        assert_eq!(&text[e.start..e.end], e.text, "span of {e:?}");
        if e.assertion == mg3d_synth::report::Assertion::Absent {
            let sentence_start = text[..e.start].rfind(". ").map(|p| p + 2).unwrap_or(0);
            let sentence = &text[sentence_start
                ..text[e.end..]
                    .find('.')
                    .map(|p| e.end + p)
                    .unwrap_or(text.len())];
            assert!(
                ["No ", "no ", "not "].iter().any(|c| sentence.contains(c)),
                "negative sentence without a negation cue: {sentence:?}"
            );
        }
    }
    // Each truth statement has its mention with that assertion; labels = drawn findings.
    let labels = csv(&d.path().join("labels/train_predicted_labels.csv"));
    let header: Vec<String> = labels[0]
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    assert_eq!(header.len(), 19);
    let label_of: BTreeMap<(String, String), u8> = labels[1..]
        .iter()
        .flat_map(|r| {
            let vn = String::from_utf8(r[0].clone()).unwrap();
            header[1..]
                .iter()
                .zip(&r[1..])
                .map(move |(h, v)| {
                    (
                        (vn.clone(), h.clone()),
                        String::from_utf8_lossy(v).parse().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let truth = mg3d_core::table::read_table(
        &d.path().join("truth/truth_findings.parquet"),
        &mg3d_core::TableSchema::get("truth_findings").unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for b in &truth {
        let col = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap()
                .clone()
        };
        let (vn, finding, assertion) = (col("volume_name"), col("finding"), col("assertion"));
        let rendered = b
            .column_by_name("rendered")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::BooleanArray>()
            .unwrap()
            .clone();
        for r in 0..b.num_rows() {
            let has = ents.iter().any(|e| {
                e.volume_name == vn.value(r)
                    && e.finding == finding.value(r)
                    && e.assertion.as_str() == assertion.value(r)
            });
            assert!(
                has,
                "{} {} {} not stated in the report",
                vn.value(r),
                finding.value(r),
                assertion.value(r)
            );
            assert_eq!(
                label_of[&(vn.value(r).to_string(), finding.value(r).to_string())],
                rendered.value(r) as u8
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "{checked}");
    // And no entity states something that is not in the truth.
    for e in &ents {
        let found = truth.iter().any(|b| {
            let col = |n: &str| {
                b.column_by_name(n)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .unwrap()
                    .clone()
            };
            let (vn, f, a) = (col("volume_name"), col("finding"), col("assertion"));
            (0..b.num_rows()).any(|r| {
                vn.value(r) == e.volume_name
                    && f.value(r) == e.finding
                    && a.value(r) == e.assertion.as_str()
            })
        });
        assert!(found, "{e:?} is not in the truth");
    }
}

#[test]
fn blob_findings_are_visible_in_the_voxels() {
    // All-DICOM-free corpus with high prevalence so every blob finding occurs.
    let d = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        dicom_fraction: 0.0,
        prevalence: 0.9,
        second_recon_fraction: 0.0,
        ..config(21, false)
    };
    generate(
        &cfg,
        &Templates::parse(DEFAULT_TEMPLATES).unwrap(),
        d.path(),
    )
    .unwrap();
    let geo: Vec<VolumeTruth> = jsonl(&d.path().join("truth/geometry.jsonl"));
    let truth = mg3d_core::table::read_table(
        &d.path().join("truth/truth_findings.parquet"),
        &mg3d_core::TableSchema::get("truth_findings").unwrap(),
    )
    .unwrap();
    let mut seen = BTreeSet::new();
    for b in &truth {
        let s = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap()
                .clone()
        };
        let (vn, finding) = (s("volume_name"), s("finding"));
        let centers = b
            .column_by_name("center_ras_mm")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::FixedSizeListArray>()
            .unwrap()
            .clone();
        let sizes = b
            .column_by_name("size_mm")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .unwrap()
            .clone();
        for r in 0..b.num_rows() {
            let f = finding.value(r);
            if !["Lung nodule", "Consolidation", "Lymphadenopathy"].contains(&f)
                || centers.is_null(r)
                || sizes.value(r) < 6.0
            {
                continue;
            }
            let c = centers.value(r);
            let c = c
                .as_any()
                .downcast_ref::<arrow::array::Float64Array>()
                .unwrap();
            let g = geo.iter().find(|g| g.volume_name == vn.value(r)).unwrap();
            // Invert the (axis-aligned) affine.
            let idx: Vec<usize> = (0..3)
                .map(|ax| {
                    let col = (0..3).find(|&j| g.affine_ras[ax][j].abs() > 1e-9).unwrap();
                    ((c.value(ax) - g.affine_ras[ax][3]) / g.affine_ras[ax][col]).round() as usize
                })
                .collect();
            let perm: Vec<usize> = (0..3)
                .map(|ax| (0..3).find(|&j| g.affine_ras[ax][j].abs() > 1e-9).unwrap())
                .collect();
            let mut ijk = [0usize; 3];
            for ax in 0..3 {
                ijk[perm[ax]] = idx[ax];
            }
            if ijk[2] >= g.shape[2] {
                continue;
            }
            let arr = ReaderOptions::new()
                .read_file(d.path().join(&g.path))
                .unwrap()
                .into_volume()
                .into_ndarray::<f32>()
                .unwrap();
            let (s0, b0) = if g.nifti_variant.as_deref() == Some("raw") {
                (g.slope, g.intercept)
            } else {
                (1.0, 0.0)
            };
            let v = arr[[ijk[0], ijk[1], ijk[2]]] as f64 * s0 + b0;
            assert!(
                v > -250.0,
                "{f} in {} at {ijk:?}: {v} HU (soft tissue expected)",
                g.volume_name
            );
            seen.insert(f.to_string());
        }
    }
    assert!(seen.len() >= 2, "{seen:?}");
}

#[test]
fn fault_catalogue_is_complete_and_points_at_real_inputs() {
    let d = make(5, true);
    #[derive(serde::Deserialize)]
    struct F {
        fault: String,
        path: String,
        stage: String,
        expected: String,
    }
    let faults: Vec<F> = jsonl(&d.path().join("truth/faults.jsonl"));
    let names: BTreeSet<&str> = faults.iter().map(|f| f.fault.as_str()).collect();
    for want in [
        "truncated_dicom",
        "not_dicom",
        "missing_slice",
        "duplicate_slice",
        "mixed_series",
        "gantry_tilt",
        "inconsistent_spacing",
        "nifti_nan",
        "corrupt_gzip",
        "zero_byte_dicom",
        "zero_byte_nifti",
        "empty_report",
        "report_without_volume",
        "volume_without_report",
        "non_utf8_report",
        "duplicate_volume_name",
    ] {
        assert!(names.contains(want), "missing fault {want}");
    }
    for f in &faults {
        assert!(d.path().join(&f.path).exists(), "{} -> {}", f.fault, f.path);
        assert!(["ingest", "reports", "curate"].contains(&f.stage.as_str()));
        assert!(!f.expected.is_empty());
    }
    let reports = fs::read(d.path().join("reports/train_reports.csv")).unwrap();
    assert!(
        String::from_utf8(reports).is_err(),
        "the non-UTF-8 fault is in the reports file"
    );
}
