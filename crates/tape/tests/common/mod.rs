//! Helpers shared by the panic-message tests (`errors.rs`, `views.rs`).

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};

/// Runs `f`, expecting a panic; returns its message and the file:line it was
/// reported at.
#[allow(dead_code)] // not every test binary uses both helpers
pub fn panic_of(f: impl FnOnce()) -> (String, String) {
    try_panic_of(f).expect("expected a panic")
}

/// Runs `f`; if it panics, returns the message and the file:line it was
/// reported at. Installs a hook that records the location on this thread only.
pub fn try_panic_of(f: impl FnOnce()) -> Option<(String, String)> {
    thread_local! {
        static LOCATION: RefCell<String> = const { RefCell::new(String::new()) };
    }
    let previous = panic::take_hook();
    panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        LOCATION.with(|l| *l.borrow_mut() = loc);
    }));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    panic::set_hook(previous);
    let payload = result.err()?;
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    Some((msg, LOCATION.with(|l| l.borrow().clone())))
}
