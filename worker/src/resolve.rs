//! Host names resolved once per TTL, not once per request.
//!
//! ureq asks its resolver for the server's addresses on every request, before it looks in its
//! pool, and its default resolver is glibc's `getaddrinfo`: for `localhost` that is an open and
//! read of `/etc/hosts` per request, and for a name served by DNS a query per request (a million
//! queries for a million ids, and every request in flight failing when the resolver hiccups).
//! Clients that fetch at volume cache instead: aiohttp's `ttl_dns_cache`, curl's 60 s DNS cache,
//! the JVM's 30 s `networkaddress.cache.ttl`. So does this one:
//!
//! - A name is resolved the first time it is asked for, and its addresses kept for the TTL
//!   (`--dns-ttl`, 30 s by default). An address literal is never looked up.
//! - Once the TTL has passed, the kept addresses are still answered at once while one thread
//!   resolves the name again in the background; a failing re-resolution keeps the last good
//!   addresses, and says so once (not per request) until one succeeds.
//! - Every address the name has (A and AAAA) is used: each answer starts at the next one, so
//!   new connections spread over them, and ureq's connector tries the rest in order when one
//!   refuses.
//! - A TTL of zero resolves on every request, as ureq's default resolver does.
//! - A name that cannot be resolved the first time is an error of that attempt: a name that
//!   does not exist (getaddrinfo's `EAI_NONAME`, `EAI_NODATA`: an NXDOMAIN) is ureq's
//!   `HostNotFound`, which no retry changes; a resolver that did not answer (`EAI_AGAIN`) is
//!   retried as a connection error is.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// The most addresses ureq takes from a resolver.
const MAX_ADDRS: usize = 16;

/// Room for `"host:port"`: a DNS name is at most 253 bytes, a bracketed IPv6 literal 47.
const NAME_BYTES: usize = 253 + 1 + 5;

/// `"host:port"` in `buf`, or `None` when it does not fit.
fn name_of<'b>(host: &str, port: u16, buf: &'b mut [u8; NAME_BYTES]) -> Option<&'b str> {
    use std::io::Write;
    let mut rest = &mut buf[..];
    write!(rest, "{host}:{port}").ok()?;
    let len = NAME_BYTES - rest.len();
    std::str::from_utf8(&buf[..len]).ok()
}

/// How a name is looked up: `"host:port"` to its addresses.
pub type Lookup = dyn Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync;

/// The resolver of a worker's agents. See the module documentation. Its clones share one
/// cache (every fetch thread's agent holds one).
#[derive(Clone)]
pub struct CachingResolver {
    ttl: Duration,
    lookup: Arc<Lookup>,
    cache: Arc<RwLock<HashMap<String, Entry>>>,
    turn: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Entry {
    addrs: Arc<[SocketAddr]>,
    /// When they were resolved (or a re-resolution last failed).
    at: Instant,
    /// A background re-resolution is under way.
    refreshing: bool,
    /// The last re-resolution failed (said once).
    failing: bool,
}

impl std::fmt::Debug for CachingResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingResolver").field("ttl", &self.ttl).finish()
    }
}

impl CachingResolver {
    /// Keeps addresses for `ttl`, looking names up with the system's resolver.
    pub fn new(ttl: Duration) -> CachingResolver {
        CachingResolver::with_lookup(ttl, Arc::new(system_lookup))
    }

