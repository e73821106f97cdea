//! The edge between nginx and Rust: every `extern "C"` function nginx calls runs its body
//! through [`guard`], so that a panic never unwinds into nginx's C frames (which aborts the
//! process: a worker, or the master while it reads the configuration).

use std::panic::{catch_unwind, AssertUnwindSafe};

use nginx_sys::ngx_http_request_t;
use ngx::http::Request;

/// Runs `body`; a panic in it gives `on_panic` instead, what the entry answers nginx when it
/// fails (`NGX_CONF_ERROR`, `NGX_ERROR`, a 500).
pub fn guard<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(on_panic)
}

/// Runs the `body` of a handler nginx calls with a request (a phase or content handler, a
/// filter, a variable's getter, a body or reply callback) with that request as a reference,
/// made once here; a panic, or a null request, gives `on_panic`.
///
/// # Safety
/// `r` is null or a request nginx handed to the caller, live until the body returns.
pub unsafe fn with_request<T>(
    r: *mut ngx_http_request_t,
    on_panic: T,
    body: impl FnOnce(&mut Request) -> T,
) -> T {
    if r.is_null() {
        return on_panic;
    }
    // SAFETY: see the function's contract: nginx's request, live, not used elsewhere while
    // the body runs (nginx runs one handler of a request at a time, on one thread).
    let req = unsafe { Request::from_ngx_http_request(r) };
    guard(on_panic, || body(req))
}
