//! Fault cases (`--faults`): bad inputs, each with the reason code the pipeline should give.
//! Fault volumes are small (64 x 64 x 12) so they cost little.

use std::fs;
use std::path::Path;

use rand::Rng;

use crate::catalog::RENDERED;
use crate::dicom_out::{Syntax, uid};
use crate::geometry::{Encoding, Grid, PatientPosition, render};
use crate::nifti_out::{header_for, write_f32};
use crate::phantom::{Phantom, PhantomSpec};
use crate::report::{Assertion, Statement, Templates, write_report};
use crate::writer::{
    CorpusWriter, DicomPlan, FaultTruth, PatientOutput, field_of_view, identity,
    write_nifti_volume, write_series,
};
use crate::{SynthConfig, SynthError, rng_for};

const FAULT_PID0: u32 = 90_000;

struct Ctx<'a> {
    cfg: &'a SynthConfig,
    templates: &'a Templates,
    out: &'a Path,
}

fn fault(
    w: &mut CorpusWriter,
    fault: &str,
    path: &str,
    vn: Option<&str>,
    stage: &str,
    expected: &str,
    note: &str,
) {
    w.faults.push(FaultTruth {
        fault: fault.into(),
        path: path.into(),
        volume_name: vn.map(|s| s.to_string()),
        stage: stage.into(),
        expected: expected.into(),
        note: note.into(),
    });
}

/// Files of a folder, sorted by name.
fn sorted_files(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = fs::read_dir(dir)?.flatten().map(|e| e.path()).collect();
    files.sort();
    Ok(files)
}

/// A small healthy phantom and grid for fault cases.
fn small(ctx: &Ctx, pid: u32) -> (Phantom, Grid, Vec<i16>) {
    let mut rng = rng_for(ctx.cfg.seed, "fault", pid as u64);
    let spec = PhantomSpec {
        body_width_mm: [100.0, 110.0],
        z_extent_mm: [40.0, 44.0],
        posture: PatientPosition::HFS.posture(),
    };
    let ph = Phantom::new(&spec, &mut rng);
    let fov = field_of_view(&ph);
    let grid = Grid::axial(
        PatientPosition::HFS,
        fov / 64.0,
        3.0,
        [fov, fov],
        36.0,
        [0.0; 3],
    );
    let hu = render(&ph, &grid, 7);
    (ph, grid, hu)
}

/// A normal report row (all-absent statements) for a fault volume that should otherwise be usable.
fn normal_report(ctx: &Ctx, vn: &str, pid: u32) -> Result<[Vec<u8>; 5], SynthError> {
    let mut rng = rng_for(ctx.cfg.seed, "fault-report", pid as u64);
    let st: Vec<Statement> = RENDERED
        .iter()
        .filter(|_| rng.random_bool(0.3))
        .map(|l| Statement {
            label: l.to_string(),
            assertion: Assertion::Absent,
            finding: None,
        })
        .collect();
    let r = write_report(ctx.templates, &st, 3.0, &mut rng)?;
    Ok([
        vn.into(),
        r.clinical.into(),
        r.technique.into(),
        r.findings.into(),
        r.impressions.into(),
    ])
}

fn series(
    ctx: &Ctx,
    w: &mut CorpusWriter,
    pid: u32,
    rel_override: Option<&str>,
    edit: impl FnOnce(&mut Grid),
    tilt: f64,
) -> Result<(String, String), SynthError> {
    let (_, mut grid, _) = small(ctx, pid);
    edit(&mut grid);
    let (ph, _, _) = small(ctx, pid);
    let hu = render(&ph, &grid, 7);
    let mut rng = rng_for(ctx.cfg.seed, "fault-id", pid as u64);
    let id = identity(&mut rng, pid, 1, &format!("fault{}", ctx.cfg.seed));
    let rel = rel_override.map(|s| s.to_string()).unwrap_or_else(|| {
        format!(
            "dicom/{}/{}_{}/series_1",
            id.patient_id, id.study_date, id.accession
        )
    });
    let vn = format!("train_{pid}_a_1.nii.gz");
    let plan = DicomPlan {
        syntax: Syntax::ExplicitLE,
        encoding: Encoding::VARIANTS[0],
        ascending: true,
        enhanced: false,
        shuffled: rel_override.is_some(), // a second series in an existing folder gets distinct file names
    };
    let (t, files) = write_series(
        ctx.out,
        &rel,
        &vn,
        pid,
        &id,
        &grid,
        PatientPosition::HFS,
        &plan,
        &hu,
        tilt,
    )?;
    let mut p = PatientOutput {
        dicom_files: files,
        ..Default::default()
    };
    p.accession.push([
        id.accession.clone(),
        id.study_uid.clone(),
        id.series_uid.clone(),
        vn.clone(),
    ]);
    p.reports.push(normal_report(ctx, &vn, pid)?);
    p.volumes.push(t);
    w.add(p);
    Ok((rel, vn))
}

