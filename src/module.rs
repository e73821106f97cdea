//! The module's definition: the `ngx_module_t` nginx loads, its context and its commands.

use core::ffi::{c_char, c_void};
use core::ptr::{self, addr_of, addr_of_mut};

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_http_module_t, ngx_module_t, ngx_str_t, ngx_uint_t,
    NGX_CONF_1MORE, NGX_CONF_2MORE, NGX_CONF_FLAG, NGX_CONF_NOARGS, NGX_CONF_TAKE1,
    NGX_CONF_TAKE12, NGX_CONF_TAKE123, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET,
    NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF,
};
use ngx::http::{HttpModule, HttpModuleMainConf};
use ngx::ngx_string;

use crate::conf::{self, FlashSaleModule};
use crate::{endpoints, gate, variables};

impl HttpModule for FlashSaleModule {
    fn module() -> &'static ngx_module_t {
        // SAFETY: nginx writes the module's indexes once, before any request or directive
        // runs.
        unsafe { &*addr_of!(ngx_http_flash_sale_module) }
    }
}

/// The module's directives, and their handlers (in `conf`, and in `endpoints` for the API's
/// and the metrics' locations).
const MAIN: ngx_uint_t = NGX_HTTP_MAIN_CONF as ngx_uint_t;
const ANY: ngx_uint_t = (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF) as ngx_uint_t;
const LOC: ngx_uint_t = NGX_HTTP_LOC_CONF as ngx_uint_t;
const TAKE1: ngx_uint_t = NGX_CONF_TAKE1 as ngx_uint_t;
const FLAG: ngx_uint_t = NGX_CONF_FLAG as ngx_uint_t;

const fn command(
    name: ngx_str_t,
    type_: ngx_uint_t,
    set: unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char,
    conf: usize,
) -> ngx_command_t {
    ngx_command_t { name, type_, set: Some(set), conf, offset: 0, post: ptr::null_mut() }
}

static mut COMMANDS: [ngx_command_t; 22] = [
    command(
        ngx_string!("flash_sale_zone"),
        MAIN | NGX_CONF_2MORE as ngx_uint_t,
        conf::set_zone,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("flash_sale_redis"),
        MAIN | NGX_CONF_2MORE as ngx_uint_t,
        conf::set_redis,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(ngx_string!("flash_sale"), ANY | TAKE1, conf::set_gate, NGX_HTTP_LOC_CONF_OFFSET),
    command(
        ngx_string!("flash_sale_start"),
        ANY | TAKE1,
        conf::set_start,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(ngx_string!("flash_sale_end"), ANY | TAKE1, conf::set_end, NGX_HTTP_LOC_CONF_OFFSET),
    command(
        ngx_string!("flash_sale_block_ratio"),
        ANY | TAKE1,
        conf::set_block_ratio,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("flash_sale_max_permits"),
        ANY | TAKE1,
        conf::set_max_permits,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(ngx_string!("flash_sale_item"), ANY | TAKE1, conf::set_item, NGX_HTTP_LOC_CONF_OFFSET),
    command(
        ngx_string!("flash_sale_max_per_buyer"),
        ANY | TAKE1,
        conf::set_max_per_buyer,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("flash_sale_reject_status"),
        ANY | TAKE1,
        conf::set_reject_status,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("flash_sale_permit_ttl"),
        ANY | TAKE1,
        conf::set_permit_ttl,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("flash_sale_dry_run"),
        ANY | FLAG,
        conf::set_dry_run,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("flash_sale_log_level"),
        ANY | TAKE1,
        conf::set_log_level,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("flash_sale_draw"),
        ANY | NGX_CONF_TAKE12 as ngx_uint_t,
        conf::set_draw,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("flash_sale_prequeue"),
        ANY | TAKE1,
        conf::set_prequeue,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("flash_sale_release_header"),
        ANY | TAKE1,
        conf::set_release_header,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("flash_sale_token_secret"),
        ANY | TAKE1,
        conf::set_token_secret,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("flash_sale_verify"),
        ANY | NGX_CONF_TAKE123 as ngx_uint_t,
        conf::set_verify,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("flash_sale_queue"),
        ANY | NGX_CONF_1MORE as ngx_uint_t,
        conf::set_queue,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("flash_sale_api"),
        LOC | NGX_CONF_NOARGS as ngx_uint_t,
        endpoints::set_api,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("flash_sale_metrics"),
        LOC | NGX_CONF_NOARGS as ngx_uint_t,
        endpoints::set_metrics,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    ngx_command_t::empty(),
];

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(variables::register),
    postconfiguration: Some(gate::register),
    create_main_conf: Some(FlashSaleModule::create_main_conf),
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(FlashSaleModule::create_loc_conf),
    merge_loc_conf: Some(conf::merge_loc_conf),
};

#[cfg(feature = "export-modules")]
ngx::ngx_modules!(ngx_http_flash_sale_module);

#[used]
#[allow(non_upper_case_globals)]
#[cfg_attr(not(feature = "export-modules"), no_mangle)]
pub static mut ngx_http_flash_sale_module: ngx_module_t = ngx_module_t {
    ctx: addr_of!(MODULE_CTX) as *mut c_void,
    commands: addr_of_mut!(COMMANDS) as *mut _,
    type_: NGX_HTTP_MODULE as _,
    exit_master: Some(exit_master),
    ..ngx_module_t::default()
};

/// When nginx stops, each zone's state file is compacted, with the zone's counters: what every
/// process wrote to it is kept (another generation's too, during a binary upgrade).
unsafe extern "C" fn exit_master(cycle: *mut ngx_cycle_t) {
    crate::ffi::guard((), || {
        // SAFETY: nginx passes its cycle, whose configuration is still in place.
        let Some(main) = (unsafe { cycle.as_ref() }).and_then(FlashSaleModule::main_conf) else {
            return;
        };
        // SAFETY: as above.
        let log = unsafe { (*cycle).log };
        for zone in &main.zones {
            zone.compact(log);
        }
    })
}
