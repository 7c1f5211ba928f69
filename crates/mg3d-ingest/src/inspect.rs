//! `mg3d inspect`: what a DICOM file, a DICOM series folder or a NIfTI file holds, in one JSON
//! object (shape, spacing, RAS affine in nibabel's convention, orientation codes, dtype, rescale,
//! transfer syntax, value statistics after rescale).

use std::path::Path;

use serde_json::{Value, json};

use mg3d_dicom::header::read_header;
use mg3d_dicom::series::{SpacingRules, assemble, group_series, single_file_volume};
use mg3d_volume::nifti_io::read_nifti;
use mg3d_volume::{Reject, Volume};

fn describe(v: &Volume) -> Value {
    let st = v.stats();
    json!({
        "shape": v.dims,
        "spacing": v.spacing(),
        "affine": v.affine,
        "orientation": v.axcodes(),
        "values": {"min": st.min, "max": st.max, "mean": st.mean, "sum": st.sum},
    })
}

fn dtype(bits: u16, signed: bool) -> String {
    format!("{}int{}", if signed { "" } else { "u" }, bits)
}

/// Inspects a path. Errors are rejects with a reason code (never a panic).
pub fn inspect(path: &Path) -> Result<Value, Reject> {
    let guarded = std::panic::catch_unwind(|| inspect_inner(path));
    guarded.unwrap_or_else(|_| {
        Err(Reject::new(
            "internal_error",
            format!("{}: reader panicked (please report)", path.display()),
        ))
    })
}

fn inspect_inner(path: &Path) -> Result<Value, Reject> {
    if path.is_dir() {
        let mut files = Vec::new();
        let mut stack = vec![path.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)
                .map_err(|e| Reject::new("unreadable", e.to_string()))?
                .flatten()
            {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p)
                } else {
                    files.push(p)
                }
            }
        }
        files.sort();
        let mut headers = Vec::new();
        let mut skipped = Vec::new();
        for f in &files {
            match read_header(f) {
                Ok(h) => headers.push(h),
                Err(r) => skipped
                    .push(json!({"file": f.strip_prefix(path).unwrap_or(f), "reason": r.code})),
            }
        }
        let (mut groups, rejects) = group_series(headers);
        for (f, r) in rejects {
            skipped.push(json!({"file": f.strip_prefix(path).unwrap_or(&f), "reason": r.code}));
        }
        if groups.is_empty() {
            return Err(Reject::new(
                "no_series",
                format!("{}: no DICOM image series", path.display()),
            ));
        }
        groups.sort_by_key(|g| std::cmp::Reverse(g.files.len()));
        let g = &groups[0];
        let h = g.files[0].clone();
        let (v, info) = assemble(g, &SpacingRules::default())?;
        let mut out = describe(&v);
        let o = out.as_object_mut().unwrap();
        o.insert("kind".into(), json!("dicom-series"));
        o.insert(
            "dtype".into(),
            json!(dtype(h.bits_allocated, h.pixel_representation == 1)),
        );
        o.insert("slope".into(), json!(info.slope));
        o.insert("intercept".into(), json!(info.intercept));
        o.insert("transfer_syntax".into(), json!(info.transfer_syntax));
        o.insert("files".into(), json!(info.n_files));
        o.insert("other_series".into(), json!(groups.len() - 1));
        o.insert("skipped".into(), json!(skipped));
        o.insert("warnings".into(), json!(info.warnings));
        return Ok(out);
    }
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        let (v, info) = read_nifti(path, true)?;
        let mut out = describe(&v);
        let o = out.as_object_mut().unwrap();
        o.insert("kind".into(), json!("nifti"));
        // "shape" is the volume read (the first of a 4D image); "dims" every dimension.
        o.insert("dims".into(), json!(info.dims));
        o.insert("nifti_version".into(), json!(info.version));
        o.insert("dtype".into(), json!(info.datatype));
        o.insert(
            "slope".into(),
            json!(if info.scaled { info.scl_slope } else { 1.0 }),
        );
        o.insert(
            "intercept".into(),
            json!(if info.scaled { info.scl_inter } else { 0.0 }),
        );
        o.insert("transfer_syntax".into(), Value::Null);
        o.insert("affine_source".into(), json!(info.affine_source));
        return Ok(out);
    }
    let h = read_header(path)?;
    if h.samples_per_pixel != 1 {
        return Err(Reject::new(
            "dicom_not_grayscale",
            format!(
                "SamplesPerPixel {} ({})",
                h.samples_per_pixel, h.photometric
            ),
        ));
    }
    if h.rows == 0 || h.cols == 0 {
        return Err(Reject::new(
            "dicom_no_pixels",
            "no image (Rows/Columns absent)",
        ));
    }
    let v = single_file_volume(&h)?;
    let mut out = describe(&v);
    let o = out.as_object_mut().unwrap();
    o.insert("kind".into(), json!("dicom-file"));
    o.insert(
        "dtype".into(),
        json!(dtype(h.bits_allocated, h.pixel_representation == 1)),
    );
    o.insert("slope".into(), json!(h.slope));
    o.insert("intercept".into(), json!(h.intercept));
    o.insert("transfer_syntax".into(), json!(h.transfer_syntax));
    o.insert("frames".into(), json!(h.frames));
    Ok(out)
}