fn nifti(
    ctx: &Ctx,
    w: &mut CorpusWriter,
    pid: u32,
    with_report: bool,
) -> Result<(String, String), SynthError> {
    let (_, grid, hu) = small(ctx, pid);
    let vn = format!("train_{pid}_a_1.nii.gz");
    let (t, row) = write_nifti_volume(
        ctx.out,
        &vn,
        pid,
        &grid,
        PatientPosition::HFS,
        Encoding::VARIANTS[0],
        "hu",
        &hu,
        "F",
        "050Y",
    )?;
    let mut p = PatientOutput::default();
    p.metadata.push(row);
    if with_report {
        p.reports.push(normal_report(ctx, &vn, pid)?);
    }
    let rel = t.path.clone();
    p.volumes.push(t);
    w.add(p);
    Ok((rel, vn))
}

/// Writes every fault case.
pub(crate) fn write_faults(
    cfg: &SynthConfig,
    templates: &Templates,
    out: &Path,
    w: &mut CorpusWriter,
) -> Result<(), SynthError> {
    let ctx = Ctx {
        cfg,
        templates,
        out,
    };
    let mut pid = FAULT_PID0;
    let mut next = || {
        pid += 1;
        pid
    };
    dicom_faults(&ctx, w, &mut next)?;
    series_faults(&ctx, w, &mut next)?;
    folder_faults(&ctx, w, &mut next)?;
    nifti_faults(&ctx, w, &mut next)?;
    report_faults(&ctx, w, &mut next)
}

/// DICOM file faults, in a healthy series that must still be accepted: a truncated copy of a
/// slice, a non-DICOM file, an empty file.
fn dicom_faults(
    ctx: &Ctx,
    w: &mut CorpusWriter,
    next: &mut dyn FnMut() -> u32,
) -> Result<(), SynthError> {
    let out = ctx.out;
    // A healthy series that hosts the file-level faults (the series itself must be accepted).
    let (host, host_vn) = series(ctx, w, next(), None, |_| {}, 0.0)?;
    fault(
        w,
        "host_series",
        &host,
        Some(&host_vn),
        "ingest",
        "accepted",
        "healthy series holding the file-level faults below",
    );
    // Truncated DICOM file: a copy of a slice cut in half.
    let first = fs::read_dir(out.join(&host))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .min()
        .unwrap();
    let bytes = fs::read(&first)?;
    let trunc = format!("{host}/IMG_partial.dcm");
    fs::write(out.join(&trunc), &bytes[..bytes.len() / 2])?;
    fault(
        w,
        "truncated_dicom",
        &trunc,
        None,
        "ingest",
        "dicom_truncated",
        "a slice file cut off mid pixel data (interrupted transfer)",
    );
    // Non-DICOM file in the series folder.
    let txt = format!("{host}/README.txt");
    fs::write(out.join(&txt), "exported by PACS\n")?;
    fault(
        w,
        "not_dicom",
        &txt,
        None,
        "ingest",
        "not_dicom",
        "a text file inside a series folder",
    );
    // Zero-byte files.
    let zero = format!("{host}/IMG_empty.dcm");
    fs::write(out.join(&zero), b"")?;
    fault(
        w,
        "zero_byte_dicom",
        &zero,
        None,
        "ingest",
        "empty_file",
        "a zero-byte .dcm file",
    );

    Ok(())
}

