//! The hostile-input corpus: crafted DICOM series, NIfTI files, links and report rows of every
//! class real archives contain (odd Unicode, links, degenerate geometry, odd headers, VR UN,
//! bombs, identifiers in folder names), each with the outcome it must have. One `mg3d run` over
//! all of them must finish, account for every file exactly once, give the right voxels or the
//! right reason code, and write no planted identifier into any output or its log.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use mg3d_core::table::{TableSchema, read_table};
use mg3d_testkit::crafted::{Nii, PLANTED, ct_slice, gz};

use crate::cli::{mg3d, text};

const SALT: &str = "hostile-corpus-salt-0001";

/// What an input must become.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// A volume whose HU minimum and maximum are these.
    Volume(f64, f64),
    /// A reject with this reason.
    Reject(&'static str),
}

struct Corpus {
    dir: PathBuf,
    /// (root label, path relative to the root, expected outcome).
    cases: Vec<(String, String, Expect)>,
    files: usize,
}

impl Corpus {
    fn case(&mut self, label: &str, rel: &str, e: Expect) {
        self.cases.push((label.into(), rel.into(), e));
    }
}

// ---------------------------------------------------------------- DICOM

type Edit = Box<dyn Fn(&mut InMemDicomObject, usize)>;

/// Writes `n` slices of a crafted CT series ([`ct_slice`]) into `dir`, each passed through `edit`
/// (with its slice index); returns `n`.
fn series(dir: &Path, uid: &str, n: usize, edit: Edit) -> usize {
    fs::create_dir_all(dir).unwrap();
    for k in 0..n {
        let bytes = ct_slice(uid, k, uids::EXPLICIT_VR_LITTLE_ENDIAN, |o| edit(o, k));
        fs::write(dir.join(format!("IM{:04}.dcm", k + 1)), bytes).unwrap();
    }
    n
}

fn put(o: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, v: impl Into<PrimitiveValue>) {
    o.put(DataElement::new(tag, vr, v.into()));
}

fn un(o: &mut InMemDicomObject, tag: dicom_core::Tag, bytes: &[u8]) {
    o.put(DataElement::new(
        tag,
        VR::UN,
        PrimitiveValue::U8(bytes.to_vec().into()),
    ));
}

fn ds_str(o: &mut InMemDicomObject, tag: dicom_core::Tag, v: &str) {
    put(o, tag, VR::DS, v);
}

