//! Directives: `flash_sale_zone`, `flash_sale`, and the sale's settings, with their merge and
//! the shared zone's initialisation.
//!
//! Configuration is parsed into pool-owned structs that requests only read. The zone's table
//! lives in shared memory and is found through [`ZoneConf::table`], set when nginx
//! (re)initialises the zone.

use core::ffi::{c_char, c_void};
use core::ptr::{self, NonNull};
use std::os::unix::ffi::OsStrExt;

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_http_compile_complex_value, ngx_http_compile_complex_value_t,
    ngx_http_complex_value_t, ngx_http_get_variable_index, ngx_int_t, ngx_shared_memory_add,
    ngx_shm_zone_t, ngx_str_t, ngx_thread_pool_add, ngx_thread_pool_t, ngx_uint_t, NGX_ERROR,
    NGX_LOG_EMERG, NGX_LOG_ERR, NGX_LOG_NOTICE, NGX_LOG_WARN,
};
use ngx::core::{SlabPool, Status, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf, Request};
use ngx::{ngx_conf_log_error, ngx_log_error};
use rand::{rngs::SmallRng, Rng, SeedableRng};

use crate::ffi::{directive, zone_init, ConfError, ConfResult, Directive, DUPLICATE};
use crate::health::Change;
use crate::journal::{Anew, Rewritten, StateFile};
use crate::parse;
use crate::remote::Settings;
use crate::sale::{BlockRatio, Cap, DrawMode, Queue, Sale, Window};
use crate::state;
use crate::token;
use crate::zone::{bucket_count, PermitTable, Stats, ZoneStore};

/// One `flash_sale_zone`: the buyer identity and the shared zone holding the permits.
pub struct ZoneConf {
    /// The key expression.
    pub key: Value,
    /// The largest cap a location puts on this zone, for the metrics.
    pub largest_cap: Option<u64>,
    /// A location puts a line (`flash_sale_queue`) on this zone: the metrics show it.
    pub lined: bool,
    /// A location puts a line on this zone and draws per request: a block ratio there would
    /// only delay joining, so neither `nginx -t` nor the API's `PATCH` lets one in.
    pub lined_per_request: bool,
    /// A location puts a pre-queue (`flash_sale_prequeue`) on this zone.
    pub prequeued: bool,
    /// A location sells several items through this zone (`flash_sale_item`): the admin API
    /// sets their stock, and the metrics count them.
    pub itemized: bool,
    pub shm_zone: NonNull<ngx_shm_zone_t>,
    /// Set by [`init_zone`] before any worker starts.
    pub table: Option<NonNull<PermitTable>>,
    /// `state=PATH`: where the permits are kept across restarts.
    pub state: Option<StateFile>,
    /// The cycle this configuration belongs to: its core configuration names nginx's user.
    pub cycle: NonNull<nginx_sys::ngx_cycle_t>,
    /// `flash_sale_redis`: the permits are kept in Redis, shared by several hosts.
    pub redis: Option<NonNull<RedisConf>>,
}

/// A zone's Redis: where it is, and the thread pool its round trips run on.
pub struct RedisConf {
    pub settings: Settings,
    pub threads: NonNull<ngx_thread_pool_t>,
}

impl ZoneConf {
    /// The zone's cap as the admin API and the metrics show it: its `max_permits` override,
    /// else the largest fixed `flash_sale_max_permits` of its locations (a cap read from a
    /// variable is known per request only).
    pub fn cap(&self) -> Cap {
        self.table_ref().and_then(|t| t.overrides.load().max_permits).or(self.largest_cap)
    }

    /// Appends a record to the zone's state file, if it has one. False when it did not land:
    /// the failure is counted (`state_errors`) and logged once per incident with its cause,
    /// and while the disk fails one record a second is tried (the others fail at once); the
    /// first record that lands again is logged too. Compacts the journal once it has grown
    /// enough (see `JournalHealth::appended`).
    pub fn journal(&self, record: impl FnOnce() -> String, log: *mut nginx_sys::ngx_log_t) -> bool {
        let (Some(file), Some(table)) = (&self.state, self.table_ref()) else {
            return true;
        };
        let journal = &table.journal;
        let now = crate::http::now_ms();
        if !journal.health.may_try(now) {
            Stats::count(&table.stats.state_errors);
            return false;
        }
        let record = record();
        match file.append(&record) {
            Ok(anew) => {
                if let Some(anew) = anew {
                    self.rebuild(&anew, log);
                }
                if let Change::CameBack { down_ms } = journal.health.worked(now, now) {
                    ngx_log_error!(
                        NGX_LOG_WARN,
                        log,
                        "flash_sale_zone \"{}\": state file \"{}\" takes records again, after {} ms",
                        self.name(),
                        file.path.display(),
                        down_ms
                    );
                }
                if journal.appended(record.len() as u64, now) {
                    self.compact(log);
                }
                true
            }
            Err(e) => {
                Stats::count(&table.stats.state_errors);
                if journal.health.failed(now) == Change::WentDown {
                    ngx_log_error!(
                        NGX_LOG_ERR,
                        log,
                        "flash_sale_zone \"{}\": cannot write state file \"{}\": {}{}; new buyers get UNAVAILABLE until it can",
                        self.name(),
                        file.path.display(),
                        e.cause,
                        if e.written > 0 {
                            format!(" ({} bytes of a record landed, a damaged line now)", e.written)
                        } else {
                            String::new()
                        }
                    );
                }
                false
            }
        }
    }

    /// Writes the zone's permits into its state file, which an append made anew: they would be
    /// lost at the next start.
    fn rebuild(&self, anew: &Anew, log: *mut nginx_sys::ngx_log_t) {
        if let (Some(file), Anew::Replaced(aside)) = (&self.state, anew) {
            ngx_log_error!(
                NGX_LOG_WARN,
                log,
                "flash_sale_zone \"{}\": state file \"{}\" was replaced while nginx ran; kept the other file as \"{}\"",
                self.name(),
                file.path.display(),
                aside.display()
            );
        }
        self.compact(log);
    }

