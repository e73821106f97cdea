//! Passes what nginx-sys learned about the nginx source tree on to the module's code.
//!
//! nginx-sys exports the version and features of the tree it was built against as `DEP_NGINX_*`
//! variables; they reach this script because `nginx-sys` is a direct dependency.

use std::env;

fn main() {
    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION_NUMBER");
    println!("cargo::rustc-check-cfg=cfg(ngx_table_elt_next)");
    let version: u64 =
        env::var("DEP_NGINX_VERSION_NUMBER").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    // nginx 1.23.0 chained repeated headers through `ngx_table_elt_t.next`.
    if version >= 1_023_000 {
        println!("cargo::rustc-cfg=ngx_table_elt_next");
    }
    // `headers_in.accept` exists where nginx defines NGX_HTTP_HEADERS: with HTTP/2 or
    // `--with-compat` (nginx's auto/modules).
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES");
    println!("cargo::rustc-check-cfg=cfg(ngx_http_headers)");
    let features = env::var("DEP_NGINX_FEATURES").unwrap_or_default();
    if features.split(',').any(|f| f == "compat" || f == "http_v2") {
        println!("cargo::rustc-cfg=ngx_http_headers");
    }

    // The request's flags, bitfields that the bindings misplace from nginx 1.29 on, are read
    // and written by C compiled against the same nginx tree (src/request_flags.c, src/flags.rs).
    println!("cargo::rerun-if-changed=src/request_flags.c");
    println!("cargo::rerun-if-env-changed=DEP_NGINX_INCLUDE");
    println!("cargo::rerun-if-env-changed=DEP_NGINX_CFLAGS");
    let mut c = cc::Build::new();
    c.file("src/request_flags.c");
    if let Some(include) = env::var_os("DEP_NGINX_INCLUDE") {
        for dir in env::split_paths(&include) {
            c.include(dir);
        }
    }
    for flag in env::var("DEP_NGINX_CFLAGS").unwrap_or_default().split_whitespace() {
        c.flag(flag);
    }
    c.compile("ngx_http_flash_sale_flags");

    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
        // nginx's symbols are resolved when the module is loaded, not when it is linked.
        println!("cargo::rustc-link-arg=-undefined");
        println!("cargo::rustc-link-arg=dynamic_lookup");
    }
}
