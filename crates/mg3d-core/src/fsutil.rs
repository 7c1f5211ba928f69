//! File helpers: atomic writes and content digests of output directories.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Writes `bytes` to `path` via a temporary sibling and a rename: readers see the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_sibling(path);
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

/// `dir/.name.tmp-WRITER` beside `path` (see [`writer_tag`]).
pub fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", writer_tag()))
}

/// `HOST-PID-THREAD`: unique among the processes and threads writing into one shared directory,
/// also across the hosts of a cluster sharing it over NFS (where process ids repeat).
pub fn writer_tag() -> String {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let host = HOST.get_or_init(|| {
        let raw = fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        let clean: String = raw
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(63)
            .collect();
        if clean.is_empty() {
            "host".into()
        } else {
            clean
        }
    });
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    format!("{host}-{}-{thread}", std::process::id())
}

/// Puts `src` at `dst` as a hard link (a copy across file systems). An existing `dst` is removed
/// first: copying onto a hard link of `src` would truncate `src` itself.
pub fn link_or_copy(src: &Path, dst: &Path) -> io::Result<()> {
    match fs::remove_file(dst) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if fs::hard_link(src, dst).is_err() {
        fs::copy(src, dst)?;
    }
    Ok(())
}

/// Size and blake3 of one output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Bytes.
    pub bytes: u64,
    /// blake3 hex.
    pub blake3: String,
}

/// blake3 of a file, streamed.
pub fn hash_file(path: &Path) -> io::Result<FileDigest> {
    let mut f = fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        n_total += n as u64;
        h.update(&buf[..n]);
    }
    Ok(FileDigest {
        bytes: n_total,
        blake3: h.finalize().to_hex().to_string(),
    })
}

/// Every regular file under `dir`, as '/'-separated relative paths, sorted.
pub fn list_files(dir: &Path) -> io::Result<Vec<String>> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) -> io::Result<()> {
        for e in fs::read_dir(d)? {
            let e = e?;
            let p = e.path();
            let ft = e.file_type()?;
            if ft.is_dir() {
                walk(base, &p, out)?;
            } else if ft.is_file() {
                let rel = p.strip_prefix(base).unwrap();
                let s: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(s.join("/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Per-file digests of a directory, in parallel.
pub fn hash_dir(dir: &Path) -> io::Result<BTreeMap<String, FileDigest>> {
    use rayon::prelude::*;
    let files = list_files(dir)?;
    files
        .par_iter()
        .map(|rel| hash_file(&dir.join(rel)).map(|d| (rel.clone(), d)))
        .collect()
}

/// One digest over a directory's file list (relative paths and contents, not mtimes).
pub fn dir_digest(files: &BTreeMap<String, FileDigest>) -> String {
    let mut h = blake3::Hasher::new();
    for (rel, d) in files {
        h.update(rel.as_bytes());
        h.update(&[0]);
        h.update(d.blake3.as_bytes());
        h.update(&[0]);
    }
    h.finalize().to_hex().to_string()
}
