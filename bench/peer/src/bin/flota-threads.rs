//! The floor under flota's design, for scripts/bench-floor: THREADS blocking threads, each with
//! one keep-alive connection, taking ids from a shared counter until IDS are done. Nothing of
//! flota's (no pool, gate, pipe, supervisor or store), so what it spends is what a thread per
//! request in flight costs by itself:
//!
//! - `raw`: the request written with one `write`, the answer read through a `BufReader` and its
//!   head parsed by `httparse`: the system calls and context switches, and almost nothing else.
//! - `ureq`: the same threads with a ureq 3 agent each (as flota's workers have): what ureq's
//!   request path adds to that.
//!
//! Every body is appended to OUTPUT (a buffer a thread, written under a lock every 64 KiB).
//!
//! usage: flota-threads raw|ureq URL_TEMPLATE IDS THREADS OUTPUT   (`http://HOST:PORT/…{id}…`)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, template, ids, threads, output] = args.as_slice() else {
        eprintln!("usage: flota-threads raw|ureq URL_TEMPLATE IDS THREADS OUTPUT");
        std::process::exit(2);
    };
    let ids: u64 = ids.parse().expect("IDS is a number");
    let threads: usize = threads.parse().expect("THREADS is a number");
    let out = Mutex::new(std::fs::File::create(output).expect("creates OUTPUT"));
    let next = AtomicU64::new(0);
    let ok = AtomicU64::new(0);
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut fetch: Box<dyn FnMut(&str, &mut Vec<u8>) -> bool> = match mode.as_str() {
                    "raw" => Box::new(raw(template)),
                    "ureq" => Box::new(with_ureq()),
                    other => panic!("mode {other}: raw or ureq"),
                };
                let (mut url, mut buf, mut body) = (String::new(), Vec::with_capacity(1 << 16), Vec::new());
                loop {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    if id >= ids {
                        break;
                    }
                    url.clear();
                    url.push_str(&template.replace("{id}", &id.to_string()));
                    // Retried a few times, as the peer does.
                    if (0..5).any(|_| fetch(&url, &mut body)) {
                        ok.fetch_add(1, Ordering::Relaxed);
                        write!(buf, "{id}\t").unwrap();
                        buf.extend_from_slice(&body);
                        buf.push(b'\n');
                        if buf.len() > 1 << 16 {
                            out.lock().unwrap().write_all(&buf).expect("writes");
                            buf.clear();
                        }
                    }
                }
                out.lock().unwrap().write_all(&buf).expect("writes");
            });
        }
    });
    let (ok, secs) = (ok.load(Ordering::Relaxed), started.elapsed().as_secs_f64());
    println!("{{\"ok\":{ok},\"failed\":{},\"secs\":{secs},\"items_per_sec\":{}}}", ids - ok, ok as f64 / secs);
}

/// A fetch over one keep-alive connection, written and parsed by hand (the head by httparse).
fn raw(template: &str) -> impl FnMut(&str, &mut Vec<u8>) -> bool {
    let authority = template.strip_prefix("http://").and_then(|r| r.split('/').next()).expect("an http:// URL");
    let (authority, mut conn) = (authority.to_owned(), None::<Conn>);
    let mut request = Vec::new();
    move |url, body| {
        let path = &url["http://".len() + authority.len()..];
        request.clear();
        write!(request, "GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n").unwrap();
        if conn.is_none() {
            let Ok(stream) = TcpStream::connect(&authority) else { return false };
            stream.set_nodelay(true).unwrap();
            conn = Some(Conn { stream, buf: vec![0; 16 << 10], start: 0, end: 0 });
        }
        let c = conn.as_mut().unwrap();
        let answered = c.stream.write_all(&request).is_ok() && c.answer(body);
        if !answered {
            conn = None;
        }
        answered
    }
}

/// A connection and what has been read from it and not yet used.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    /// Reads one answer's head and its body (Content-Length or chunked, the chunk sizes by
    /// httparse) into `body`; true for a 2xx.
    fn answer(&mut self, body: &mut Vec<u8>) -> bool {
        body.clear();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf[self.start..self.end]) {
                Ok(httparse::Status::Complete(head)) => {
                    let ok = (200..300).contains(&response.code.unwrap_or(0));
                    let value = |name: &str| {
                        let h = response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))?;
                        std::str::from_utf8(h.value).ok()
                    };
                    let length = value("content-length").and_then(|v| v.parse::<usize>().ok());
                    let chunked = value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
                    self.start += head;
                    return ok
                        && match (length, chunked) {
                            (Some(n), false) => self.take(n, body),
                            (None, true) => self.chunks(body),
                            _ => false,
                        };
                }
                Ok(httparse::Status::Partial) if self.fill() => {}
                _ => return false,
            }
        }
    }

    /// A chunked body, chunk by chunk, into `body`.
    fn chunks(&mut self, body: &mut Vec<u8>) -> bool {
        loop {
            match httparse::parse_chunk_size(&self.buf[self.start..self.end]) {
                Ok(httparse::Status::Complete((at, 0))) => {
                    self.start += at;
                    // No trailers from nginx: the closing CRLF.
                    let mut crlf = Vec::new();
                    return self.take(2, &mut crlf);
                }
                Ok(httparse::Status::Complete((at, size))) => {
                    self.start += at;
                    let mut crlf = Vec::new();
                    if !self.take(size as usize, body) || !self.take(2, &mut crlf) {
                        return false;
                    }
                }
                Ok(httparse::Status::Partial) if self.fill() => {}
                _ => return false,
            }
        }
    }

    /// The next `n` bytes of the connection, appended to `out`.
    fn take(&mut self, mut n: usize, out: &mut Vec<u8>) -> bool {
        loop {
            let have = (self.end - self.start).min(n);
            out.extend_from_slice(&self.buf[self.start..self.start + have]);
            (self.start, n) = (self.start + have, n - have);
            if n == 0 {
                return true;
            }
            if !self.fill() {
                return false;
            }
        }
    }

    /// Reads more of the connection into the buffer (moving what is unread to its front first).
    fn fill(&mut self) -> bool {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        matches!(self.stream.read(&mut self.buf[self.end..]), Ok(n) if n > 0 && { self.end += n; true })
    }
}

/// A fetch with a ureq 3 agent of the thread's own (one idle connection kept, as flota's).
fn with_ureq() -> impl FnMut(&str, &mut Vec<u8>) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .max_idle_connections(2)
        .max_idle_connections_per_host(1)
        .http_status_as_error(false)
        .build()
        .into();
    move |url, body| match agent.get(url).call() {
        Ok(mut response) if response.status().is_success() => {
            body.clear();
            response.body_mut().as_reader().read_to_end(body).is_ok()
        }
        _ => false,
    }
}
