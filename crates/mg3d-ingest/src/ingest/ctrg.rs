//! CTRG-Chest volumes: each annotation entry's folder of per-slice 8-bit JPEGs, stacked in the
//! numeric order of the file names (`2.jpg` before `10.jpg`, never directory or lexical order)
//! into a volume of grey levels. JPEG slices carry no geometry: the spacing is the
//! `ctrg_spacing_mm` param, rows run anterior to posterior and columns patient right to left
//! (radiological display), and `ctrg_first_slice` says whether slice 1 is the most superior.
//! The values stay grey levels (`hu_applied = "gray8"`): no HU is claimed; preprocess maps
//! 0..255 onto its window. An `image_path` naming a `.nii`/`.nii.gz` file (CTRG also ships
//! volumes that way) is read with its header's geometry; its values must be 0..255.

use mg3d_core::ctrg::{Entry, read_annotation, source_key};

use super::*;

/// A slice file's number (its stem), or `None` when the name is not a number.
fn slice_number(p: &Path) -> Option<u64> {
    let name = p.file_name()?.to_str()?;
    let lower = name.to_ascii_lowercase();
    let stem = lower
        .strip_suffix(".jpg")
        .or_else(|| lower.strip_suffix(".jpeg"))?;
    stem.parse().ok()
}

/// The slice files of a folder in slice order, or why they cannot be ordered.
fn slice_files(dir: &Path) -> Result<Vec<PathBuf>, Reject> {
    let rd = std::fs::read_dir(dir).map_err(|e| Reject::new("ctrg_no_slices", e.to_string()))?;
    let mut numbered = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        let name = file_name(&p).to_ascii_lowercase();
        if !(name.ends_with(".jpg") || name.ends_with(".jpeg")) {
            continue;
        }
        match slice_number(&p) {
            Some(n) => numbered.push((n, p)),
            None => {
                return Err(Reject::new(
                    "ctrg_slice_name",
                    format!(
                        "a slice file name is not a number ({name}): the slice order is unknown"
                    ),
                ));
            }
        }
    }
    numbered.sort();
    if numbered.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(Reject::new(
            "ctrg_slice_name",
            "two slice files have the same number",
        ));
    }
    if numbered.is_empty() {
        return Err(Reject::new(
            "ctrg_no_slices",
            "no .jpg slices in the folder",
        ));
    }
    Ok(numbered.into_iter().map(|(_, p)| p).collect())
}

/// One JPEG slice as grey levels (colour converted with ITU-R 601 luma, as PIL's `convert("L")`).
fn decode_slice(p: &Path) -> Result<(usize, usize, Vec<u8>), Reject> {
    let f = std::fs::File::open(p).map_err(|e| Reject::new("unreadable", e.to_string()))?;
    let mut d = jpeg_decoder::Decoder::new(std::io::BufReader::new(f));
    let pixels = d
        .decode()
        .map_err(|e| Reject::new("ctrg_bad_jpeg", e.to_string()))?;
    let info = d
        .info()
        .ok_or_else(|| Reject::new("ctrg_bad_jpeg", "no image header"))?;
    let grey = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => pixels,
        jpeg_decoder::PixelFormat::RGB24 => pixels
            .chunks_exact(3)
            .map(|c| ((c[0] as u32 * 299 + c[1] as u32 * 587 + c[2] as u32 * 114) / 1000) as u8)
            .collect(),
        other => {
            return Err(Reject::new(
                "ctrg_not_8bit",
                format!("{other:?} JPEG: CTRG slices are 8-bit grey"),
            ));
        }
    };
    Ok((info.width as usize, info.height as usize, grey))
}

