//! Two processes (this test binary started twice as the ranks, with the variables `torchrun`
//! sets) rendezvous through rank 0's TCPStore and run Gloo collectives; a rank that dies makes
//! the other fail with an error within the group's timeout instead of hanging.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mg3d_dist::{ProcessGroup, Rendezvous};
use tch::{Kind, Tensor};

/// A free TCP port on loopback (bound, then released for rank 0's store).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `worker` (a test of this binary) as `world` ranks; their outputs in rank order.
fn launch(worker: &str, world: usize, mode: &str) -> Vec<Output> {
    let port = free_port().to_string();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args([worker, "--exact", "--nocapture", "--test-threads=1"])
                .env("MG3D_DIST_WORKER", mode)
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("OMP_NUM_THREADS", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.reshape([-1]).to_kind(Kind::Float)).unwrap()
}

/// The rank's side: every collective, checked against what the ranks hold.
#[test]
fn rank_worker() {
    let Ok(mode) = std::env::var("MG3D_DIST_WORKER") else {
        return; // not started as a rank
    };
    let r = Rendezvous::from_env().unwrap().expect("launched as a rank");
    let pg = ProcessGroup::init(&r, Duration::from_secs(10)).unwrap();
    let rank = pg.rank() as f64;
    if mode == "die" {
        if pg.rank() == 1 {
            std::process::exit(3); // gone without a word
        }
        let err = pg
            .all_reduce_sum(&Tensor::ones([4], tch::kind::FLOAT_CPU))
            .expect_err("the all-reduce cannot complete without rank 1");
        println!("rank 0 failed cleanly: {err}");
        return;
    }
    let b = Tensor::arange(5, tch::kind::FLOAT_CPU) * (rank + 1.0);
    pg.broadcast(&b, 1).unwrap();
    assert_eq!(values(&b), [0.0, 2.0, 4.0, 6.0, 8.0]);
    let s = Tensor::ones([3, 2], tch::kind::FLOAT_CPU) * (rank + 1.0);
    pg.all_reduce_sum(&s).unwrap();
    assert_eq!(values(&s), [3.0; 6]);
    let g = pg
        .all_gather(&(Tensor::ones([2, 3], tch::kind::FLOAT_CPU) * rank))
        .unwrap();
    assert_eq!(g.size(), [2, 2, 3]);
    assert_eq!(values(&g), [[0.0; 6], [1.0; 6]].concat());
    // 100 MB of f32 summed over loopback: the bandwidth, for the record.
    let big = Tensor::ones([25 << 20], tch::kind::FLOAT_CPU);
    pg.barrier().unwrap();
    let t0 = Instant::now();
    pg.all_reduce_sum(&big).unwrap();
    let s = t0.elapsed().as_secs_f64();
    assert_eq!(big.double_value(&[12345]), 2.0);
    println!(
        "rank {} all-reduce 100 MB: {:.3} s, {:.2} GB/s",
        pg.rank(),
        s,
        0.1048576 / s
    );
    pg.barrier().unwrap();
}

#[test]
fn two_ranks_broadcast_reduce_and_gather() {
    if std::env::var("MG3D_DIST_WORKER").is_ok() {
        return;
    }
    for (rank, o) in launch("collectives::rank_worker", 2, "ok")
        .iter()
        .enumerate()
    {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "rank {rank}:\n{text}");
        assert!(text.contains("all-reduce 100 MB"), "rank {rank}:\n{text}");
        eprintln!(
            "{}",
            text.lines().find(|l| l.contains("GB/s")).unwrap_or("")
        );
    }
}

#[test]
fn a_dead_rank_is_an_error_not_a_hang() {
    if std::env::var("MG3D_DIST_WORKER").is_ok() {
        return;
    }
    let t0 = Instant::now();
    let outs = launch("collectives::rank_worker", 2, "die");
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    assert_eq!(outs[1].status.code(), Some(3));
    let text = String::from_utf8_lossy(&outs[0].stdout);
    assert!(
        outs[0].status.success() && text.contains("failed cleanly: c10d all_reduce"),
        "{text}{}",
        String::from_utf8_lossy(&outs[0].stderr)
    );
}
