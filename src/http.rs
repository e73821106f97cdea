//! HTTP answers the module sends itself, and nginx's clock: small helpers over nginx's
//! request, for the gate's rejections and the admin API and metrics handlers.

use core::ptr;

use nginx_sys::{
    ngx_chain_t, ngx_http_output_filter, ngx_http_request_t, ngx_http_send_header, ngx_int_t,
    ngx_list_push, ngx_str_t, ngx_table_elt_t, ngx_timeofday, ngx_uint_t, NGX_ERROR, NGX_OK,
};
use ngx::core::{Buffer, Pool};

/// nginx's cached clock, in Unix milliseconds: the time of the current event loop turn, as
/// every nginx module reads it.
pub fn now_ms() -> i64 {
    let tp = ngx_timeofday();
    tp.sec * 1000 + tp.msec as i64
}

/// Adds an output header with a static name.
///
/// # Safety
/// `r` is a live request whose headers have not been sent.
pub unsafe fn add_header(
    r: *mut ngx_http_request_t,
    key: &'static str,
    value: ngx_str_t,
) -> Option<()> {
    // SAFETY: the output header list holds `ngx_table_elt_t`; nginx only reads the static key.
    unsafe {
        let h = ngx_list_push(&mut (*r).headers_out.headers).cast::<ngx_table_elt_t>().as_mut()?;
        h.hash = 1;
        h.key = ngx_str_t { data: key.as_ptr().cast_mut(), len: key.len() };
        h.value = value;
        h.lowcase_key = ptr::null_mut();
        #[cfg(ngx_table_elt_next)]
        {
            h.next = ptr::null_mut();
        }
    }
    Some(())
}

/// A response body: static text, or bytes to copy into the request's pool.
pub enum Body<'a> {
    Static(&'static str),
    Copied(&'a [u8]),
}

/// Sends `body` as the whole response; returns what a content handler returns (the caller
/// finalizes the request with it).
///
/// # Safety
/// `r` is a live request whose headers have not been sent.
pub unsafe fn send(
    r: *mut ngx_http_request_t,
    status: u16,
    content_type: ngx_str_t,
    body: Body<'_>,
) -> ngx_int_t {
    let len = match body {
        Body::Static(text) => text.len(),
        Body::Copied(bytes) => bytes.len(),
    };
    // SAFETY: see the function's contract.
    unsafe {
        let out = &mut (*r).headers_out;
        out.status = ngx_uint_t::from(status);
        out.content_type = content_type;
        out.content_type_len = content_type.len;
        out.content_length_n = len as i64;

        let mut rc = ngx_http_send_header(r);
        if rc != NGX_ERROR as ngx_int_t && rc <= NGX_OK as ngx_int_t && (*r).header_only() == 0 {
            let pool = Pool::from_ngx_pool((*r).pool);
            let buf = match body {
                Body::Static(text) => pool.create_buffer_from_static_str(text).map(|mut b| {
                    b.set_last_buf(true);
                    b.as_ngx_buf_mut()
                }),
                Body::Copied(bytes) => pool.create_buffer(bytes.len()).map(|mut b| {
                    let buf = b.as_ngx_buf_mut();
                    ptr::copy_nonoverlapping(bytes.as_ptr(), (*buf).last, bytes.len());
                    (*buf).last = (*buf).last.add(bytes.len());
                    b.set_last_buf(true);
                    buf
                }),
            };
            rc = match buf {
                Some(buf) => {
                    (*buf).set_last_in_chain(1);
                    let mut chain = ngx_chain_t { buf, next: ptr::null_mut() };
                    ngx_http_output_filter(r, &mut chain)
                }
                None => NGX_ERROR as ngx_int_t,
            };
        }
        rc
    }
}
