//! The frame codec: `[u32 little-endian length][bincode payload]`.
//!
//! This is the only module that calls bincode, so the codec can be swapped in one file.
//! A reader is given a maximum frame length and checks the header against it *before*
//! allocating, so a hostile or corrupt length costs nothing. End of input at a frame boundary is
//! a clean end (`Ok(None)`); end of input inside a frame is [`FrameError::Truncated`].

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest frame any peer may send: 256 MiB. The supervisor uses a tighter bound derived
/// from the job's body limit.
pub const MAX_FRAME_LEN: usize = 256 << 20;

/// bincode settings: varint integers, and a decode limit so no length field inside a payload
/// can make the decoder allocate more than a frame may hold.
fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME_LEN>,
> {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The pipe failed.
    #[error("frame i/o failed")]
    Io(#[source] io::Error),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes read of the part being read (header or payload).
        got: usize,
        /// Bytes that part needed.
        want: usize,
    },
    /// The length header exceeds the maximum; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The length the header claimed.
        len: usize,
        /// The reader's maximum.
        max: usize,
    },
    /// The payload is not a valid message.
    #[error("frame payload does not decode: {0}")]
    Decode(String),
    /// The payload was decoded but bytes were left over.
    #[error("frame payload has {0} trailing bytes")]
    Trailing(usize),
    /// The message could not be encoded.
    #[error("message does not encode: {0}")]
    Encode(String),
}

/// Decodes one message from a whole payload; trailing bytes are an error.
///
/// bincode allocates a string's buffer as soon as it reads the string's length, before the
/// bytes, checking only that what was claimed so far stays under its limit. With the limit at
/// [`MAX_FRAME_LEN`], a 91-byte payload claiming a long string made a 2.4 MB allocation (found
/// by the frame fuzzer). So the limit follows the payload: 16 times the smallest of 4 KiB,
/// 64 KiB, 1 MiB, 16 MiB and [`MAX_FRAME_LEN`] that holds it. (bincode counts decoded sizes,
/// not wire bytes: a varint u64 of one byte claims eight, hence the factor.) Nothing a payload
/// claims can then make one allocation more than 16 times its size class; serde's own
/// pre-allocation for a sequence is capped at 1 MiB.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    fn limited<T: DeserializeOwned, const N: usize>(payload: &[u8]) -> Result<(T, usize), FrameError> {
        bincode::serde::decode_from_slice(payload, bincode::config::standard().with_limit::<N>())
            .map_err(|e| FrameError::Decode(e.to_string()))
    }
    const K: usize = 1 << 10;
    let (msg, used) = match payload.len() {
        0..=4096 => limited::<T, { 16 * 4 * K }>(payload),
        4097..=65_536 => limited::<T, { 16 * 64 * K }>(payload),
        65_537..=1_048_576 => limited::<T, { 16 * K * K }>(payload),
        1_048_577..=16_777_216 => limited::<T, { 16 * 16 * K * K }>(payload),
        _ => limited::<T, { 16 * MAX_FRAME_LEN }>(payload),
    }?;
    if used != payload.len() {
        return Err(FrameError::Trailing(payload.len() - used));
    }
    Ok(msg)
}

/// Reads the protocol version from a `Hello` payload without decoding the rest, so a peer of
/// another version is told so rather than "does not decode". Both directions' hellos are
/// variant 0 of their enum with a `u32` version as the first field, so every version of the
/// protocol starts its first frame with the same two integers.
pub fn peek_hello_version(payload: &[u8]) -> Result<u32, FrameError> {
    match bincode::serde::decode_from_slice::<(u32, u32), _>(payload, config()) {
        Ok(((0, version), _)) => Ok(version),
        Ok(((tag, _), _)) => Err(FrameError::Decode(format!("expected a hello, got message #{tag}"))),
        Err(e) => Err(FrameError::Decode(e.to_string())),
    }
}

/// Writes frames to a byte sink. Keeps one buffer so steady-state writes do not allocate.
pub struct FrameWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> FrameWriter<W> {
    /// Wraps a sink. Frames are written whole with one `write_all` and then flushed.
    pub fn new(inner: W) -> Self {
        Self { inner, buf: Vec::with_capacity(64 * 1024) }
    }

    /// Encodes `msg` and writes it as one frame.
    pub fn write<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 4]);
        bincode::serde::encode_into_std_write(msg, &mut self.buf, config())
            .map_err(|e| FrameError::Encode(e.to_string()))?;
        let len = self.buf.len() - 4;
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge { len, max: MAX_FRAME_LEN });
        }
        let header = u32::try_from(len).expect("MAX_FRAME_LEN fits in u32");
        self.buf[..4].copy_from_slice(&header.to_le_bytes());
        self.inner.write_all(&self.buf).map_err(FrameError::Io)?;
        self.inner.flush().map_err(FrameError::Io)?;
        if self.buf.capacity() > 1 << 20 {
            // One huge body must not pin its buffer for the rest of the session.
            self.buf = Vec::with_capacity(64 * 1024);
        }
        Ok(())
    }

    /// The sink itself, for fault injection that must write bytes no encoder would.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The sink, for closing it.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Reads frames from a byte source.