impl Ctx<'_> {
    /// Every entry of every annotation file: a volume item each, and a reject for each id
    /// listed again.
    pub(crate) fn ctrg_annotations(
        &self,
        files: &[String],
        out: &mut Collected,
    ) -> Result<(), StageError> {
        for (i, f) in files.iter().enumerate() {
            let label = format!("ctrg_annotations[{i}]");
            let path = self.ctx.resolve(f)?;
            let (entries, repeats) = read_annotation(&path).map_err(StageError::wrap)?;
            let root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            for r in &repeats {
                let (code, message) = r.reject();
                let rej = Reject::new(code, message);
                out.push(
                    ItemResult::Reject(self.reject(&label, &r.entry.image_path, "series", 0, &rej)),
                    None,
                );
            }
            self.in_batches(&entries, "CTRG volumes", out, |e| {
                self.ctrg_entry(&root, &label, e)
            })?;
        }
        Ok(())
    }

    fn ctrg_entry(
        &self,
        root: &Path,
        label: &str,
        e: &Entry,
    ) -> Result<Option<(ItemResult, Option<PathBuf>)>, StageError> {
        let key = source_key(&e.id);
        if !self.ctx.items().owns(&key) {
            return Ok(None);
        }
        let dir = root.join(&e.image_path);
        let lower = e.image_path.to_ascii_lowercase();
        let nifti = lower.ends_with(".nii") || lower.ends_with(".nii.gz");
        let slices = match if nifti {
            Ok(vec![dir])
        } else {
            slice_files(&dir)
        } {
            Ok(s) => s,
            Err(r) => {
                let row = self.reject(label, &e.image_path, "series", 0, &r);
                return Ok(Some((ItemResult::Reject(row), None)));
            }
        };
        let paths: Vec<&Path> = slices.iter().map(PathBuf::as_path).collect();
        let digest = format!(
            "{}|{:?}|{}",
            file_digest(&paths, root)?,
            self.p.ctrg_spacing_mm,
            self.p.ctrg_first_slice
        );
        let item_key = self.ctx.items().key(&key, &digest);
        let mut phi = Phi::new();
        phi.add_path(Path::new(&e.image_path));
        let n = slices.len() as i32;
        self.stored_item(
            &item_key,
            &phi,
            || {
                self.reject(
                    label,
                    &e.image_path,
                    "series",
                    n,
                    &mg3d_volume::internal_error(),
                )
            },
            |item_dir| match self.ctrg_volume(&slices, nifti) {
                Ok((vol, geometry)) => {
                    self.finish_row(item_dir, vol, self.ctrg_row(label, e, n, geometry))
                }
                Err(r) => {
                    let r = Reject::new(r.code, without_paths(&r.message, root, &paths));
                    Ok(ItemResult::Reject(self.reject(
                        label,
                        &e.image_path,
                        "series",
                        n,
                        &r,
                    )))
                }
            },
        )
        .map(Some)
    }

    /// The volume as grey levels, and where its geometry comes from: the slices stacked with the
    /// assumed geometry, or a NIfTI file (`nifti`) with its header's, whose values must be grey
    /// levels already.
    fn ctrg_volume(&self, slices: &[PathBuf], nifti: bool) -> Result<(Volume, String), Reject> {
        if nifti {
            let reader = NiftiReader::open(&slices[0])?;
            let voxels = reader.shape().spatial.iter().map(|&d| d as u64).product();
            let _held = self.reserve(voxels, 8)?;
            let (vol, _) = reader.read(&ReadOptions::default())?;
            let st = vol.stats();
            if st.min < 0.0 || st.max > 255.0 {
                return Err(Reject::new(
                    "ctrg_not_8bit",
                    format!("values {}..{}: not 8-bit grey levels", st.min, st.max),
                ));
            }
            vol.check_geometry()?;
            return Ok((vol, "geometry from the NIfTI header".into()));
        }
        let (w, h, first) = decode_slice(&slices[0])?;
        let _held = self.reserve((w * h * slices.len()) as u64, 8)?;
        let mut data: Vec<f32> = Vec::with_capacity(w * h * slices.len());
        data.extend(first.iter().map(|&g| g as f32));
        for (k, p) in slices.iter().enumerate().skip(1) {
            let (sw, sh, g) = decode_slice(p)?;
            if (sw, sh) != (w, h) {
                return Err(Reject::new(
                    "ctrg_slice_size",
                    format!("slice {} is {sw} x {sh}, slice 1 is {w} x {h}", k + 1),
                ));
            }
            data.extend(g.iter().map(|&g| g as f32));
        }
        let [sx, sy, sz] = self.p.ctrg_spacing_mm;
        let down = if self.p.ctrg_first_slice == "superior" {
            -1.0
        } else {
            1.0
        };
        let mut affine = [[0.0; 4]; 4];
        affine[0][0] = -sx;
        affine[1][1] = -sy;
        affine[2][2] = down * sz;
        affine[3][3] = 1.0;
        let vol = Volume {
            dims: [w, h, slices.len()],
            data,
            affine,
        };
        vol.check_geometry()?;
        let geometry = format!(
            "JPEG slices carry no geometry: spacing {:?} mm assumed (ctrg_spacing_mm), rows anterior to posterior, columns right to left, slice 1 {} (ctrg_first_slice)",
            self.p.ctrg_spacing_mm, self.p.ctrg_first_slice
        );
        Ok((vol, geometry))
    }

    fn ctrg_row(&self, label: &str, e: &Entry, n: i32, geometry: String) -> VolumesRow {
        let c = self.ctx;
        let key = source_key(&e.id);
        VolumesRow {
            volume_id: c.pseudonym("volume", &key),
            patient_id: c.pseudonym("patient", &key),
            study_id: c.pseudonym("study", &key),
            report_key: Some(c.pseudonym("report", &key)),
            source_kind: "ctrg".into(),
            source_root: label.into(),
            source_ref: c.pseudonym("path", &format!("{label}/{}", e.image_path)),
            n_files: n,
            modality: "CT".into(),
            hu_applied: "gray8".into(),
            hu_evidence:
                "8-bit grey levels (CTRG-Chest): not HU; preprocess maps 0..255 onto its window"
                    .into(),
            warnings: vec![format!(
                "{geometry}; split {:?} in the annotation file",
                e.split
            )],
            ..VolumesRow::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, names: &[&str]) {
        for n in names {
            std::fs::write(dir.join(n), b"").unwrap();
        }
    }

    #[test]
    fn slices_are_in_numeric_order_not_name_order() {
        let d = tempfile::tempdir().unwrap();
        touch(
            d.path(),
            &["10.jpg", "2.jpg", "1.JPG", "9.jpeg", "notes.txt"],
        );
        let names: Vec<String> = slice_files(d.path())
            .unwrap()
            .iter()
            .map(|p| file_name(p))
            .collect();
        assert_eq!(names, ["1.JPG", "2.jpg", "9.jpeg", "10.jpg"]);
    }

    #[test]
    fn slices_without_an_order_are_rejects() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), &["1.jpg", "scout.jpg"]);
        assert_eq!(slice_files(d.path()).unwrap_err().code, "ctrg_slice_name");
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), &["01.jpg", "1.jpg"]);
        assert_eq!(slice_files(d.path()).unwrap_err().code, "ctrg_slice_name");
        let d = tempfile::tempdir().unwrap();
        assert_eq!(slice_files(d.path()).unwrap_err().code, "ctrg_no_slices");
    }
}
