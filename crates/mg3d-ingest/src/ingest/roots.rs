//! The roots of ingest: walking them, reading DICOM headers and grouping series, and running
//! items in bounded parallel batches through the item store.

use super::*;

impl Ctx<'_> {
    /// The files under one root; what cannot be read as a file becomes a reject now.
    pub(crate) fn walk_root(
        &self,
        walker: &mut Walker,
        root: &Path,
        label: &str,
        out: &mut Collected,
    ) -> Result<Vec<PathBuf>, StageError> {
        let found = walker.walk(root).map_err(|source| IngestError::Read {
            path: format!("{label} {}", root.display()),
            source,
        })?;
        let mut files = Vec::new();
        for f in found {
            let p = match &f {
                Found::File(p) | Found::Skipped(p, ..) => p,
            };
            out.phi.add_path(Path::new(&rel(root, p)));
            match f {
                Found::File(p) => files.push(p),
                Found::Skipped(p, code, msg) => out.push(
                    ItemResult::Reject(self.reject_at(
                        root,
                        label,
                        &p,
                        "file",
                        1,
                        Reject::new(code, msg),
                    )),
                    None,
                ),
            }
        }
        Ok(files)
    }

    /// Reads one item through the item store: reused when its key is unchanged, else made now.
    /// A panic in `make` becomes the item's reject (`on_panic`), not the stage's failure.
    /// The result is scrubbed of the item's own identifying values (`phi`) before it is stored.
    pub(crate) fn stored_item(
        &self,
        key: &str,
        phi: &Phi,
        on_panic: impl FnOnce() -> RejectsRow,
        make: impl FnOnce(&Path) -> Result<ItemResult, StageError>,
    ) -> Result<(ItemResult, Option<PathBuf>), StageError> {
        let o = self.ctx.items().get_or_make::<StageError>(key, |dir| {
            let mut res =
                mg3d_volume::catch_panic(|| make(dir), |_| Ok(ItemResult::Reject(on_panic())))?;
            res.scrub(phi);
            let json = serde_json::to_vec(&res).map_err(|source| IngestError::Item {
                path: dir.to_path_buf(),
                source,
            })?;
            std::fs::write(dir.join("result.json"), json)?;
            Ok(())
        })?;
        let res: ItemResult = serde_json::from_slice(&std::fs::read(o.dir().join("result.json"))?)
            .map_err(|source| IngestError::Item {
                path: o.dir().to_path_buf(),
                source,
            })?;
        Ok((res, Some(o.dir().to_path_buf())))
    }

    pub(crate) fn dicom_root(
        &self,
        root: &Path,
        label: &str,
        files: Vec<PathBuf>,
        out: &mut Collected,
    ) -> Result<(), StageError> {
        let ctx = self.ctx;
        let (ok, mut losses) = self.read_headers(root, label, &files, out);
        let (groups, rejs) = group_series(ok);
        for (f, r) in rejs {
            out.push(
                ItemResult::Reject(self.reject_at(root, label, &f, "file", 1, r)),
                None,
            );
        }
        for g in &groups {
            *losses
                .series_in
                .entry(g.files[0].path.parent().unwrap_or(root).to_path_buf())
                .or_default() += 1;
        }
        self.in_batches(&groups, "series", out, |g| {
            if !ctx.items().owns(&g.key) {
                return Ok(None);
            }
            let paths: Vec<&Path> = g.files.iter().map(|h| h.path.as_path()).collect();
            // The report key the accession map gives this series is part of its result.
            let series_uid = g.key.split('#').next().unwrap_or(&g.key);
            let digest = format!(
                "{}|{:?}",
                file_digest(&paths, root)?,
                self.accession.get(series_uid)
            );
            let key = ctx.items().key(&g.key, &digest);
            let folder = rel(root, g.files[0].path.parent().unwrap_or(root));
            let n = g.files.len() as i32;
            let mut phi = Phi::new();
            for h in &g.files {
                phi.extend(&h.phi);
                phi.add_path(Path::new(&rel(root, &h.path)));
            }
            let (mut res, dir) = self.stored_item(
                &key,
                &phi,
                || self.reject(label, &folder, "series", n, &mg3d_volume::internal_error()),
                |dir| self.dicom_item(root, label, g, dir),
            )?;
            let ItemResult::Volume(v) = &mut res else {
                return Ok(Some((res, dir)));
            };
            match losses.of(g, root) {
                Loss::Reject(r) => Ok(Some((
                    ItemResult::Reject(self.reject(label, &folder, "series", n, &r)),
                    None,
                ))),
                Loss::Warning(m) => {
                    v.warnings.push(m);
                    Ok(Some((res, dir)))
                }
                Loss::None => Ok(Some((res, dir))),
            }
        })
    }

    /// Every file's header, in parallel: the readable CT headers (their identifiers added to
    /// `out.phi`), every other file a reject in `out`, and what the rejects took from the series.
    fn read_headers(
        &self,
        root: &Path,
        label: &str,
        files: &[PathBuf],
        out: &mut Collected,
    ) -> (Vec<SliceHeader>, Losses) {
        let p = self.p;
        let pb = self.ctx.progress_bar(files.len() as u64, "DICOM headers");
        let headers: Vec<Result<SliceHeader, Reject>> = files
            .par_iter()
            .map(|f| {
                let h = mg3d_volume::catch_panic(|| parse_header(f), Err);
                pb.inc(1);
                h
            })
            .collect();
        pb.finish_and_clear();
        let mut ok = Vec::new();
        // A series must not lose a slice silently to a file-level reject. Files whose header
        // parsed but that cannot be read (truncated, oversized) name their series and instance;
        // for the others only their folder is known.
        let mut losses = Losses::default();
        for (f, h) in files.iter().zip(headers) {
            let h = match h {
                Ok(h) => {
                    // A parsed header's identifiers are scrubbed, also when its file is rejected.
                    out.phi.extend(&h.phi);
                    let (series, sop) = (h.series_uid.clone(), h.sop_uid.clone());
                    checked_header(h).inspect_err(|_| {
                        losses.lost.entry(series).or_default().insert(sop);
                    })
                }
                Err(r) => {
                    if !matches!(r.code, "not_dicom" | "empty_file") {
                        *losses
                            .unreadable
                            .entry(f.parent().unwrap_or(root).to_path_buf())
                            .or_default() += 1;
                    }
                    Err(r)
                }
            };
            match h {
                Ok(h) => {
                    if !p.modalities.is_empty() && !p.modalities.contains(&h.modality) {
                        let r = Reject::new(
                            "modality_not_allowed",
                            format!("Modality {:?} not in {:?}", h.modality, p.modalities),
                        );
                        out.push(
                            ItemResult::Reject(self.reject_at(root, label, f, "file", 1, r)),
                            None,
                        );
                    } else {
                        ok.push(h);
                    }
                }
                Err(r) => out.push(
                    ItemResult::Reject(self.reject_at(root, label, f, "file", 1, r)),
                    None,
                ),
            }
        }
        (ok, losses)
    }

    pub(crate) fn nifti_root(
        &self,
        root: &Path,
        label: &str,
        files: Vec<PathBuf>,
        out: &mut Collected,
    ) -> Result<(), StageError> {
        self.in_batches(&files, "NIfTI files", out, |f| {
            let name = file_name(f);
            if !(name.ends_with(".nii") || name.ends_with(".nii.gz")) {
                let r = Reject::new("not_nifti", "file name does not end in .nii or .nii.gz");
                return Ok(Some((
                    ItemResult::Reject(self.reject_at(root, label, f, "file", 1, r)),
                    None,
                )));
            }
            let id = format!("{label}/{}", rel(root, f));
            if !self.ctx.items().owns(&id) {
                return Ok(None);
            }
            let meta = self
                .metadata
                .get(&name)
                .map(|m| serde_json::to_string(m).unwrap_or_default())
                .unwrap_or_default();
            let digest = format!(
                "{}|{}",
                file_digest(&[f.as_path()], root)?,
                blake3::hash(meta.as_bytes()).to_hex()
            );
            let key = self.ctx.items().key(&id, &digest);
            let mut phi = Phi::new();
            phi.add_path(Path::new(&rel(root, f)));
            self.stored_item(
                &key,
                &phi,
                || self.reject_at(root, label, f, "file", 1, mg3d_volume::internal_error()),
                |dir| self.nifti_item(root, label, f, dir),
            )
            .map(Some)
        })
    }

    /// Runs `work` on `items`, `max_in_flight` at a time in parallel, with a progress bar and a
    /// cancellation check between batches; collects the results in item order (`None`: an item
    /// of another partition).
    pub(crate) fn in_batches<T: Sync>(
        &self,
        items: &[T],
        what: &str,
        out: &mut Collected,
        work: impl Fn(&T) -> Result<Option<(ItemResult, Option<PathBuf>)>, StageError> + Sync,
    ) -> Result<(), StageError> {
        let pb = self.ctx.progress_bar(items.len() as u64, what);
        for batch in items.chunks(self.p.max_in_flight.max(1) as usize) {
            self.ctx.check_cancelled()?;
            let done: Vec<_> = batch
                .par_iter()
                .map(|it| {
                    let r = work(it);
                    pb.inc(1);
                    r
                })
                .collect();
            for r in done {
                if let Some((res, dir)) = r? {
                    out.push(res, dir);
                }
            }
        }
        pb.finish_and_clear();
        Ok(())
    }
}