    /// Rewrites the zone's state file as a snapshot of what it holds (every process's records,
    /// this zone's counters), so that its size follows the permits, not their history. The
    /// zone's own permits join it unless the file says they are gone: a file removed, made
    /// anew (by `nginx -t` or `nginx -s`, say) or replaced while nginx ran loses none. A
    /// failure is logged once until a rewrite works again.
    pub fn compact(&self, log: *mut nginx_sys::ngx_log_t) {
        let (Some(file), Some(table)) = (&self.state, self.table_ref()) else {
            return;
        };
        let name = self.name().to_string();
        let now = crate::http::now_ms();
        let held = self.store(now).map(|mut store| store.snapshot().1).unwrap_or_default();
        let rewritten = file.rewrite(&name, self.key.source().as_bytes(), now, &held, |_| {
            table.stats.named_values()
        });
        if let Ok(rewritten) = &rewritten {
            report_rewrite(&name, file, rewritten, log);
            // Every file nginx wrote holds a snapshot: one without was made anew by another.
            if rewritten.replay.snapshot_next == 0 && rewritten.moved_aside.is_none() {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    log,
                    "flash_sale_zone \"{}\": state file \"{}\" was removed, emptied or replaced while nginx ran; written anew from the zone",
                    name,
                    file.path.display()
                );
            }
        }
        let failed_before = table.journal.compaction_failed();
        table.journal.compacted(rewritten.as_ref().ok().map(|r| r.bytes));
        match rewritten {
            Err(e) if !failed_before => {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    log,
                    "flash_sale_zone \"{}\": cannot compact state file \"{}\": {}; it grows until it can",
                    name,
                    file.path.display(),
                    e
                );
            }
            Ok(_) if failed_before => {
                ngx_log_error!(
                    NGX_LOG_NOTICE,
                    log,
                    "flash_sale_zone \"{}\": state file \"{}\" is compacted again",
                    name,
                    file.path.display()
                );
            }
            _ => {}
        }
    }

    /// The counter new permits take their numbers from: the state file's, shared with every
    /// process that writes it; `None` without a state file (the table numbers them).
    pub fn numbers(&self) -> Option<&core::sync::atomic::AtomicU64> {
        self.state.as_ref().map(StateFile::numbers)
    }

    /// The zone's table, in its shared memory.
    pub fn table_ref(&self) -> Option<&PermitTable> {
        // SAFETY: `init_zone` made the table in this zone's shared memory before any worker
        // started or any request came; the memory stays mapped as long as the cycle whose
        // configuration holds `self`. Outside the zone's lock only its atomics and fields that
        // never change are read.
        self.table.map(|table| unsafe { &*table.as_ptr() })
    }

    /// A store over the zone's table at `now_ms`: its permits, under the zone's lock.
    pub fn store(&self, now_ms: i64) -> Option<ZoneStore<'_, SlabPool>> {
        let (slab, table) = (self.slab()?, self.table?);
        // SAFETY: as for `table_ref`; `slab` is this zone's own slab pool, in which
        // `init_zone` made the table.
        Some(unsafe { ZoneStore::new(slab, table, now_ms) })
    }

    pub fn shm(&self) -> &ngx_shm_zone_t {
        // SAFETY: the shared zone lives as long as the cycle whose configuration holds this.
        unsafe { self.shm_zone.as_ref() }
    }

    pub fn name(&self) -> ngx_str_t {
        self.shm().shm.name
    }

    /// The zone's slab pool: its memory and its lock.
    pub fn slab(&self) -> Option<SlabPool> {
        // SAFETY: nginx maps the zone and initialises its pool before any request.
        unsafe { SlabPool::from_shm_zone(self.shm()) }
    }

    /// The zone's Redis, when its permits are kept there.
    pub fn redis(&self) -> Option<&RedisConf> {
        // SAFETY: the Redis configuration lives in the cycle's pool, as this zone does.
        self.redis.map(|redis| unsafe { &*redis.as_ptr() })
    }
}

/// A zone's configuration as the locations, the http block, a request's decision and Redis's
/// callbacks hold it. `flash_sale_zone` makes it in the cycle's pool, which outlives every
/// request, event and callback of that cycle: the one invariant each use relies on, stated
/// here once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneRef(NonNull<ZoneConf>);

impl ZoneRef {
    /// # Safety
    /// `zone` is a `ZoneConf` `flash_sale_zone` made in the pool of the cycle being configured.
    unsafe fn new(zone: NonNull<ZoneConf>) -> ZoneRef {
        ZoneRef(zone)
    }

    /// The zone's configuration, to change while the configuration is parsed or merged.
    ///
    /// # Safety
    /// Configuration time (single-threaded, no request yet), and no other reference to this
    /// zone's configuration is in use.
    unsafe fn as_mut<'a>(self) -> &'a mut ZoneConf {
        // SAFETY: see the function's contract and the type's.
        unsafe { &mut *self.0.as_ptr() }
    }

    /// The zone's configuration, not tied to this handle: it lives as long as the cycle.
    pub fn get<'a>(self) -> &'a ZoneConf {
        // SAFETY: see the type's invariant; nothing changes it once the configuration is read.
        unsafe { self.0.as_ref() }
    }
}

impl core::ops::Deref for ZoneRef {
    type Target = ZoneConf;

    fn deref(&self) -> &ZoneConf {
        self.get()
    }
}

/// Whether a location is gated, and by which zone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Gate {
    #[default]
    Unset,
    Off,
    Zone(ZoneRef),
}

/// `flash_sale_verify`: whether a location checks permit tokens, for which zone, and where the
/// token is (the `Authorization: Bearer` header when `token` is `None`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verify {
    #[default]
    Unset,
    Off,
    Zone {
        zone: ZoneRef,
        token: Option<Value>,
        /// `item=VALUE`: the item the token must name.
        item: Option<Value>,
    },
}

/// `flash_sale_max_permits`: a number, or a value with variables (a `map` of stock per item)
/// evaluated per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stock {
    Fixed(u64),
    Variable(Value),
}

impl Stock {
    /// The number, when it is one in the configuration.
    pub fn fixed(self) -> Option<u64> {
        match self {
            Stock::Fixed(cap) => Some(cap),
            Stock::Variable(_) => None,
        }
    }
}

/// The location configuration; `None` is "not set here", resolved by [`merge_loc_conf`].
#[derive(Debug, Default)]
pub struct LocConf {
    pub gate: Gate,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub block_ratio: Option<BlockRatio>,
    pub max_permits: Option<Stock>,
    /// `flash_sale_item`: which item a request is for.
    pub item: Option<Value>,
    pub max_per_buyer: Option<u64>,
    pub reject_status: Option<u16>,
    pub permit_ttl_ms: Option<i64>,
    pub dry_run: Option<bool>,
    pub log_level: Option<usize>,
    pub release_header: Option<ngx_str_t>,
    pub draw: Option<DrawMode>,
    pub prequeue_ms: Option<i64>,
    /// `flash_sale_token_secret`: the file's secret, in the cycle's pool.
    pub token_secret: Option<ngx_str_t>,
    pub verify: Verify,
    /// `flash_sale_queue`: `Some(None)` for `off`.
    pub queue: Option<Option<Queue>>,
}