pub struct FrameReader<R: Read> {
    inner: R,
    buf: Vec<u8>,
    max_len: usize,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a source; frames longer than `max_len` (at most [`MAX_FRAME_LEN`]) are refused.
    pub fn new(inner: R, max_len: usize) -> Self {
        Self { inner, buf: Vec::new(), max_len: max_len.min(MAX_FRAME_LEN) }
    }

    /// Reads the next frame's payload. `Ok(None)` is a clean end of stream.
    pub fn read_payload(&mut self) -> Result<Option<&[u8]>, FrameError> {
        self.read_payload_after(|_| {})
    }

    /// [`FrameReader::read_payload`], calling `admit` with the payload's length (once it is
    /// known to be within the limit) before reading it: a reader that must make room for what
    /// a frame holds waits there, before the frame is in memory.
    pub fn read_payload_after(&mut self, admit: impl FnOnce(usize)) -> Result<Option<&[u8]>, FrameError> {
        let mut header = [0u8; 4];
        let got = read_full(&mut self.inner, &mut header)?;
        if got == 0 {
            return Ok(None);
        }
        if got < header.len() {
            return Err(FrameError::Truncated { got, want: header.len() });
        }
        let len = u32::from_le_bytes(header) as usize;
        if len > self.max_len {
            return Err(FrameError::TooLarge { len, max: self.max_len });
        }
        admit(len);
        self.buf.clear();
        self.buf.resize(len, 0);
        let got = read_full(&mut self.inner, &mut self.buf)?;
        if got < len {
            return Err(FrameError::Truncated { got, want: len });
        }
        Ok(Some(&self.buf))
    }

    /// Reads and decodes the next frame. `Ok(None)` is a clean end of stream.
    pub fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.read_payload()? {
            Some(payload) => decode(payload).map(Some),
            None => Ok(None),
        }
    }
}