fn dicom_cases(c: &mut Corpus) {
    let root = c.dir.join("dicom");
    let l = "dicom_roots[0]";
    let good = Expect::Volume(-24.0, 1000.0 - 1024.0 + 20.0 + 15.0);
    // A plain series, in a folder named after the patient.
    c.files += series(
        &root.join("QUIXOTE_ZEBULON_MRN4471923"),
        "2.25.10",
        3,
        Box::new(|_, _| {}),
    );
    c.case(l, "QUIXOTE_ZEBULON_MRN4471923", good.clone());
    // Every element an anonymiser re-encoded as UN: the rescale and the pixel sign survive.
    c.files += series(
        &root.join("vr_un"),
        "2.25.11",
        3,
        Box::new(|o, k| {
            un(o, tags::RESCALE_INTERCEPT, b"-1024 ");
            un(o, tags::RESCALE_SLOPE, b"1 ");
            un(o, tags::SLICE_THICKNESS, b"2.5 ");
            un(
                o,
                tags::IMAGE_POSITION_PATIENT,
                format!("0\\0\\{} ", 2.5 * k as f64).as_bytes(),
            );
            un(o, tags::PIXEL_SPACING, b"0.7\\0.7 ");
            un(o, tags::ROWS, &4u16.to_le_bytes());
            un(o, tags::COLUMNS, &4u16.to_le_bytes());
            un(o, tags::PIXEL_REPRESENTATION, &1u16.to_le_bytes());
            let px: Vec<u16> = (0..16)
                .map(|i| (-1000i16 + 10 * k as i16 + i) as u16)
                .collect();
            put(o, tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(px.into()));
        }),
    );
    c.case(l, "vr_un", Expect::Volume(-2024.0, -2024.0 + 20.0 + 15.0));
    let bad_geometry: [(&str, &str, Edit); 7] = [
        (
            "iop_repeated",
            "2.25.12",
            Box::new(|o, _| ds_str(o, tags::IMAGE_ORIENTATION_PATIENT, "1\\0\\0\\1\\0\\0")),
        ),
        (
            "iop_zeros",
            "2.25.13",
            Box::new(|o, _| ds_str(o, tags::IMAGE_ORIENTATION_PATIENT, "0\\0\\0\\0\\0\\0")),
        ),
        (
            "ipp_nan",
            "2.25.14",
            Box::new(|o, k| {
                if k == 1 {
                    ds_str(o, tags::IMAGE_POSITION_PATIENT, "0\\NaN\\2.5")
                }
            }),
        ),
        (
            "ipp_inf",
            "2.25.15",
            Box::new(|o, k| {
                if k == 2 {
                    ds_str(o, tags::IMAGE_POSITION_PATIENT, "0\\0\\inf")
                }
            }),
        ),
        (
            "spacing_zero",
            "2.25.16",
            Box::new(|o, _| ds_str(o, tags::PIXEL_SPACING, "0\\0")),
        ),
        (
            "spacing_negative",
            "2.25.17",
            Box::new(|o, _| ds_str(o, tags::PIXEL_SPACING, "-0.7\\0.7")),
        ),
        (
            "slices_500mm_apart",
            "2.25.18",
            Box::new(|o, k| {
                ds_str(
                    o,
                    tags::IMAGE_POSITION_PATIENT,
                    &format!("0\\0\\{}", 500 * k),
                )
            }),
        ),
    ];
    for (name, uid, edit) in bad_geometry {
        c.files += series(&root.join(name), uid, 3, edit);
        c.case(l, name, Expect::Reject("geometry_invalid"));
    }
    c.files += series(
        &root.join("same_position"),
        "2.25.19",
        3,
        Box::new(|o, _| ds_str(o, tags::IMAGE_POSITION_PATIENT, "0\\0\\0")),
    );
    c.case(l, "same_position", Expect::Reject("series_duplicate_slice"));
    c.files += series(&root.join("one_slice"), "2.25.20", 1, Box::new(|_, _| {}));
    c.case(l, "one_slice", Expect::Reject("series_too_few_slices"));
    c.files += series(
        &root.join("mr"),
        "2.25.21",
        2,
        Box::new(|o, _| put(o, tags::MODALITY, VR::CS, "MR")),
    );
    c.case(l, "mr/IM0001.dcm", Expect::Reject("modality_not_allowed"));
    c.case(l, "mr/IM0002.dcm", Expect::Reject("modality_not_allowed"));
    // Header fields that multiply past any memory before a pixel is read.
    c.files += series(
        &root.join("huge_header"),
        "2.25.22",
        1,
        Box::new(|o, _| {
            put(o, tags::ROWS, VR::US, PrimitiveValue::from(65535u16));
            put(o, tags::COLUMNS, VR::US, PrimitiveValue::from(65535u16));
            put(o, tags::NUMBER_OF_FRAMES, VR::IS, "999999999");
        }),
    );
    c.case(
        l,
        "huge_header/IM0001.dcm",
        Expect::Reject("volume_too_large"),
    );
    // A truncated file, a text file, an empty file.
    c.files += series(&root.join("truncated"), "2.25.23", 3, Box::new(|_, _| {}));
    let t = root.join("truncated/IM0002.dcm");
    let b = fs::read(&t).unwrap();
    fs::write(&t, &b[..b.len() - 20]).unwrap();
    c.case(l, "truncated", Expect::Reject("dicom_truncated"));
    // Implicit VR data sets under a meta group that says explicit VR (an exporter's defect that
    // pydicom reads through): read as implicit VR.
    let dir = root.join("implicit_as_explicit");
    fs::create_dir_all(&dir).unwrap();
    for k in 0..3 {
        let b = ct_slice("2.25.26", k, uids::IMPLICIT_VR_LITTLE_ENDIAN, |_| {});
        let mut meta = dicom_object::FileMetaTable::from_reader(&b[128..]).unwrap();
        let data_start = 132 + 12 + meta.information_group_length as usize;
        meta.transfer_syntax = format!("{}\0", uids::EXPLICIT_VR_LITTLE_ENDIAN);
        meta.update_information_group_length();
        let mut out = b[..132].to_vec();
        meta.write(&mut out).unwrap();
        out.extend_from_slice(&b[data_start..]);
        fs::write(dir.join(format!("IM{k}.dcm")), out).unwrap();
    }
    c.files += 3;
    c.case(l, "implicit_as_explicit", good.clone());
    // A private sequence an archive re-encoded as UN of undefined length (implicit VR inside):
    // pydicom reads it; mg3d drops it for the parser and reads the rest.
    let dir = root.join("un_sequence");
    fs::create_dir_all(&dir).unwrap();
    for k in 0..3 {
        let b = ct_slice("2.25.27", k, uids::EXPLICIT_VR_LITTLE_ENDIAN, |_| {});
        let px = b
            .windows(6)
            .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00, b'O', b'W'])
            .unwrap();
        let mut un: Vec<u8> = vec![0xDF, 0x7F, 0x10, 0x10, b'U', b'N', 0, 0];
        un.extend_from_slice(&u32::MAX.to_le_bytes());
        un.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        un.extend_from_slice(&u32::MAX.to_le_bytes());
        un.extend_from_slice(&[0xDF, 0x7F, 0x11, 0x10, 4, 0, 0, 0]);
        un.extend_from_slice(b"abcd");
        un.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        un.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let out = [&b[..px], &un[..], &b[px..]].concat();
        fs::write(dir.join(format!("IM{k}.dcm")), out).unwrap();
    }
    c.files += 3;
    c.case(l, "un_sequence", good.clone());
    // A slice whose header is cut short: the file is a reject, and so is the series it leaves
    // with a missing slice (the folder's only series).
    c.files += series(&root.join("cut_header"), "2.25.24", 3, Box::new(|_, _| {}));
    let t = root.join("cut_header/IM0003.dcm");
    let b = fs::read(&t).unwrap();
    fs::write(&t, &b[..300]).unwrap();
    c.case(l, "cut_header", Expect::Reject("series_incomplete"));
    c.case(l, "cut_header/IM0003.dcm", Expect::Reject("dicom_corrupt"));
    // A slice whose header says far more pixels than the file holds: the file is a reject, and
    // its series (known from the header) lost it.
    c.files += series(
        &root.join("short_slice"),
        "2.25.25",
        3,
        Box::new(|o, k| {
            if k == 2 {
                put(o, tags::ROWS, VR::US, PrimitiveValue::from(256u16));
                put(o, tags::COLUMNS, VR::US, PrimitiveValue::from(256u16));
            }
        }),
    );
    c.case(l, "short_slice", Expect::Reject("series_incomplete"));
    c.case(
        l,
        "short_slice/IM0003.dcm",
        Expect::Reject("dicom_truncated"),
    );
    fs::write(root.join("README.txt"), "exported by PACS for QUIXOTE").unwrap();
    fs::write(root.join("empty.dcm"), "").unwrap();
    c.files += 2;
    c.case(l, "README.txt", Expect::Reject("not_dicom"));
    c.case(l, "empty.dcm", Expect::Reject("empty_file"));
    // The same series again under a second root: one volume, the copy reported.
    let root2 = c.dir.join("dicom_copy");
    c.files += series(&root2.join("again"), "2.25.10", 3, Box::new(|_, _| {}));
    c.case(
        "dicom_roots[1]",
        "again",
        Expect::Reject("duplicate_volume"),
    );
}