/// The http block's configuration: every zone, for the metrics.
#[derive(Debug, Default)]
pub struct MainConf {
    pub zones: Vec<ZoneRef>,
}

/// This module as ngx's traits know it: its configurations are a [`MainConf`] and a
/// [`LocConf`]; `module.rs` binds it to the `ngx_module_t` nginx loads (`HttpModule`), so that
/// the configuration reaches the module's identity without importing its tables.
pub(crate) struct FlashSaleModule;

// SAFETY: the main configuration this module creates is a `MainConf`.
unsafe impl HttpModuleMainConf for FlashSaleModule {
    type MainConf = MainConf;
}

// SAFETY: the location configuration this module creates is a `LocConf`.
unsafe impl HttpModuleLocationConf for FlashSaleModule {
    type LocationConf = LocConf;
}

/// The tag that marks the shared-memory zones as this module's: its `ngx_module_t`.
fn module_tag() -> *mut c_void {
    ptr::from_ref(FlashSaleModule::module()).cast_mut().cast()
}

/// This module's index among nginx's http modules: its slot in a request's contexts.
pub fn ctx_index() -> usize {
    FlashSaleModule::module().ctx_index
}

impl MainConf {
    /// This module's configuration of the request's http block. It lives in the cycle's pool,
    /// as long as any request of the cycle: not tied to this borrow of the request, so that
    /// the request can be answered while it is read.
    pub fn of<'a>(req: &Request) -> Option<&'a MainConf> {
        let conf = FlashSaleModule::main_conf(req)?;
        // SAFETY: see above; nginx frees the configuration only with its cycle.
        Some(unsafe { &*(conf as *const MainConf) })
    }
}

pub const DEFAULT_REJECT_STATUS: u16 = 503;
/// Rejections are the common case during a sale: logged at `info` unless asked otherwise.
pub const DEFAULT_LOG_LEVEL: usize = 7;

/// The smallest zone nginx's slab allocator runs well in, as `limit_req_zone` demands.
const MIN_ZONE_PAGES: usize = 8;

impl LocConf {
    /// This module's configuration of the request's location; like [`MainConf::of`], not tied
    /// to this borrow of the request.
    pub fn of<'a>(req: &Request) -> Option<&'a LocConf> {
        let conf = FlashSaleModule::location_conf(req)?;
        // SAFETY: as for `MainConf::of`.
        Some(unsafe { &*(conf as *const LocConf) })
    }

    /// The sale as the decision reads it; unset values take their documented defaults.
    pub fn sale(&self) -> Sale {
        Sale {
            window: Window { start_ms: self.start_ms, end_ms: self.end_ms },
            block_ratio: self.block_ratio.unwrap_or(BlockRatio::ADMIT_ALL),
            cap: self.max_permits.and_then(Stock::fixed),
            prequeue_ms: self.prequeue_ms,
            queue: self.queue.flatten(),
            max_per_buyer: self.max_per_buyer,
            itemized: self.item.is_some(),
        }
    }

    pub fn reject_status(&self) -> u16 {
        self.reject_status.unwrap_or(DEFAULT_REJECT_STATUS)
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run.unwrap_or(false)
    }

    pub fn log_level(&self) -> usize {
        self.log_level.unwrap_or(DEFAULT_LOG_LEVEL)
    }

    /// A window whose end is not after its start would admit nobody, ever.
    fn window_is_empty(&self) -> bool {
        Window { start_ms: self.start_ms, end_ms: self.end_ms }.is_empty()
    }
}

/// A directive's argument as text; nginx's words are bytes, and every value we accept is ASCII.
fn text(s: &ngx_str_t) -> &str {
    s.to_str().unwrap_or("")
}

/// Parses the single argument of a location directive into one of its fields.
fn set_field<T>(
    d: &mut Directive<'_>,
    lcf: &mut LocConf,
    field: impl FnOnce(&mut LocConf) -> &mut Option<T>,
    parse: impl FnOnce(&str) -> Option<T>,
    complaint: &str,
) -> ConfResult {
    let parse = |value: &str| parse(value).ok_or_else(|| value.to_owned());
    set_field_quoting(d, lcf, field, parse, complaint)
}

/// As [`set_field`], for directives with several words: `parse` gets them joined by spaces
/// and, when it refuses them, names the word that is wrong, which the error quotes.
fn set_field_quoting<T>(
    d: &mut Directive<'_>,
    lcf: &mut LocConf,
    field: impl FnOnce(&mut LocConf) -> &mut Option<T>,
    parse: impl FnOnce(&str) -> Result<T, String>,
    complaint: &str,
) -> ConfResult {
    let args = d.args();
    let slot = field(lcf);
    if slot.is_some() {
        return Err(DUPLICATE);
    }
    let value = match parse(text(&args[1])) {
        Ok(value) => value,
        Err(bad) => {
            return Err(d.emerg(format_args!(
                "invalid value \"{}\" in \"{}\" directive, {}",
                bad, args[0], complaint
            )));
        }
    };
    *slot = Some(value);
    if lcf.window_is_empty() {
        return Err(d.emerg(format_args!("\"{} {}\" leaves {}", args[0], args[1], EMPTY_WINDOW)));
    }
    Ok(())
}

const EMPTY_WINDOW: &str =
    "an empty sale window: \"flash_sale_end\" must be after \"flash_sale_start\"";

const TIME_HINT: &str = "expected a time of more than zero, such as 30s, 10m, 1h30m or 500ms";

const RFC3339_HINT: &str = "expected an RFC 3339 time such as 2021-08-08T00:00:00Z";

/// Defines the handler of a directive that parses its one argument into a `LocConf` field.
macro_rules! field_directive {
    ($handler:ident, $field:ident, $parse:expr, $hint:expr) => {
        pub(crate) unsafe extern "C" fn $handler(
            cf: *mut ngx_conf_t,
            cmd: *mut ngx_command_t,
            conf: *mut c_void,
        ) -> *mut c_char {
            fn set(d: &mut Directive<'_>, lcf: &mut LocConf) -> ConfResult {
                set_field(d, lcf, |c| &mut c.$field, $parse, $hint)
            }
            // SAFETY: nginx calls this for a command whose slot is NGX_HTTP_LOC_CONF_OFFSET
            // (`module.rs`): `conf` is a `LocConf`.
            unsafe { directive(cf, cmd, conf, set) }
        }
    };
}