/// What file-level rejects took from the series of one root: a series must not lose a slice
/// silently (`series_incomplete`).
#[derive(Default)]
pub(crate) struct Losses {
    /// Series UID -> SOP instances of files whose header parsed but that were rejected
    /// (truncated, oversized).
    lost: BTreeMap<String, BTreeSet<String>>,
    /// Folder -> DICOM files in it whose header could not be read at all.
    unreadable: BTreeMap<PathBuf, usize>,
    /// Folder -> series assembled from it.
    series_in: BTreeMap<PathBuf, usize>,
}

/// What a series lost (see [`Losses::of`]).
pub(crate) enum Loss {
    None,
    Reject(Reject),
    Warning(String),
}

impl Losses {
    /// A series that lost a slice of its own is rejected, and so is the only series of a folder
    /// holding unreadable DICOM files; with other series there it gets a warning. An unreadable
    /// copy of a slice the series has is no loss.
    fn of(&self, g: &SeriesGroup, root: &Path) -> Loss {
        let series_uid = g.key.split('#').next().unwrap_or(&g.key);
        let missing = self.lost.get(series_uid).map_or(0, |sops| {
            sops.iter()
                .filter(|s| !g.files.iter().any(|h| &h.sop_uid == *s))
                .count()
        });
        if missing > 0 {
            return Loss::Reject(Reject::new(
                "series_incomplete",
                format!("{missing} slice file(s) of this series could not be read"),
            ));
        }
        let parent = g.files[0].path.parent().unwrap_or(root);
        let Some(&bad) = self.unreadable.get(parent) else {
            return Loss::None;
        };
        let m = format!(
            "{bad} DICOM file(s) in the series' folder could not be read: the series may be missing those slices"
        );
        if self.series_in.get(parent) == Some(&1) {
            Loss::Reject(Reject::new("series_incomplete", m))
        } else {
            Loss::Warning(m)
        }
    }
}
