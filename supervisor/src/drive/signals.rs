//! Signals as events: SIGTERM and SIGINT stop a run, SIGHUP rereads its pacing.

use crossbeam_channel::{unbounded, Receiver};
use signal_hook::consts::SIGHUP;

/// SIGTERM and SIGINT (stop), SIGHUP (reload), delivered as messages on a channel
/// (signal-hook's self-pipe underneath).
pub struct SignalFeed {
    /// The signals, as they arrive.
    pub rx: Receiver<i32>,
    handle: signal_hook::iterator::Handle,
}

impl SignalFeed {
    /// Installs the handlers and starts the thread that forwards what they catch.
    pub fn start() -> std::io::Result<SignalFeed> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        let handle = signals.handle();
        let (tx, rx) = unbounded();
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    return;
                }
            }
        })?;
        Ok(SignalFeed { rx, handle })
    }
}

impl Drop for SignalFeed {
    fn drop(&mut self) {
        // Back to the default dispositions is not possible with signal-hook, but closing the
        // feed ends the thread; a late signal then has no listener and is ignored.
        self.handle.close();
    }
}
