//! The edge between nginx and Rust: every `extern "C"` function nginx calls runs its body
//! through [`guard`], so that a panic never unwinds into nginx's C frames (which aborts the
//! process: a worker, or the master while it reads the configuration).

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `body`; a panic in it gives `on_panic` instead, what the entry answers nginx when it
/// fails (`NGX_CONF_ERROR`, `NGX_ERROR`, a 500).
pub fn guard<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(on_panic)
}