field_directive!(set_start, start_ms, parse::rfc3339_ms, RFC3339_HINT);
field_directive!(set_end, end_ms, parse::rfc3339_ms, RFC3339_HINT);
field_directive!(set_block_ratio, block_ratio, BlockRatio::parse, "expected a number from 0 to 1");
field_directive!(
    set_max_per_buyer,
    max_per_buyer,
    |s| parse::cap(s).filter(|&n| n > 0),
    "expected a whole number of items, 1 or more"
);

/// `flash_sale_max_permits NUMBER | VALUE;`: a value with variables is read per request.
pub(crate) unsafe extern "C" fn set_max_permits(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for a command whose slot is NGX_HTTP_LOC_CONF_OFFSET
    // (`module.rs`): `conf` is a `LocConf`.
    unsafe { directive(cf, cmd, conf, max_permits) }
}

fn max_permits(d: &mut Directive<'_>, lcf: &mut LocConf) -> ConfResult {
    let value = d.args()[1];
    if value.as_bytes().contains(&b'$') {
        if lcf.max_permits.is_some() {
            return Err(DUPLICATE);
        }
        lcf.max_permits = Some(Stock::Variable(self::value(d, value)?));
        return Ok(());
    }
    let fixed = |s: &str| parse::cap(s).map(Stock::Fixed);
    let hint = "expected a whole number of permits, 0 or more, or a value with variables";
    set_field(d, lcf, |c| &mut c.max_permits, fixed, hint)
}

/// `flash_sale_item VALUE;`
pub(crate) unsafe extern "C" fn set_item(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for a command whose slot is NGX_HTTP_LOC_CONF_OFFSET
    // (`module.rs`): `conf` is a `LocConf`.
    unsafe { directive(cf, cmd, conf, item) }
}

fn item(d: &mut Directive<'_>, lcf: &mut LocConf) -> ConfResult {
    if lcf.item.is_some() {
        return Err(DUPLICATE);
    }
    let value = d.args()[1];
    if value.is_empty() {
        return Err(d.emerg(format_args!(
            "invalid value \"\" in \"{}\" directive, expected an item, such as $arg_sku",
            d.args()[0]
        )));
    }
    lcf.item = Some(self::value(d, value)?);
    Ok(())
}
field_directive!(
    set_reject_status,
    reject_status,
    parse::reject_status,
    "expected a status from 400 to 599"
);
field_directive!(set_permit_ttl, permit_ttl_ms, parse::duration_ms, TIME_HINT);
field_directive!(set_prequeue, prequeue_ms, parse::duration_ms, TIME_HINT);
field_directive!(set_dry_run, dry_run, parse::flag, "expected \"on\" or \"off\"");
field_directive!(
    set_log_level,
    log_level,
    parse::log_level,
    "expected info, notice, warn or error"
);

/// `flash_sale_draw per_request | per_key [INTERVAL];`
pub(crate) unsafe extern "C" fn set_draw(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for a command whose slot is NGX_HTTP_LOC_CONF_OFFSET
    // (`module.rs`): `conf` is a `LocConf`.
    unsafe { directive(cf, cmd, conf, draw) }
}

fn draw(d: &mut Directive<'_>, lcf: &mut LocConf) -> ConfResult {
    let words: Vec<&str> = d.args()[1..].iter().map(text).collect();
    let mode = |_: &str| parse::draw_mode(&words).map_err(str::to_owned);
    let hint =
        "expected per_request, or per_key with an optional interval of more than zero such as 30s";
    set_field_quoting(d, lcf, |c| &mut c.draw, mode, hint)
}

/// `flash_sale_queue rate=RATE [idle=TIME] [refresh=TIME] | off;`
pub(crate) unsafe extern "C" fn set_queue(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for a command whose slot is NGX_HTTP_LOC_CONF_OFFSET
    // (`module.rs`): `conf` is a `LocConf`.
    unsafe { directive(cf, cmd, conf, queue) }
}

fn queue(d: &mut Directive<'_>, lcf: &mut LocConf) -> ConfResult {
    let words: Vec<&str> = d.args()[1..].iter().map(text).collect();
    if parse::queue(&words) == Err("") {
        let name = d.args()[0];
        return Err(d.emerg(format_args!("\"{name}\" needs rate=RATE, such as rate=20r/s")));
    }
    if let Ok(Some(queue)) = parse::queue(&words) {
        if !parse::refresh_fits_idle(&queue) {
            let name = d.args()[0];
            return Err(d.emerg(format_args!(
                "\"{name}\" needs idle= longer than refresh= and a fifth, with a second to spare: \
                 a waiter's page asks again after up to that long"
            )));
        }
    }
    let settings = |_: &str| parse::queue(&words).map_err(str::to_owned);
    let hint = "expected rate=RATE such as rate=20r/s or rate=600r/m, then optionally \
                idle=TIME and refresh=TIME of more than zero, or off";
    set_field_quoting(d, lcf, |c| &mut c.queue, settings, hint)
}

/// `flash_sale_release_header NAME;`
pub(crate) unsafe extern "C" fn set_release_header(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for a command whose slot is NGX_HTTP_LOC_CONF_OFFSET
    // (`module.rs`): `conf` is a `LocConf`.
    unsafe { directive(cf, cmd, conf, release_header) }
}

fn release_header(d: &mut Directive<'_>, lcf: &mut LocConf) -> ConfResult {
    // The word lives in the cycle's pool, as long as the configuration.
    let value = d.args()[1];
    let header = |s: &str| parse::header_name(s).then_some(value);
    set_field(d, lcf, |c| &mut c.release_header, header, "expected a header name")
}

/// `flash_sale zone=NAME | off;`
pub(crate) unsafe extern "C" fn set_gate(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for a command whose slot is NGX_HTTP_LOC_CONF_OFFSET
    // (`module.rs`): `conf` is a `LocConf`.
    unsafe { directive(cf, cmd, conf, gate) }
}

fn gate(d: &mut Directive<'_>, lcf: &mut LocConf) -> ConfResult {
    if lcf.gate != Gate::Unset {
        return Err(DUPLICATE);
    }
    let value = &d.args()[1];
    if value.as_bytes() == b"off" {
        lcf.gate = Gate::Off;
        return Ok(());
    }
    lcf.gate = Gate::Zone(zone_parameter(d, value)?);
    Ok(())
}

