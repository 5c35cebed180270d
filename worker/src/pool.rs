//! The fetch threads: each pulls ids from one bounded channel and pushes results to the link.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::fetch::Fetcher;
use crate::link::Outgoing;

/// Starts `threads` fetch threads. They exit once `ids` is closed and drained.
pub fn start(
    threads: u32,
    fetcher: Arc<Fetcher>,
    ids: Receiver<u64>,
    out: Sender<Outgoing>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..threads.max(1))
        .map(|n| {
            let (fetcher, ids, out) = (fetcher.clone(), ids.clone(), out.clone());
            std::thread::Builder::new().name(format!("fetch-{n}")).spawn(move || {
                let mut url = String::with_capacity(128);
                for id in ids {
                    let result = fetcher.fetch(id, &mut url);
                    if out.send(Outgoing::Result(result)).is_err() {
                        // The link writer is gone: the pipe broke and the worker is ending.
                        return;
                    }
                }
            })
        })
        .collect()
}
