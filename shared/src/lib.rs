//! What the supervisor and its workers share: the wire protocol and the frame codec.
//!
//! The two processes talk over the worker's stdin and stdout pipes. Every message is a frame,
//! a `u32` length followed by that many bytes of bincode (see [`frame`]). The messages are the
//! enums in [`protocol`]; the first frame each way is a `Hello` whose first field is the
//! protocol version, so a mismatched pair of binaries fails loudly at the handshake instead of
//! misreading each other later. [`error_chain`] is how both say an error to a person.
#![deny(unsafe_code)]

pub mod frame;
pub mod protocol;
pub mod template;

pub use frame::{FrameError, FrameReader, FrameWriter};
pub use protocol::{
    api_failure, Announced, Condition, Credential, FromWorker, ItemResult, JobSpec, Outcome, Pace, Secret,
    TlsTrust, ToWorker, Traffic, Unreachable, Validators, WorkerChaos, WorkerHello, HEARTBEAT_EVERY,
    LATENCY_BUCKETS, PROTOCOL_VERSION, RETRY_BUDGET_WINDOW, TRAFFIC_EVERY,
};
pub use template::{Encoding, Template, TemplateError, UrlTemplate};

/// Formats an error and its causes on one line, `what: why: deeper why`: how both binaries say
/// an error to a person.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        cur = cause.source();
    }
    s
}
