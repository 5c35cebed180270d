//! No panic reaches the user as a backtrace.
//!
//! The standard hook prints a panic on stderr over several lines, then the process exits 101.
//! Here every panic on a thread that catches its panics (the main thread, helper threads started
//! by `fleet::threads`, and store calls made through [`catching`]) is kept quiet and handed,
//! with its message and place, to the code that caught it, which turns it into one error line
//! and a documented exit code: a damaged store (sled panics on some damage) is exit 2, a bug is
//! exit 1. A panic on any other thread (sled's own, say) is printed as one line.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe, PanicHookInfo};

thread_local! {
    /// Whether a panic on this thread will be caught and reported by its catcher.
    static CAUGHT: Cell<bool> = const { Cell::new(false) };
    /// The last panic's message and place, for the catcher.
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs the hook. Called once, first thing in `main`.
pub fn install() {
    std::panic::set_hook(Box::new(|info: &PanicHookInfo<'_>| {
        let text = describe(info);
        if CAUGHT.with(Cell::get) {
            LAST.with(|l| *l.borrow_mut() = Some(text));
        } else {
            let thread = std::thread::current();
            eprintln!("supervisor: error: thread {} panicked: {text}", thread.name().unwrap_or("unnamed"));
        }
    }));
}

fn describe(info: &PanicHookInfo<'_>) -> String {
    let message = message(info.payload());
    match info.location() {
        Some(at) => format!("{message} (at {}:{})", at.file(), at.line()),
        None => message,
    }
}

/// Runs `f`, catching a panic: returns its message and place instead. The panic prints nothing.
pub fn catching<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let was = CAUGHT.with(|c| c.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    CAUGHT.with(|c| c.set(was));
    result
        .map_err(|payload| LAST.with(|l| l.borrow_mut().take()).unwrap_or_else(|| message(payload.as_ref())))
}

/// The text a panic was raised with (what the hook records has its place too).
fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_comes_back_as_its_message_and_place() {
        install();
        let err =
            catching(|| -> u32 { panic!("tried to serialize {}", "Uninitialized") }).expect_err("panicked");
        assert!(
            err.starts_with("tried to serialize Uninitialized (at supervisor/src/util/panics.rs:"),
            "{err}"
        );
        assert_eq!(catching(|| 7), Ok(7));
    }
}
