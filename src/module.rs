//! The module's definition: the `ngx_module_t` nginx loads, its context and its commands.

use core::ffi::c_void;
use core::ptr::{addr_of, addr_of_mut};

use nginx_sys::{ngx_cycle_t, ngx_http_module_t, ngx_module_t, NGX_HTTP_MODULE};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf};

use crate::conf::{self, LocConf, MainConf};
use crate::{gate, variables};

pub(crate) struct FlashSaleModule;

impl HttpModule for FlashSaleModule {
    fn module() -> &'static ngx_module_t {
        module()
    }
}

// SAFETY: the main configuration this module creates is a `MainConf`.
unsafe impl HttpModuleMainConf for FlashSaleModule {
    type MainConf = MainConf;
}

// SAFETY: the location configuration this module creates is a `LocConf`.
unsafe impl HttpModuleLocationConf for FlashSaleModule {
    type LocationConf = LocConf;
}

pub(crate) fn module() -> &'static ngx_module_t {
    // SAFETY: nginx writes the module's indexes once, before any request or directive runs.
    unsafe { &*addr_of!(ngx_http_flash_sale_module) }
}

/// The tag that marks the shared-memory zones as this module's.
pub(crate) fn module_tag() -> *mut c_void {
    addr_of_mut!(ngx_http_flash_sale_module).cast()
}

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
    commands: addr_of_mut!(conf::COMMANDS) as *mut _,
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
            // SAFETY: zone configurations live in the cycle's pool.
            unsafe { zone.as_ref() }.compact(log);
        }
    })
}