/// The zone named by a `zone=NAME` parameter, declared earlier by `flash_sale_zone`; says what
/// is wrong in the error log otherwise.
fn zone_parameter(d: &mut Directive<'_>, value: &ngx_str_t) -> Result<ZoneRef, ConfError> {
    let Some(mut name) = value.strip_prefix("zone=").filter(|n| !n.is_empty()) else {
        return Err(d.emerg(format_args!("invalid parameter \"{}\"", value)));
    };
    // Size 0 looks the zone up by name; it is known once its `flash_sale_zone` set its data.
    // SAFETY: `cf` is valid during parsing; the module's address is its shared-memory tag.
    let shm_zone = unsafe { ngx_shared_memory_add(d.conf(), &mut name, 0, module_tag()) };
    // SAFETY: a non-null zone from ngx_shared_memory_add stays valid for the cycle.
    let zone = unsafe { shm_zone.as_ref() }.ok_or(ConfError::Logged)?;
    let data = NonNull::new(zone.data.cast::<ZoneConf>())
        .ok_or_else(|| d.emerg(format_args!("unknown flash_sale_zone \"{}\"", name)))?;
    // SAFETY: a zone's data is set by `flash_sale_zone` alone, to its `ZoneConf`.
    Ok(unsafe { ZoneRef::new(data) })
}

/// A value with variables, compiled once into the cycle's pool; a lone variable (`$arg_sku`)
/// is also known by its index, so that a request reads it without the complex value's
/// machinery (see `gate::verdict::evaluate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Value {
    pub complex: NonNull<ngx_http_complex_value_t>,
    pub variable: Option<ngx_uint_t>,
}

impl Value {
    /// The value as the configuration wrote it.
    pub fn source(&self) -> &ngx_str_t {
        // SAFETY: compiled in the cycle's pool, which outlives every reader of the configuration.
        unsafe { &self.complex.as_ref().value }
    }
}

/// Compiles `source` (a directive's argument, in the cycle's pool) into a [`Value`].
fn value(d: &mut Directive<'_>, source: ngx_str_t) -> Result<Value, ConfError> {
    let complex = complex_value(d, source).ok_or(ConfError::Logged)?;
    let variable = match parse::lone_variable(text(&source)) {
        Some(var) => {
            let mut var = ngx_str_t { data: var.as_ptr().cast_mut(), len: var.len() };
            // SAFETY: `cf` is valid during parsing; nginx copies the name.
            let index = unsafe { ngx_http_get_variable_index(d.conf(), &mut var) };
            if index == NGX_ERROR as ngx_int_t {
                return Err(ConfError::Logged);
            }
            Some(index as ngx_uint_t)
        }
        None => None,
    };
    Ok(Value { complex, variable })
}

/// Compiles a value with variables into the cycle's pool.
fn complex_value(
    d: &mut Directive<'_>,
    mut source: ngx_str_t,
) -> Option<NonNull<ngx_http_complex_value_t>> {
    // SAFETY: a complex value is plain data whose empty state is all zeroes, and a zeroed
    // compile request with these fields set is how nginx's own modules call the compiler,
    // with the configuration being parsed.
    unsafe {
        let value =
            NonNull::new(d.pool().allocate(core::mem::zeroed::<ngx_http_complex_value_t>()))?;
        let mut ccv: ngx_http_compile_complex_value_t = core::mem::zeroed();
        ccv.cf = d.conf();
        ccv.value = &mut source;
        ccv.complex_value = value.as_ptr();
        (ngx_http_compile_complex_value(&mut ccv) == Status::NGX_OK.0).then_some(value)
    }
}

/// `flash_sale_token_secret FILE;`: the HMAC secret of `$flash_sale_token` and
/// `flash_sale_verify`, read once, at configuration time.
pub(crate) unsafe extern "C" fn set_token_secret(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for a command whose slot is NGX_HTTP_LOC_CONF_OFFSET
    // (`module.rs`): `conf` is a `LocConf`.
    unsafe { directive(cf, cmd, conf, token_secret) }
}

fn token_secret(d: &mut Directive<'_>, lcf: &mut LocConf) -> ConfResult {
    let args = d.args();
    if lcf.token_secret.is_some() {
        return Err(DUPLICATE);
    }
    let (path, contents) = read_conf_file(d, args[1].as_bytes(), &args[0])?;
    let secret = match token::secret_from_file(&contents) {
        Ok(secret) => secret,
        Err(len) => {
            return Err(d.emerg(format_args!(
                "the secret in \"{}\" is {} bytes long, \"{}\" needs at least {}",
                path.display(),
                len,
                args[0],
                token::MIN_SECRET_LEN
            )));
        }
    };
    lcf.token_secret = Some(d.copy(secret).ok_or(ConfError::Logged)?);
    Ok(())
}

/// `flash_sale_verify zone=NAME [token=VALUE] | off;`
pub(crate) unsafe extern "C" fn set_verify(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for a command whose slot is NGX_HTTP_LOC_CONF_OFFSET
    // (`module.rs`): `conf` is a `LocConf`.
    unsafe { directive(cf, cmd, conf, verify) }
}

fn verify(d: &mut Directive<'_>, lcf: &mut LocConf) -> ConfResult {
    let args = d.args();
    if lcf.verify != Verify::Unset {
        return Err(DUPLICATE);
    }
    if args[1].as_bytes() == b"off" && args.len() == 2 {
        lcf.verify = Verify::Off;
        return Ok(());
    }
    let zone = zone_parameter(d, &args[1])?;
    let (mut token, mut item) = (None, None);
    for arg in &args[2..] {
        let (slot, source) = match (arg.strip_prefix("token="), arg.strip_prefix("item=")) {
            (Some(source), _) if token.is_none() => (&mut token, source),
            (_, Some(source)) if item.is_none() => (&mut item, source),
            _ => return Err(d.emerg(format_args!("invalid parameter \"{}\"", arg))),
        };
        if source.is_empty() {
            return Err(d.emerg(format_args!("invalid parameter \"{}\"", arg)));
        }
        *slot = Some(value(d, source)?);
    }
    lcf.verify = Verify::Zone { zone, token, item };
    Ok(())
}

/// Reads a file named in a directive, relative to the configuration's directory as
/// `ssl_session_ticket_key` is; says what failed in the error log otherwise.
fn read_conf_file(
    d: &mut Directive<'_>,
    name: &[u8],
    directive: &ngx_str_t,
) -> Result<(std::path::PathBuf, Vec<u8>), ConfError> {
    let conf_prefix = d.conf_prefix();
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(conf_prefix.as_bytes()))
        .join(std::ffi::OsStr::from_bytes(name));
    match std::fs::read(&path) {
        Ok(contents) => Ok((path, contents)),
        Err(e) => Err(d.emerg(format_args!(
            "cannot read \"{}\" in \"{}\" directive: {}",
            path.display(),
            directive,
            e
        ))),
    }
}