/// Fills `buf` as far as the source allows; returns how many bytes were read (short only at
/// end of stream).
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FromWorker, ItemResult, Outcome, ToWorker, WorkerHello};
    use crate::{JobSpec, PROTOCOL_VERSION};
    use proptest::prelude::*;

    fn results(n: u64) -> FromWorker {
        FromWorker::Results(
            (0..n)
                .map(|id| ItemResult {
                    id,
                    attempts: 1,
                    outcome: if id % 2 == 0 {
                        Outcome::Response {
                            status: 200,
                            body: format!("{{\"id\":{id}}}").into_bytes(),
                            validators: Default::default(),
                        }
                    } else {
                        Outcome::Failed { error: format!("boom {id}") }
                    },
                })
                .collect(),
        )
    }

    fn encode_frames(msgs: &[FromWorker]) -> Vec<u8> {
        let mut w = FrameWriter::new(Vec::new());
        for m in msgs {
            w.write(m).expect("encodes");
        }
        w.into_inner()
    }

    #[test]
    fn a_body_is_encoded_as_a_length_and_its_bytes_as_before_serde_bytes() {
        // What the release before sent: the body as a sequence of u8.
        #[derive(serde::Serialize)]
        enum Before {
            Response { status: u16, body: Vec<u8> },
        }
        let body = (0..=255u8).chain(0..40).collect::<Vec<u8>>();
        let now = Outcome::Response { status: 200, body: body.clone(), validators: Default::default() };
        let before = Before::Response { status: 200, body: body.clone() };
        let encoded = bincode::serde::encode_to_vec(&now, config()).expect("encodes");
        // Then, since protocol 10, empty validators: two empty strings and no freshness.
        let mut expected = bincode::serde::encode_to_vec(&before, config()).expect("encodes");
        expected.extend([0, 0, 0]);
        assert_eq!(encoded, expected);
        assert_eq!(decode::<Outcome>(&encoded).expect("decodes"), now);
        // The length, then the bytes as they are.
        assert!(encoded[..encoded.len() - 3].ends_with(&body));
    }

    #[test]
    fn a_credential_round_trips_and_its_debug_shows_no_secret() {
        let msg = crate::ToWorker::Credential(crate::Credential {
            generation: 2,
            header: "Authorization".into(),
            value: crate::Secret("Bearer s3cret-token".into()),
            expires_in_ms: Some(4000),
        });
        let mut w = FrameWriter::new(Vec::new());
        w.write(&msg).expect("encodes");
        let bytes = w.into_inner();
        let mut r = FrameReader::new(&bytes[..], MAX_FRAME_LEN);
        assert_eq!(r.read::<crate::ToWorker>().expect("reads"), Some(msg.clone()));
        let shown = format!("{msg:?}");
        assert!(!shown.contains("s3cret") && shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let msgs = vec![
            FromWorker::Hello(WorkerHello { version: PROTOCOL_VERSION, pid: 7 }),
            results(100),
            FromWorker::Heartbeat,
            FromWorker::Spent(12),
            FromWorker::Traffic(crate::Traffic {
                requests: 40,
                too_many: 2,
                throttled: 3,
                latency_us: 123_456,
                wait_ms: Some(1000),
                announced: Some(crate::Announced {
                    limit: Some(2000),
                    window_ms: Some(1000),
                    remaining: Some(0),
                    reset_ms: None,
                }),
                statuses: vec![(200, 35), (429, 2), (503, 1)],
                latency_buckets: vec![0, 3, 30, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                sending: 17,
                unanswered: Some("connection refused".into()),
            }),
            FromWorker::Refused { generation: 3, proven: true },
        ];
        let bytes = encode_frames(&msgs);
        let mut r = FrameReader::new(&bytes[..], MAX_FRAME_LEN);
        for m in &msgs {
            assert_eq!(r.read::<FromWorker>().expect("decodes").as_ref(), Some(m));
        }
        assert!(r.read::<FromWorker>().expect("clean end").is_none());
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        // A header claiming 4 GiB - 1 with no payload behind it: refused on the header alone.
        let bytes = u32::MAX.to_le_bytes();
        let mut r = FrameReader::new(&bytes[..], 1024);
        match r.read::<FromWorker>() {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!((len, max), (u32::MAX as usize, 1024));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(r.buf.capacity(), 0, "nothing was allocated for the refused frame");
    }

    #[test]
    fn truncated_frames_are_errors_not_clean_ends() {
        let bytes = encode_frames(&[results(10)]);
        for cut in 1..bytes.len() {
            let mut r = FrameReader::new(&bytes[..cut], MAX_FRAME_LEN);
            match r.read::<FromWorker>() {
                Err(FrameError::Truncated { got, want }) => assert!(got < want),
                other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
            }
        }
    }

    #[test]
    fn trailing_bytes_in_a_payload_are_refused() {
        let mut w = FrameWriter::new(Vec::new());
        w.write(&FromWorker::Heartbeat).expect("encodes");
        let mut bytes = w.into_inner();
        bytes.push(0);
        let len = (bytes.len() - 4) as u32;
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        let err =
            FrameReader::new(&bytes[..], MAX_FRAME_LEN).read::<FromWorker>().expect_err("trailing byte");
        assert!(matches!(err, FrameError::Trailing(1)), "{err:?}");
    }

    #[test]
    fn hello_version_is_read_before_the_rest() {
        let job = JobSpec {
            headers: vec![("Authorization".into(), "Bearer s3cret".into())],
            ..JobSpec::minimal("http://127.0.0.1:1/items/{id}")
        };
        assert!(!format!("{job:?}").contains("s3cret"), "Debug redacts header values");
        for version in [0, 1, 99, u32::MAX] {
            let mut w = FrameWriter::new(Vec::new());
            w.write(&ToWorker::Hello { version, job: Box::new(job.clone()) }).expect("encodes");
            w.write(&FromWorker::Hello(WorkerHello { version, pid: 1 })).expect("encodes");
            let bytes = w.into_inner();
            let mut r = FrameReader::new(&bytes[..], MAX_FRAME_LEN);
            for _ in 0..2 {
                let payload = r.read_payload().expect("reads").expect("a frame");
                assert_eq!(peek_hello_version(payload).expect("peeks"), version);
            }
        }
        let mut w = FrameWriter::new(Vec::new());
        w.write(&FromWorker::Heartbeat).expect("encodes");
        let bytes = w.into_inner();
        assert!(peek_hello_version(&bytes[4..]).is_err(), "a heartbeat is not a hello");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// The decoder never panics and never over-allocates on arbitrary input.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut r = FrameReader::new(&bytes[..], 1 << 16);
            for _ in 0..8 {
                match r.read::<FromWorker>() {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            let mut r = FrameReader::new(&bytes[..], 1 << 16);
            let _ = r.read::<ToWorker>();
        }

        /// Any result batch survives a round trip.
        #[test]
        fn result_batches_round_trip(ids in proptest::collection::vec(any::<u64>(), 0..64),
                                     status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let msg = FromWorker::Results(ids.iter().map(|&id| ItemResult {
                id, attempts: 3, outcome: Outcome::Response { status, body: body.clone(), validators: Default::default() } }).collect());
            let bytes = encode_frames(std::slice::from_ref(&msg));
            let back = FrameReader::new(&bytes[..], MAX_FRAME_LEN).read::<FromWorker>().expect("decodes");
            prop_assert_eq!(back, Some(msg));
        }
    }
}
