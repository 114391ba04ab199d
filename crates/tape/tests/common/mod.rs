//! Helpers shared by the panic-message tests (`errors.rs`, `views.rs`).

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

/// Runs `f`, expecting a panic; returns its message and the file:line it was
/// reported at.
#[allow(dead_code)] // not every test binary uses both helpers
pub fn panic_of(f: impl FnOnce()) -> (String, String) {
    try_panic_of(f).expect("expected a panic")
}

/// Runs `f`; if it panics, returns the message and the file:line it was
/// reported at. A hook installed once per process records the location on
/// the capturing thread only and hands every other panic to the hook it
/// replaced: swapping hooks per call raced between parallel tests (one test
/// restoring the default hook while another's closure was about to panic,
/// which then recorded no location).
pub fn try_panic_of(f: impl FnOnce()) -> Option<(String, String)> {
    thread_local! {
        static CAPTURING: Cell<bool> = const { Cell::new(false) };
        static LOCATION: RefCell<String> = const { RefCell::new(String::new()) };
    }
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CAPTURING.with(Cell::get) {
                let loc = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                LOCATION.with(|l| *l.borrow_mut() = loc);
            } else {
                previous(info);
            }
        }));
    });
    LOCATION.with(|l| l.borrow_mut().clear());
    CAPTURING.with(|c| c.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CAPTURING.with(|c| c.set(false));
    let payload = result.err()?;
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    Some((msg, LOCATION.with(|l| l.borrow().clone())))
}
