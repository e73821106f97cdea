//! HTTP answers the module sends itself, and nginx's clock: small helpers over nginx's
//! request, for the gate's rejections and the admin API and metrics handlers.

use core::ffi::c_void;
use core::mem::size_of;
use core::ptr::{self, NonNull};

use nginx_sys::{
    ngx_buf_t, ngx_chain_t, ngx_http_request_t, ngx_list_push, ngx_pool_cleanup_add, ngx_str_t,
    ngx_table_elt_t, ngx_timeofday, ngx_uint_t,
};
use ngx::core::{Buffer, Status};
use ngx::http::Request;

/// nginx's cached clock, in Unix milliseconds: the time of the current event loop turn, as
/// every nginx module reads it.
pub fn now_ms() -> i64 {
    let tp = ngx_timeofday();
    tp.sec * 1000 + tp.msec as i64
}

/// Adds an output header whose name and value outlive the request (static text, or a copy in
/// its pool); `None` when nginx cannot allocate.
///
/// Not ngx's `Request::add_header_out`: that copies both into the pool and leaves the entry's
/// `next` link unset, which nginx 1.23+ reads for repeated headers.
pub fn add_header(req: &mut Request, key: &'static str, value: ngx_str_t) -> Option<()> {
    let headers = &mut req.as_mut().headers_out.headers;
    // SAFETY: the output header list holds `ngx_table_elt_t`, and a pushed element is ours to
    // fill; nginx only reads the static key.
    let h = unsafe { ngx_list_push(headers).cast::<ngx_table_elt_t>().as_mut() }?;
    h.hash = 1;
    h.key = static_str(key);
    h.value = value;
    h.lowcase_key = ptr::null_mut();
    #[cfg(ngx_table_elt_next)]
    {
        h.next = ptr::null_mut();
    }
    Some(())
}

/// The request's main request (itself, for a main request), to count what it waits for.
pub fn main_request(req: &mut Request) -> &mut ngx_http_request_t {
    let r = req.as_mut();
    if ptr::eq(r.main, r) {
        return r;
    }
    // SAFETY: a subrequest's main request is another request, live as long as it is.
    unsafe { &mut *r.main }
}

/// A copy of `bytes` in the request's pool, as long as the request; `None` when nginx cannot
/// allocate.
pub fn pool_copy(req: &Request, bytes: &[u8]) -> Option<ngx_str_t> {
    // SAFETY: the request's pool is live while the request is.
    unsafe { ngx_str_t::from_bytes(req.as_ref().pool, bytes) }
}

/// `n`'s digits, copied into the request's pool (formatted on the stack: no heap allocation on
/// a request's path); `None` when nginx cannot allocate.
pub fn pool_number(req: &Request, n: u64) -> Option<ngx_str_t> {
    pool_copy(req, itoa::Buffer::new().format(n).as_bytes())
}

/// A static string as nginx's string: for a header's value or a content type.
pub const fn static_str(s: &'static str) -> ngx_str_t {
    ngx_str_t { data: s.as_ptr().cast_mut(), len: s.len() }
}

/// The request's `Accept` header, if it has one (the first, if it has several).
pub fn accept(req: &Request) -> Option<&[u8]> {
    #[cfg(ngx_http_headers)]
    {
        // SAFETY: the header, when present, lives as long as the request.
        let header = unsafe { req.as_ref().headers_in.accept.as_ref() }?;
        // SAFETY: as above; a header's value is `len` bytes at `data`.
        Some(unsafe { core::slice::from_raw_parts(header.value.data, header.value.len) })
    }
    // nginx keeps `headers_in.accept` only when built with HTTP/2 or `--with-compat`.
    #[cfg(not(ngx_http_headers))]
    {
        req.headers_in_iterator()
            .find(|(name, _)| name.as_bytes().eq_ignore_ascii_case(b"accept"))
            .map(|(_, value)| value.as_bytes())
    }
}

