//! `$flash_sale_status`: the outcome's name, for `log_format`, `add_header` and error pages.

use nginx_sys::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_request_t, ngx_http_variable_value_t, ngx_int_t,
    ngx_uint_t, NGX_ERROR, NGX_HTTP_VAR_NOCACHEABLE, NGX_OK,
};
use ngx::ngx_string;

use crate::handler::recorded;

/// Declares the module's variables (preconfiguration).
pub unsafe extern "C" fn register(cf: *mut ngx_conf_t) -> ngx_int_t {
    let mut name = ngx_string!("flash_sale_status");
    let flags = NGX_HTTP_VAR_NOCACHEABLE as ngx_uint_t;
    // SAFETY: `cf` is valid during preconfiguration; nginx copies the name.
    let Some(var) = (unsafe { ngx_http_add_variable(cf, &mut name, flags).as_mut() }) else {
        return NGX_ERROR as ngx_int_t;
    };
    var.get_handler = Some(status_variable);
    NGX_OK as ngx_int_t
}

/// Not found until the gate has decided, like `$limit_req_status`.
unsafe extern "C" fn status_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and a value slot to fill.
    let (outcome, v) = unsafe { (recorded((*r).main), &mut *v) };
    match outcome {
        Some(outcome) => {
            let name = outcome.as_str();
            v.data = name.as_ptr().cast_mut();
            v.set_len(name.len() as _);
            v.set_valid(1);
            v.set_no_cacheable(0);
            v.set_not_found(0);
        }
        None => v.set_not_found(1),
    }
    NGX_OK as ngx_int_t
}
