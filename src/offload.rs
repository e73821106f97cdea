//! Redis's round trips off the event loop: the request that needs one is suspended, the
//! command runs on one of nginx's thread pool threads, and the request goes on in its worker
//! when the reply is in. The worker serves other requests meanwhile.
//!
//! The suspended request is held as nginx holds one waiting for a thread's file read: its
//! main request's `blocked` count keeps it (and its memory) alive even if the client leaves.

use core::ffi::c_void;
use core::ptr::NonNull;
use std::panic::{catch_unwind, AssertUnwindSafe};

use nginx_sys::{
    ngx_event_t, ngx_http_request_t, ngx_http_run_posted_requests, ngx_int_t, ngx_log_t,
    ngx_thread_pool_t, ngx_thread_task_post, ngx_thread_task_t, NGX_OK,
};

use crate::remote::{self, Command, Reply, Settings};

/// What to do in the worker with Redis's reply to a request's round trip: called with the
/// request, which is live again, the command, its reply, and when it was asked (Unix ms).
pub type Done = unsafe fn(*mut ngx_http_request_t, &Command, Result<Reply, String>, i64);

/// What to do in the worker with Redis's reply to a round trip nobody waits for.
pub type Detached = Box<dyn FnOnce(&Command, Result<Reply, String>)>;

/// Where a reply goes.
enum Then {
    Request(NonNull<ngx_http_request_t>, Done),
    Detached(Detached),
}

/// One round trip: nginx's task, everything the thread needs, owned, and where its reply goes.
/// One allocation, freed when the reply has been handed over.
struct Job {
    task: ngx_thread_task_t,
    settings: Settings,
    zone: String,
    command: Command,
    reply: Option<Result<Reply, String>>,
    asked_ms: i64,
    then: Then,
}

/// Runs `command` for the request `r` on `threads`; `done` gets the reply. False when the task
/// could not be queued (nginx has logged why); the request is then not suspended.
///
/// # Safety
/// `r` is a live request, which its caller leaves waiting (`NGX_AGAIN`/`NGX_DONE`) on true.
pub unsafe fn post(
    r: *mut ngx_http_request_t,
    threads: NonNull<ngx_thread_pool_t>,
    settings: &Settings,
    zone: String,
    command: Command,
    done: Done,
) -> bool {
    let Some(request) = NonNull::new(r) else {
        return false;
    };
    if !queue(threads, settings, zone, command, Then::Request(request, done)) {
        return false;
    }
    // SAFETY: `r` is live; it stays so while blocked, until its reply has been handed over.
    unsafe {
        let main = &mut *(*r).main;
        main.set_blocked(main.blocked() + 1);
        (*r).set_aio(1);
    }
    true
}

/// Runs `command` on `threads` with no request waiting for it (a release by the backend, whose
/// response is already on its way; a refresh of the sale's settings); `done` gets the reply
/// in the worker.
pub fn post_detached(
    threads: NonNull<ngx_thread_pool_t>,
    settings: &Settings,
    zone: String,
    command: Command,
    done: impl FnOnce(&Command, Result<Reply, String>) + 'static,
) -> bool {
    queue(threads, settings, zone, command, Then::Detached(Box::new(done)))
}

fn queue(
    threads: NonNull<ngx_thread_pool_t>,
    settings: &Settings,
    zone: String,
    command: Command,
    then: Then,
) -> bool {
    let job = Box::into_raw(Box::new(Job {
        // SAFETY: nginx's task is plain data whose empty state is all zeroes, as
        // ngx_thread_task_alloc leaves it.
        task: unsafe { core::mem::zeroed() },
        settings: settings.clone(),
        zone,
        command,
        reply: None,
        asked_ms: crate::handler::now_ms(),
        then,
    }));
    // SAFETY: `job` is ours until the thread pool takes the task; if it does not, it is
    // given back here. `threads` is nginx's pool, which lives as long as the cycle.
    unsafe {
        let task = &mut (*job).task;
        task.ctx = job.cast();
        task.handler = Some(run_in_thread);
        task.event.data = job.cast();
        task.event.handler = Some(reply_in_worker);
        if ngx_thread_task_post(threads.as_ptr(), task) != NGX_OK as ngx_int_t {
            drop(Box::from_raw(job));
            return false;
        }
    }
    true
}

/// On a pool thread: the round trip itself. Touches the job alone, never the request.
unsafe extern "C" fn run_in_thread(data: *mut c_void, _log: *mut ngx_log_t) {
    // SAFETY: `queue` made `data` a job that nothing else touches until this returns and
    // nginx's thread pool hands the task back to the worker.
    let job = unsafe { &mut *data.cast::<Job>() };
    let reply =
        catch_unwind(AssertUnwindSafe(|| remote::run(&job.settings, &job.zone, &job.command)));
    job.reply = Some(reply.unwrap_or_else(|_| Err("the Redis client panicked".to_string())));
}

/// In the worker, once the thread is done: releases the request and hands it the reply.
unsafe extern "C" fn reply_in_worker(ev: *mut ngx_event_t) {
    // SAFETY: the event's data is the job `queue` leaked; the thread is done with it, and
    // nginx's thread pool no longer refers to its task.
    let job = unsafe { Box::from_raw((*ev).data.cast::<Job>()) };
    let Job { command, reply, asked_ms, then, .. } = *job;
    let reply = reply.unwrap_or_else(|| Err("the round trip did not run".to_string()));
    let (request, done) = match then {
        Then::Request(request, done) => (request, done),
        Then::Detached(done) => {
            // A panic must not unwind into nginx.
            let _ = catch_unwind(AssertUnwindSafe(|| done(&command, reply)));
            return;
        }
    };
    let r = request.as_ptr();
    // SAFETY: the request stayed alive while blocked; it is released here, once.
    unsafe {
        let c = (*r).connection;
        let main = &mut *(*r).main;
        main.set_blocked(main.blocked() - 1);
        (*r).set_aio(0);
        // A panic must not unwind into nginx; `done` answers 500 on its own errors.
        let _ = catch_unwind(AssertUnwindSafe(|| done(r, &command, reply, asked_ms)));
        ngx_http_run_posted_requests(c);
    }
}
