/*
 * The request's flags, read and written by C: they are bitfields of ngx_http_request_t, and
 * the bindings' bitfield accessors are not to be trusted with them. bindgen 0.72 (which
 * nginx-sys 0.5 uses) lays out a run of bitfields wrongly when it starts at an offset that
 * is not a multiple of its type's alignment (rust-lang/rust-bindgen#3384), and from nginx
 * 1.29 on, ngx_http_request_t's flags follow an in_port_t (`port`): the accessors then read
 * and write other bits than nginx's (`header_only` is bit 78 of the run to bindgen and bit
 * 80 to the C compiler). The C compiler knows where they are.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


ngx_uint_t
ngx_http_flash_sale_r_header_only(const ngx_http_request_t *r)
{
    return r->header_only;
}


ngx_uint_t
ngx_http_flash_sale_r_internal(const ngx_http_request_t *r)
{
    return r->internal;
}


ngx_uint_t
ngx_http_flash_sale_r_error_page(const ngx_http_request_t *r)
{
    return r->error_page;
}


ngx_uint_t
ngx_http_flash_sale_r_uri_changes(const ngx_http_request_t *r)
{
    return r->uri_changes;
}


ngx_uint_t
ngx_http_flash_sale_r_count(const ngx_http_request_t *r)
{
    return r->count;
}


void
ngx_http_flash_sale_r_set_count(ngx_http_request_t *r, ngx_uint_t count)
{
    r->count = count;
}


ngx_uint_t
ngx_http_flash_sale_r_blocked(const ngx_http_request_t *r)
{
    return r->blocked;
}


void
ngx_http_flash_sale_r_set_blocked(ngx_http_request_t *r, ngx_uint_t blocked)
{
    r->blocked = blocked;
}


void
ngx_http_flash_sale_r_set_aio(ngx_http_request_t *r, ngx_uint_t aio)
{
    r->aio = aio;
}


void
ngx_http_flash_sale_r_set_keepalive(ngx_http_request_t *r, ngx_uint_t keepalive)
{
    r->keepalive = keepalive;
}


void
ngx_http_flash_sale_r_set_request_body_in_single_buf(ngx_http_request_t *r, ngx_uint_t on)
{
    r->request_body_in_single_buf = on;
}