/// A response body: static text, or text to copy into the request's pool.
pub enum Body<'a> {
    Static(&'static str),
    Copied(&'a str),
}

/// Sends `body` as the whole response with `status` (an HTTP status code); returns what a
/// content handler returns (the caller finalizes the request with it).
pub fn send(req: &mut Request, status: u16, content_type: ngx_str_t, body: Body<'_>) -> Status {
    send_as(req, status, content_type, None, body)
}

/// [`send`] with the media type and its charset apart, as nginx keeps them: `charset_types`,
/// `gzip_types` and `ssi_types` are matched against the media type alone, and nginx's header
/// filter writes `Content-Type: text/html; charset=utf-8`.
pub fn send_as(
    req: &mut Request,
    status: u16,
    media_type: ngx_str_t,
    charset: Option<ngx_str_t>,
    body: Body<'_>,
) -> Status {
    let len = match body {
        Body::Static(text) | Body::Copied(text) => text.len(),
    };
    let out = &mut req.as_mut().headers_out;
    out.status = ngx_uint_t::from(status);
    out.content_type = media_type;
    out.content_type_len = media_type.len;
    if let Some(charset) = charset {
        out.charset = charset;
    }
    out.content_length_n = len as i64;

    let rc = req.send_header();
    if rc == Status::NGX_ERROR || rc > Status::NGX_OK || crate::flags::header_only(req.as_ref()) {
        return rc;
    }
    // The one buffer is the response's last.
    fn last(mut buf: impl Buffer) -> *mut ngx_buf_t {
        buf.set_last_buf(true);
        buf.set_last_in_chain(true);
        buf.as_ngx_buf_mut()
    }
    let pool = req.pool();
    let buf = match body {
        Body::Static(text) => pool.create_buffer_from_static_str(text).map(last),
        Body::Copied(text) => pool.create_buffer_from_str(text).map(last),
    };
    match buf {
        Some(buf) => req.output_filter(&mut ngx_chain_t { buf, next: ptr::null_mut() }),
        None => Status::NGX_ERROR,
    }
}

/// A value kept with a request in its pool, beyond what its module context keeps (an
/// internal redirect wipes contexts, not the pool; nginx's realip module does the same): the
/// pool's cleanup entry holds it, and `CLEANUP`, the entry's handler, names its type (and
/// drops it with the pool, where it has something to drop).
pub trait Kept: Sized {
    /// A function of this type's alone: code no other function has (an empty one is folded
    /// into others by the compiler), so that its address tells this type's entries.
    const CLEANUP: unsafe extern "C" fn(*mut c_void);
}

/// Keeps `value` with the request until its pool is freed; `None` when nginx cannot allocate.
pub fn keep<T: Kept>(req: &mut Request, value: T) -> Option<NonNull<T>> {
    // SAFETY: the request's pool is live; the entry's data is allocated for a `T`, written
    // here, and only read as one (see `kept`) until the pool frees it.
    unsafe {
        let cln = ngx_pool_cleanup_add(req.as_ref().pool, size_of::<T>()).as_mut()?;
        let data = cln.data.cast::<T>();
        data.write(value);
        cln.handler = Some(T::CLEANUP);
        NonNull::new(data)
    }
}

/// The value of type `T` kept with the request, the last if several.
pub fn kept<T: Kept>(req: &Request) -> Option<&T> {
    let mut cln = req.pool().as_ref().cleanup;
    // SAFETY: the pool's cleanup list is null-terminated; an entry whose handler is
    // `T::CLEANUP` holds a `T` (see `keep`), as long as the request.
    while let Some(entry) = unsafe { cln.as_ref() } {
        if entry.handler.map(|h| h as *const ()) == Some(T::CLEANUP as *const ()) {
            // SAFETY: as above.
            return unsafe { entry.data.cast::<T>().as_ref() };
        }
        cln = entry.next;
    }
    None
}
