#![deny(clippy::undocumented_unsafe_blocks)]
//! ngx_http_flash_sale_module: a flash-sale gate for nginx.
//!
//! The layers, from plain Rust to raw nginx; imports point down them:
//! - [`sale`]: the decision (window, draw, cap) and its types; [`line`]: the waiting line's
//!   pace and places; [`parse`]: directive values;
//!   [`api`], [`metrics`], [`state`]: the admin API's requests and answers, the metrics' text,
//!   the state file's records; [`token`]: signed permits for the checkout; [`remote`]: a sale
//!   kept in Redis (its scripts, replies and failures); [`health`]: a dependency's health;
//!   [`link`]: what a host knows of a sale in Redis; [`page`]: what a rejected buyer is told
//!   (the text, the HTML page or the JSON his `Accept` asks for). No FFI.
//! - [`zone`]: the permit table in shared memory, and `slab`: nginx's slab pool under it;
//!   [`journal`]: the state file and its lock file on disk.
//! - The nginx glue: `module` (the module's static and its directive table) and `conf` (the
//!   directives' handlers, zone init and reload: the one pair that imports each other);
//!   `ffi`: the wrappers at every `extern "C"` entry, which make nginx's raw pointers
//!   references once and keep panics out of nginx; `http`: nginx's clock, the answers the
//!   module sends, and values kept with a request; `gate/`: the precontent gate (`verdict`, `local`, `redis`, `verify`);
//!   `release`: the release-header filter; `variables`; `offload`: Redis's round trips on
//!   nginx's thread pool; `endpoints`: the admin API and metrics handlers.

pub mod api;
pub mod health;
pub mod journal;
pub mod line;
pub mod link;
pub mod metrics;
pub mod page;
pub mod parse;
pub mod remote;
pub mod sale;
pub mod state;
pub mod token;
pub mod zone;

// Property tests over every parser that reads untrusted input.
#[cfg(test)]
mod hostile_input;

// The glue calls into nginx, whose symbols exist only inside an nginx process, so the unit
// tests build without it; the t/ suite tests it inside nginx.
#[cfg(not(test))]
mod conf;
#[cfg(not(test))]
mod endpoints;
#[cfg(not(test))]
mod ffi;
#[cfg(not(test))]
mod flags;
#[cfg(not(test))]
mod gate;
#[cfg(not(test))]
mod http;
#[cfg(not(test))]
mod module;
#[cfg(not(test))]
mod offload;
#[cfg(not(test))]
mod release;
#[cfg(not(test))]
mod slab;
#[cfg(not(test))]
mod variables;