/// `flash_sale_redis zone=NAME server=HOST:PORT [password=FILE] [timeout=TIME] [prefix=STRING]
/// [on_error=closed|open] [cache=TIME] [threads=NAME];`
pub(crate) unsafe extern "C" fn set_redis(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for a command whose slot is NGX_HTTP_MAIN_CONF_OFFSET
    // (`module.rs`): `conf` is a `MainConf`.
    unsafe { directive(cf, cmd, conf, redis) }
}

fn redis(d: &mut Directive<'_>, _main: &mut MainConf) -> ConfResult {
    let args = d.args();
    // SAFETY: parsing; no other reference to the zone is in use.
    let zone = unsafe { zone_parameter(d, &args[1])?.as_mut() };
    if zone.redis.is_some() {
        return Err(d.emerg(format_args!(
            "flash_sale_zone \"{}\" already has a \"{}\"",
            zone.name(),
            args[0]
        )));
    }
    if zone.state.is_some() {
        return Err(d.emerg(format_args!(
            "flash_sale_zone \"{}\" has a state file; a zone kept in Redis needs none",
            zone.name()
        )));
    }
    let mut settings = match Settings::parse(args[2..].iter().map(text)) {
        Ok(settings) => settings,
        Err(e) => return Err(d.emerg(format_args!("{} in \"{}\" directive", e, args[0]))),
    };
    if let Some(file) = settings.password_file.clone() {
        let (_, contents) = read_conf_file(d, file.as_bytes(), &args[0])?;
        let password = String::from_utf8_lossy(&contents);
        settings.password = Some(password.trim_end_matches(['\n', '\r']).to_string());
    }
    // nginx's "default" pool (32 threads unless `thread_pool default` says otherwise), or the
    // one `threads=` names, which a `thread_pool` directive must declare, as for `aio threads=`.
    let mut pool_name = match &settings.threads {
        Some(name) => Some(d.copy(name.as_bytes()).ok_or(ConfError::Logged)?),
        None => None,
    };
    let name_ptr = pool_name.as_mut().map_or(ptr::null_mut(), |name| name as *mut ngx_str_t);
    // SAFETY: `cf` is valid during parsing; nginx keeps the name's bytes, which live in the
    // cycle's pool; a null name asks for the default pool.
    let threads = NonNull::new(unsafe { ngx_thread_pool_add(d.conf(), name_ptr) })
        .ok_or(ConfError::Logged)?;
    let redis = NonNull::new(d.pool().allocate(RedisConf { settings, threads }))
        .ok_or(ConfError::Logged)?;
    zone.redis = Some(redis);
    Ok(())
}

/// `flash_sale_zone KEY zone=NAME:SIZE;`
pub(crate) unsafe extern "C" fn set_zone(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls this for a command whose slot is NGX_HTTP_MAIN_CONF_OFFSET
    // (`module.rs`): `conf` is a `MainConf`.
    unsafe { directive(cf, cmd, conf, declare_zone) }
}

fn declare_zone(d: &mut Directive<'_>, main: &mut MainConf) -> ConfResult {
    let args = d.args();
    let mut zone: Option<(ngx_str_t, usize)> = None;
    let mut state_arg = None;
    for arg in &args[2..] {
        if arg.strip_prefix("state=").is_some() {
            state_arg = Some(arg);
            continue;
        }
        let Some(spec) = arg.strip_prefix("zone=") else {
            return Err(d.emerg(format_args!("invalid parameter \"{}\"", arg)));
        };
        let Some((name, size)) = parse::zone_name_size(text(&spec)) else {
            return Err(d.emerg(format_args!("invalid zone size \"{}\"", arg)));
        };
        let Some(size) = parse::size(size) else {
            return Err(d.emerg(format_args!("invalid zone size \"{}\"", arg)));
        };
        // SAFETY: nginx sets the page size before it reads the configuration.
        if size < MIN_ZONE_PAGES * unsafe { nginx_sys::ngx_pagesize } {
            return Err(d.emerg(format_args!("zone \"{}\" is too small", arg)));
        }
        let name = ngx_str_t { data: spec.data, len: name.len() };
        zone = Some((name, size));
    }
    // NGX_CONF_2MORE guarantees a parameter, and any but zone= was refused above.
    let (mut name, size) = zone.ok_or(ConfError::Logged)?;
    let state = match state_arg {
        None => None,
        Some(arg) => Some(open_state(d, main, arg, &name, &args[1])?),
    };

    let key = value(d, args[1])?;

    // SAFETY: `cf` is valid during parsing; the module's address is its shared-memory tag.
    let shm_zone = unsafe { ngx_shared_memory_add(d.conf(), &mut name, size, module_tag()) };
    let shm = NonNull::new(shm_zone).ok_or(ConfError::Logged)?;
    // SAFETY: a zone returned by ngx_shared_memory_add is valid for the cycle.
    let zone = unsafe { &mut *shm.as_ptr() };
    if !zone.data.is_null() {
        let directive = d.name();
        return Err(d.emerg(format_args!("{} \"{}\" is already declared", directive, name)));
    }
    let zone_conf = d.pool().allocate(ZoneConf {
        key,
        largest_cap: None,
        lined: false,
        lined_per_request: false,
        prequeued: false,
        itemized: false,
        shm_zone: shm,
        table: None,
        state,
        cycle: d.cycle(),
        redis: None,
    });
    let zone_conf = NonNull::new(zone_conf).ok_or(ConfError::Logged)?;
    main.zones.try_reserve(1).map_err(|_| ConfError::Logged)?;
    // SAFETY: made just now in the cycle's pool.
    main.zones.push(unsafe { ZoneRef::new(zone_conf) });
    zone.init = Some(init_zone);
    zone.data = zone_conf.as_ptr().cast();
    Ok(())
}

/// Creates the zone's table, or adopts the one a reload left in place.
unsafe extern "C" fn init_zone(shm_zone: *mut ngx_shm_zone_t, old_data: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx calls this as the `init` of a zone whose `data` `set_zone` made a
    // `ZoneConf`, with the zone's memory mapped and its slab pool initialised.
    unsafe { zone_init(shm_zone, old_data, init_table) }
}