/// DICOM series faults: a missing or a duplicated slice.
fn series_faults(
    ctx: &Ctx,
    w: &mut CorpusWriter,
    next: &mut dyn FnMut() -> u32,
) -> Result<(), SynthError> {
    let out = ctx.out;
    // Missing interior slice.
    let p = next();
    let (rel, vn) = series(ctx, w, p, None, |_| {}, 0.0)?;
    let files = sorted_files(&out.join(&rel))?;
    fs::remove_file(&files[files.len() / 2])?;
    fault(
        w,
        "missing_slice",
        &rel,
        Some(&vn),
        "ingest",
        "series_missing_slice",
        "one interior slice removed: a gap of twice the slice spacing",
    );

    // Duplicated slice: same position, another SOPInstanceUID and file name.
    let p = next();
    let (rel, vn) = series(ctx, w, p, None, |_| {}, 0.0)?;
    let files = sorted_files(&out.join(&rel))?;
    let src = &files[3];
    let mut obj = dicom_object::open_file(src).map_err(|e| SynthError::DicomRead(Box::new(e)))?;
    let new_uid = uid(&[&rel, "duplicate"]);
    obj.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::SOP_INSTANCE_UID,
        dicom_core::VR::UI,
        new_uid.as_str(),
    ));
    obj.meta_mut().media_storage_sop_instance_uid = new_uid.clone();
    let dup = out.join(&rel).join("IMG_dup.dcm");
    obj.write_to_file(&dup)
        .map_err(|e| SynthError::DicomWrite {
            path: dup,
            source: Box::new(e),
        })?;
    fault(
        w,
        "duplicate_slice",
        &rel,
        Some(&vn),
        "ingest",
        "series_duplicate_slice",
        "two files at the same ImagePositionPatient",
    );

    Ok(())
}

/// DICOM folder and geometry faults: two series mixed in one folder (both accepted), gantry
/// tilt, inconsistent spacing.
fn folder_faults(
    ctx: &Ctx,
    w: &mut CorpusWriter,
    next: &mut dyn FnMut() -> u32,
) -> Result<(), SynthError> {
    // Two series mixed in one folder: both must be split and accepted.
    let p1 = next();
    let (rel, vn1) = series(ctx, w, p1, None, |_| {}, 0.0)?;
    let p2 = next();
    let (_, vn2) = series(
        ctx,
        w,
        p2,
        Some(&rel),
        |g| {
            g.dz = 5.0;
            g.slices = 7;
            g.slice_offsets = (0..7).map(|k| k as f64 * 5.0).collect();
        },
        0.0,
    )?;
    fault(
        w,
        "mixed_series",
        &rel,
        Some(&vn1),
        "ingest",
        "accepted",
        &format!(
            "two series in one folder: must be split by SeriesInstanceUID into {vn1} and {vn2}"
        ),
    );

    // Gantry tilt: slices sheared along y, tilt recorded.
    let p = next();
    let tilt_deg: f64 = 15.0;
    let (rel, vn) = series(
        ctx,
        w,
        p,
        None,
        |g| {
            let t = tilt_deg.to_radians();
            g.col_dir = [0.0, t.cos(), -t.sin()];
            g.slice_dir = [0.0, 0.0, 1.0];
        },
        tilt_deg,
    )?;
    fault(
        w,
        "gantry_tilt",
        &rel,
        Some(&vn),
        "ingest",
        "series_gantry_tilt",
        "slice positions are not along the image normal (15 degree gantry tilt)",
    );

    // Inconsistent spacing.
    let p = next();
    let (rel, vn) = series(
        ctx,
        w,
        p,
        None,
        |g| {
            let mut z = 0.0;
            g.slice_offsets = (0..g.slices)
                .map(|k| {
                    let o = z;
                    z += if k % 4 == 3 { 4.5 } else { 3.0 };
                    o
                })
                .collect();
        },
        0.0,
    )?;
    fault(
        w,
        "inconsistent_spacing",
        &rel,
        Some(&vn),
        "ingest",
        "series_nonuniform_spacing",
        "slice gaps alternate between 3.0 and 4.5 mm",
    );
    Ok(())
}

