//! What ingest reads besides the volumes: relative paths, CT-RATE metadata and ids, CSVs, file
//! digests, messages without paths, and `locate` (path_ref back to the path).

use super::*;

pub(crate) fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

/// "063Y" -> "60-69"; 90 and over collapse to "90+" (HIPAA safe harbour).
pub fn age_bucket(age: &str) -> Option<String> {
    let t = age.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u32 = num.parse().ok()?;
    let years = match unit.trim() {
        "" | "Y" => n,
        "M" => n / 12,
        "W" => n / 52,
        "D" => n / 365,
        _ => return None,
    };
    Some(if years >= 90 {
        "90+".into()
    } else {
        format!("{}-{}", years / 10 * 10, years / 10 * 10 + 9)
    })
}

/// The error of reading `path` (a root or file as the params give it).
pub(crate) fn read_err(path: &str) -> impl FnOnce(std::io::Error) -> IngestError + '_ {
    move |source| IngestError::Read {
        path: path.to_string(),
        source,
    }
}

pub(crate) fn read_csv(path: &Path) -> Result<Vec<BTreeMap<String, String>>, StageError> {
    let csv_err = |source| IngestError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(csv_err)?;
    let headers = r.headers().map_err(csv_err)?.clone();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(csv_err)?;
        rows.push(
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect(),
        );
    }
    Ok(rows)
}

/// "[0.75, 0.75]" -> [0.75, 0.75]
pub(crate) fn parse_list(s: &str) -> Vec<f64> {
    s.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect()
}

/// CT-RATE style ids from a VolumeName: (patient, study).
pub(crate) fn ctrate_ids(name: &str) -> Option<(String, String)> {
    let stem = name.trim_end_matches(".gz").trim_end_matches(".nii");
    let parts: Vec<&str> = stem.split('_').collect();
    if parts.len() >= 4
        && ["train", "valid", "test"].contains(&parts[0])
        && parts[1].chars().all(|c| c.is_ascii_digit())
    {
        return Some((
            format!("{}_{}", parts[0], parts[1]),
            format!("{}_{}_{}", parts[0], parts[1], parts[2]),
        ));
    }
    None
}

pub(crate) fn file_digest(paths: &[&Path], root: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    for p in paths {
        h.update(rel(root, p).as_bytes());
        h.update(&[0]);
        h.update(mg3d_core::fsutil::hash_file(p)?.blake3.as_bytes());
    }
    Ok(h.finalize().to_hex().to_string())
}

/// A reader's message with the input paths it may quote replaced: each of `paths` by "file N"
/// (its index in the item, so a series message still tells which slices), anything else under
/// `root` by "[path]".
pub(crate) fn without_paths(msg: &str, root: &Path, paths: &[&Path]) -> String {
    let mut out = msg.to_string();
    let mut named: Vec<(String, usize)> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.display().to_string(), i))
        .collect();
    named.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    for (p, i) in named {
        if !p.is_empty() && out.contains(&p) {
            let label = if paths.len() == 1 {
                "the file".to_string()
            } else {
                format!("file {}", i + 1)
            };
            out = out.replace(&p, &label);
        }
    }
    let root = root.display().to_string();
    if root.is_empty() {
        return out;
    }
    let (mut done, mut rest) = (String::new(), out.as_str());
    while let Some(at) = rest.find(&root) {
        done.push_str(&rest[..at]);
        done.push_str("[path]");
        let tail = &rest[at + root.len()..];
        rest = &tail[tail.find([':', ' ', ',', ')']).unwrap_or(tail.len())..];
    }
    done.push_str(rest);
    done
}

pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The input paths behind reject `path_ref`s of an ingest stage: walks its roots (`resolve` turns
/// a root param, including `@stage/...`, into a folder) and returns (ref, path) for each match. For
/// the operator's terminal only: the paths are what outputs must not hold.
pub fn locate(
    params: &Params,
    salt: &str,
    resolve: impl Fn(&str) -> PathBuf,
    refs: &[String],
) -> Result<Vec<(String, PathBuf)>, StageError> {
    let p: IngestParams = params.parse()?;
    let mut out = Vec::new();
    let mut walker = Walker::new();
    let roots = p
        .dicom_roots
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("dicom_roots[{i}]"), r))
        .chain(
            p.nifti_roots
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("nifti_roots[{i}]"), r)),
        );
    for (label, r) in roots {
        let root = resolve(r);
        let mut seen = BTreeSet::new();
        for f in walker.walk(&root).map_err(read_err(r))? {
            // A file's own ref, and its folder's (series rejects name the folder).
            let folder = f.path().parent().unwrap_or(&root).to_path_buf();
            for cand in [f.path().to_path_buf(), folder] {
                let id = mg3d_core::ids::pseudonym(
                    salt,
                    "path",
                    &format!("{label}/{}", rel(&root, &cand)),
                );
                if refs.contains(&id) && seen.insert(cand.clone()) {
                    out.push((id, cand));
                }
            }
        }
    }
    Ok(out)
}
