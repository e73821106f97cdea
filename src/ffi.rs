//! The edge between nginx and Rust: every `extern "C"` function nginx calls goes through one
//! of the wrappers here, which turn nginx's raw pointers into references once ([`handle`] and
//! [`with_request`] for a request's handlers, [`directive`] for a directive's, [`zone_init`]
//! for a shared zone's) and run the body through [`guard`], so that a panic never unwinds into nginx's C
//! frames (which aborts the process: a worker, or the master while it reads the
//! configuration).

use core::ffi::{c_char, c_void, CStr};
use core::fmt;
use core::ptr::NonNull;
use std::panic::{catch_unwind, AssertUnwindSafe};

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_http_core_run_phases, ngx_http_finalize_request,
    ngx_http_request_t, ngx_int_t, ngx_shm_zone_t, ngx_str_t, NGX_LOG_EMERG,
};
use ngx::core::{Pool, Status, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::http::{HTTPStatus, Request};
use ngx::ngx_conf_log_error;

/// Runs `body`; a panic in it gives `on_panic` instead, what the entry answers nginx when it
/// fails (`NGX_CONF_ERROR`, `NGX_ERROR`, a 500).
pub fn guard<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(on_panic)
}

/// Runs the `body` of a handler nginx calls with a request (a filter, a variable's getter, and
/// under [`handle`] every handler that answers the request) with that request as a
/// reference, made once here; a panic, or a null request, gives `on_panic`.
///
/// # Safety
/// `r` is null or a request nginx handed to the caller, live until the body returns, and the
/// body does not free it (see [`Next`]). While the body runs, nginx may call back into the
/// module with the same request (its header filters, a variable's getter, a body read at
/// once): each such entry makes a reference of its own for its call, as ngx's own `Request`
/// methods that call nginx have it, and the body's is not used until that call returns.
pub unsafe fn with_request<T>(
    r: *mut ngx_http_request_t,
    on_panic: T,
    body: impl FnOnce(&mut Request) -> T,
) -> T {
    if r.is_null() {
        return on_panic;
    }
    // SAFETY: see the function's contract.
    let req = unsafe { Request::from_ngx_http_request(r) };
    guard(on_panic, || body(req))
}

/// What nginx is to do with a request once the module's handler is done with it. Finalizing
/// may free the request, and running its phases or its write handler may end it: [`handle`]
/// does them last, when no reference of the module's to the request is left.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Return this to nginx: a phase or content handler's answer.
    Return(Status),
    /// Finalize the request with this status, then return `NGX_DONE`.
    Finalize(Status),
    /// Run the request's phases on from the handler after this one: a precontent handler's
    /// `NGX_DECLINED`, given after the request waited.
    RunPhases,
    /// Hand the request to its write event handler, which nginx set while it waited: the
    /// request is being ended.
    WriteHandler,
    /// Nothing more to do.
    Done,
}

impl From<Status> for Next {
    fn from(status: Status) -> Next {
        Next::Return(status)
    }
}

impl From<HTTPStatus> for Next {
    fn from(status: HTTPStatus) -> Next {
        Next::Return(status.into())
    }
}

/// The entry of a handler that answers a request: [`with_request`], then what the body said
/// is next; returns what the handler returns to nginx (`NGX_DONE` after anything but
/// [`Next::Return`]).
///
/// # Safety
/// As for [`with_request`].
pub unsafe fn handle(
    r: *mut ngx_http_request_t,
    on_panic: Next,
    body: impl FnOnce(&mut Request) -> Next,
) -> ngx_int_t {
    // SAFETY: see the function's contract.
    let next = unsafe { with_request(r, on_panic, body) };
    if r.is_null() {
        return Status::NGX_ERROR.0;
    }
    // SAFETY: the request is live (see the contract), and the body's reference is gone.
    unsafe {
        match next {
            Next::Return(status) => return status.0,
            Next::Finalize(status) => ngx_http_finalize_request(r, status.0),
            Next::RunPhases => {
                (*r).phase_handler += 1;
                ngx_http_core_run_phases(r);
            }
            Next::WriteHandler => {
                if let Some(handler) = (*r).write_event_handler {
                    handler(r);
                }
            }
            Next::Done => {}
        }
    }
    Status::NGX_DONE.0
}

// Directive handlers and shared-zone initialisation: their raw pointers become references once,
// here, and their answers become nginx's.

/// Why a directive refuses the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfError {
    /// The reason is in the error log already (or nginx's function that failed logged it).
    Logged,
    /// A reason nginx logs itself, after the directive's name: `"NAME" directive is duplicate`.
    Says(&'static CStr),
}

/// What a directive handler's body answers: its settings taken, or refused.
pub type ConfResult = Result<(), ConfError>;

/// The refusal of a directive that was already set at this level.
pub const DUPLICATE: ConfError = ConfError::Says(c"is duplicate");

/// A directive being parsed, as its handler sees it: its words, the configuration's pool and
/// cycle, and the error log with the file and line nginx adds.
pub struct Directive<'a> {
    cf: &'a mut ngx_conf_t,
    args: &'a [ngx_str_t],
    name: ngx_str_t,
    pool: Pool,
    cycle: NonNull<ngx_cycle_t>,
    prefix: ngx_str_t,
    conf_prefix: ngx_str_t,
}

