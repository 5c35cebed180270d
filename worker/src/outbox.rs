//! What the worker sends the supervisor, as the threads that make it hand it to the link's one
//! writer: fetch threads their results, the gate its pacing reports, the link its handshake and
//! heartbeats. It sits below them all so that none of them imports the link that serves them.

use shared::{FromWorker, ItemResult};

/// What the writer thread is asked to send.
pub enum Outgoing {
    /// The handshake answer.
    Hello,
    /// One id's final answer.
    Result(ItemResult),
    /// Proof of life.
    Heartbeat,
    /// A message about pacing ([`FromWorker::Spent`], [`FromWorker::Traffic`]), sent after the
    /// results already waiting.
    Control(FromWorker),
    /// Fault injection: a frame whose payload is not a message.
    Malformed,
}
