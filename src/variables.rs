//! The module's variables: `$flash_sale_status` (the outcome's name, for `log_format`,
//! `add_header` and error pages), `$flash_sale_seq` (the permit's number) and
//! `$flash_sale_token` (the permit, signed for the checkout).

use nginx_sys::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_request_t, ngx_http_variable_value_t, ngx_int_t,
    ngx_str_t, ngx_uint_t, NGX_ERROR, NGX_HTTP_VAR_NOCACHEABLE, NGX_OK,
};
use ngx::http::Request;
use ngx::ngx_string;

use crate::conf::LocConf;
use crate::gate::verdict::recorded;
use crate::token;

type Getter = unsafe extern "C" fn(
    *mut ngx_http_request_t,
    *mut ngx_http_variable_value_t,
    usize,
) -> ngx_int_t;

/// Declares the module's variables (preconfiguration).
pub unsafe extern "C" fn register(cf: *mut ngx_conf_t) -> ngx_int_t {
    crate::ffi::guard(nginx_sys::NGX_ERROR as ngx_int_t, || {
        let variables: [(ngx_str_t, Getter); 3] = [
            (ngx_string!("flash_sale_status"), status_variable),
            (ngx_string!("flash_sale_seq"), seq_variable),
            (ngx_string!("flash_sale_token"), token_variable),
        ];
        for (mut name, getter) in variables {
            let flags = NGX_HTTP_VAR_NOCACHEABLE as ngx_uint_t;
            // SAFETY: `cf` is valid during preconfiguration; nginx copies the name.
            let Some(var) = (unsafe { ngx_http_add_variable(cf, &mut name, flags).as_mut() })
            else {
                return NGX_ERROR as ngx_int_t;
            };
            var.get_handler = Some(getter);
        }
        NGX_OK as ngx_int_t
    })
}

/// Fills `v` with `bytes`, which outlive the request; not found for `None`.
fn set_value(v: &mut ngx_http_variable_value_t, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            v.data = bytes.as_ptr().cast_mut();
            v.set_len(bytes.len() as _);
            v.set_valid(1);
            v.set_no_cacheable(0);
            v.set_not_found(0);
        }
        None => v.set_not_found(1),
    }
}

/// Not found until the gate has decided, like `$limit_req_status`.
unsafe extern "C" fn status_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    crate::ffi::guard(nginx_sys::NGX_ERROR as ngx_int_t, || {
        // SAFETY: nginx passes a live request and a value slot to fill.
        let (decision, v) = unsafe { (recorded((*r).main), &mut *v) };
        set_value(v, decision.map(|d| d.outcome.name(d.dry_run).as_bytes()));
        NGX_OK as ngx_int_t
    })
}

/// The number of the permit the request passed with; not found otherwise.
unsafe extern "C" fn seq_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    crate::ffi::guard(nginx_sys::NGX_ERROR as ngx_int_t, || {
        // SAFETY: nginx passes a live request and a value slot to fill.
        let (decision, v) = unsafe { (recorded((*r).main), &mut *v) };
        let Some(seq) = decision.map(|d| d.seq).filter(|&seq| seq != 0) else {
            v.set_not_found(1);
            return NGX_OK as ngx_int_t;
        };
        let digits = seq.to_string();
        // SAFETY: the copy lives in the request's pool, as long as the value is used.
        match unsafe { ngx_str_t::from_bytes((*r).pool, digits.as_bytes()) } {
            Some(copy) => set_value(v, Some(copy.as_bytes())),
            None => return NGX_ERROR as ngx_int_t,
        }
        NGX_OK as ngx_int_t
    })
}

/// The token of the permit the request passed with, signed with the location's
/// `flash_sale_token_secret`; not found without a permit, a secret, or a UTF-8 key.
/// Computed only where the variable is used.
unsafe extern "C" fn token_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    crate::ffi::guard(nginx_sys::NGX_ERROR as ngx_int_t, || {
        // SAFETY: nginx passes a live request and a value slot to fill.
        let (decision, v) = unsafe { (recorded((*r).main), &mut *v) };
        // SAFETY: as above.
        let req = unsafe { Request::from_ngx_http_request(r) };
        let secret = LocConf::of(req).and_then(|lcf| lcf.token_secret);
        let (Some(decision), Some(secret)) = (decision.filter(|d| d.outcome.passes()), secret)
        else {
            v.set_not_found(1);
            return NGX_OK as ngx_int_t;
        };
        // SAFETY: the zone lives as long as the cycle, the key as long as the main request.
        let (zone, key) = unsafe { (decision.zone.as_ref().name(), decision.key()) };
        let (Ok(zone), Ok(key)) = (zone.to_str(), core::str::from_utf8(key)) else {
            v.set_not_found(1);
            return NGX_OK as ngx_int_t;
        };
        let claims =
            token::Claims { zone, key, seq: decision.seq, expires_ms: decision.expires_ms };
        let Some(signed) = token::sign(secret.as_bytes(), &claims) else {
            return NGX_ERROR as ngx_int_t;
        };
        // SAFETY: the copy lives in the request's pool, as long as the value is used.
        match unsafe { ngx_str_t::from_bytes((*r).pool, signed.as_bytes()) } {
            Some(copy) => set_value(v, Some(copy.as_bytes())),
            None => return NGX_ERROR as ngx_int_t,
        }
        NGX_OK as ngx_int_t
    })
}