    /// Keeps addresses for `ttl`, looking names up with `lookup`.
    pub fn with_lookup(ttl: Duration, lookup: Arc<Lookup>) -> CachingResolver {
        CachingResolver {
            ttl,
            lookup,
            cache: Arc::new(RwLock::new(HashMap::new())),
            turn: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The addresses of `name` (`"host:port"`) at `now`: kept ones while fresh (and while a
    /// re-resolution runs in the background once they are not), or looked up. The fresh path,
    /// every request's, takes the cache's lock shared and allocates nothing.
    pub fn addrs(&self, name: &str, now: Instant) -> io::Result<Arc<[SocketAddr]>> {
        if self.ttl.is_zero() {
            return self.look_up(name);
        }
        {
            let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = cache.get(name) {
                if e.refreshing || now.saturating_duration_since(e.at) < self.ttl {
                    return Ok(e.addrs.clone());
                }
            }
        }
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = cache.get_mut(name) {
            if now.saturating_duration_since(e.at) >= self.ttl && !e.refreshing {
                e.refreshing = true;
                self.refresh_in_background(name.to_owned());
            }
            return Ok(e.addrs.clone());
        }
        // The first time: looked up under the lock, so a fleet of threads starting at once
        // asks once.
        let addrs = self.look_up(name)?;
        let entry = Entry { addrs: addrs.clone(), at: now, refreshing: false, failing: false };
        cache.insert(name.to_owned(), entry);
        Ok(addrs)
    }

    fn look_up(&self, name: &str) -> io::Result<Arc<[SocketAddr]>> {
        let addrs = (self.lookup)(name)?;
        if addrs.is_empty() {
            return Err(no_such_host(name));
        }
        Ok(addrs.into())
    }

    fn refresh_in_background(&self, name: String) {
        let (lookup, cache, key) = (self.lookup.clone(), self.cache.clone(), name.clone());
        let spawned = std::thread::Builder::new().name("resolve".into()).spawn(move || {
            let found = lookup(&name).and_then(|addrs| {
                if addrs.is_empty() {
                    Err(io::Error::new(io::ErrorKind::NotFound, "no address"))
                } else {
                    Ok(addrs)
                }
            });
            let mut cache = cache.write().unwrap_or_else(PoisonError::into_inner);
            let Some(e) = cache.get_mut(&name) else { return };
            e.refreshing = false;
            e.at = Instant::now();
            match found {
                Ok(addrs) => {
                    if e.failing {
                        log::warn!("{name} resolves again: {addrs:?}");
                    }
                    (e.addrs, e.failing) = (addrs.into(), false);
                }
                Err(err) if !e.failing => {
                    e.failing = true;
                    log::warn!(
                        "cannot resolve {name} again ({err}); keeping its last addresses {:?}",
                        e.addrs
                    );
                }
                Err(_) => {}
            }
        });
        if spawned.is_err() {
            // No thread to spare: the kept addresses serve, and a later request tries again.
            let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = cache.get_mut(&key) {
                e.refreshing = false;
            }
        }
    }
}

/// A name that does not exist: no retry changes it.
#[derive(Debug, thiserror::Error)]
#[error("{0} does not resolve (no such host name)")]
pub struct NoSuchHost(String);

/// The error of a lookup of `name` (`"host:port"`) that found no such name.
pub fn no_such_host(name: &str) -> io::Error {
    let host = name.rsplit_once(':').map_or(name, |(host, _)| host);
    io::Error::new(io::ErrorKind::NotFound, NoSuchHost(host.to_owned()))
}

/// A failed lookup as ureq's error: `HostNotFound` for a name that does not exist, which no
/// retry changes; an I/O error (retried) for anything else.
fn lookup_error(e: io::Error) -> ureq::Error {
    if e.get_ref().is_some_and(|inner| inner.is::<NoSuchHost>()) {
        ureq::Error::HostNotFound
    } else {
        ureq::Error::Io(e)
    }
}

/// Looks `name` (`"host:port"`) up with the system's resolver (getaddrinfo), telling a name
/// that does not exist from a resolver that did not answer.
fn system_lookup(name: &str) -> io::Result<Vec<SocketAddr>> {
    use dns_lookup::{AddrInfoHints, LookupErrorKind, SockType};
    let Some((host, port)) = name.rsplit_once(':') else { return Ok(name.to_socket_addrs()?.collect()) };
    let hints = AddrInfoHints { socktype: SockType::Stream.into(), ..AddrInfoHints::default() };
    match dns_lookup::getaddrinfo(Some(host), Some(port), Some(hints)) {
        Ok(found) => {
            let mut addrs: Vec<SocketAddr> = found.filter_map(Result::ok).map(|a| a.sockaddr).collect();
            addrs.dedup();
            Ok(addrs)
        }
        Err(e) if matches!(e.kind(), LookupErrorKind::NoName | LookupErrorKind::NoData) => {
            Err(no_such_host(name))
        }
        Err(e) => Err(e.into()),
    }
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(ureq::Error::BadUri(format!("{uri} is not an absolute URL")));
        };
        let default_port = match scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        };
        let port = authority
            .port_u16()
            .or(default_port)
            .ok_or_else(|| ureq::Error::BadUri(format!("{uri} has no port for its scheme")))?;
        // "host:port", written on the stack: this runs for every request.
        let mut buf = [0u8; NAME_BYTES];
        let name = name_of(authority.host(), port, &mut buf)
            .ok_or_else(|| ureq::Error::BadUri(format!("{uri} has a host name over 253 bytes")))?;
        let mut out = self.empty();
        // An address literal ("127.0.0.1:8080", "[::1]:443") is its own answer.
        if let Ok(addr) = name.parse::<SocketAddr>() {
            out.push(addr);
            return Ok(out);
        }
        let found = self.addrs(name, Instant::now()).map_err(lookup_error)?;
        for addr in config.ip_family().keep_wanted(found.iter().copied()).take(MAX_ADDRS) {
            out.push(addr);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        // Each answer starts one further along: new connections spread over the addresses.
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % out.len();
        out.rotate_left(start);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    fn counting(addrs: Vec<SocketAddr>) -> (Arc<AtomicU64>, CachingResolver, Duration) {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let ttl = Duration::from_secs(30);
        let r = CachingResolver::with_lookup(
            ttl,
            Arc::new(move |_: &str| {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(addrs.clone())
            }),
        );
        (calls, r, ttl)
    }

    fn wait_until(mut cond: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < until, "timed out");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_name_is_looked_up_once_per_ttl_and_refreshed_in_the_background() {
        let v4: SocketAddr = "127.0.0.1:8080".parse().expect("an address");
        let (calls, r, ttl) = counting(vec![v4]);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            assert_eq!(*r.addrs("api.example:8080", t0 + ttl * i / 20_000).expect("resolves"), [v4]);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "10,000 requests within the TTL, one lookup");
        // Past the TTL: answered at once from what is kept, and looked up once more behind.
        for _ in 0..100 {
            assert_eq!(
                *r.addrs("api.example:8080", t0 + ttl + Duration::from_millis(1)).expect("resolves"),
                [v4]
            );
        }
        wait_until(|| calls.load(Ordering::SeqCst) == 2);
        wait_until(|| !r.cache.read().expect("lock")["api.example:8080"].refreshing);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one background lookup, not one per request");
    }

    #[test]
    fn a_failing_re_resolution_keeps_the_last_good_addresses() {
        let good: SocketAddr = "[::1]:443".parse().expect("an address");
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let r = CachingResolver::with_lookup(
            Duration::from_secs(1),
            Arc::new(move |_: &str| match c.fetch_add(1, Ordering::SeqCst) {
                0 => Ok(vec![good]),
                _ => Err(io::Error::other("SERVFAIL")),
            }),
        );
        let t0 = Instant::now();
        assert_eq!(*r.addrs("h:443", t0).expect("resolves"), [good]);
        assert_eq!(*r.addrs("h:443", t0 + Duration::from_secs(2)).expect("kept"), [good]);
        wait_until(|| r.cache.read().expect("lock")["h:443"].failing);
        assert_eq!(*r.addrs("h:443", t0 + Duration::from_secs(2)).expect("still kept"), [good]);
    }

    #[test]
    fn a_name_never_resolved_is_an_error_and_a_zero_ttl_looks_up_every_time() {
        let r = CachingResolver::with_lookup(Duration::from_secs(30), Arc::new(|_: &str| Ok(Vec::new())));
        assert!(r.addrs("nowhere:80", Instant::now()).is_err());
        let (calls, _, _) = counting(vec![]);
        let c = calls.clone();
        let every = CachingResolver::with_lookup(
            Duration::ZERO,
            Arc::new(move |_: &str| {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(vec!["127.0.0.1:1".parse().expect("an address")])
            }),
        );
        for _ in 0..5 {
            every.addrs("x:1", Instant::now()).expect("resolves");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn a_name_that_does_not_exist_is_host_not_found_and_a_silent_resolver_is_retried() {
        let resolve = |lookup: Arc<Lookup>| {
            let r = CachingResolver::with_lookup(Duration::from_secs(30), lookup);
            r.addrs("api.example.invalid:8080", Instant::now()).map_err(lookup_error)
        };
        let nxdomain = resolve(Arc::new(|name: &str| Err(no_such_host(name))));
        assert!(matches!(nxdomain, Err(ureq::Error::HostNotFound)), "{nxdomain:?}");
        let empty = resolve(Arc::new(|_: &str| Ok(Vec::new())));
        assert!(matches!(empty, Err(ureq::Error::HostNotFound)), "{empty:?}");
        let again =
            resolve(Arc::new(|_: &str| Err(io::Error::other("Temporary failure in name resolution"))));
        assert!(matches!(again, Err(ureq::Error::Io(_))), "{again:?}");
        assert_eq!(
            no_such_host("api.example.invalid:8080").to_string(),
            "api.example.invalid does not resolve (no such host name)"
        );
    }

    #[test]
    fn a_name_is_written_as_host_and_port_without_allocating() {
        let mut buf = [0u8; NAME_BYTES];
        assert_eq!(name_of("api.example", 443, &mut buf), Some("api.example:443"));
        assert_eq!(name_of("[::1]", 8080, &mut buf), Some("[::1]:8080"));
        assert_eq!(name_of(&"a".repeat(253), 65535, &mut buf).map(str::len), Some(259));
        assert_eq!(name_of(&"a".repeat(254), 65535, &mut buf), None);
    }

    #[test]
    fn answers_rotate_over_every_address_and_literals_are_never_looked_up() {
        let a: SocketAddr = "10.0.0.1:80".parse().expect("an address");
        let b: SocketAddr = "[fd00::1]:80".parse().expect("an address");
        let (calls, r, _) = counting(vec![a, b]);
        let config = Config::default();
        let uri: Uri = "http://api.example/items/1".parse().expect("a uri");
        let firsts: Vec<SocketAddr> =
            (0..4).map(|_| r.resolve(&uri, &config, NextTimeout::default()).expect("resolves")[0]).collect();
        assert_eq!(firsts, vec![a, b, a, b], "new connections spread over both");
        let all = r.resolve(&uri, &config, NextTimeout::default()).expect("resolves");
        assert_eq!(all.len(), 2, "every address is offered, the next ones as fallbacks");
        let literal: Uri = "http://127.0.0.1:9/x".parse().expect("a uri");
        let got = r.resolve(&literal, &config, NextTimeout::default()).expect("resolves");
        assert_eq!(got[0], "127.0.0.1:9".parse::<SocketAddr>().expect("an address"));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the literal was not looked up");
    }
}
