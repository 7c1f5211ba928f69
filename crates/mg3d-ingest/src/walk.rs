//! Input discovery: every path under a root, symlinks followed, each file accounted for once.
//!
//! Hugging Face hub caches (CT-RATE downloads) hold symlinks into a blob store, and hospital
//! exports often link series folders; both must be read. A folder reached twice (a link cycle, or
//! two links to one folder) is walked once; a file reached twice (within or across roots) is read
//! once and reported as a duplicate the second time; a dangling link or a special file (FIFO,
//! socket, device) is reported, never silently dropped.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// What the walker found at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A regular file (possibly through links), seen for the first time.
    File(PathBuf),
    /// Not readable as a file: the path and a reason code with a message.
    Skipped(PathBuf, &'static str, String),
}

/// Walks roots, remembering the canonical files and folders already seen across calls.
#[derive(Debug, Default)]
pub struct Walker {
    files: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
}

impl Walker {
    /// A walker that has seen nothing yet.
    pub fn new() -> Self {
        Walker::default()
    }

    /// Everything under `root` (or `root` itself when it is a file), sorted by path. Errors only
    /// when `root` itself cannot be read.
    pub fn walk(&mut self, root: &Path) -> std::io::Result<Vec<Found>> {
        let meta = fs::metadata(root)?;
        let mut out = Vec::new();
        if meta.is_file() {
            self.file(root.to_path_buf(), &mut out);
            return Ok(out);
        }
        let mut stack = vec![root.to_path_buf()];
        let mut first = true;
        while let Some(d) = stack.pop() {
            let canon = fs::canonicalize(&d)?;
            if !self.dirs.insert(canon) {
                if first {
                    return Ok(out); // the same root listed twice: its files are already counted
                }
                continue; // a link cycle or a second link to a folder already walked
            }
            first = false;
            let entries = match fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if d != root => {
                    out.push(Found::Skipped(d, "unreadable", e.to_string()));
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Sorted, and folders walked in name order, so which of two paths to one file counts
            // as the duplicate does not depend on the file system's listing order.
            let mut paths = entries
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()?;
            paths.sort();
            let mut subdirs = Vec::new();
            for path in paths {
                match fs::metadata(&path) {
                    Err(e) => {
                        let dangling = fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink());
                        out.push(if dangling {
                            Found::Skipped(
                                path,
                                "broken_link",
                                "a symbolic link whose target does not exist".into(),
                            )
                        } else {
                            Found::Skipped(path, "unreadable", e.to_string())
                        });
                    }
                    Ok(m) if m.is_dir() => subdirs.push(path),
                    Ok(m) if m.is_file() => self.file(path, &mut out),
                    Ok(_) => out.push(Found::Skipped(
                        path,
                        "not_a_file",
                        "not a regular file (FIFO, socket or device)".into(),
                    )),
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        out.sort_by(|a, b| a.path().cmp(b.path()));
        Ok(out)
    }

    fn file(&mut self, path: PathBuf, out: &mut Vec<Found>) {
        match fs::canonicalize(&path) {
            Ok(c) if !self.files.contains(&c) => {
                self.files.insert(c);
                out.push(Found::File(path));
            }
            Ok(_) => out.push(Found::Skipped(
                path,
                "duplicate_input",
                "the same file was already reached through another path or root".into(),
            )),
            Err(e) => out.push(Found::Skipped(path, "unreadable", e.to_string())),
        }
    }
}

impl Found {
    /// The path as found under its root.
    pub fn path(&self) -> &Path {
        match self {
            Found::File(p) | Found::Skipped(p, _, _) => p,
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_followed_cycles_and_duplicates_reported_once() {
        let d = tempfile::tempdir().unwrap();
        let blobs = d.path().join("blobs");
        let root = d.path().join("root");
        fs::create_dir_all(&blobs).unwrap();
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(blobs.join("b1"), b"x").unwrap();
        symlink(blobs.join("b1"), root.join("a.nii.gz")).unwrap();
        symlink(blobs.join("b1"), root.join("sub/again.nii.gz")).unwrap();
        symlink(&root, root.join("sub/loop")).unwrap();
        symlink(d.path().join("nowhere"), root.join("dangling.nii")).unwrap();
        let mut w = Walker::new();
        let found = w.walk(&root).unwrap();
        let files: Vec<_> = found
            .iter()
            .filter_map(|f| match f {
                Found::File(p) => Some(p.strip_prefix(&root).unwrap().to_path_buf()),
                _ => None,
            })
            .collect();
        assert_eq!(files, [PathBuf::from("a.nii.gz")]);
        let codes: Vec<_> = found
            .iter()
            .filter_map(|f| match f {
                Found::Skipped(_, c, _) => Some(*c),
                _ => None,
            })
            .collect();
        assert_eq!(codes, ["broken_link", "duplicate_input"]);
        // The same root again: nothing new.
        assert!(w.walk(&root).unwrap().is_empty());
    }
}
