//! The module's variables: `$flash_sale_status` (the outcome's name, for `log_format`,
//! `add_header` and error pages), `$flash_sale_seq` (the permit's number) and
//! `$flash_sale_token` (the permit, signed for the checkout), `$flash_sale_position` and
//! `$flash_sale_wait` (a waiter's place in line and his wait in seconds).

use nginx_sys::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_request_t, ngx_http_variable_value_t as Value,
    ngx_int_t, ngx_str_t, ngx_uint_t, NGX_HTTP_VAR_NOCACHEABLE,
};
use ngx::core::Status;
use ngx::http::Request;

use crate::conf::LocConf;
use crate::gate::verdict::{recorded, Decision};
use crate::http::{pool_copy, pool_number, static_str};
use crate::token;

/// What a variable's value is made from: the request, the decision of its main request, and
/// the slot to fill.
type Getter = fn(&mut Request, Option<Decision>, &mut Value) -> Status;

/// The variables, by name; nginx calls [`get`] with a variable's place here.
const VARIABLES: [(&str, Getter); 5] = [
    ("flash_sale_status", status),
    ("flash_sale_seq", seq),
    ("flash_sale_token", token),
    ("flash_sale_position", position),
    ("flash_sale_wait", wait),
];

/// Declares the module's variables (preconfiguration).
pub unsafe extern "C" fn register(cf: *mut ngx_conf_t) -> ngx_int_t {
    crate::ffi::guard(Status::NGX_ERROR.0, || {
        for (index, (name, _)) in VARIABLES.iter().enumerate() {
            let mut name = static_str(name);
            let flags = NGX_HTTP_VAR_NOCACHEABLE as ngx_uint_t;
            // SAFETY: `cf` is valid during preconfiguration; nginx copies the name.
            let Some(var) = (unsafe { ngx_http_add_variable(cf, &mut name, flags).as_mut() })
            else {
                return Status::NGX_ERROR.0;
            };
            var.get_handler = Some(get);
            var.data = index;
        }
        Status::NGX_OK.0
    })
}

/// Fills `v` with `bytes`, which outlive the request; not found for `None`.
fn set_value(v: &mut Value, bytes: Option<&[u8]>) {
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

/// `$flash_sale_status`: not found until the gate has decided, like `$limit_req_status`.
fn status(_: &mut Request, decision: Option<Decision>, v: &mut Value) -> Status {
    set_value(v, decision.map(|d| d.outcome.name(d.dry_run).as_bytes()));
    Status::NGX_OK
}

/// `$flash_sale_seq`: the number of the permit the request passed with; not found otherwise.
fn seq(req: &mut Request, decision: Option<Decision>, v: &mut Value) -> Status {
    set_number(req, v, decision.map(|d| d.seq).filter(|&seq| seq != 0))
}

/// `$flash_sale_token`: the token of the permit the request passed with, signed with the
/// location's `flash_sale_token_secret`; not found without a permit, a secret, or a UTF-8
/// key. Computed only where the variable is used.
fn token(req: &mut Request, decision: Option<Decision>, v: &mut Value) -> Status {
    let secret = LocConf::of(req).and_then(|lcf| lcf.token_secret);
    let (Some(decision), Some(secret)) = (decision.filter(|d| d.outcome.passes()), secret) else {
        v.set_not_found(1);
        return Status::NGX_OK;
    };
    // SAFETY: the key lives in the main request's memory, as long as the request.
    let (zone, key) = (decision.zone.name(), unsafe { decision.key() });
    let (Ok(zone), Ok(buyer), Ok(item)) =
        (zone.to_str(), core::str::from_utf8(key.key), core::str::from_utf8(key.item))
    else {
        v.set_not_found(1);
        return Status::NGX_OK;
    };
    let claims = token::Claims {
        zone,
        key: buyer,
        item,
        seq: decision.seq,
        expires_ms: decision.expires_ms,
    };
    let Some(signed) = token::sign(secret.as_bytes(), &claims) else {
        return Status::NGX_ERROR;
    };
    set_copy(v, pool_copy(req, signed.as_bytes()))
}

/// `$flash_sale_position`: the waiters ahead of a QUEUED buyer who are still to be called in;
/// not found otherwise.
fn position(req: &mut Request, decision: Option<Decision>, v: &mut Value) -> Status {
    set_number(req, v, decision.and_then(|d| d.waiting).map(|w| w.position))
}

/// `$flash_sale_wait`: a QUEUED buyer's estimated wait, in whole seconds; not found otherwise.
fn wait(req: &mut Request, decision: Option<Decision>, v: &mut Value) -> Status {
    set_number(req, v, decision.and_then(|d| d.waiting).map(|w| w.wait_seconds))
}

/// Fills `v` with `number`'s digits; not found for `None`.
fn set_number(req: &mut Request, v: &mut Value, number: Option<u64>) -> Status {
    match number {
        Some(number) => set_copy(v, pool_number(req, number)),
        None => {
            v.set_not_found(1);
            Status::NGX_OK
        }
    }
}

/// Every variable's getter: `data` is its place in [`VARIABLES`]. The request, the decision
/// of its main request and the value slot are made references once here; a panic is an
/// error.
unsafe extern "C" fn get(r: *mut ngx_http_request_t, v: *mut Value, data: usize) -> ngx_int_t {
    let Some(&(_, body)) = VARIABLES.get(data) else {
        return Status::NGX_ERROR.0;
    };
    // SAFETY: nginx passes a live request and a value slot to fill; a request's main request
    // is live as long as it.
    let (main, v) = unsafe { ((*r).main, &mut *v) };
    // SAFETY: as above.
    let decision = unsafe { crate::ffi::with_request(main, None, recorded) };
    // SAFETY: as above.
    unsafe { crate::ffi::with_request(r, Status::NGX_ERROR, |req| body(req, decision, v)) }.0
}

/// Fills `v` with `copy`, made in the request's pool; an error when nginx could not make it.
fn set_copy(v: &mut Value, copy: Option<ngx_str_t>) -> Status {
    match copy {
        Some(copy) => {
            set_value(v, Some(copy.as_bytes()));
            Status::NGX_OK
        }
        None => Status::NGX_ERROR,
    }
}
