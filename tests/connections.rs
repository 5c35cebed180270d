//! Kept connections a server closes: whether it closes them after a while idle or after a
//! number of requests, without a word (no `Connection: close`), it costs nothing. Every id
//! is answered on its first attempt, and the server is asked exactly once per id.
//!
//! The server here is a plain keep-alive HTTP/1.1 server on std's sockets (not mockapi), so
//! that when and how it closes is exactly what each test says.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::*;

/// When [`KeepAlive`] closes a connection, silently.
#[derive(Clone, Copy)]
enum Closes {
    /// Once it has been idle this long.
    IdleAfter(Duration),
    /// Right after answering this many requests on it.
    After(u32),
}

/// Answers `GET /items/N` with mockapi's body for N, on connections it closes as told.
struct KeepAlive {
    addr: String,
    requests: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl KeepAlive {
    fn start(closes: Closes) -> KeepAlive {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr").to_string();
        listener.set_nonblocking(true).expect("nonblocking listener");
        let requests = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, c, s) = (requests.clone(), connections.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        c.fetch_add(1, Ordering::Relaxed);
                        let (r, s) = (r.clone(), s.clone());
                        std::thread::spawn(move || serve(conn, closes, &r, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        KeepAlive { addr, requests, connections, stop }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves one connection until the client closes it or it is time to close it.
fn serve(mut conn: TcpStream, closes: Closes, requests: &AtomicU64, stop: &AtomicBool) {
    let idle = match closes {
        Closes::IdleAfter(d) => d,
        Closes::After(_) => Duration::from_secs(30),
    };
    let _ = conn.set_read_timeout(Some(idle));
    let (mut head, mut served) = (Vec::new(), 0u32);
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        // An idle timeout, the client's close or an error: the connection ends, unannounced.
        let Ok(n @ 1..) = conn.read(&mut buf) else { return };
        head.extend_from_slice(&buf[..n]);
        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let request = String::from_utf8_lossy(&head[..end]).into_owned();
            head.drain(..end + 4);
            let id: u64 = request
                .split_whitespace()
                .nth(1)
                .and_then(|path| path.rsplit('/').next())
                .and_then(|id| id.parse().ok())
                .expect("GET /items/N");
            let body = mockapi::body_for(id);
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            requests.fetch_add(1, Ordering::Relaxed);
            if conn.write_all(answer.as_bytes()).is_err() {
                return;
            }
            served += 1;
            if matches!(closes, Closes::After(n) if served == n) {
                return;
            }
        }
    }
}

fn run_against(server: &KeepAlive, ids: u64, extra: &[(&str, &str)]) -> (Outcome, tempfile::TempDir) {
    let dir = tempdir();
    let store = dir.path().join("items.sled");
    let mut args = job_args(&format!("http://{}/items/{{id}}", server.addr), &format!("0..{ids}"), &store);
    for (flag, value) in extra {
        set(&mut args, flag, value);
    }
    let out = run(&strs(&args));
    out.assert_code(0);
    assert_complete(&store, 0..ids);
    for rec in export(&store) {
        assert_eq!(rec["attempts"].as_u64(), Some(1), "a closed kept connection is not an attempt: {rec}");
    }
    (out, dir)
}

#[test]
fn a_server_closing_idle_connections_costs_no_attempt_and_no_request() {
    // Closed after 200 ms idle; requests 400 ms apart on each of two threads' connections,
    // under the 2 s after which a kept connection is probed: every request after the first
    // goes out on a connection the server has closed, and is sent again on a new one.
    let server = KeepAlive::start(Closes::IdleAfter(Duration::from_millis(200)));
    run_against(&server, 10, &[("--workers", "1"), ("--threads", "2"), ("--rate", "5"), ("--burst", "1")]);
    assert_eq!(server.requests.load(Ordering::Relaxed), 10, "the server is asked once per id");
    assert!(server.connections.load(Ordering::Relaxed) >= 6, "it did close them");
}

#[test]
fn a_server_closing_after_every_few_requests_costs_no_attempt_and_no_request() {
    let server = KeepAlive::start(Closes::After(3));
    run_against(&server, 600, &[]);
    assert_eq!(server.requests.load(Ordering::Relaxed), 600, "the server is asked once per id");
    assert!(server.connections.load(Ordering::Relaxed) >= 200, "one connection per 3 requests");
}
