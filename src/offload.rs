//! Redis's round trips off the event loop: the request that needs one is suspended, the
//! command runs on one of nginx's thread pool threads, and the request goes on in its worker
//! when the reply is in. The worker serves other requests meanwhile.
//!
//! The suspended request is held as nginx holds one waiting for a thread's file read: its
//! main request's `blocked` count keeps it (and its memory) alive even if the client leaves.
//!
//! Every round trip has a deadline, `timeout=` after it was asked: the thread gives up then
//! (see [`remote::run`]), and a timer in the worker answers for it a little later should the
//! thread not have started in time (every thread of the pool busy). The timer is not
//! cancelable, so that a worker that is shutting down gracefully (a reload, a binary upgrade)
//! stays until every round trip it started has been answered, as nginx keeps an exiting worker
//! alive for its pending non-cancelable timers: no buyer waiting on Redis is cut off.

use core::ffi::c_void;
use core::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use nginx_sys::{
    ngx_add_timer, ngx_cycle, ngx_del_timer, ngx_event_t, ngx_http_request_t,
    ngx_http_run_posted_requests, ngx_log_t, ngx_msec_t, ngx_thread_pool_t, ngx_thread_task_post,
    ngx_thread_task_t,
};
use ngx::core::Status;
use ngx::http::{HTTPStatus, Request};

use crate::ffi::Next;
use crate::flags;
use crate::http::main_request;

use crate::remote::{self, Command, Failure, Reply, Settings};

/// What to do in the worker with Redis's reply to a request's round trip: called with the
/// request, which is live again, the command, its reply, and when it was asked (Unix ms);
/// says what nginx does with the request next.
pub type Done = Box<dyn FnOnce(&mut Request, &Command, Result<Reply, Failure>, i64) -> Next>;

/// What to do in the worker with Redis's reply to a round trip nobody waits for.
pub type Detached = Box<dyn FnOnce(&Command, Result<Reply, Failure>)>;

/// Where a reply goes.
enum Then {
    Request(NonNull<ngx_http_request_t>, Done),
    Detached(Detached),
    /// Answered already, by the worker's timer: the thread's reply, when it comes, is dropped.
    Answered,
}

/// One round trip: nginx's task, everything the thread needs, owned, and where its reply goes.
/// One allocation, freed when the thread is done with it and the reply has been handed over.
///
/// The thread reads `settings`, `zone`, `command` and `deadline` and writes `reply`; the
/// worker touches `then` and `timer` alone while the thread runs.
struct Job {
    task: ngx_thread_task_t,
    settings: Settings,
    zone: String,
    command: Command,
    reply: Option<Result<Reply, Failure>>,
    asked_ms: i64,
    /// When the thread gives up: `timeout=` after the round trip was asked.
    deadline: Instant,
    /// The worker's timer: fires [`TIMER_GRACE_MS`] after the deadline if no reply came.
    timer: ngx_event_t,
    then: Then,
}

/// How long after a round trip's deadline the worker answers for a thread that has not: the
/// thread itself gives up at the deadline, so only a thread that could not start in time (all
/// of the pool busy) is late.
const TIMER_GRACE_MS: u64 = 20;

/// Runs `command` for the request `r` on `threads`; `done` gets the reply. When the task
/// cannot be queued (nginx's thread pool queue is full; nginx has logged it) the request is
/// not suspended, and the command comes back with the failure to decide on at once (boxed:
/// a rare path, and a command is large). On `Ok`, the caller leaves the request waiting
/// (`NGX_AGAIN`/`NGX_DONE`).
pub fn post(
    req: &mut Request,
    threads: NonNull<ngx_thread_pool_t>,
    settings: &Settings,
    zone: String,
    command: Command,
    done: Done,
) -> Result<(), Box<(Command, Failure)>> {
    let request = NonNull::from(req.as_mut());
    queue(threads, settings, zone, command, Then::Request(request, done))
        .map_err(|command| Box::new((command, queue_full())))?;
    block(req, true);
    Ok(())
}

/// Counts (or uncounts) a round trip the request waits for in its main request's `blocked`,
/// which keeps nginx from freeing the request meanwhile, as a thread's file read does.
fn block(req: &mut Request, blocked: bool) {
    let main = main_request(req);
    let now = flags::blocked(main);
    let count = if blocked { now + 1 } else { now.saturating_sub(1) };
    flags::set_blocked(main, count);
    flags::set_aio(req.as_mut(), blocked);
}

/// Why a task was not queued: to the buyer, Redis could not be asked.
fn queue_full() -> Failure {
    Failure::Local("nginx's thread pool queue is full".to_string())
}

/// Runs `command` on `threads` with no request waiting for it (a release by the backend, whose
/// response is already on its way; a refresh of the sale's settings); `done` gets the reply
/// in the worker.
pub fn post_detached(
    threads: NonNull<ngx_thread_pool_t>,
    settings: &Settings,
    zone: String,
    command: Command,
    done: impl FnOnce(&Command, Result<Reply, Failure>) + 'static,
) -> bool {
    queue(threads, settings, zone, command, Then::Detached(Box::new(done))).is_ok()
}

