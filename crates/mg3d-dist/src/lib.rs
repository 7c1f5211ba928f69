//! mg3d-dist: torch.distributed's own engine (c10d, in the libtorch that tch links) from Rust.
//!
//! - [`Rendezvous`]: where and who: `MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`,
//!   `LOCAL_RANK` as `torchrun` sets them, or `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID` and
//!   the first host of `SLURM_JOB_NODELIST` under `srun`.
//! - [`ProcessGroup`]: a TCPStore (served by rank 0) and a Gloo process group, with broadcast,
//!   all-reduce (sum), all-gather and barrier on tch tensors, each bounded by the group's
//!   timeout: a peer that dies makes the others fail with an error, never hang.
//!
//! The C++ side is `src/shim.cpp`, built by the build script against libtorch's c10d headers and
//! Debian's gloo headers. No networking of mg3d's own.

use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr::NonNull;
use std::time::Duration;

use tch::Tensor;

/// Errors of rendezvous and collectives.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The launcher's environment is incomplete or inconsistent.
    #[error("distributed launch environment: {0}")]
    Environment(String),
    /// c10d failed (a peer gone, a timeout, a refused connection); its message.
    #[error("c10d {op}: {message}")]
    C10d {
        /// The operation.
        op: &'static str,
        /// c10d's message.
        message: String,
    },
}

/// Who this process is in a distributed run, and where rank 0's store listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// Host of rank 0's TCPStore.
    pub master_addr: String,
    /// Its port.
    pub master_port: u16,
    /// This process's rank.
    pub rank: usize,
    /// Number of processes.
    pub world: usize,
    /// Rank on this node (the GPU to use).
    pub local_rank: usize,
}

/// `MASTER_PORT` when the launcher sets none.
pub const DEFAULT_PORT: u16 = 29500;

impl Rendezvous {
    /// From this process's environment; `None` when it was not launched as one of several
    /// processes (no `WORLD_SIZE`, and no `SLURM_NTASKS` above 1).
    pub fn from_env() -> Result<Option<Rendezvous>, DistError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// From the variables `get` gives (see [`Rendezvous::from_env`]).
    pub fn from_vars(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Rendezvous>, DistError> {
        let num = |k: &str| -> Result<Option<usize>, DistError> {
            get(k)
                .map(|v| {
                    v.trim()
                        .parse()
                        .map_err(|_| DistError::Environment(format!("{k} = {v:?} is not a number")))
                })
                .transpose()
        };
        let port = match get("MASTER_PORT") {
            Some(p) => p.trim().parse().map_err(|_| {
                DistError::Environment(format!("MASTER_PORT = {p:?} is not a port"))
            })?,
            None => DEFAULT_PORT,
        };
        let (rank, world, local_rank, addr) = if let Some(world) = num("WORLD_SIZE")? {
            let rank = num("RANK")?.ok_or_else(|| {
                DistError::Environment("WORLD_SIZE is set but RANK is not".into())
            })?;
            let addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
            (rank, world, num("LOCAL_RANK")?.unwrap_or(0), addr)
        } else if let Some(world) = num("SLURM_NTASKS")?.filter(|&n| n > 1) {
            let rank = num("SLURM_PROCID")?.ok_or_else(|| {
                DistError::Environment("SLURM_NTASKS is set but SLURM_PROCID is not".into())
            })?;
            let addr = match get("MASTER_ADDR") {
                Some(a) => a,
                None => get("SLURM_JOB_NODELIST")
                    .as_deref()
                    .and_then(first_host)
                    .ok_or_else(|| {
                        DistError::Environment(
                            "under srun, MASTER_ADDR or SLURM_JOB_NODELIST is needed".into(),
                        )
                    })?,
            };
            (rank, world, num("SLURM_LOCALID")?.unwrap_or(0), addr)
        } else {
            return Ok(None);
        };
        if world == 0 || rank >= world {
            return Err(DistError::Environment(format!(
                "rank {rank} of world size {world}"
            )));
        }
        Ok(Some(Rendezvous {
            master_addr: addr,
            master_port: port,
            rank,
            world,
            local_rank,
        }))
    }
}

/// The first host of a Slurm node list: `gpu[03-05,09],cpu1` -> `gpu03`.
pub fn first_host(nodelist: &str) -> Option<String> {
    let first = nodelist.trim();
    let (name, rest) = match first.find(['[', ',']) {
        Some(i) => (&first[..i], &first[i..]),
        None => return (!first.is_empty()).then(|| first.to_string()),
    };
    if let Some(range) = rest.strip_prefix('[') {
        let first_item = range.split([',', ']']).next()?;
        let start = first_item.split('-').next()?;
        return Some(format!("{name}{start}"));
    }
    (!name.is_empty()).then(|| name.to_string())
}

unsafe extern "C" {
    fn mg3d_dist_init(
        host: *const c_char,
        port: i32,
        rank: i32,
        world: i32,
        bind_host: *const c_char,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn mg3d_dist_free(g: *mut c_void);
    fn mg3d_dist_free_string(s: *mut c_char);
    fn mg3d_dist_broadcast(
        g: *mut c_void,
        t: *const c_void,
        root: i32,
        err: *mut *mut c_char,
    ) -> i32;
    fn mg3d_dist_all_reduce_sum(g: *mut c_void, t: *const c_void, err: *mut *mut c_char) -> i32;
    fn mg3d_dist_all_gather(
        g: *mut c_void,
        t: *const c_void,
        out: *const c_void,
        err: *mut *mut c_char,
    ) -> i32;
    fn mg3d_dist_barrier(g: *mut c_void, err: *mut *mut c_char) -> i32;
}

/// Takes the shim's error string (if any) as an error of `op`.
fn taken(op: &'static str, err: *mut c_char) -> DistError {
    let message = if err.is_null() {
        "failed without a message".to_string()
    } else {
        // SAFETY: the shim returns a NUL-terminated malloc'd copy, freed here once.
        let m = unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned();
        unsafe { mg3d_dist_free_string(err) };
        m
    };
    DistError::C10d { op, message }
}

/// A Gloo process group (see the crate docs).
pub struct ProcessGroup {
    group: NonNull<c_void>,
    rank: usize,
    world: usize,
}

// SAFETY: the group is used from one thread at a time (`&mut`-free methods only issue c10d
// calls, which c10d serialises per group), and moving it between threads is what c10d allows.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Rendezvous and connects every rank; each collective then fails after `timeout` rather
    /// than wait for a peer that is gone. The group binds to `master_addr` when it is a
    /// loopback address, else to this host's name.
    pub fn init(r: &Rendezvous, timeout: Duration) -> Result<ProcessGroup, DistError> {
        let host = CString::new(r.master_addr.clone())
            .map_err(|_| DistError::Environment("MASTER_ADDR holds a NUL byte".into()))?;
        let bind = if r.master_addr.starts_with("127.") || r.master_addr == "localhost" {
            r.master_addr.clone()
        } else {
            std::env::var("MG3D_DIST_BIND").unwrap_or_else(|_| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "127.0.0.1".into())
            })
        };
        let bind = CString::new(bind)
            .map_err(|_| DistError::Environment("the bind host holds a NUL byte".into()))?;
        let mut err = std::ptr::null_mut();
        // SAFETY: valid C strings; the shim returns null and sets `err` on failure.
        let g = unsafe {
            mg3d_dist_init(
                host.as_ptr(),
                r.master_port as i32,
                r.rank as i32,
                r.world as i32,
                bind.as_ptr(),
                timeout.as_millis() as i64,
                &mut err,
            )
        };
        match NonNull::new(g) {
            Some(group) => Ok(ProcessGroup {
                group,
                rank: r.rank,
                world: r.world,
            }),
            None => Err(taken("init", err)),
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of processes.
    pub fn world(&self) -> usize {
        self.world
    }

    fn call(
        &self,
        op: &'static str,
        f: impl FnOnce(*mut c_void, *mut *mut c_char) -> i32,
    ) -> Result<(), DistError> {
        let mut err = std::ptr::null_mut();
        match f(self.group.as_ptr(), &mut err) {
            0 => Ok(()),
            _ => Err(taken(op, err)),
        }
    }

    /// Replaces `t` (contiguous, CPU) on every rank by rank `root`'s.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<(), DistError> {
        // SAFETY: `t` is a live tch tensor (an `at::Tensor*`), written in place.
        self.call("broadcast", |g, e| unsafe {
            mg3d_dist_broadcast(g, t.as_ptr() as *const c_void, root as i32, e)
        })
    }