fn init_table(zone: &ngx_shm_zone_t, conf: &mut ZoneConf, reused: bool) -> Result<(), ()> {
    let log = zone.shm.log;
    let name = zone.shm.name;
    // `conf`'s zone is this one: nginx mapped it and initialised its slab pool before `init`.
    let Some(mut pool) = conf.slab() else {
        return Err(());
    };
    let key_spec = conf.key.source().as_bytes();

    if reused {
        // Same name and size as before the reload: the memory, and the table in it, stayed.
        let Some(table) = NonNull::new(pool.as_mut().data.cast::<PermitTable>()) else {
            return Err(());
        };
        // SAFETY: the slab pool's `data` is only ever set to a table by this function.
        let existing = unsafe { table.as_ref() };
        if !existing.is_compatible() {
            ngx_log_error!(
                NGX_LOG_EMERG,
                log,
                "flash_sale_zone \"{}\" was created by an incompatible version of the module; \
                 rename or resize the zone to start it afresh",
                name
            );
            return Err(());
        }
        if existing.key_spec() != key_spec {
            ngx_log_error!(
                NGX_LOG_EMERG,
                log,
                "flash_sale_zone \"{}\" uses the \"{}\" key while previously it used the \"{}\" key",
                name,
                *conf.key.source(),
                String::from_utf8_lossy(existing.key_spec())
            );
            return Err(());
        }
        conf.table = Some(table);
        if let Some(file) = &conf.state {
            // The configuration opened the files anew, perhaps at another path: the file gets
            // every permit the zone holds.
            give_to_workers(conf, file, log);
            // SAFETY: the table lives in this zone's slab pool; workers of the old cycle may
            // still use it, under its lock.
            let (next_seq, held) =
                unsafe { ZoneStore::new(&pool, table, crate::http::now_ms()) }.snapshot();
            file.numbers().fetch_max(next_seq, core::sync::atomic::Ordering::AcqRel);
            let rewritten =
                file.rewrite(&name.to_string(), key_spec, crate::http::now_ms(), &held, |_| {
                    existing.stats.named_values()
                });
            existing.journal.compacted(rewritten.as_ref().ok().map(|r| r.bytes));
            if let Err(e) = rewritten {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    log,
                    "flash_sale_zone \"{}\": cannot rewrite state file \"{}\": {}",
                    name,
                    file.path.display(),
                    e
                );
            }
        }
        return Ok(());
    }

    let sip_key = match SmallRng::try_from_os_rng() {
        Ok(mut rng) => [rng.random(), rng.random()],
        Err(err) => {
            ngx_log_error!(
                NGX_LOG_EMERG,
                log,
                "flash_sale_zone \"{}\": no randomness: {}",
                name,
                err
            );
            return Err(());
        }
    };
    let Some(table) = ({
        let locked = pool.lock();
        PermitTable::create(&locked, bucket_count(zone.shm.size), sip_key, key_spec)
    }) else {
        ngx_log_error!(
            NGX_LOG_EMERG,
            log,
            "flash_sale_zone \"{}\" is too small for its table",
            name
        );
        return Err(());
    };
    let log_ctx = format!(" in flash_sale_zone \"{}\"\0", name);
    let slab = pool.as_mut();
    slab.data = table.as_ptr().cast();
    // Our own message says the zone is full, once; the slab's would repeat per request.
    slab.set_log_nomem(0);
    // SAFETY: the slab pool is ours alone until workers start; the context string is copied
    // into the zone so that it outlives this cycle's configuration.
    unsafe {
        let ctx = nginx_sys::ngx_slab_alloc(slab, log_ctx.len()).cast::<u8>();
        if !ctx.is_null() {
            ptr::copy_nonoverlapping(log_ctx.as_ptr(), ctx, log_ctx.len());
            slab.log_ctx = ctx;
        }
    }
    conf.table = Some(table);
    if let Some(file) = &conf.state {
        give_to_workers(conf, file, log);
        load_state(file, &name.to_string(), key_spec, &pool, table, log);
    }
    Ok(())
}

/// Opens the state file of `state=PATH` (relative to nginx's prefix) for zone `name` with
/// the key expression `key`; says what is wrong in the error log otherwise. Two zones cannot
/// share a file: each would take the other's for unusable.
fn open_state(
    d: &mut Directive<'_>,
    main: &MainConf,
    arg: &ngx_str_t,
    name: &ngx_str_t,
    key: &ngx_str_t,
) -> Result<StateFile, ConfError> {
    let prefix = d.prefix();
    let path = arg.as_bytes().strip_prefix(b"state=").unwrap_or_default();
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(prefix.as_bytes()))
        .join(std::path::Path::new(std::ffi::OsStr::from_bytes(path)));
    // Before opening: opening would lay out a lock page in what may be another zone's file.
    // SAFETY: zone configurations of this cycle live in its pool.
    let zones = main.zones.iter().map(|z| z.get());
    let shared = |z: &&ZoneConf| z.state.as_ref().is_some_and(|other| other.is_at(&path));
    if let Some(other) = zones.into_iter().find(shared) {
        return Err(d.emerg(format_args!(
            "\"{}\" is the state file of flash_sale_zone \"{}\" already, or its lock file",
            arg,
            other.name()
        )));
    }
    StateFile::open(path, state::header(&name.to_string(), key.as_bytes()))
        .map_err(|e| d.emerg(format_args!("cannot open \"{}\": {}", arg, e)))
}

/// Gives a state file to nginx's worker user (when nginx runs as root), so that workers can
/// reopen and compact it; nobody else can read it (see `journal.rs`).
fn give_to_workers(conf: &ZoneConf, file: &StateFile, log: *mut nginx_sys::ngx_log_t) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    // SAFETY: the cycle is being initialised; its core configuration was finished before any
    // shared zone is (ngx_init_cycle), and the core module's index is its slot.
    let ccf = unsafe {
        let ctx = conf.cycle.as_ref().conf_ctx;
        (*ctx.add(nginx_sys::ngx_core_module.index)).cast::<nginx_sys::ngx_core_conf_t>().as_ref()
    };
    let Some(ccf) = ccf else {
        return;
    };
    // NGX_CONF_UNSET_UINT: nginx is not root, or has no "user".
    if ccf.user == nginx_sys::ngx_uid_t::MAX {
        return;
    }
    if let Err(e) = file.set_owner(ccf.user, ccf.group) {
        ngx_log_error!(
            NGX_LOG_WARN,
            log,
            "cannot give state file \"{}\" to nginx's user: {}",
            file.path.display(),
            e
        );
    }
    // Workers compact the file through a new one beside it: the directory must be theirs to
    // write (by its owner, group or mode bits; access lists aside).
    let dir = file.path.parent().map(std::fs::metadata);
    let writable = |m: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        let mode = m.mode();
        (m.uid() == ccf.user && mode & 0o200 != 0)
            || (m.gid() == ccf.group && mode & 0o020 != 0)
            || mode & 0o002 != 0
    };
    if let Some(Ok(meta)) = dir {
        if !writable(&meta) {
            ngx_log_error!(
                NGX_LOG_WARN,
                log,
                "the directory of state file \"{}\" is not writable by nginx's user: workers cannot compact it, and it grows while nginx runs",
                file.path.display()
            );
        }
    }
}

