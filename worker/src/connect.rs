//! The worker's TCP connections: ureq's connector and transport, less what they cost per
//! request.
//!
//! ureq's own TCP transport probes a pooled connection twice a request, when it goes back to
//! the pool and when it comes out (`FIONBIO` on, a peeking read, `FIONBIO` off: four `ioctl`s
//! and two `recvfrom`s a request), and sets the socket's read and write timeouts to the time
//! left in each phase, which changes at every request. This one:
//!
//! - **Probes only a connection that sat idle** for [`PROBE_AFTER_IDLE`] or longer, as it comes
//!   out of the pool (or one whose request took that long, as it goes back), with one
//!   `recv(MSG_PEEK | MSG_DONTWAIT)` (Apache HttpClient's
//!   `validateAfterInactivity`, 2 s). A connection the server closed sooner is found when the
//!   request sent on it gets no answer: the fetcher sends it again at once on a new connection
//!   ([`Stale`]), which costs a round trip, not an attempt.
//! - **Sets a socket timeout only when it changes**, and rounds a phase's remaining time up to
//!   the per-read (per-write) limit when it is within 1/16 of it: a request on a kept connection
//!   sets none, and a phase still ends at its deadline, at most 1/16 of the limit late. Near the
//!   deadline (a body trickled slowly) the exact remainder is set, read by read.
//! - **Sizes its buffers for API answers**: given by the fetcher (16 KiB in for the response
//!   head and what follows it, the request's size out), not ureq's 128 KiB each.
//!
//! ureq's connector is kept for what it does once per connection: a `CONNECT` proxy before, TLS
//! on top ([`SharedTls`], one rustls configuration for every fetch thread's agent).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, RustlsConnector, ShutdownHandle,
    Transport,
};
use ureq::{Error, Timeout};

/// A pooled connection idle this long is probed before it is used again.
pub const PROBE_AFTER_IDLE: Duration = Duration::from_secs(2);

/// Set when a request sent on a kept connection failed before any byte of its answer came:
/// the server had closed the connection while it sat in the pool. Shared by one agent's
/// connections and the thread that uses the agent, which takes it after a failed request.
#[derive(Debug, Clone, Default)]
pub struct Stale(Arc<AtomicBool>);

impl Stale {
    /// Whether the last failure was such, clearing the mark.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }

    fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Opens the TCP connections of one agent.
#[derive(Debug)]
pub struct TcpConnector {
    /// Input and output buffer sizes of a connection.
    pub buffers: (usize, usize),
    /// Where its connections say they failed stale.
    pub stale: Stale,
}

impl<In: Transport> Connector<In> for TcpConnector {
    type Out = Either<In, TcpTransport>;

    fn connect(&self, details: &ConnectionDetails, chained: Option<In>) -> Result<Option<Self::Out>, Error> {
        if let Some(proxied) = chained {
            // A CONNECT proxy's tunnel, already open.
            return Ok(Some(Either::A(proxied)));
        }
        let deadline = details.timeout.not_zero().map(|d| Instant::now() + *d);
        let stream = connect_any(&details.addrs, deadline, details.timeout.reason)?;
        if details.config.no_delay() {
            stream.set_nodelay(true)?;
        }
        let stream = Arc::new(stream);
        (details.register_shutdown)(Arc::downgrade(&stream) as Weak<dyn ShutdownHandle>)?;
        Ok(Some(Either::B(TcpTransport {
            stream,
            buffers: LazyBuffers::new(self.buffers.0, self.buffers.1),
            read_timeout: None,
            write_timeout: None,
            idle_since: Instant::now(),
            kept: false,
            read_since_send: 0,
            stale: self.stale.clone(),
        })))
    }
}

/// Connects to the first address that takes the connection, in the resolver's order (which
/// rotates, so new connections spread over a name's addresses). An address that refuses, or
/// that this host has no route to, hands over to the next at once; one that does not answer
/// gets half the time left when others remain (ureq's and curl's split).
fn connect_any(addrs: &[SocketAddr], deadline: Option<Instant>, reason: Timeout) -> Result<TcpStream, Error> {
    let mut last = None;
    for (n, addr) in addrs.iter().enumerate() {
        let left = addrs.len() - n;
        let result = match deadline {
            None => TcpStream::connect(addr),
            Some(at) => {
                let remaining = at.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(Error::Timeout(reason));
                }
                let share = if left > 1 { remaining / 2 } else { remaining };
                TcpStream::connect_timeout(addr, share.max(Duration::from_millis(10)))
            }
        };
        match result {
            Ok(stream) => return Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => last = Some(Error::Timeout(reason)),
            Err(e) if addr_specific(&e) => last = Some(Error::Io(e)),
            Err(e) => return Err(Error::Io(e)),
        }
    }
    Err(last.unwrap_or_else(|| {
        Error::Io(io::Error::new(io::ErrorKind::ConnectionRefused, "no address to connect to"))
    }))
}