/// NIfTI faults: NaN voxels, a corrupt gzip stream, an empty file.
fn nifti_faults(
    ctx: &Ctx,
    w: &mut CorpusWriter,
    next: &mut dyn FnMut() -> u32,
) -> Result<(), SynthError> {
    let out = ctx.out;
    // NIfTI with NaNs (float32).
    let p = next();
    let (_, grid, hu) = small(ctx, p);
    let vn = format!("train_{p}_a_1.nii.gz");
    let rel = format!("nifti/{vn}");
    let mut data: Vec<f32> = hu.iter().map(|&h| h as f32).collect();
    for i in (0..data.len()).step_by(97) {
        data[i] = f32::NAN;
    }
    write_f32(
        &out.join(&rel),
        data,
        [grid.cols, grid.rows, grid.slices],
        &header_for(&grid.affine_ras(), [grid.dx, grid.dy, grid.dz], None),
    )?;
    w.fault_reports.push(normal_report(ctx, &vn, p)?);
    fault(
        w,
        "nifti_nan",
        &rel,
        Some(&vn),
        "ingest",
        "nifti_nan",
        "float32 volume with NaN voxels",
    );

    // Corrupt gzip: a valid NIfTI with bytes overwritten in the compressed stream.
    let p = next();
    let (rel, vn) = nifti(ctx, w, p, true)?;
    let mut bytes = fs::read(out.join(&rel))?;
    let mid = bytes.len() / 2;
    let end = (mid + 64).min(bytes.len());
    for b in &mut bytes[mid..end] {
        *b ^= 0xA5;
    }
    fs::write(out.join(&rel), bytes)?;
    fault(
        w,
        "corrupt_gzip",
        &rel,
        Some(&vn),
        "ingest",
        "nifti_corrupt",
        "64 bytes of the gzip stream flipped",
    );

    // Zero-byte NIfTI.
    let p = next();
    let vn = format!("train_{p}_a_1.nii.gz");
    let rel = format!("nifti/{vn}");
    fs::write(out.join(&rel), b"")?;
    w.fault_reports.push(normal_report(ctx, &vn, p)?);
    fault(
        w,
        "zero_byte_nifti",
        &rel,
        Some(&vn),
        "ingest",
        "empty_file",
        "a zero-byte .nii.gz",
    );
    Ok(())
}

/// Report faults: empty, orphan, missing, non-UTF-8 and duplicated reports.
fn report_faults(
    ctx: &Ctx,
    w: &mut CorpusWriter,
    next: &mut dyn FnMut() -> u32,
) -> Result<(), SynthError> {
    // Empty report for a valid volume.
    let p = next();
    let (_, vn) = nifti(ctx, w, p, false)?;
    w.fault_reports.push([
        vn.clone().into(),
        b"Not given.".to_vec(),
        b"".to_vec(),
        b"Not given.".to_vec(),
        b"".to_vec(),
    ]);
    fault(
        w,
        "empty_report",
        "reports/train_reports.csv",
        Some(&vn),
        "reports",
        "report_empty",
        "every section empty or 'Not given.'",
    );

    // Report whose volume does not exist.
    let p = next();
    let vn = format!("train_{p}_a_1.nii.gz");
    w.fault_reports.push(normal_report(ctx, &vn, p)?);
    fault(
        w,
        "report_without_volume",
        "reports/train_reports.csv",
        Some(&vn),
        "curate",
        "report_orphan",
        "report row for a VolumeName with no volume",
    );

    // Volume with no report.
    let p = next();
    let (rel, vn) = nifti(ctx, w, p, false)?;
    fault(
        w,
        "volume_without_report",
        &rel,
        Some(&vn),
        "curate",
        "volume_no_report",
        "valid volume, no report row",
    );

    // Non-UTF-8 bytes in a report.
    let p = next();
    let (_, vn) = nifti(ctx, w, p, false)?;
    let mut r = normal_report(ctx, &vn, p)?;
    r[3].extend_from_slice(b" Nodule \xff\xfe in the RUL.");
    w.fault_reports.push(r);
    fault(
        w,
        "non_utf8_report",
        "reports/train_reports.csv",
        Some(&vn),
        "reports",
        "report_not_utf8",
        "invalid UTF-8 bytes in Findings_EN",
    );

    // Duplicate VolumeName: two report rows with different text.
    let p = next();
    let (_, vn) = nifti(ctx, w, p, false)?;
    w.fault_reports.push(normal_report(ctx, &vn, p)?);
    w.fault_reports.push(normal_report(ctx, &vn, p + 1000)?);
    fault(
        w,
        "duplicate_volume_name",
        "reports/train_reports.csv",
        Some(&vn),
        "reports",
        "report_duplicate_id",
        "two report rows share one VolumeName",
    );
    Ok(())
}