/// Logs what a rewrite of `zone`'s state file skipped, and where it moved a file it could
/// not use.
fn report_rewrite(
    zone: &str,
    file: &StateFile,
    rewritten: &Rewritten,
    log: *mut nginx_sys::ngx_log_t,
) {
    log_skipped(zone, file, &rewritten.replay.skipped, log);
    if let Some(aside) = &rewritten.moved_aside {
        ngx_log_error!(
            NGX_LOG_WARN,
            log,
            "flash_sale_zone \"{}\": kept the unusable state file as \"{}\"",
            zone,
            aside.display()
        );
    }
}

fn log_skipped(zone: &str, file: &StateFile, skipped: &[String], log: *mut nginx_sys::ngx_log_t) {
    for reason in skipped {
        ngx_log_error!(
            NGX_LOG_WARN,
            log,
            "flash_sale_zone \"{}\": state file \"{}\": skipped {}",
            zone,
            file.path.display(),
            reason
        );
    }
}

/// Fills a new zone's table from its state file and leaves the file a snapshot of it (under
/// `nginx -t`, only reads it). Problems are logged and never stop nginx: what could be read
/// is kept.
fn load_state(
    file: &StateFile,
    zone: &str,
    key_spec: &[u8],
    slab: &SlabPool,
    table: NonNull<PermitTable>,
    log: *mut nginx_sys::ngx_log_t,
) {
    let now_ms = crate::http::now_ms();
    let path = file.path.display();
    // SAFETY: set once at startup.
    if unsafe { nginx_sys::ngx_test_config } != 0 {
        let text = std::fs::read(&file.path).unwrap_or_default();
        log_skipped(zone, file, &state::replay(&text, zone, key_spec, now_ms).skipped, log);
        return;
    }
    let mut lost = 0;
    let rewritten = file.rewrite(zone, key_spec, now_ms, &[], |replay| {
        let locked = slab.lock();
        // SAFETY: the table is new and the master is its only user; the lock is held.
        let table = unsafe { &mut *table.as_ptr() };
        lost = table.restore(&locked, &replay.permits, replay.next_seq, &replay.counters);
        table.stats.named_values()
    });
    let rewritten = match rewritten {
        Ok(rewritten) => rewritten,
        Err(e) => {
            // The permits it holds are in the zone if it could be read; it is compacted later.
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "flash_sale_zone \"{}\": cannot rewrite state file \"{}\" at start: {}",
                zone,
                path,
                e
            );
            return;
        }
    };
    report_rewrite(zone, file, &rewritten, log);
    // SAFETY: the table's counters are atomics.
    unsafe { table.as_ref() }.journal.compacted(Some(rewritten.bytes));
    ngx_log_error!(
        NGX_LOG_NOTICE,
        log,
        "flash_sale_zone \"{}\": restored {} permits from \"{}\"{}",
        zone,
        rewritten.replay.permits.len() - lost,
        path,
        if lost > 0 { format!(", {lost} did not fit the zone") } else { String::new() }
    );
}

/// Inherits unset values from the enclosing level and checks the resulting window.
pub unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    parent: *mut c_void,
    child: *mut c_void,
) -> *mut c_char {
    crate::ffi::guard(NGX_CONF_ERROR, || {
        // SAFETY: nginx passes two location configurations created by `create_loc_conf`.
        let (prev, conf) = unsafe { (&*parent.cast::<LocConf>(), &mut *child.cast::<LocConf>()) };
        if conf.gate == Gate::Unset {
            conf.gate = prev.gate;
        }
        conf.start_ms = conf.start_ms.or(prev.start_ms);
        conf.end_ms = conf.end_ms.or(prev.end_ms);
        conf.block_ratio = conf.block_ratio.or(prev.block_ratio);
        conf.max_permits = conf.max_permits.or(prev.max_permits);
        conf.item = conf.item.or(prev.item);
        conf.max_per_buyer = conf.max_per_buyer.or(prev.max_per_buyer);
        conf.reject_status = conf.reject_status.or(prev.reject_status);
        conf.permit_ttl_ms = conf.permit_ttl_ms.or(prev.permit_ttl_ms);
        conf.dry_run = conf.dry_run.or(prev.dry_run);
        conf.log_level = conf.log_level.or(prev.log_level);
        conf.release_header = conf.release_header.or(prev.release_header);
        conf.draw = conf.draw.or(prev.draw);
        conf.prequeue_ms = conf.prequeue_ms.or(prev.prequeue_ms);
        conf.token_secret = conf.token_secret.or(prev.token_secret);
        conf.queue = conf.queue.or(prev.queue);
        if conf.verify == Verify::Unset {
            conf.verify = prev.verify;
        }
        if matches!(conf.verify, Verify::Zone { .. }) && conf.token_secret.is_none() {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "\"flash_sale_verify\" needs a \"flash_sale_token_secret\" to check tokens with"
            );
            return NGX_CONF_ERROR;
        }
        if let Gate::Zone(zone) = conf.gate {
            // SAFETY: merging; no other reference to the zone is in use.
            let zone = unsafe { zone.as_mut() };
            zone.largest_cap = zone.largest_cap.max(conf.max_permits.and_then(Stock::fixed));
            zone.lined |= matches!(conf.queue, Some(Some(_)));
            zone.lined_per_request |= matches!(conf.queue, Some(Some(_)))
                && matches!(conf.draw.unwrap_or_default(), DrawMode::PerRequest);
            zone.prequeued |= conf.prequeue_ms.is_some();
            zone.itemized |= conf.item.is_some();
            if let Some(Some(_)) = conf.queue {
                // The draw decides who may join the line; drawn afresh on every request, it
                // would only delay a buyer turned away, who asks again.
                let per_request = matches!(conf.draw.unwrap_or_default(), DrawMode::PerRequest);
                if per_request && conf.block_ratio.is_some_and(BlockRatio::can_block) {
                    ngx_conf_log_error!(
                        NGX_LOG_EMERG,
                        cf,
                        "\"flash_sale_queue\" with a \"flash_sale_block_ratio\" needs \"flash_sale_draw per_key\": drawn per request, a buyer turned away draws again and joins the line anyway"
                    );
                    return NGX_CONF_ERROR;
                }
            }
        }
        if conf.window_is_empty() {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "the inherited settings leave {}", EMPTY_WINDOW);
            return NGX_CONF_ERROR;
        }
        NGX_CONF_OK
    })
}