/// A failure that concerns the address tried, not the name: the next address may work.
fn addr_specific(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
            | K::AddrNotAvailable
    )
}

/// One TCP connection. See the module documentation.
#[derive(Debug)]
pub struct TcpTransport {
    /// Shared (weakly) with ureq's shutdown handle.
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// When the pool last asked about it: it went back to the pool then, or came out.
    idle_since: Instant,
    /// The connection has been in the pool: an exchange completed on it before.
    kept: bool,
    /// Bytes read since it last came out of the pool.
    read_since_send: usize,
    stale: Stale,
}

/// The socket timeout for an I/O whose limit is `timeout`: the per-operation limit when the
/// phase's remainder is within 1/16 of it, so that kept connections keep the one set, else
/// the remainder. `None` for no limit.
fn socket_timeout(
    timeout: NextTimeout,
    per_op: Option<ureq::unversioned::transport::time::Duration>,
) -> Option<Duration> {
    let wanted = *timeout.not_zero()?;
    match per_op.map(|d| *d) {
        Some(cap) if wanted <= cap && cap - wanted <= cap / 16 => Some(cap),
        _ => Some(wanted),
    }
}

/// Sets a socket timeout through `set` when it differs from the one set before.
fn keep_timeout(
    set: &mut Option<Duration>,
    wanted: Option<Duration>,
    apply: impl FnOnce(Option<Duration>) -> io::Result<()>,
) -> io::Result<()> {
    if *set != wanted {
        apply(wanted)?;
        *set = wanted;
    }
    Ok(())
}

impl TcpTransport {
    /// What a failed exchange says about the connection: stale when it was a kept one and
    /// nothing of the answer came.
    fn failed(&self) {
        if self.kept && self.read_since_send == 0 {
            self.stale.mark();
        }
    }
}

impl Transport for TcpTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = timeout.for_write();
        if timeout.after.is_zero() {
            return Err(Error::Timeout(timeout.reason));
        }
        let stream = &*self.stream;
        keep_timeout(&mut self.write_timeout, socket_timeout(timeout, timeout.per_write), |t| {
            stream.set_write_timeout(t)
        })?;
        let result = (&*self.stream).write_all(&self.buffers.output()[..amount]);
        result.map_err(|e| {
            self.failed();
            timed_out(e, timeout.reason)
        })
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let timeout = timeout.for_read();
        if timeout.after.is_zero() {
            return Err(Error::Timeout(timeout.reason));
        }
        let stream = &*self.stream;
        keep_timeout(&mut self.read_timeout, socket_timeout(timeout, timeout.per_read), |t| {
            stream.set_read_timeout(t)
        })?;
        let input = self.buffers.input_append_buf();
        let result = loop {
            match (&*self.stream).read(input) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match result {
            Ok(0) => {
                self.failed();
                Ok(false)
            }
            Ok(n) => {
                self.buffers.input_appended(n);
                self.read_since_send += n;
                Ok(true)
            }
            Err(e) => {
                self.failed();
                Err(timed_out(e, timeout.reason))
            }
        }
    }

    fn is_open(&mut self) -> bool {
        // Asked as the connection goes back to the pool (just used) and as it comes out: an
        // exchange completed on it, and what is read from here on is the next one's answer.
        self.kept = true;
        self.read_since_send = 0;
        // The time since the pool last asked: idle in the pool as it comes out, in use as it
        // goes back (a request that took that long is probed then too, at no harm).
        let now = Instant::now();
        let since = now.saturating_duration_since(std::mem::replace(&mut self.idle_since, now));
        since < PROBE_AFTER_IDLE || still_open(&self.stream)
    }
}