impl<'a> Directive<'a> {
    /// The directive's words, its name first (nginx checked their count against the command).
    pub fn args(&self) -> &'a [ngx_str_t] {
        self.args
    }

    /// The directive's name, as its command declares it.
    pub fn name(&self) -> ngx_str_t {
        self.name
    }

    /// The cycle's pool: what is allocated in it lives as long as the configuration.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A copy of `bytes` in the cycle's pool; `None` when it is out of memory.
    pub fn copy(&self, bytes: &[u8]) -> Option<ngx_str_t> {
        // SAFETY: the pool is the cycle's, valid for as long as this directive is parsed.
        unsafe { ngx_str_t::from_bytes(self.pool.as_ptr(), bytes) }
    }

    /// The cycle being configured.
    pub fn cycle(&self) -> NonNull<ngx_cycle_t> {
        self.cycle
    }

    /// nginx's prefix (`-p`).
    pub fn prefix(&self) -> ngx_str_t {
        self.prefix
    }

    /// The directory of nginx's configuration file, which relative file names in it start from.
    pub fn conf_prefix(&self) -> ngx_str_t {
        self.conf_prefix
    }

    /// The configuration being parsed, for nginx's functions that take it.
    pub fn conf(&mut self) -> &mut ngx_conf_t {
        self.cf
    }

    /// Logs `message` at `emerg`, as nginx logs a directive's errors: with the configuration
    /// file and line. Gives the refusal to return.
    pub fn emerg(&mut self, message: fmt::Arguments<'_>) -> ConfError {
        ngx_conf_log_error!(NGX_LOG_EMERG, &mut *self.cf, "{}", message);
        ConfError::Logged
    }
}

/// The entry of a directive handler: `body` gets the directive and the module's configuration
/// `conf` points to, and a panic in it refuses the configuration (`NGX_CONF_ERROR`).
///
/// # Safety
/// The arguments are those nginx passes to the handler of one of this module's commands, whose
/// slot (`NGX_HTTP_MAIN_CONF_OFFSET`, `NGX_HTTP_LOC_CONF_OFFSET`) holds a `C`.
pub unsafe fn directive<C>(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
    body: impl FnOnce(&mut Directive<'_>, &mut C) -> ConfResult,
) -> *mut c_char {
    guard(NGX_CONF_ERROR, || {
        // SAFETY: nginx's contract with a handler during configuration parsing, which is
        // single-threaded: `cf` is the configuration being parsed, `cmd` the module's command,
        // and `conf` the module's configuration of the level the command's slot names, a `C`
        // (see the function's contract); each is valid for the call, and none overlaps another.
        let (cf, cmd, conf) = unsafe { (cf.as_mut(), cmd.as_ref(), conf.cast::<C>().as_mut()) };
        let (Some(cf), Some(cmd), Some(conf)) = (cf, cmd, conf) else {
            return NGX_CONF_ERROR;
        };
        // SAFETY: nginx fills `cf->args`, an array of `ngx_str_t`, with the directive's words
        // before calling its handler, and leaves them alone until the handler returns.
        let Some(args) = (unsafe { cf.args.as_ref().map(|args| args.as_slice::<ngx_str_t>()) })
        else {
            return NGX_CONF_ERROR;
        };
        let (Some(cycle), Some(pool)) = (NonNull::new(cf.cycle), NonNull::new(cf.pool)) else {
            return NGX_CONF_ERROR;
        };
        // SAFETY: `cf->cycle` is the cycle being configured, its prefixes set before parsing.
        let (prefix, conf_prefix) = unsafe { (cycle.as_ref().prefix, cycle.as_ref().conf_prefix) };
        // SAFETY: `cf->pool` is the cycle's pool, valid as long as the configuration.
        let pool = unsafe { Pool::from_ngx_pool(pool.as_ptr()) };
        let mut directive =
            Directive { cf, args, name: cmd.name, pool, cycle, prefix, conf_prefix };
        match body(&mut directive, conf) {
            Ok(()) => NGX_CONF_OK,
            Err(ConfError::Logged) => NGX_CONF_ERROR,
            Err(ConfError::Says(reason)) => reason.as_ptr().cast_mut(),
        }
    })
}

/// The entry of a shared zone's `init`: `body` gets the zone, the module's data in it (a `C`),
/// and whether the zone's memory came from the previous cycle (`old_data` set, or the memory
/// already existed); `Err` or a panic is `NGX_ERROR`.
///
/// # Safety
/// The arguments are those nginx passes to the `init` of a shared zone whose `data` this module
/// set to a `C`, with the zone's memory mapped and its slab pool initialised.
pub unsafe fn zone_init<C>(
    shm_zone: *mut ngx_shm_zone_t,
    old_data: *mut c_void,
    body: impl FnOnce(&ngx_shm_zone_t, &mut C, bool) -> Result<(), ()>,
) -> ngx_int_t {
    guard(Status::NGX_ERROR.into(), || {
        // SAFETY: nginx passes the zone it initialises, valid for the cycle.
        let Some(zone) = (unsafe { shm_zone.as_ref() }) else {
            return Status::NGX_ERROR.into();
        };
        // SAFETY: the zone's `data` is a `C` (see the function's contract) outside the zone's
        // own structure, and nothing else uses it while nginx initialises the zones.
        let Some(data) = (unsafe { zone.data.cast::<C>().as_mut() }) else {
            return Status::NGX_ERROR.into();
        };
        let reused = !old_data.is_null() || zone.shm.exists != 0;
        match body(zone, data, reused) {
            Ok(()) => Status::NGX_OK.into(),
            Err(()) => Status::NGX_ERROR.into(),
        }
    })
}
