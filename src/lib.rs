#![deny(clippy::undocumented_unsafe_blocks)]
//! ngx_http_flash_sale_module: a flash-sale gate for nginx.
//!
//! The layers, from plain Rust to raw nginx:
//! - [`sale`]: the decision (window, draw, cap); [`parse`]: directive values; [`api`],
//!   [`metrics`], [`state`]: the admin API's requests and answers, the metrics' text, the state
//!   file's records; [`token`]: signed permits for the checkout; [`remote`]: a sale kept in
//!   Redis (its scripts, replies and the link's health). No FFI.
//! - [`zone`]: the permit table in shared memory, and `slab`: nginx's slab pool under it;
//!   `journal`: the state file on disk.
//! - `module`, `conf`, `handler`, `variables`: the nginx glue (the module, directives, phase
//!   handler and header filter, variables); `redis_gate`: the gate's steps for a zone kept in
//!   Redis, and `offload`: their round trips on nginx's thread pool; `endpoints`: the admin API
//!   and metrics handlers.

pub mod api;
pub mod health;
pub mod journal;
pub mod link;
pub mod metrics;
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
