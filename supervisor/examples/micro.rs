//! Micro-measurements behind docs/concurrency-models.md: what a process, a thread and a
//! coroutine (a tokio task) cost to create, to keep idle, and to hand a message to.
//!
//!     cargo run --release --example micro
//!
//! Prints a Markdown table, each figure the median of 5 runs. Creation: 1,000 units started and
//! waited for (a process is a fork+exec of /bin/true, as the fleet starts its workers; a
//! thread ends at once; a task returns at once). Idle memory: units that wait and do nothing,
//! measured as the resident memory they add (a process: its proportional set size, Pss, which
//! shares the pages of the executable and libc fairly among those who map them). Round trip:
//! one message there and back between two threads over a pair of pipes, over crossbeam
//! channels, and between two tasks over tokio channels (an await each way).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UNITS: usize = 1000;
const ROUND_TRIPS: u32 = 100_000;
const RUNS: usize = 5;

fn main() {
    println!("| measurement | process | thread | coroutine (tokio task) |");
    println!("|---|---|---|---|");
    let create = [
        median(|| time(|| processes(UNITS))),
        median(|| time(|| threads(UNITS))),
        median(|| time(|| tasks(UNITS))),
    ];
    println!("| create and wait for 1,000 | {} | {} | {} |", ms(create[0]), ms(create[1]), ms(create[2]));
    println!(
        "| per unit | {} | {} | {} |",
        us(create[0] / UNITS as u32),
        us(create[1] / UNITS as u32),
        us(create[2] / UNITS as u32)
    );
    println!(
        "| memory per idle unit | {} | {} | {} |",
        kib(idle_process_pss()),
        kib(idle_thread_rss()),
        kib(idle_task_rss())
    );
    let trips = [median(pipe_round_trips), median(channel_round_trips), median(await_round_trips)];
    println!(
        "| one round trip (pipe / channel / await) | {} | {} | {} |",
        ns(trips[0] / ROUND_TRIPS),
        ns(trips[1] / ROUND_TRIPS),
        ns(trips[2] / ROUND_TRIPS)
    );
}

fn median(mut f: impl FnMut() -> Duration) -> Duration {
    let mut runs: Vec<Duration> = (0..RUNS).map(|_| f()).collect();
    runs.sort();
    runs[RUNS / 2]
}

fn time(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ns(d: Duration) -> String {
    format!("{:.0} ns", d.as_secs_f64() * 1e9)
}

fn kib(bytes: f64) -> String {
    if bytes < 1024.0 {
        format!("{bytes:.0} bytes")
    } else {
        format!("{:.1} KiB", bytes / 1024.0)
    }
}

fn processes(n: usize) {
    let children: Vec<_> = (0..n)
        .map(|_| Command::new("/bin/true").stdin(Stdio::null()).spawn().expect("fork+exec /bin/true"))
        .collect();
    for mut c in children {
        c.wait().expect("wait");
    }
}

fn threads(n: usize) {
    let handles: Vec<_> = (0..n).map(|_| std::thread::spawn(|| ())).collect();
    for h in handles {
        h.join().expect("join");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

fn tasks(n: usize) {
    runtime().block_on(async {
        let handles: Vec<_> = (0..n).map(|_| tokio::spawn(async {})).collect();
        for h in handles {
            h.await.expect("join");
        }
    });
}

/// Resident memory of this process, in bytes.
fn rss() -> f64 {
    status_kib(&std::fs::read_to_string("/proc/self/status").unwrap_or_default(), "VmRSS:") * 1024.0
}

fn status_kib(text: &str, field: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The Pss of 200 idle `sleep` processes, on average.
fn idle_process_pss() -> f64 {
    let mut children: Vec<_> = (0..200)
        .map(|_| Command::new("sleep").arg("30").stdin(Stdio::null()).spawn().expect("spawn sleep"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let pss: f64 = children
        .iter()
        .map(|c| {
            let rollup =
                std::fs::read_to_string(format!("/proc/{}/smaps_rollup", c.id())).unwrap_or_default();
            status_kib(&rollup, "Pss:") * 1024.0
        })
        .sum();
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    pss / 200.0
}

/// What 1,000 threads that wait on a channel add to this process's resident memory, each.
fn idle_thread_rss() -> f64 {
    let before = rss();
    let (tx, rx) = crossbeam_channel::bounded::<()>(0);
    let handles: Vec<_> = (0..UNITS)
        .map(|_| {
            let rx = rx.clone();
            std::thread::spawn(move || {
                let _ = rx.recv();
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let added = rss() - before;
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
    added / UNITS as f64
}

/// What 100,000 tasks that wait on a channel add to this process's resident memory, each.
fn idle_task_rss() -> f64 {
    const TASKS: usize = 100_000;
    let rt = runtime();
    rt.block_on(async {
        let before = rss();
        let (tx, rx) = tokio::sync::watch::channel(());
        let handles: Vec<_> = (0..TASKS)
            .map(|_| {
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let _ = rx.changed().await;
                })
            })
            .collect();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let added = rss() - before;
        drop(tx);
        for h in handles {
            let _ = h.await;
        }
        added / TASKS as f64
    })
}

fn pipe_round_trips() -> Duration {
    let (mut a_read, mut a_write) = std::io::pipe().expect("pipe");
    let (mut b_read, mut b_write) = std::io::pipe().expect("pipe");
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8];
        while a_read.read_exact(&mut byte).is_ok() {
            if b_write.write_all(&byte).is_err() {
                return;
            }
        }
    });
    let mut byte = [7u8];
    let started = Instant::now();
    for _ in 0..ROUND_TRIPS {
        a_write.write_all(&byte).expect("write");
        b_read.read_exact(&mut byte).expect("read");
    }
    let took = started.elapsed();
    drop(a_write);
    let _ = echo.join();
    took
}

fn channel_round_trips() -> Duration {
    let (there, from_here) = crossbeam_channel::bounded::<u32>(1);
    let (back, from_there) = crossbeam_channel::bounded::<u32>(1);
    let echo = std::thread::spawn(move || {
        for n in from_here.iter() {
            if back.send(n).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    for n in 0..ROUND_TRIPS {
        there.send(n).expect("send");
        from_there.recv().expect("recv");
    }
    let took = started.elapsed();
    drop(there);
    let _ = echo.join();
    took
}

fn await_round_trips() -> Duration {
    runtime().block_on(async {
        let (there, mut from_here) = tokio::sync::mpsc::channel::<u32>(1);
        let (back, mut from_there) = tokio::sync::mpsc::channel::<u32>(1);
        let echo = tokio::spawn(async move {
            while let Some(n) = from_here.recv().await {
                if back.send(n).await.is_err() {
                    return;
                }
            }
        });
        let started = Instant::now();
        for n in 0..ROUND_TRIPS {
            there.send(n).await.expect("send");
            from_there.recv().await.expect("recv");
        }
        let took = started.elapsed();
        drop(there);
        let _ = echo.await;
        took
    })
}
