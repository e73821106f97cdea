//! The request's flags, `ngx_http_request_t`'s bitfields, read and written by C
//! (`request_flags.c`): the bindings' bitfield accessors (`r.header_only()`, `r.set_count()`
//! ...) put them at the wrong bits from nginx 1.29 on (see `request_flags.c`). Every flag the
//! module touches goes through here.

use nginx_sys::{ngx_http_request_t, ngx_uint_t};

extern "C" {
    fn ngx_http_flash_sale_r_header_only(r: *const ngx_http_request_t) -> ngx_uint_t;
    fn ngx_http_flash_sale_r_internal(r: *const ngx_http_request_t) -> ngx_uint_t;
    fn ngx_http_flash_sale_r_error_page(r: *const ngx_http_request_t) -> ngx_uint_t;
    fn ngx_http_flash_sale_r_uri_changes(r: *const ngx_http_request_t) -> ngx_uint_t;
    fn ngx_http_flash_sale_r_count(r: *const ngx_http_request_t) -> ngx_uint_t;
    fn ngx_http_flash_sale_r_set_count(r: *mut ngx_http_request_t, count: ngx_uint_t);
    fn ngx_http_flash_sale_r_blocked(r: *const ngx_http_request_t) -> ngx_uint_t;
    fn ngx_http_flash_sale_r_set_blocked(r: *mut ngx_http_request_t, blocked: ngx_uint_t);
    fn ngx_http_flash_sale_r_set_aio(r: *mut ngx_http_request_t, aio: ngx_uint_t);
    fn ngx_http_flash_sale_r_set_keepalive(r: *mut ngx_http_request_t, keepalive: ngx_uint_t);
    fn ngx_http_flash_sale_r_set_request_body_in_single_buf(
        r: *mut ngx_http_request_t,
        on: ngx_uint_t,
    );
}

/// `r->header_only`: the response has no body (HEAD, 204, 304), known once the header is sent.
pub fn header_only(r: &ngx_http_request_t) -> bool {
    // SAFETY: `r` is a live request; the C function reads or writes that one field.
    unsafe { ngx_http_flash_sale_r_header_only(r) != 0 }
}

/// `r->internal`: the request went through an internal redirect.
pub fn internal(r: &ngx_http_request_t) -> bool {
    // SAFETY: `r` is a live request; the C function reads or writes that one field.
    unsafe { ngx_http_flash_sale_r_internal(r) != 0 }
}

/// `r->error_page`: the request is already an `error_page`'s redirect.
pub fn error_page(r: &ngx_http_request_t) -> bool {
    // SAFETY: `r` is a live request; the C function reads or writes that one field.
    unsafe { ngx_http_flash_sale_r_error_page(r) != 0 }
}

/// `r->uri_changes`: how many more times the URI may change (0: none).
pub fn uri_changes(r: &ngx_http_request_t) -> ngx_uint_t {
    // SAFETY: `r` is a live request; the C function reads or writes that one field.
    unsafe { ngx_http_flash_sale_r_uri_changes(r) }
}

/// `r->count`: the references that keep the (main) request alive.
pub fn count(r: &ngx_http_request_t) -> ngx_uint_t {
    // SAFETY: `r` is a live request; the C function reads or writes that one field.
    unsafe { ngx_http_flash_sale_r_count(r) }
}

/// Sets `r->count`.
pub fn set_count(r: &mut ngx_http_request_t, count: ngx_uint_t) {
    // SAFETY: `r` is a live request; the C function reads or writes that one field.
    unsafe { ngx_http_flash_sale_r_set_count(r, count) }
}

/// `r->blocked`: the operations (thread tasks, AIO) the request waits for.
pub fn blocked(r: &ngx_http_request_t) -> ngx_uint_t {
    // SAFETY: `r` is a live request; the C function reads or writes that one field.
    unsafe { ngx_http_flash_sale_r_blocked(r) }
}

/// Sets `r->blocked`.
pub fn set_blocked(r: &mut ngx_http_request_t, blocked: ngx_uint_t) {
    // SAFETY: `r` is a live request; the C function reads or writes that one field.
    unsafe { ngx_http_flash_sale_r_set_blocked(r, blocked) }
}

/// Sets `r->aio`: an operation of the request is in flight.
pub fn set_aio(r: &mut ngx_http_request_t, aio: bool) {
    // SAFETY: `r` is a live request; the C function reads or writes that one field.
    unsafe { ngx_http_flash_sale_r_set_aio(r, aio.into()) }
}

/// Sets `r->keepalive`.
pub fn set_keepalive(r: &mut ngx_http_request_t, keepalive: bool) {
    // SAFETY: `r` is a live request; the C function reads or writes that one field.
    unsafe { ngx_http_flash_sale_r_set_keepalive(r, keepalive.into()) }
}

/// Sets `r->request_body_in_single_buf`: the body is read into one buffer where it fits.
pub fn set_request_body_in_single_buf(r: &mut ngx_http_request_t, on: bool) {
    // SAFETY: `r` is a live request; the C function reads or writes that one field.
    unsafe { ngx_http_flash_sale_r_set_request_body_in_single_buf(r, on.into()) }
}