fn queue(
    threads: NonNull<ngx_thread_pool_t>,
    settings: &Settings,
    zone: String,
    command: Command,
    then: Then,
) -> Result<(), Command> {
    let job = Box::into_raw(Box::new(Job {
        // SAFETY: nginx's task is plain data whose empty state is all zeroes, as
        // ngx_thread_task_alloc leaves it.
        task: unsafe { core::mem::zeroed() },
        settings: settings.clone(),
        zone,
        command,
        reply: None,
        asked_ms: crate::http::now_ms(),
        deadline: Instant::now() + Duration::from_millis(settings.timeout_ms),
        // SAFETY: an event is plain data whose empty state is all zeroes, as nginx's own
        // modules allocate theirs (ngx_pcalloc); zeroed, it is not cancelable.
        timer: unsafe { core::mem::zeroed() },
        then,
    }));
    // SAFETY: `job` is ours until the thread pool takes the task; if it does not, it is
    // given back here. `threads` is nginx's pool, which lives as long as the cycle; the
    // cycle's log outlives the worker's events.
    unsafe {
        let task = &mut (*job).task;
        task.ctx = job.cast();
        task.handler = Some(run_in_thread);
        task.event.data = job.cast();
        task.event.handler = Some(reply_in_worker);
        if Status(ngx_thread_task_post(threads.as_ptr(), task)) != Status::NGX_OK {
            return Err(Box::from_raw(job).command);
        }
        let timer = ptr::addr_of_mut!((*job).timer);
        (*timer).data = job.cast();
        (*timer).handler = Some(deadline_in_worker);
        (*timer).log = (*ngx_cycle).log;
        ngx_add_timer(timer, ((*job).settings.timeout_ms + TIMER_GRACE_MS) as ngx_msec_t);
    }
    Ok(())
}

/// On a pool thread: the round trip itself. Touches the fields the thread owns (see [`Job`]),
/// never the request, nor what the worker may change meanwhile.
unsafe extern "C" fn run_in_thread(data: *mut c_void, _log: *mut ngx_log_t) {
    let job = data.cast::<Job>();
    let panicked = Err(Failure::Local("the Redis client panicked".to_string()));
    // SAFETY: `queue` made `data` a job that lives until the worker has its reply; the worker
    // does not touch these fields until nginx's thread pool hands the task back.
    let reply = crate::ffi::guard(panicked, || unsafe {
        remote::run(&(*job).settings, &(*job).zone, &(*job).command, (*job).deadline)
    });
    // SAFETY: as above; `reply` is the thread's to write.
    unsafe { (*job).reply = Some(reply) };
}

/// In the worker, once the thread is done: hands the reply over (unless the timer answered
/// already), and frees the job.
unsafe extern "C" fn reply_in_worker(ev: *mut ngx_event_t) {
    // SAFETY: the event's data is the job `queue` leaked; the thread is done with it, and
    // nginx's thread pool no longer refers to its task.
    let mut job = unsafe { Box::from_raw((*ev).data.cast::<Job>()) };
    if job.timer.timer_set() != 0 {
        // SAFETY: the timer was armed by `queue`, has not fired, and is still in place.
        unsafe { ngx_del_timer(&mut job.timer) };
    }
    let Job { command, reply, asked_ms, then, .. } = *job;
    let reply =
        reply.unwrap_or_else(|| Err(Failure::Local("the round trip did not run".to_string())));
    // SAFETY: a request waiting for this reply is still blocked, so still live.
    unsafe { deliver(then, &command, reply, asked_ms) };
}

/// In the worker, when a round trip's thread is late past its deadline: answers for it as
/// Redis not answering. The job stays for the thread to finish with, and `reply_in_worker`
/// frees it then.
unsafe extern "C" fn deadline_in_worker(ev: *mut ngx_event_t) {
    // SAFETY: the timer's data is its job, live until the thread's reply is handed back. The
    // thread may still run: it reads `settings` and `command` as this does, and writes
    // `reply` alone, so no reference here covers the whole job.
    unsafe {
        let job = (*ev).data.cast::<Job>();
        // nginx's timers run on its cached clock, which may lag: not yet due, wait the rest.
        let early = (*job).deadline.saturating_duration_since(Instant::now());
        if !early.is_zero() {
            let ms = early.as_millis() as ngx_msec_t + TIMER_GRACE_MS as ngx_msec_t;
            ngx_add_timer(ev, ms);
            return;
        }
        let then = core::mem::replace(&mut *ptr::addr_of_mut!((*job).then), Then::Answered);
        let late = Failure::Timeout { timeout_ms: (*job).settings.timeout_ms };
        deliver(then, &*ptr::addr_of!((*job).command), Err(late), (*job).asked_ms);
    }
}

/// Hands a round trip's reply to whoever waits for it, in the worker.
///
/// # Safety
/// A request in `then` is the live, blocked request the round trip was asked for.
unsafe fn deliver(then: Then, command: &Command, reply: Result<Reply, Failure>, asked_ms: i64) {
    let (request, done) = match then {
        Then::Request(request, done) => (request, done),
        Then::Detached(done) => {
            // A panic must not unwind into nginx.
            crate::ffi::guard((), || done(command, reply));
            return;
        }
        Then::Answered => return,
    };
    let mut c = ptr::null_mut();
    let release = |req: &mut Request| {
        c = req.connection();
        block(req, false);
        done(req, command, reply, asked_ms)
    };
    // A panic in `done` finalizes the request with a 500.
    let server_error = Next::Finalize(HTTPStatus::INTERNAL_SERVER_ERROR.into());
    // SAFETY: the request stayed alive while blocked; it is released here, once.
    unsafe { crate::ffi::handle(request.as_ptr(), server_error, release) };
    if !c.is_null() {
        // SAFETY: the connection outlives its requests' handlers.
        unsafe { ngx_http_run_posted_requests(c) };
    }
}