    /// Replaces `t` (contiguous, CPU) on every rank by the sum over the ranks.
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<(), DistError> {
        // SAFETY: as in `broadcast`.
        self.call("all_reduce", |g, e| unsafe {
            mg3d_dist_all_reduce_sum(g, t.as_ptr() as *const c_void, e)
        })
    }

    /// Every rank's `t` (same shape on all), stacked in rank order: world x shape.
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor, DistError> {
        let mut shape = vec![self.world as i64];
        shape.extend(t.size());
        let out = Tensor::empty(shape.as_slice(), (t.kind(), t.device()));
        // SAFETY: as in `broadcast`; `out` is a fresh contiguous tensor of the right shape.
        self.call("all_gather", |g, e| unsafe {
            mg3d_dist_all_gather(
                g,
                t.as_ptr() as *const c_void,
                out.as_ptr() as *const c_void,
                e,
            )
        })?;
        Ok(out)
    }

    /// Returns when every rank has called it.
    pub fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: the group is live.
        self.call("barrier", |g, e| unsafe { mg3d_dist_barrier(g, e) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by `mg3d_dist_init`, freed once.
        unsafe { mg3d_dist_free(self.group.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_node_lists() {
        assert_eq!(first_host("gpu[03-05,09],cpu1").as_deref(), Some("gpu03"));
        assert_eq!(first_host("node7").as_deref(), Some("node7"));
        assert_eq!(first_host("a1,b2").as_deref(), Some("a1"));
        assert_eq!(first_host("n[10]").as_deref(), Some("n10"));
        assert_eq!(first_host(""), None);
    }

    #[test]
    fn environments() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let torchrun = Rendezvous::from_vars(env(&[
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "1234"),
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            torchrun,
            Rendezvous {
                master_addr: "10.0.0.1".into(),
                master_port: 1234,
                rank: 3,
                world: 4,
                local_rank: 1
            }
        );
        let srun = Rendezvous::from_vars(env(&[
            ("SLURM_NTASKS", "2"),
            ("SLURM_PROCID", "1"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_JOB_NODELIST", "gpu[07-08]"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (srun.master_addr.as_str(), srun.rank, srun.world),
            ("gpu07", 1, 2)
        );
        assert_eq!(srun.master_port, DEFAULT_PORT);
        assert!(
            Rendezvous::from_vars(env(&[("SLURM_NTASKS", "1")]))
                .unwrap()
                .is_none()
        );
        assert!(Rendezvous::from_vars(env(&[])).unwrap().is_none());
        assert!(Rendezvous::from_vars(env(&[("WORLD_SIZE", "2"), ("RANK", "2")])).is_err());
        assert!(Rendezvous::from_vars(env(&[("WORLD_SIZE", "2")])).is_err());
    }
}