// ---------------------------------------------------------------- NIfTI

fn nifti_cases(c: &mut Corpus) {
    let root = c.dir.join("nifti");
    let l = "nifti_roots[0]";
    fs::create_dir_all(root.join("QUIXOTE_ZEBULON_MRN4471923")).unwrap();
    let vals: Vec<i16> = (0..32).map(|i| -1000 + 50 * i).collect();
    let good = Nii::int16(&[4, 4, 2], &vals);
    let ok = Expect::Volume(-1000.0, 550.0);
    let write = |c: &mut Corpus, rel: &str, bytes: Vec<u8>, e: Expect| {
        fs::write(root.join(rel), bytes).unwrap();
        c.files += 1;
        c.case(l, rel, e);
    };
    write(
        c,
        "QUIXOTE_ZEBULON_MRN4471923/scan.nii.gz",
        gz(&good.bytes()),
        ok.clone(),
    );
    write(c, "plain.nii", good.bytes(), ok.clone());
    write(
        c,
        "big_endian.nii",
        Nii {
            big: true,
            ..Nii::int16(&[4, 4, 2], &vals)
        }
        .bytes(),
        ok.clone(),
    );
    // Older tools wrote vox_offset = 0; the voxels are at 352 as nibabel reads them.
    write(
        c,
        "vox_offset_zero.nii",
        Nii {
            vox_offset: 0.0,
            ..Nii::int16(&[4, 4, 2], &vals)
        }
        .bytes(),
        ok.clone(),
    );
    // Metres in xyzt_units: converted to mm (0.0007 m -> 0.7 mm).
    let metres = Nii {
        units: 1,
        srow: [
            [0.0007, 0.0, 0.0, 0.0],
            [0.0, 0.0007, 0.0, 0.0],
            [0.0, 0.0, 0.0025, 0.0],
        ],
        ..Nii::int16(&[4, 4, 2], &vals)
    };
    write(c, "metres.nii", metres.bytes(), ok.clone());
    let four_d: Vec<i16> = (0..64).map(|i| i as i16).collect();
    write(
        c,
        "four_d.nii.gz",
        gz(&Nii::int16(&[4, 4, 2, 2], &four_d).bytes()),
        Expect::Reject("nifti_4d"),
    );
    let mut nan = Nii::int16(&[2, 2, 2], &[0; 16]);
    nan.datatype = 16;
    nan.bitpix = 32;
    nan.data = [0.0f32, f32::NAN, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write(c, "float_nan.nii", nan.bytes(), Expect::Reject("nifti_nan"));
    let full = gz(&good.bytes());
    write(
        c,
        "truncated.nii.gz",
        full[..full.len() / 2].to_vec(),
        Expect::Reject("nifti_truncated"),
    );
    // Identifiers in file and folder names, in other cases and separators: neither the volume's
    // report key nor a reject message may carry them.
    write(
        c,
        "Zebulon.Quixote_1947-03-12.nii.gz",
        full.clone(),
        ok.clone(),
    );
    fs::create_dir_all(root.join("quixote, zebulon (12.03.1947)")).unwrap();
    write(
        c,
        "quixote, zebulon (12.03.1947)/mrn4471923.nii.gz",
        full[..full.len() / 2].to_vec(),
        Expect::Reject("nifti_truncated"),
    );
    write(
        c,
        "truncated_plain.nii",
        good.bytes()[..370].to_vec(),
        Expect::Reject("nifti_truncated"),
    );
    write(c, "empty.nii.gz", vec![], Expect::Reject("empty_file"));
    write(
        c,
        "garbage.nii",
        b"this is not a NIfTI file at all, QUIXOTE".repeat(20),
        Expect::Reject("nifti_corrupt"),
    );
    write(
        c,
        "pair_header.nii",
        Nii {
            magic: b"ni1\0",
            ..Nii::int16(&[4, 4, 2], &vals)
        }
        .bytes(),
        Expect::Reject("nifti_pair"),
    );
    write(
        c,
        "complex.nii",
        Nii {
            datatype: 32,
            ..Nii::int16(&[4, 4, 2], &vals)
        }
        .bytes(),
        Expect::Reject("nifti_datatype"),
    );
    // A 2 KB gzip whose header declares 32768^2 x 2048 voxels: refused before allocating.
    write(
        c,
        "bomb.nii.gz",
        gz(&Nii::int16(&[32767, 32767, 2048], &[0; 512]).bytes()),
        Expect::Reject("volume_too_large"),
    );
    write(
        c,
        "dim_negative.nii",
        Nii::int16(&[4, -4, 2], &vals).bytes(),
        Expect::Reject("nifti_corrupt"),
    );
    let geo = |srow: [[f32; 4]; 3]| {
        Nii {
            srow,
            ..Nii::int16(&[4, 4, 2], &vals)
        }
        .bytes()
    };
    write(
        c,
        "sform_zero.nii",
        geo([[0.0; 4]; 3]),
        Expect::Reject("geometry_invalid"),
    );
    write(
        c,
        "sform_nan.nii",
        geo([
            [f32::NAN, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ]),
        Expect::Reject("geometry_invalid"),
    );
    write(
        c,
        "sform_absurd.nii",
        geo([
            [1000.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ]),
        Expect::Reject("geometry_invalid"),
    );
    write(
        c,
        "sform_collinear.nii",
        geo([
            [1.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ]),
        Expect::Reject("geometry_invalid"),
    );
    write(
        c,
        "notes.txt",
        b"QUIXOTE ZEBULON MRN4471923".to_vec(),
        Expect::Reject("not_nifti"),
    );
    // Links, as a Hugging Face hub cache lays out a CT-RATE download.
    let blobs = c.dir.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join("0a1b2c"), gz(&good.bytes())).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::symlink;
        symlink(blobs.join("0a1b2c"), root.join("linked.nii.gz")).unwrap();
        symlink(blobs.join("0a1b2c"), root.join("linked_twice.nii.gz")).unwrap();
        symlink(blobs.join("missing"), root.join("dangling.nii.gz")).unwrap();
        symlink(&root, root.join("QUIXOTE_ZEBULON_MRN4471923/loop")).unwrap();
        c.files += 3;
        c.case(l, "linked.nii.gz", ok.clone());
        c.case(l, "linked_twice.nii.gz", Expect::Reject("duplicate_input"));
        c.case(l, "dangling.nii.gz", Expect::Reject("broken_link"));
    }
}

// ---------------------------------------------------------------- reports

fn report_cases(c: &mut Corpus) -> usize {
    let mut csv =
        b"VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n".to_vec();
    let rows: [&[u8]; 10] = [
        "r1,,,No\u{a0}effusion. Heart\u{a0}normal.,Normal.\n".as_bytes(),
        "r2,,,Small\u{202f}nodule.\u{3000}No effusion.,Nodule.\n".as_bytes(),
        "r3,,,\u{2003}Lungs clear.\u{feff} Dr.\u{a0}X reviewed.,Clear\u{a0}lungs.\n".as_bytes(),
        // A hospital export keyed by accession number: the id never reaches an output.
        b"ACC99120077,,,No effusion.,Normal.\n",
        b"ACC99120077-2,,,,\n",
        b"r4,,,Bad byte \xff here.,x\n",
        b",,,No id here.,x\n",
        b"r6,,,,\n",
        b"r7,,,\"unterminated quote,x\n",
        "r8,,,1.\u{a0}Emphysema.\n2.\u{a0}Atelectasis.,Done.\n".as_bytes(),
    ];
    for r in rows {
        csv.extend_from_slice(r);
    }
    fs::write(c.dir.join("reports.csv"), csv).unwrap();
    4 // r1, r2, r3 and the accession-keyed row at least parse
}

fn strings(b: &RecordBatch, n: &str) -> Vec<String> {
    let a = b.column_by_name(n).unwrap().as_string::<i32>();
    (0..a.len()).map(|i| a.value(i).to_string()).collect()
}

#[test]
fn every_hostile_input_ends_as_a_correct_volume_or_a_reasoned_reject() {
    let t = tempfile::tempdir().unwrap();
    let mut c = Corpus {
        dir: t.path().join("in"),
        cases: vec![],
        files: 0,
    };
    dicom_cases(&mut c);
    nifti_cases(&mut c);
    let min_reports = report_cases(&mut c);
    assert!(c.cases.len() >= 40, "{} cases", c.cases.len());
    let work = t.path().join("work");
    let pipeline = format!(
        r#"[pipeline]
name = "hostile"
work_dir = "{work}"
salt = "{SALT}"
[stages.ingest]
kind = "ingest"
params = {{ dicom_roots = ["{d}/dicom", "{d}/dicom_copy"], nifti_roots = ["{d}/nifti"], max_volume_voxels = 100000000 }}
[stages.preprocess]
kind = "preprocess"
inputs = ["ingest"]
params = {{ preset = "demo" }}
[stages.reports]
kind = "reports"
params = {{ files = ["{d}/reports.csv"] }}
"#,
        work = work.display(),
        d = c.dir.display()
    );
    let pf = t.path().join("hostile.toml");
    fs::write(&pf, pipeline).unwrap();
    let o = mg3d(t.path(), &["run", pf.to_str().unwrap()]);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // Outcomes, found by the keyed refs of their paths.
    let read = |f: &str, table: &str| {
        read_table(&work.join(f), &TableSchema::get(table).unwrap()).unwrap()
    };
    let mut volumes: BTreeMap<String, (f64, f64, i32)> = BTreeMap::new();
    for b in read("ingest/volumes.parquet", "volumes") {
        let refs = strings(&b, "source_ref");
        let f = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_primitive::<arrow::datatypes::Float64Type>()
                .clone()
        };
        let (lo, hi) = (f("hu_min"), f("hu_max"));
        let n = b
            .column_by_name("n_files")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int32Type>()
            .clone();
        for (i, r) in refs.iter().enumerate() {
            volumes.insert(r.clone(), (lo.value(i), hi.value(i), n.value(i)));
        }
    }
    let mut rejects: BTreeMap<String, (String, i32)> = BTreeMap::new();
    let mut reject_files = 0;
    for b in read("ingest/rejects.parquet", "rejects") {
        let (refs, reasons) = (strings(&b, "path_ref"), strings(&b, "reason"));
        let n = b
            .column_by_name("n_files")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int32Type>()
            .clone();
        for i in 0..refs.len() {
            reject_files += n.value(i);
            rejects.insert(refs[i].clone(), (reasons[i].clone(), n.value(i)));
        }
    }
    let mut wrong = vec![];
    for (label, rel, e) in &c.cases {
        let r = mg3d_core::ids::pseudonym(SALT, "path", &format!("{label}/{rel}"));
        let got = match (volumes.get(&r), rejects.get(&r)) {
            (Some(&(lo, hi, _)), _) => Expect::Volume(lo, hi),
            (None, Some((code, _))) => Expect::Reject(Box::leak(code.clone().into_boxed_str())),
            (None, None) => Expect::Reject("MISSING"),
        };
        if &got != e {
            wrong.push(format!("{label}/{rel}: expected {e:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Every file accounted for exactly once.
    let vol_files: i32 = volumes.values().map(|v| v.2).sum();
    assert_eq!(
        vol_files + reject_files,
        c.files as i32,
        "volumes {volumes:?}\nrejects {rejects:?}"
    );
    // Preprocess took every volume.
    let pre: usize = read("preprocess/preprocessed.parquet", "preprocessed")
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(pre, volumes.len());
    // Reports: no-break and other Unicode spaces parse; bad rows are rejects.
    let n_reports: usize = read("reports/reports.parquet", "reports")
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert!(n_reports >= min_reports, "{n_reports}");
    let reasons: BTreeSet<String> = read("reports/rejects.parquet", "rejects")
        .iter()
        .flat_map(|b| strings(b, "reason"))
        .collect();
    for want in ["report_not_utf8", "report_no_id", "report_empty"] {
        assert!(reasons.contains(want), "{reasons:?}");
    }

    // No planted identifier, in any case or the other ways it was written, in any file of the
    // work directory (outputs, item caches, lockfile) or in the log.
    let mut hay_words: Vec<String> = PLANTED.iter().map(|p| p.to_lowercase()).collect();
    hay_words.extend(["1947-03-12", "12.03.1947"].map(String::from));
    let mut leaks = vec![];
    let files = mg3d_testkit::all_files(&work);
    assert!(files.len() > 20, "{files:?}");
    for f in files {
        let hay = String::from_utf8_lossy(&mg3d_testkit::readable_text(&f)).to_lowercase();
        for p in &hay_words {
            if hay.contains(p.as_str()) {
                leaks.push(format!("{}: {p}", f.strip_prefix(&work).unwrap().display()));
            }
        }
    }
    for p in &hay_words {
        if log.to_lowercase().contains(p.as_str()) {
            leaks.push(format!("log: {p}"));
        }
    }
    assert!(leaks.is_empty(), "{leaks:?}");
    // A log written to a pipe carries no terminal colour codes.
    assert!(!log.contains('\u{1b}'), "{log}");

    // `mg3d locate` gives the operator the paths back, on the terminal only.
    let r = mg3d_core::ids::pseudonym(SALT, "path", "nifti_roots[0]/garbage.nii");
    let o = mg3d(t.path(), &["locate", pf.to_str().unwrap(), &r]);
    assert!(text(&o).contains("garbage.nii"), "{}", text(&o));

    // An empty or unmounted root is an error, not a successful run that prunes every item.
    let empty = t.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let p2 = t.path().join("empty.toml");
    fs::write(
        &p2,
        format!(
            "[pipeline]\nname = \"e\"\nwork_dir = \"{}\"\nsalt = \"{SALT}\"\n[stages.ingest]\nkind = \"ingest\"\nparams = {{ nifti_roots = [\"{}\"] }}\n",
            t.path().join("w2").display(),
            empty.display()
        ),
    )
    .unwrap();
    let o = mg3d(t.path(), &["run", p2.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("allow_empty"),
        "{}",
        text(&o)
    );
}