/// Whether an idle connection can carry a request: nothing to read is the one healthy answer.
/// Bytes nobody asked for, the end of the stream or an error, and it is not used again. One
/// `recv(MSG_PEEK | MSG_DONTWAIT)`, the socket left as it was.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8];
    let peeked = recv(stream.as_raw_fd(), &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT);
    matches!(peeked, Err(Errno::EAGAIN))
}

/// An I/O error as ureq reports it: a socket timeout is the phase's timeout.
fn timed_out(e: io::Error, reason: Timeout) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout(reason),
        _ => Error::Io(e),
    }
}

/// ureq's rustls layer, one for every agent of a worker: it builds its TLS configuration (the
/// trusted roots parsed) once, on the first https connection.
#[derive(Debug, Clone, Default)]
pub struct SharedTls(Arc<RustlsConnector>);

impl<In: Transport> Connector<In> for SharedTls {
    type Out = <RustlsConnector as Connector<In>>::Out;

    fn connect(&self, details: &ConnectionDetails, chained: Option<In>) -> Result<Option<Self::Out>, Error> {
        self.0.connect(details, chained)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::unversioned::transport::time::Duration as UDuration;

    fn next(after: Duration, per_op: Option<Duration>) -> NextTimeout {
        NextTimeout {
            after: UDuration::Exact(after),
            reason: Timeout::RecvResponse,
            per_read: per_op.map(UDuration::Exact),
            per_write: per_op.map(UDuration::Exact),
        }
    }

    #[test]
    fn a_remainder_near_the_limit_keeps_the_limit_and_one_far_below_is_exact() {
        let limit = Some(Duration::from_secs(32));
        let t = next(Duration::from_millis(31_999), limit);
        assert_eq!(socket_timeout(t, t.per_read), limit, "a fresh phase keeps the limit set");
        let t = next(Duration::from_secs(30), limit);
        assert_eq!(socket_timeout(t, t.per_read), limit, "2 s short of 32 is within 1/16");
        let t = next(Duration::from_millis(29_999), limit);
        assert_eq!(socket_timeout(t, t.per_read), Some(Duration::from_millis(29_999)));
        let t = next(Duration::from_secs(5), None);
        assert_eq!(socket_timeout(t, t.per_read), Some(Duration::from_secs(5)), "no limit: the remainder");
        let none = NextTimeout { after: UDuration::NotHappening, ..next(Duration::ZERO, None) };
        assert_eq!(socket_timeout(none, None), None);
    }

    #[test]
    fn an_idle_connection_is_open_until_the_peer_closes_or_sends_unasked() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let ours = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut theirs, _) = listener.accept().expect("accept");
        assert!(still_open(&ours), "nothing to read");
        assert!(still_open(&ours), "and the probe consumed nothing");
        theirs.write_all(b"x").expect("write");
        let deadline = Instant::now() + Duration::from_secs(5);
        while still_open(&ours) {
            assert!(Instant::now() < deadline, "a byte nobody asked for closes it");
            std::thread::sleep(Duration::from_millis(5));
        }
        let ours = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (theirs, _) = listener.accept().expect("accept");
        drop(theirs);
        while still_open(&ours) {
            assert!(Instant::now() < deadline, "the peer's close closes it");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_timeout_is_set_only_when_it_changes() {
        let mut set = None;
        let mut calls = 0;
        for wanted in [Some(Duration::from_secs(1)), Some(Duration::from_secs(1)), None, None] {
            keep_timeout(&mut set, wanted, |_| {
                calls += 1;
                Ok(())
            })
            .expect("the setter does not fail");
        }
        assert_eq!(calls, 2);
    }
}
