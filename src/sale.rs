//! The decision, in plain Rust: the sale window, the draw and the cap.
//!
//! Nothing here knows about nginx. Given a sale's settings, the clock, a random draw and a
//! permit store, [`decide`] returns the outcome for one buyer. The glue feeds it real values;
//! the unit tests feed it fixed ones.

use core::fmt;

pub use crate::line::{Queue, Waiting};

/// What the gate decided for one request; the names are the values of `$flash_sale_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The key evaluated to an empty string: nobody to give a permit to.
    NoKey,
    /// The key is longer than a permit can hold; refused rather than truncated.
    KeyTooLong,
    /// `flash_sale_item` evaluated to an empty string: no item to give a permit for.
    NoItem,
    /// The item is longer than [`MAX_ITEM_LEN`]; refused rather than truncated.
    ItemTooLong,
    /// The sale's start time has not come yet.
    NotStarted,
    /// The sale starts soon: the buyer is registered for the pre-queue's draw at the start.
    Prequeued,
    /// The sale's end time has passed.
    Ended,
    /// The buyer already holds a permit ("lucky once, lucky always").
    Permitted,
    /// Every permit under the cap is taken (or the zone has no room for another).
    SoldOut,
    /// The draw turned this buyer away this time.
    Blocked,
    /// The buyer holds permits for `flash_sale_max_per_buyer` items already.
    LimitReached,
    /// The sale's shared store (Redis) did not answer in time: a new buyer cannot be admitted
    /// without it (`on_error=closed`).
    Unavailable,
    /// The buyer is in the sale's waiting line (`flash_sale_queue`), not yet called in.
    Queued,
    /// The buyer won the draw and now holds a new permit.
    Admitted,
}

/// Counters per zone: one per outcome, and one per outcome in dry run.
pub const COUNTED: usize = 2 * Outcome::ALL.len();

/// The outcomes' names, in counter order (see [`Outcome::counter`]). Passing outcomes have no
/// dry-run counter: their two slots there are never used.
const NAMES: [&str; COUNTED] = [
    "NO_KEY",
    "KEY_TOO_LONG",
    "NO_ITEM",
    "ITEM_TOO_LONG",
    "NOT_STARTED",
    "PREQUEUED",
    "ENDED",
    "PERMITTED",
    "SOLD_OUT",
    "BLOCKED",
    "LIMIT_REACHED",
    "UNAVAILABLE",
    "QUEUED",
    "ADMITTED",
    "NO_KEY_DRY_RUN",
    "KEY_TOO_LONG_DRY_RUN",
    "NO_ITEM_DRY_RUN",
    "ITEM_TOO_LONG_DRY_RUN",
    "NOT_STARTED_DRY_RUN",
    "PREQUEUED_DRY_RUN",
    "ENDED_DRY_RUN",
    "PERMITTED",
    "SOLD_OUT_DRY_RUN",
    "BLOCKED_DRY_RUN",
    "LIMIT_REACHED_DRY_RUN",
    "UNAVAILABLE_DRY_RUN",
    "QUEUED_DRY_RUN",
    "ADMITTED",
];

impl Outcome {
    pub const ALL: [Outcome; 14] = [
        Outcome::NoKey,
        Outcome::KeyTooLong,
        Outcome::NoItem,
        Outcome::ItemTooLong,
        Outcome::NotStarted,
        Outcome::Prequeued,
        Outcome::Ended,
        Outcome::Permitted,
        Outcome::SoldOut,
        Outcome::Blocked,
        Outcome::LimitReached,
        Outcome::Unavailable,
        Outcome::Queued,
        Outcome::Admitted,
    ];

    /// The outcome's counter in a zone's statistics.
    /// A request that passes is counted as itself in dry run too: dry run changes nothing
    /// for it, and one outcome must not appear under two counters.
    pub const fn counter(self, dry_run: bool) -> usize {
        self as usize + if dry_run && !self.passes() { Outcome::ALL.len() } else { 0 }
    }

    /// The name in `$flash_sale_status`: with `_DRY_RUN` for a rejection that dry run let pass.
    pub const fn name(self, dry_run: bool) -> &'static str {
        NAMES[self.counter(dry_run)]
    }

    /// The name used in `$flash_sale_status`, logs and response bodies.
    pub const fn as_str(self) -> &'static str {
        self.name(false)
    }

    /// Whether the request goes on to the backend.
    pub const fn passes(self) -> bool {
        matches!(self, Outcome::Permitted | Outcome::Admitted)
    }

    /// Every counted (outcome, dry run) pair, once, in order: passing outcomes have no
    /// dry-run counter of their own.
    pub fn counted() -> impl Iterator<Item = (Outcome, bool)> {
        Outcome::ALL
            .into_iter()
            .flat_map(|o| [(o, false), (o, true)])
            .filter(|&(o, dry_run)| !(dry_run && o.passes()))
    }

    /// The HTTP status of a rejection; `reject` is the configured `flash_sale_reject_status`.
    /// Identity problems get client-error codes of their own so that a buyer is not told to
    /// retry something that cannot succeed.
    pub const fn status(self, reject: u16) -> u16 {
        match self {
            Outcome::NoKey => 401,
            Outcome::KeyTooLong | Outcome::NoItem | Outcome::ItemTooLong => 400,
            Outcome::Permitted | Outcome::Admitted => 200,
            _ => reject,
        }
    }

    /// Whether nginx answers `status` by closing the connection with nothing sent: a handler
    /// that returns 444 (`NGX_HTTP_CLOSE`), 408 (`NGX_HTTP_REQUEST_TIME_OUT`) or 499
    /// (`NGX_HTTP_CLIENT_CLOSED_REQUEST`) has its request terminated, logged with that status,
    /// by `ngx_http_finalize_request` (nginx's src/http/ngx_http_request.c). This is what
    /// `limit_req_status 444` does, and so does `flash_sale_reject_status 444`.
    pub const fn closes_connection(status: u16) -> bool {
        matches!(status, 408 | 444 | 499)
    }

    /// The short plain-text body sent with a rejection.
    pub const fn message(self) -> &'static str {
        match self {
            Outcome::NoKey => "NO_KEY: this sale needs a buyer identity.\n",
            Outcome::KeyTooLong => "KEY_TOO_LONG: the buyer identity is too long.\n",
            Outcome::NoItem => "NO_ITEM: this request names no item of the sale.\n",
            Outcome::ItemTooLong => "ITEM_TOO_LONG: the item's name is too long.\n",
            Outcome::NotStarted => "NOT_STARTED: the sale has not started yet.\n",
            Outcome::Prequeued => {
                "PREQUEUED: you are in the draw at the start; come back when the sale starts.\n"
            }
            Outcome::Ended => "ENDED: the sale has ended.\n",
            Outcome::Permitted => "PERMITTED\n",
            Outcome::SoldOut => "SOLD_OUT: what you asked for is sold out.\n",
            Outcome::Blocked => "BLOCKED: you were not drawn this time.\n",
            Outcome::LimitReached => {
                "LIMIT_REACHED: you hold permits for as many items as one buyer may.\n"
            }
            Outcome::Unavailable => "UNAVAILABLE: the sale cannot take new buyers right now.\n",
            Outcome::Queued => "QUEUED: you are in line; come back when your turn comes.\n",
            Outcome::Admitted => "ADMITTED\n",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest key a permit holds. Longer keys are refused, never truncated: a truncated key
/// could match someone else's permit.
pub const MAX_KEY_LEN: usize = 1024;

/// The longest item name (`flash_sale_item`) a permit holds; longer ones are refused.
pub const MAX_ITEM_LEN: usize = 256;

/// Whom a permit is for: a buyer (the zone's key) and an item (`flash_sale_item`; empty in a
/// zone that sells one item). "Lucky once, lucky always" holds per buyer and item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PermitKey<'a> {
    pub key: &'a [u8],
    pub item: &'a [u8],
}

impl<'a> PermitKey<'a> {
    /// A buyer's permit in a zone that sells one item.
    pub const fn single(key: &'a [u8]) -> Self {
        PermitKey { key, item: b"" }
    }

    /// The permit's key and item as one byte string (a field of a zone's permits hash in
    /// Redis, a host's note of a registration): the buyer's key in a zone that sells one item;
    /// else a zero byte, the item's length in decimal, `:`, the item, then the key (Redis's
    /// scripts read it back with their `parts`). A zone sells one item or several (see the
    /// README's `flash_sale_item`): a plain key that happened to look like this (a zero byte,
    /// digits, a colon) would be read as a key and an item.
    pub fn field(self) -> Vec<u8> {
        if self.item.is_empty() {
            return self.key.to_vec();
        }
        let mut field = format!("\0{}:", self.item.len()).into_bytes();
        field.extend_from_slice(self.item);
        field.extend_from_slice(self.key);
        field
    }

    /// The key and item of a [`PermitKey::field`]; anything else is a key of a zone of one
    /// item.
    pub fn from_field(field: &'a [u8]) -> Self {
        let item = || {
            let rest = field.strip_prefix(b"\0")?;
            let colon = rest.iter().position(|&b| b == b':')?;
            let digits = &rest[..colon];
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let len: usize = core::str::from_utf8(digits).ok()?.parse().ok()?;
            let rest = &rest[colon + 1..];
            (len > 0 && len <= rest.len())
                .then(|| PermitKey { key: &rest[len..], item: &rest[..len] })
        };
        item().unwrap_or(PermitKey::single(field))
    }
}

/// A permit as the outside sees it: its buyer's key, its item (empty in a zone that sells
/// one item), its number, when it was granted and when it expires (Unix milliseconds; `None`
/// for never).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PermitInfo {
    pub key: Vec<u8>,
    pub item: Vec<u8>,
    pub seq: u64,
    pub granted_ms: i64,
    pub expires_ms: Option<i64>,
}

impl PermitInfo {
    /// Whom the permit is for.
    pub fn permit_key(&self) -> PermitKey<'_> {
        PermitKey { key: &self.key, item: &self.item }
    }
}

/// An item of a zone that sells several (`flash_sale_item`), as the admin API shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItemInfo {
    pub item: Vec<u8>,
    /// 1, 2, 3 ... in the order the zone first saw the item: the listing's order.
    pub number: u64,
    /// Permits held for the item now.
    pub permits: u64,
    /// Buyers registered for it in the pre-queue.
    pub registered: u64,
    /// The stock set through the admin API (`PATCH zones/NAME/items/ITEM`), which wins over
    /// the configuration's.
    pub max_permits: Option<u64>,
    /// The cap the last request decided for the item was configured with
    /// (`flash_sale_max_permits`); `None` when it had none, or no request was decided yet.
    pub stock: Option<u64>,
}

impl ItemInfo {
    /// The cap in force: the admin API's stock, else the cap the last request decided for
    /// the item had, else `zone`, the zone's cap (its `max_permits` override, else its fixed
    /// `flash_sale_max_permits`), for an item no request has been decided for yet (one an
    /// operator granted, or any after a restart).
    pub fn cap(&self, zone: Cap) -> Cap {
        self.max_permits.or(self.stock).or(zone)
    }

    /// Permits left under [`ItemInfo::cap`]; `None` without one.
    pub fn left(&self, zone: Cap) -> Option<u64> {
        self.cap(zone).map(|cap| cap.saturating_sub(self.permits))
    }
}

/// A buyer's key and item to grant a permit for, and the permit's time-to-live in
/// milliseconds.
pub type Grant = (Vec<u8>, Vec<u8>, Option<i64>);

/// The latest instant a permit can expire: 9999-12-31T23:59:59.999Z, the last one RFC 3339
/// can write. nginx's time syntax reaches 2^63 ms; a time-to-live past this means "until then".
pub const LATEST_MS: i64 = 253_402_300_799_999;

/// When a permit given at `now_ms` for `ttl_ms` expires, in Unix milliseconds; never past
/// [`LATEST_MS`], never wrapping.
pub fn expiry(now_ms: i64, ttl_ms: i64) -> i64 {
    now_ms.saturating_add(ttl_ms).min(LATEST_MS)
}

/// When the sale is open, in Unix milliseconds. `None` means "open now" and "never ends".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
}

/// Why the window is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    NotStarted,
    Ended,
}

impl Window {
    /// Checks the clock against the window: the start is inclusive, the end exclusive.
    pub fn check(&self, now_ms: i64) -> Result<(), Closed> {
        match (self.start_ms, self.end_ms) {
            (Some(start), _) if now_ms < start => Err(Closed::NotStarted),
            (_, Some(end)) if now_ms >= end => Err(Closed::Ended),
            _ => Ok(()),
        }
    }

    /// Whether the window admits nobody, ever: an end that is not after the start.
    pub fn is_empty(&self) -> bool {
        matches!((self.start_ms, self.end_ms), (Some(start), Some(end)) if end <= start)
    }

    /// Whole seconds until the start, rounded up, for `Retry-After`; 0 once started.
    pub fn seconds_to_start(&self, now_ms: i64) -> i64 {
        match self.start_ms {
            Some(start) if start > now_ms => (start - now_ms + 999) / 1000,
            _ => 0,
        }
    }

    /// Whole seconds until the end, rounded up; 0 once it has come, `None` for a sale that
    /// never ends.
    pub fn seconds_to_end(&self, now_ms: i64) -> Option<i64> {
        self.end_ms.map(|end| match end.saturating_sub(now_ms) {
            left if left > 0 => (left - 1) / 1000 + 1,
            _ => 0,
        })
    }
}

/// The share of new buyers the draw turns away, from 0 (admit all) to 1 (admit none).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockRatio(f64);

impl BlockRatio {
    pub const ADMIT_ALL: BlockRatio = BlockRatio(0.0);

    /// Parses a decimal from 0 to 1, e.g. `0.4`, `1`, `0`.
    pub fn parse(s: &str) -> Option<BlockRatio> {
        // f64's parser accepts "inf", "NaN" and exponents; a ratio is plain digits and a dot.
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return None;
        }
        BlockRatio::new(s.parse().ok()?)
    }

    /// A ratio from a number, if it is from 0 to 1.
    pub fn new(ratio: f64) -> Option<BlockRatio> {
        (0.0..=1.0).contains(&ratio).then_some(BlockRatio(ratio))
    }

    pub fn value(self) -> f64 {
        self.0
    }

    /// Whether this ratio can turn anyone away at all (it cannot at 0).
    pub fn can_block(self) -> bool {
        self.0 > 0.0
    }

    /// `draw` is uniform in [0, 1): below the ratio means blocked, so 1 blocks every draw.
    pub fn blocks(self, draw: f64) -> bool {
        draw < self.0
    }
}

/// How often a buyer draws: on every request (each one a new ticket), or once per key and
/// round of `interval_ms` (the whole sale when `None`), so that retrying gains nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DrawMode {
    #[default]
    PerRequest,
    PerKey {
        interval_ms: Option<i64>,
    },
}

impl DrawMode {
    /// The round a per-key draw belongs to at `now_ms`.
    pub fn round(self, now_ms: i64) -> u64 {
        match self {
            DrawMode::PerKey { interval_ms: Some(interval) } => now_ms.div_euclid(interval) as u64,
            _ => 0,
        }
    }
}

/// The most permits a zone hands out for an item through a location (for the zone's one item
/// when it sells one); `None` is unlimited.
pub type Cap = Option<u64>;

/// Everything a location says about its sale.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sale {
    pub window: Window,
    pub block_ratio: BlockRatio,
    pub cap: Cap,
    /// `flash_sale_prequeue`: how long before the start buyers are registered for the
    /// pre-queue's draw.
    pub prequeue_ms: Option<i64>,
    /// `flash_sale_queue`: buyers who may buy wait in a paced line.
    pub queue: Option<Queue>,
    /// `flash_sale_max_per_buyer`: how many items one buyer may hold permits for.
    pub max_per_buyer: Option<u64>,
    /// `flash_sale_item`: the zone sells several items, and a request must name one.
    pub itemized: bool,
}

impl Sale {
    /// Whether a buyer arriving at `now_ms` is registered for the pre-queue: in the last
    /// `prequeue_ms` before the start.
    pub fn prequeue_open(&self, now_ms: i64) -> bool {
        match (self.prequeue_ms, self.window.start_ms) {
            (Some(lead), Some(start)) => now_ms < start && now_ms >= start.saturating_sub(lead),
            _ => false,
        }
    }
}

/// A sale's settings changed at run time (the admin API's `PATCH zones/NAME`), which win over
/// the configuration; `None` is a field not overridden, where the configuration holds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Overrides {
    /// The draw's block ratio, from 0 to 1. Kept as the number given: [`Overrides::apply`]
    /// ignores one outside 0 to 1 (the API refuses it, but Redis may hold anything).
    pub block_ratio: Option<f64>,
    /// The cap on permits.
    pub max_permits: Option<u64>,
    /// The sale's start, in ms since the Unix epoch.
    pub start_ms: Option<i64>,
    /// The sale's end, in ms since the Unix epoch.
    pub end_ms: Option<i64>,
    /// The line's rate, in thousandths of a buyer per second (`limit_req`'s unit); it applies
    /// where a location has a line.
    pub queue_rate: Option<u64>,
}

impl Overrides {
    /// The configured sale with the overrides applied.
    pub fn apply(&self, mut sale: Sale) -> Sale {
        if let Some(ratio) = self.block_ratio.and_then(BlockRatio::new) {
            sale.block_ratio = ratio;
        }
        if let Some(cap) = self.max_permits {
            sale.cap = Some(cap);
        }
        if let Some(start) = self.start_ms {
            sale.window.start_ms = Some(start);
        }
        if let Some(end) = self.end_ms {
            sale.window.end_ms = Some(end);
        }
        if let (Some(queue), Some(rate)) =
            (&mut sale.queue, self.queue_rate.and_then(crate::line::Rate::from_milli))
        {
            queue.rate = rate;
        }
        sale
    }

    /// These overrides with `patch`'s changes made.
    pub fn patched(&self, patch: &OverridesPatch) -> Overrides {
        fn change<T: Copy>(now: Option<T>, change: Option<Option<T>>) -> Option<T> {
            change.unwrap_or(now)
        }
        Overrides {
            block_ratio: change(self.block_ratio, patch.block_ratio),
            max_permits: change(self.max_permits, patch.max_permits),
            start_ms: change(self.start_ms, patch.start_ms),
            end_ms: change(self.end_ms, patch.end_ms),
            queue_rate: change(self.queue_rate, patch.queue_rate),
        }
    }

    /// The window the overridden times alone make (`None` where no time is overridden).
    pub fn window(&self) -> Window {
        Window { start_ms: self.start_ms, end_ms: self.end_ms }
    }
}

/// A change to [`Overrides`], field by field, in the same shapes and units: `None` leaves the
/// field as it is, `Some(None)` clears it, `Some(Some(value))` sets it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OverridesPatch {
    pub block_ratio: Option<Option<f64>>,
    pub max_permits: Option<Option<u64>>,
    pub start_ms: Option<Option<i64>>,
    pub end_ms: Option<Option<i64>>,
    pub queue_rate: Option<Option<u64>>,
}

/// A permit as a passing request sees it: its number and when it stops counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub seq: u64,
    pub expires_ms: Option<i64>,
}

/// What the store says about a key before the draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The key holds this permit.
    Permitted(Held),
    /// No permit for the key, and the cap is reached.
    SoldOut,
    /// No permit for the key, and the buyer holds permits for as many items as he may.
    LimitReached,
    /// No permit for the key, and room under the cap: the key may draw.
    Open,
    /// The key held a permit when last asked, but only the sale's shared store can say
    /// whether it still does: ask it before any draw.
    Recheck,
    /// No permit for the key, room under the cap, and the key is in the waiting line: it
    /// keeps its place without drawing again.
    InLine,
}

/// What the store did when asked to admit a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A new permit was stored.
    Admitted(Held),
    /// The key already held this permit (another worker admitted it in the meantime).
    Permitted(Held),
    /// The cap was reached first.
    SoldOut,
    /// The buyer holds permits for `flash_sale_max_per_buyer` items already.
    LimitReached,
    /// The zone had no memory for another permit.
    ZoneFull,
}

/// What the store did when asked to register a key for the pre-queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    /// The key is registered (now, or by an earlier request: once per key).
    Registered,
    /// The zone had no memory for the registration.
    ZoneFull,
    /// The item has no stock (0, as a `map`'s `default 0` gives an item it does not know):
    /// nobody is registered for it, and it takes no memory.
    NoStock,
}

/// A permit store as the draw sees it. Each call is one atomic step against every worker.
///
/// A store holding pre-queue registrations draws them first thing in the first `lookup` or
/// `admit` of an open window, in the same atomic step, so nobody arriving after the start is
/// looked at before the pre-queue's winners hold their permits.
pub trait PermitLookup {
    /// Does `key` hold a permit, and if not, is there room under the sale's cap and under the
    /// buyer's limit?
    fn lookup(&mut self, key: PermitKey<'_>, sale: &Sale) -> Lookup;
    /// Whether to look the key up even when nobody is drawn (a ratio of 0). A store whose
    /// admission repeats the lookup in the same step does not need to; one whose admission is
    /// a round trip elsewhere does, to spare it for the buyers it already knows.
    fn lookup_always(&self) -> bool {
        false
    }
    /// Registers `key` for the pre-queue's draw at the start (its item's cap is the sale's).
    fn register(&mut self, key: PermitKey<'_>, sale: &Sale) -> Registration;
}

/// A store that also admits: the zone itself, where the admission is one more locked step.
pub trait PermitStore: PermitLookup {
    /// Stores a permit for `key` if it has none, the item's count is under the sale's cap and
    /// the buyer's items under his limit.
    fn admit(&mut self, key: PermitKey<'_>, sale: &Sale) -> Admission;
    /// For a sale with a line, in one atomic step: a key that holds a permit passes, at the cap
    /// it is told so, else it is put in the line (once) and admitted as [`admit`] does when it
    /// is called in.
    ///
    /// [`admit`]: PermitStore::admit
    fn queue(&mut self, key: PermitKey<'_>, sale: &Sale) -> Queued;
}

/// What the line did for a buyer who may buy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    /// Decided as an admission is: the key holds a permit, the cap is reached, or the key was
    /// called in and admitted (or found the stock gone).
    Decided(Admission),
    /// Not called yet.
    Waiting(Waiting),
    /// The line has no room for him (its ring, or the zone's memory).
    Full,
}

/// The pre-queue's draw: the `registered` buyers (by their index in the order of
/// registration) in a uniformly random order, drawn lazily, so that a draw that stops early
/// (every item's cap reached) costs what it took. The first `n` of it are a uniform choice of
/// `n`, in a uniform order: neither arriving early nor arriving through a fast worker is worth
/// anything.
///
/// A Fisher-Yates shuffle, one swap per buyer taken.
pub fn shuffled<'r>(
    registered: usize,
    rng: &'r mut impl rand::Rng,
) -> impl Iterator<Item = usize> + 'r {
    let mut order: Vec<usize> = (0..registered).collect();
    (0..registered).map(move |i| {
        let j = rng.random_range(i..order.len());
        order.swap(i, j);
        order[i]
    })
}

/// Whether a registered buyer the pre-queue's draw comes to gets a permit: with a cap, while
/// his item has `room`; without one (`None`), by a draw against the block ratio; never past
/// the buyer's limit, with `held` items held already.
pub fn prequeue_wins(
    room: Option<u64>,
    held: u64,
    sale: &Sale,
    draw: impl FnOnce() -> f64,
) -> bool {
    let within = sale.max_per_buyer.is_none_or(|limit| held < limit);
    within
        && match room {
            Some(room) => room > 0,
            None => !sale.block_ratio.blocks(draw()),
        }
}

/// The outcome of a request, the permit it passed with, and for QUEUED, its place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub permit: Option<Held>,
    pub waiting: Option<Waiting>,
}

impl From<Outcome> for Verdict {
    fn from(outcome: Outcome) -> Verdict {
        Verdict { outcome, permit: None, waiting: None }
    }
}

impl Verdict {
    /// A passing verdict with its permit.
    pub fn passed(outcome: Outcome, held: Held) -> Verdict {
        Verdict { outcome, permit: Some(held), waiting: None }
    }
}

/// How far the checks before the admission got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Decided without an admission.
    Decided(Verdict),
    /// The key may have a permit that only the sale's shared store knows of: ask it first.
    Recheck,
    /// Everything passed (the draw too, if any): admit the key.
    Admit,
    /// Everything passed, in a sale with a line: the key joins it, or keeps its place.
    Line,
}

/// Everything before the admission, in the documented order: key, item, window (and
/// pre-queue), permit, cap, the buyer's limit, line (a buyer in it keeps his place and draws
/// no more), draw.
///
/// `draw` is called at most once, and only when the ratio can block someone, so the common
/// cases (ratio 0, returning winners, sold out) never pay for a random number.
pub fn draw_step(
    sale: &Sale,
    key: PermitKey<'_>,
    now_ms: i64,
    draw: impl FnOnce() -> f64,
    store: &mut impl PermitLookup,
) -> Step {
    let decided = |outcome: Outcome| Step::Decided(outcome.into());
    if key.key.is_empty() {
        return decided(Outcome::NoKey);
    }
    if key.key.len() > MAX_KEY_LEN {
        return decided(Outcome::KeyTooLong);
    }
    if sale.itemized && key.item.is_empty() {
        return decided(Outcome::NoItem);
    }
    if key.item.len() > MAX_ITEM_LEN {
        return decided(Outcome::ItemTooLong);
    }
    match sale.window.check(now_ms) {
        Err(Closed::NotStarted) if sale.prequeue_open(now_ms) => {
            return match store.register(key, sale) {
                Registration::Registered => decided(Outcome::Prequeued),
                // Not registered, and told so: the buyer may still draw after the start.
                Registration::ZoneFull => decided(Outcome::NotStarted),
                Registration::NoStock => decided(Outcome::SoldOut),
            };
        }
        Err(Closed::NotStarted) => return decided(Outcome::NotStarted),
        Err(Closed::Ended) => return decided(Outcome::Ended),
        Ok(()) => {}
    }
    let can_block = sale.block_ratio.can_block();
    let lined = sale.queue.is_some();
    // A line without a draw asks the store once: its step checks the permit and the cap
    // itself (see `PermitStore::queue`).
    if lined && !can_block && !store.lookup_always() {
        return Step::Line;
    }
    if can_block || lined || store.lookup_always() {
        match store.lookup(key, sale) {
            Lookup::Permitted(held) => {
                return Step::Decided(Verdict::passed(Outcome::Permitted, held))
            }
            Lookup::SoldOut => return decided(Outcome::SoldOut),
            Lookup::LimitReached => return decided(Outcome::LimitReached),
            Lookup::Recheck => return Step::Recheck,
            Lookup::InLine => return Step::Line,
            Lookup::Open if can_block && sale.block_ratio.blocks(draw()) => {
                return decided(Outcome::Blocked)
            }
            Lookup::Open => {}
        }
    }
    if lined {
        Step::Line
    } else {
        Step::Admit
    }
}

/// The verdict an admission gives.
pub fn admitted(admission: Admission) -> Verdict {
    match admission {
        Admission::Admitted(held) => Verdict::passed(Outcome::Admitted, held),
        Admission::Permitted(held) => Verdict::passed(Outcome::Permitted, held),
        Admission::SoldOut | Admission::ZoneFull => Outcome::SoldOut.into(),
        Admission::LimitReached => Outcome::LimitReached.into(),
    }
}

/// The verdict the line gives.
pub fn lined(queued: Queued) -> Verdict {
    match queued {
        Queued::Decided(admission) => admitted(admission),
        Queued::Waiting(waiting) => {
            Verdict { outcome: Outcome::Queued, permit: None, waiting: Some(waiting) }
        }
        // Not sold out: the stock is there, the line has no room now; asked again, it may.
        Queued::Full => Outcome::Unavailable.into(),
    }
}

/// Decides one request against a store that admits on its own: [`draw_step`], then the
/// admission.
pub fn decide<S: PermitStore>(
    sale: &Sale,
    key: PermitKey<'_>,
    now_ms: i64,
    draw: impl FnOnce() -> f64,
    store: &mut S,
) -> Verdict {
    match draw_step(sale, key, now_ms, draw, store) {
        Step::Decided(verdict) => verdict,
        // Admission repeats the permit and cap checks under the same lock as the insert, so
        // two workers racing for the last permit cannot both win it. A store that admits
        // itself has nothing to recheck.
        Step::Admit | Step::Recheck => admitted(store.admit(key, sale)),
        Step::Line => lined(store.queue(key, sale)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::{rngs::SmallRng, Rng, SeedableRng};

    /// A store with the real semantics and none of the memory: a list of (key, item) permits,
    /// and a line of its own (the zone's, in a vector; a clock it is told).
    #[derive(Default)]
    struct SetStore {
        permits: Vec<(Vec<u8>, Vec<u8>)>,
        registered: Vec<(Vec<u8>, Vec<u8>)>,
        room: Option<usize>,
        lookups: usize,
        line: Vec<(Vec<u8>, u64)>,
        line_state: crate::line::LineState,
        ranks: Vec<u32>,
        now_ms: i64,
    }

    fn owned(key: PermitKey<'_>) -> (Vec<u8>, Vec<u8>) {
        (key.key.to_vec(), key.item.to_vec())
    }

    impl SetStore {
        fn held(&self, key: PermitKey<'_>) -> Option<Held> {
            let index = self.permits.iter().position(|p| *p == owned(key))?;
            Some(Held { seq: index as u64 + 1, expires_ms: None })
        }

        fn count(&self, item: &[u8]) -> u64 {
            self.permits.iter().filter(|(_, i)| i == item).count() as u64
        }

        fn items_held(&self, key: &[u8]) -> u64 {
            self.permits.iter().filter(|(k, _)| k == key).count() as u64
        }

        /// What a key gets before any admission: its permit, SOLD_OUT, LIMIT_REACHED.
        fn barrier(&self, key: PermitKey<'_>, sale: &Sale) -> Option<Admission> {
            if let Some(held) = self.held(key) {
                Some(Admission::Permitted(held))
            } else if sale.cap.is_some_and(|cap| self.count(key.item) >= cap) {
                Some(Admission::SoldOut)
            } else if sale.max_per_buyer.is_some_and(|n| self.items_held(key.key) >= n) {
                Some(Admission::LimitReached)
            } else {
                None
            }
        }

        /// The pre-queue's draw, as the trait asks: before anything else in an open window.
        fn settle(&mut self, sale: &Sale) {
            if sale.prequeue_ms.is_none() || self.registered.is_empty() {
                return;
            }
            let registered = core::mem::take(&mut self.registered);
            let mut rng = SmallRng::seed_from_u64(11);
            let mut draws = SmallRng::seed_from_u64(12);
            for i in shuffled(registered.len(), &mut rng) {
                let (key, item) = &registered[i];
                let room = sale.cap.map(|cap| cap.saturating_sub(self.count(item)));
                if prequeue_wins(room, self.items_held(key), sale, || draws.random()) {
                    self.permits.push(registered[i].clone());
                }
            }
        }
    }

    impl PermitLookup for SetStore {
        fn lookup(&mut self, key: PermitKey<'_>, sale: &Sale) -> Lookup {
            self.settle(sale);
            self.lookups += 1;
            match self.barrier(key, sale) {
                Some(Admission::Permitted(held)) => Lookup::Permitted(held),
                Some(Admission::LimitReached) => Lookup::LimitReached,
                Some(_) => Lookup::SoldOut,
                None if self.line.iter().any(|(k, _)| k == key.key) => Lookup::InLine,
                None => Lookup::Open,
            }
        }

        fn register(&mut self, key: PermitKey<'_>, _sale: &Sale) -> Registration {
            if self.room.is_some_and(|room| self.registered.len() >= room) {
                return Registration::ZoneFull;
            }
            if !self.registered.contains(&owned(key)) {
                self.registered.push(owned(key));
            }
            Registration::Registered
        }
    }

    impl PermitStore for SetStore {
        fn admit(&mut self, key: PermitKey<'_>, sale: &Sale) -> Admission {
            self.settle(sale);
            if let Some(decided) = self.barrier(key, sale) {
                decided
            } else if self.room.is_some_and(|room| self.permits.len() >= room) {
                Admission::ZoneFull
            } else {
                self.permits.push(owned(key));
                Admission::Admitted(Held { seq: self.permits.len() as u64, expires_ms: None })
            }
        }

        fn queue(&mut self, key: PermitKey<'_>, sale: &Sale) -> Queued {
            use crate::line::{Place, Ranks};
            let Some(queue) = sale.queue else {
                return Queued::Decided(self.admit(key, sale));
            };
            if let Some(decided) = self.barrier(key, sale) {
                return Queued::Decided(decided);
            }
            if self.ranks.is_empty() {
                self.ranks = vec![0; 64];
            }
            let ticket = match self.line.iter().find(|(k, _)| k == key.key) {
                Some(&(_, ticket)) => ticket,
                None => match self.line_state.join(&mut Ranks::new(&mut self.ranks)) {
                    Ok(ticket) => {
                        self.line.push((key.key.to_vec(), ticket));
                        ticket
                    }
                    Err(_) => return Queued::Full,
                },
            };
            self.line_state.call(queue.rate, self.now_ms);
            match self.line_state.place(&Ranks::new(&mut self.ranks), ticket, queue.rate) {
                Place::Waiting(waiting) => Queued::Waiting(waiting),
                Place::Called => {
                    let mut ranks = Ranks::new(&mut self.ranks);
                    self.line_state.leave(&mut ranks, ticket, true);
                    self.line.retain(|(k, _)| k != key.key);
                    Queued::Decided(self.admit(key, sale))
                }
            }
        }
    }

    fn sale(ratio: f64, cap: Cap) -> Sale {
        Sale { block_ratio: BlockRatio(ratio), cap, ..Sale::default() }
    }

    fn outcome(
        sale: &Sale,
        key: &[u8],
        now_ms: i64,
        draw: impl FnOnce() -> f64,
        store: &mut SetStore,
    ) -> Outcome {
        decide(sale, PermitKey::single(key), now_ms, draw, store).outcome
    }

    fn never_drawn() -> f64 {
        panic!("the draw must not run here")
    }

    #[test]
    fn expiries_never_wrap_nor_pass_the_year_9999() {
        assert_eq!(expiry(1_000, 500), 1_500);
        assert_eq!(expiry(1_700_000_000_000, i64::MAX), LATEST_MS);
        assert_eq!(expiry(1_700_000_000_000, 15_250_284_452 * 604_800_000), LATEST_MS);
    }

    #[test]
    fn statuses_nginx_answers_by_closing() {
        for status in [444, 408, 499] {
            assert!(Outcome::closes_connection(status), "{status}");
        }
        for status in [400, 403, 429, 503, 599] {
            assert!(!Outcome::closes_connection(status), "{status}");
        }
    }

    #[test]
    fn empty_windows_and_counted_outcomes() {
        assert!(Window { start_ms: Some(5), end_ms: Some(5) }.is_empty());
        assert!(Window { start_ms: Some(6), end_ms: Some(5) }.is_empty());
        assert!(!Window { start_ms: Some(5), end_ms: Some(6) }.is_empty());
        assert!(!Window { start_ms: None, end_ms: Some(5) }.is_empty());
        let counted: Vec<_> = Outcome::counted().collect();
        assert_eq!(counted.len(), Outcome::ALL.len() * 2 - 2, "ADMITTED and PERMITTED pass");
        assert!(counted.iter().all(|&(o, dry)| !(dry && o.passes())));
    }

    #[test]
    fn window_bounds_are_start_inclusive_end_exclusive() {
        let w = Window { start_ms: Some(1_000), end_ms: Some(2_000) };
        assert_eq!(w.check(999), Err(Closed::NotStarted));
        assert_eq!(w.check(1_000), Ok(()));
        assert_eq!(w.check(1_999), Ok(()));
        assert_eq!(w.check(2_000), Err(Closed::Ended));
        assert_eq!(Window::default().check(i64::MIN), Ok(()));
        assert_eq!(Window { start_ms: None, end_ms: Some(5) }.check(4), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let w = Window { start_ms: Some(10_000), end_ms: None };
        assert_eq!(w.seconds_to_start(0), 10);
        assert_eq!(w.seconds_to_start(9_999), 1);
        assert_eq!(w.seconds_to_start(8_500), 2);
        assert_eq!(w.seconds_to_start(10_000), 0);
        assert_eq!(Window::default().seconds_to_start(0), 0);
    }

    #[test]
    fn seconds_to_the_end_round_up_and_stop_at_zero() {
        let w = Window { start_ms: Some(0), end_ms: Some(10_000) };
        assert_eq!(w.seconds_to_end(0), Some(10));
        assert_eq!(w.seconds_to_end(9_999), Some(1));
        assert_eq!(w.seconds_to_end(8_500), Some(2));
        assert_eq!(w.seconds_to_end(10_000), Some(0));
        assert_eq!(w.seconds_to_end(i64::MAX), Some(0));
        assert_eq!(
            Window { start_ms: None, end_ms: Some(i64::MAX) }.seconds_to_end(i64::MIN),
            Some(i64::MAX / 1000 + 1)
        );
        assert_eq!(Window { start_ms: Some(10_000), end_ms: None }.seconds_to_end(0), None);
    }

    #[test]
    fn block_ratio_parses_only_plain_decimals_in_range() {
        assert_eq!(BlockRatio::parse("0.4"), Some(BlockRatio(0.4)));
        assert_eq!(BlockRatio::parse("0"), Some(BlockRatio(0.0)));
        assert_eq!(BlockRatio::parse("1"), Some(BlockRatio(1.0)));
        assert_eq!(BlockRatio::parse("1.0"), Some(BlockRatio(1.0)));
        assert_eq!(BlockRatio::parse(".5"), Some(BlockRatio(0.5)));
        for bad in ["", "1.01", "-0.1", "2", "NaN", "inf", "1e-1", "0.4x", "0..4", "."] {
            assert_eq!(BlockRatio::parse(bad), None, "{bad:?} must be refused");
        }
    }

    #[test]
    fn block_ratio_edges() {
        assert!(!BlockRatio(0.0).blocks(0.0));
        assert!(BlockRatio(1.0).blocks(0.999_999_999));
        assert!(BlockRatio(0.4).blocks(0.399));
        assert!(!BlockRatio(0.4).blocks(0.4));
    }

    #[test]
    fn overrides_win_over_the_configuration_field_by_field() {
        let configured = Sale {
            window: Window { start_ms: Some(10), end_ms: Some(20) },
            block_ratio: BlockRatio(0.5),
            cap: Some(3),
            prequeue_ms: Some(5),
            queue: None,
            ..Sale::default()
        };
        assert_eq!(Overrides::default().apply(configured), configured);
        let all = Overrides {
            block_ratio: Some(0.25),
            max_permits: Some(7),
            start_ms: Some(100),
            end_ms: Some(200),
            queue_rate: None,
        };
        assert_eq!(
            all.apply(configured),
            Sale {
                window: Window { start_ms: Some(100), end_ms: Some(200) },
                block_ratio: BlockRatio(0.25),
                cap: Some(7),
                prequeue_ms: Some(5),
                queue: None,
                ..Sale::default()
            }
        );
        let cap_only = Overrides { max_permits: Some(0), ..Overrides::default() };
        assert_eq!(cap_only.apply(configured), Sale { cap: Some(0), ..configured });
        assert_eq!(cap_only.apply(sale(0.0, None)).cap, Some(0), "over an unlimited cap too");
        let end_only = Overrides { end_ms: Some(15), ..Overrides::default() };
        assert_eq!(
            end_only.apply(configured).window,
            Window { start_ms: Some(10), end_ms: Some(15) }
        );
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let ratio = Overrides { block_ratio: Some(bad), ..Overrides::default() };
            assert_eq!(ratio.apply(configured), configured, "{bad} is no ratio: ignored");
        }
        let edges = Overrides { block_ratio: Some(1.0), ..Overrides::default() };
        assert_eq!(edges.apply(configured).block_ratio, BlockRatio(1.0));
    }

    #[test]
    fn a_patch_sets_clears_or_leaves_each_field() {
        let now = Overrides {
            block_ratio: Some(0.25),
            max_permits: Some(7),
            start_ms: Some(100),
            end_ms: None,
            queue_rate: None,
        };
        assert_eq!(now.patched(&OverridesPatch::default()), now, "an empty patch changes nothing");
        let patch = OverridesPatch {
            block_ratio: None,
            max_permits: Some(None),
            start_ms: Some(Some(150)),
            end_ms: Some(Some(200)),
            queue_rate: None,
        };
        assert_eq!(
            now.patched(&patch),
            Overrides {
                block_ratio: Some(0.25),
                max_permits: None,
                start_ms: Some(150),
                end_ms: Some(200),
                queue_rate: None
            }
        );
        let clear_all = OverridesPatch {
            block_ratio: Some(None),
            max_permits: Some(None),
            start_ms: Some(None),
            end_ms: Some(None),
            queue_rate: None,
        };
        assert_eq!(now.patched(&clear_all), Overrides::default());
        assert_eq!(Overrides::default().patched(&clear_all), Overrides::default());
        assert_eq!(now.patched(&patch).window(), Window { start_ms: Some(150), end_ms: Some(200) });
        let backwards = OverridesPatch { end_ms: Some(Some(100)), ..OverridesPatch::default() };
        assert!(now.patched(&backwards).window().is_empty(), "an end at the start");
        assert_eq!(Overrides::default().window(), Window::default());
    }

    #[test]
    fn empty_and_oversized_keys_never_reach_the_store() {
        let mut store = SetStore::default();
        let s = sale(0.0, None);
        assert_eq!(outcome(&s, b"", 0, never_drawn, &mut store), Outcome::NoKey);
        let long = vec![b'k'; MAX_KEY_LEN + 1];
        assert_eq!(outcome(&s, &long, 0, never_drawn, &mut store), Outcome::KeyTooLong);
        let longest = vec![b'k'; MAX_KEY_LEN];
        assert_eq!(outcome(&s, &longest, 0, never_drawn, &mut store), Outcome::Admitted);
        assert_eq!(store.permits.len(), 1);
    }

    #[test]
    fn closed_window_turns_away_even_permit_holders() {
        let mut store = SetStore::default();
        store.permits.push((b"alice".to_vec(), vec![]));
        let mut s = sale(0.0, None);
        s.window = Window { start_ms: Some(100), end_ms: Some(200) };
        assert_eq!(outcome(&s, b"alice", 99, never_drawn, &mut store), Outcome::NotStarted);
        assert_eq!(outcome(&s, b"alice", 200, never_drawn, &mut store), Outcome::Ended);
        assert_eq!(outcome(&s, b"alice", 150, never_drawn, &mut store), Outcome::Permitted);
    }

    #[test]
    fn lucky_once_lucky_always() {
        let mut store = SetStore::default();
        let s = sale(0.5, None);
        assert_eq!(outcome(&s, b"alice", 0, || 0.9, &mut store), Outcome::Admitted);
        // Later draws would all block, but alice never draws again.
        for _ in 0..10 {
            assert_eq!(outcome(&s, b"alice", 0, never_drawn, &mut store), Outcome::Permitted);
        }
        assert_eq!(outcome(&s, b"bob", 0, || 0.1, &mut store), Outcome::Blocked);
        assert!(!store.permits.iter().any(|p| p.0 == b"bob"));
    }

    #[test]
    fn passing_verdicts_carry_the_permit_number() {
        let mut store = SetStore::default();
        let s = sale(0.5, None);
        let seq = |v: Verdict| v.permit.map(|held| held.seq);
        let admitted = decide(&s, PermitKey::single(b"a"), 0, || 0.9, &mut store);
        let first = Held { seq: 1, expires_ms: None };
        assert_eq!(admitted, Verdict::passed(Outcome::Admitted, first));
        assert_eq!(seq(decide(&s, PermitKey::single(b"b"), 0, || 0.9, &mut store)), Some(2));
        assert_eq!(seq(decide(&s, PermitKey::single(b"a"), 0, never_drawn, &mut store)), Some(1));
        assert_eq!(
            decide(&s, PermitKey::single(b"c"), 0, || 0.1, &mut store),
            Outcome::Blocked.into()
        );
    }

    #[test]
    fn counters_and_dry_run_names() {
        let mut slots: Vec<usize> =
            Outcome::ALL.iter().flat_map(|o| [o.counter(false), o.counter(true)]).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), COUNTED - 2, "passing outcomes share their slot in dry run");
        assert!(slots.iter().all(|&s| s < COUNTED));
        assert_eq!(Outcome::Admitted.counter(true), Outcome::Admitted.counter(false));
        assert_ne!(Outcome::Blocked.counter(true), Outcome::Blocked.counter(false));
        assert_eq!(Outcome::Blocked.name(true), "BLOCKED_DRY_RUN");
        assert_eq!(Outcome::SoldOut.name(true), "SOLD_OUT_DRY_RUN");
        assert_eq!(Outcome::Admitted.name(true), "ADMITTED");
        assert_eq!(Outcome::Blocked.name(false), "BLOCKED");
        for o in Outcome::ALL {
            assert!(o.name(true).starts_with(o.as_str()));
        }
    }

    #[test]
    fn ratio_zero_admits_without_a_draw_or_a_lookup() {
        let mut store = SetStore::default();
        let s = sale(0.0, None);
        assert_eq!(outcome(&s, b"a", 0, never_drawn, &mut store), Outcome::Admitted);
        assert_eq!(outcome(&s, b"a", 0, never_drawn, &mut store), Outcome::Permitted);
        assert_eq!(store.lookups, 0);
    }

    #[test]
    fn ratio_one_admits_nobody_new_but_keeps_winners() {
        let mut store = SetStore::default();
        store.permits.push((b"winner".to_vec(), vec![]));
        let s = sale(1.0, None);
        assert_eq!(outcome(&s, b"new", 0, || 0.0, &mut store), Outcome::Blocked);
        assert_eq!(outcome(&s, b"new", 0, || 0.999_999, &mut store), Outcome::Blocked);
        assert_eq!(outcome(&s, b"winner", 0, never_drawn, &mut store), Outcome::Permitted);
    }

    #[test]
    fn the_cap_is_exact_and_sold_out_skips_the_draw() {
        let mut store = SetStore::default();
        let s = sale(0.0, Some(3));
        for key in [&b"u1"[..], b"u2", b"u3"] {
            assert_eq!(outcome(&s, key, 0, never_drawn, &mut store), Outcome::Admitted);
        }
        assert_eq!(outcome(&s, b"u4", 0, never_drawn, &mut store), Outcome::SoldOut);
        assert_eq!(outcome(&s, b"u2", 0, never_drawn, &mut store), Outcome::Permitted);
        let drawing = sale(0.5, Some(3));
        assert_eq!(outcome(&drawing, b"u5", 0, never_drawn, &mut store), Outcome::SoldOut);
        assert_eq!(store.permits.len(), 3);
    }

    #[test]
    fn cap_zero_sells_nothing() {
        let mut store = SetStore::default();
        assert_eq!(
            outcome(&sale(0.0, Some(0)), b"a", 0, never_drawn, &mut store),
            Outcome::SoldOut
        );
    }

    #[test]
    fn a_full_zone_answers_sold_out() {
        let mut store = SetStore { room: Some(1), ..SetStore::default() };
        let s = sale(0.0, None);
        assert_eq!(outcome(&s, b"a", 0, never_drawn, &mut store), Outcome::Admitted);
        assert_eq!(outcome(&s, b"b", 0, never_drawn, &mut store), Outcome::SoldOut);
        assert_eq!(outcome(&s, b"a", 0, never_drawn, &mut store), Outcome::Permitted);
    }

    #[test]
    fn the_draw_admits_about_one_minus_the_ratio() {
        use rand::Rng;
        let mut rng = SmallRng::seed_from_u64(7);
        let mut store = SetStore::default();
        let s = sale(0.4, None);
        let admitted = (0..10_000u32)
            .filter(|i| {
                let key = i.to_le_bytes();
                outcome(&s, &key, 0, || rng.random::<f64>(), &mut store) == Outcome::Admitted
            })
            .count();
        assert!((5_700..=6_300).contains(&admitted), "admitted {admitted} of 10000");
    }

    #[test]
    fn per_key_rounds() {
        let every_30s = DrawMode::PerKey { interval_ms: Some(30_000) };
        assert_eq!(
            (every_30s.round(0), every_30s.round(29_999), every_30s.round(30_000)),
            (0, 0, 1)
        );
        assert_eq!(DrawMode::PerKey { interval_ms: None }.round(1 << 40), 0);
        assert_eq!(DrawMode::PerRequest.round(1 << 40), 0);
    }

    #[test]
    fn outcome_names_and_statuses() {
        assert_eq!(Outcome::SoldOut.to_string(), "SOLD_OUT");
        assert_eq!(Outcome::NoKey.status(503), 401);
        assert_eq!(Outcome::KeyTooLong.status(503), 400);
        assert_eq!(Outcome::Blocked.status(429), 429);
        assert!(Outcome::Admitted.passes() && Outcome::Permitted.passes());
        assert!(!Outcome::Blocked.passes());
        assert!(Outcome::NotStarted.message().starts_with("NOT_STARTED"));
        assert_eq!(Outcome::Unavailable.status(503), 503);
        assert!(!Outcome::Unavailable.passes());
        assert!(Outcome::Unavailable.message().starts_with("UNAVAILABLE"));
    }

    /// A store that knows only what it was told: the view of a host of a sale kept elsewhere.
    struct Remote(Lookup);

    impl PermitLookup for Remote {
        fn lookup(&mut self, _key: PermitKey<'_>, _sale: &Sale) -> Lookup {
            self.0
        }
        fn lookup_always(&self) -> bool {
            true
        }
        fn register(&mut self, _key: PermitKey<'_>, _sale: &Sale) -> Registration {
            Registration::Registered
        }
    }

    #[test]
    fn a_permit_only_the_shared_store_knows_is_rechecked_before_any_draw() {
        let s = sale(0.9, Some(5));
        let step = |lookup, draw: fn() -> f64| {
            draw_step(&s, PermitKey::single(b"k"), 0, draw, &mut Remote(lookup))
        };
        assert_eq!(step(Lookup::Recheck, never_drawn), Step::Recheck);
        let held = Held { seq: 2, expires_ms: None };
        assert_eq!(
            step(Lookup::Permitted(held), never_drawn),
            Step::Decided(Verdict::passed(Outcome::Permitted, held))
        );
        assert_eq!(step(Lookup::SoldOut, never_drawn), Step::Decided(Outcome::SoldOut.into()));
        assert_eq!(step(Lookup::Open, || 0.1), Step::Decided(Outcome::Blocked.into()));
        assert_eq!(step(Lookup::Open, || 0.95), Step::Admit);
        // A closed window answers before the store is asked anything.
        let closed = Sale { window: Window { start_ms: Some(10), end_ms: None }, ..s };
        assert_eq!(
            draw_step(
                &closed,
                PermitKey::single(b"k"),
                0,
                never_drawn,
                &mut Remote(Lookup::Recheck)
            ),
            Step::Decided(Outcome::NotStarted.into())
        );
    }

    #[test]
    fn a_store_that_admits_elsewhere_is_asked_first_even_at_ratio_zero() {
        let s = sale(0.0, None);
        let held = Held { seq: 4, expires_ms: None };
        assert_eq!(
            draw_step(
                &s,
                PermitKey::single(b"k"),
                0,
                never_drawn,
                &mut Remote(Lookup::Permitted(held))
            ),
            Step::Decided(Verdict::passed(Outcome::Permitted, held))
        );
        assert_eq!(
            draw_step(&s, PermitKey::single(b"k"), 0, never_drawn, &mut Remote(Lookup::SoldOut)),
            Step::Decided(Outcome::SoldOut.into())
        );
        assert_eq!(
            draw_step(&s, PermitKey::single(b"k"), 0, never_drawn, &mut Remote(Lookup::Open)),
            Step::Admit
        );
    }

    #[test]
    fn an_admission_gives_its_verdict() {
        let held = Held { seq: 9, expires_ms: Some(5) };
        assert_eq!(admitted(Admission::Admitted(held)).outcome, Outcome::Admitted);
        assert_eq!(admitted(Admission::Permitted(held)).permit, Some(held));
        assert_eq!(admitted(Admission::ZoneFull), Outcome::SoldOut.into());
    }

    fn prequeued_sale(cap: Cap) -> Sale {
        Sale {
            window: Window { start_ms: Some(10_000), end_ms: None },
            block_ratio: BlockRatio(0.5),
            cap,
            prequeue_ms: Some(5_000),
            queue: None,
            ..Sale::default()
        }
    }

    #[test]
    fn the_prequeue_opens_its_lead_before_the_start() {
        let s = prequeued_sale(None);
        assert!(!s.prequeue_open(4_999));
        assert!(s.prequeue_open(5_000));
        assert!(s.prequeue_open(9_999));
        assert!(!s.prequeue_open(10_000));
        assert!(!Sale { prequeue_ms: None, ..s }.prequeue_open(9_999));
        let no_start = Sale { window: Window::default(), ..s };
        assert!(!no_start.prequeue_open(0));
    }

    #[test]
    fn prequeued_buyers_hold_the_cap_before_anyone_later_draws() {
        let mut store = SetStore::default();
        let s = prequeued_sale(Some(2));
        assert_eq!(outcome(&s, b"early", 4_000, never_drawn, &mut store), Outcome::NotStarted);
        for key in [&b"a"[..], b"b", b"c", b"d", b"a", b"a"] {
            assert_eq!(outcome(&s, key, 6_000, never_drawn, &mut store), Outcome::Prequeued);
        }
        assert_eq!(store.registered.len(), 4, "a key registers once, however often it asks");
        assert!(store.permits.is_empty(), "nobody holds a permit before the start");
        // The first request after the start is a newcomer: it finds the cap taken.
        assert_eq!(outcome(&s, b"late", 10_000, || 0.9, &mut store), Outcome::SoldOut);
        assert_eq!(store.permits.len(), 2);
        assert!(store.registered.is_empty());
        let winners = [&b"a"[..], b"b", b"c", b"d"]
            .into_iter()
            .filter(|key| outcome(&s, key, 10_001, never_drawn, &mut store) == Outcome::Permitted)
            .count();
        assert_eq!(winners, 2);
    }

    #[test]
    fn a_full_zone_leaves_a_buyer_out_of_the_prequeue_and_says_so() {
        let mut store = SetStore { room: Some(1), ..SetStore::default() };
        let s = prequeued_sale(Some(5));
        assert_eq!(outcome(&s, b"a", 6_000, never_drawn, &mut store), Outcome::Prequeued);
        assert_eq!(outcome(&s, b"b", 6_000, never_drawn, &mut store), Outcome::NotStarted);
    }

    #[test]
    fn the_prequeue_order_is_a_uniform_choice_in_a_uniform_order() {
        let mut rng = SmallRng::seed_from_u64(5);
        let (registered, room, trials) = (10, 3, 30_000);
        let mut chosen = [0u32; 10];
        let mut first = [0u32; 10];
        for _ in 0..trials {
            let winners: Vec<usize> = shuffled(registered, &mut rng).take(room).collect();
            assert_eq!(winners.len(), 3);
            let mut unique = winners.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), 3, "nobody wins twice");
            winners.iter().for_each(|&i| chosen[i] += 1);
            first[winners[0]] += 1;
        }
        // Expected 9,000 and 3,000; the bands are about 5 standard deviations wide.
        assert!(chosen.iter().all(|&c| (8_600..=9_400).contains(&c)), "chosen {chosen:?}");
        assert!(first.iter().all(|&c| (2_730..=3_270).contains(&c)), "first {first:?}");
        let mut all: Vec<usize> = shuffled(4, &mut rng).collect();
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2, 3]);
        assert_eq!(shuffled(0, &mut rng).count(), 0);
    }

    #[test]
    fn who_the_prequeue_draw_gives_a_permit() {
        let mut rng = SmallRng::seed_from_u64(1);
        let capped = sale(1.0, Some(3));
        // With a cap, room decides and the ratio does not.
        assert!(prequeue_wins(Some(1), 0, &capped, never_drawn));
        assert!(!prequeue_wins(Some(0), 0, &capped, never_drawn));
        // Never past the buyer's limit.
        let one_each = Sale { max_per_buyer: Some(1), ..capped };
        assert!(!prequeue_wins(Some(5), 1, &one_each, never_drawn));
        assert!(prequeue_wins(Some(5), 0, &one_each, never_drawn));
        // Without a cap the block ratio decides, one draw each.
        let all = (0..50).filter(|_| prequeue_wins(None, 0, &sale(0.0, None), || rng.random()));
        assert_eq!(all.count(), 50);
        assert!(!prequeue_wins(None, 0, &sale(1.0, None), || 0.999));
        let half = (0..10_000)
            .filter(|_| prequeue_wins(None, 0, &sale(0.5, None), || rng.random()))
            .count();
        assert!((4_700..=5_300).contains(&half), "{half} of 10000");
    }

    fn lined_sale(per_second: u64, ratio: f64, cap: Cap) -> Sale {
        let rate = crate::line::Rate::from_milli(per_second * 1000).unwrap();
        Sale {
            block_ratio: BlockRatio(ratio),
            cap,
            queue: Some(Queue { rate, idle_ms: 60_000, refresh_ms: 20_000 }),
            ..Sale::default()
        }
    }

    #[test]
    fn a_line_admits_at_its_pace_in_order_of_arrival() {
        let sale = lined_sale(2, 0.0, None);
        let mut store = SetStore { now_ms: 1_000, ..SetStore::default() };
        let verdicts: Vec<Verdict> = (0..5)
            .map(|i| {
                decide(
                    &sale,
                    PermitKey::single(format!("b{i}").as_bytes()),
                    1_000,
                    never_drawn,
                    &mut store,
                )
            })
            .collect();
        let outcomes: Vec<Outcome> = verdicts.iter().map(|v| v.outcome).collect();
        use Outcome::*;
        assert_eq!(outcomes, [Admitted, Admitted, Queued, Queued, Queued], "a burst of one second");
        assert_eq!(verdicts[2].waiting, Some(Waiting { position: 0, wait_seconds: 1 }));
        assert_eq!(verdicts[4].waiting, Some(Waiting { position: 2, wait_seconds: 2 }));
        // Asking again keeps the place; the returning winners pass.
        assert_eq!(
            decide(&sale, PermitKey::single(b"b4"), 1_000, never_drawn, &mut store).waiting,
            verdicts[4].waiting
        );
        assert_eq!(outcome(&sale, b"b0", 1_000, never_drawn, &mut store), Permitted);
        // Half a second later one more is called: b2, not b4 who asks first.
        store.now_ms = 1_500;
        assert_eq!(outcome(&sale, b"b4", 1_500, never_drawn, &mut store), Queued);
        assert_eq!(outcome(&sale, b"b2", 1_500, never_drawn, &mut store), Admitted);
    }

    #[test]
    fn the_draw_decides_who_joins_and_the_cap_still_rules() {
        use Outcome::*;
        let sale = lined_sale(100, 0.5, Some(2));
        let mut store = SetStore { now_ms: 1_000, ..SetStore::default() };
        assert_eq!(outcome(&sale, b"unlucky", 1_000, || 0.1, &mut store), Blocked);
        assert!(store.line.is_empty(), "turned away by the draw, not in line");
        assert_eq!(outcome(&sale, b"a", 1_000, || 0.9, &mut store), Admitted);
        assert_eq!(outcome(&sale, b"b", 1_000, || 0.9, &mut store), Admitted);
        assert_eq!(outcome(&sale, b"c", 1_000, never_drawn, &mut store), SoldOut, "at the cap");
    }

    #[test]
    fn a_field_names_the_item_and_reads_back() {
        let one = PermitKey::single(b"amy");
        assert_eq!(one.field(), b"amy", "a zone of one item: the key itself");
        assert_eq!(PermitKey::from_field(b"amy"), one);
        let cases: [(&[u8], &[u8]); 6] = [
            (b"amy", b"sku-1"),
            (b"bob", b"9:x"),
            (b"\x002:ab", b"\x00"),
            (b"", b"a"),
            (b"12:cd", b"1234567890123"),
            (b"c:y", b":"),
        ];
        for (key, item) in cases {
            let f = PermitKey { key, item }.field();
            assert_eq!(f[0], 0, "an item's field starts with a zero byte");
            assert_eq!(PermitKey::from_field(&f), PermitKey { key, item }, "{f:?}");
        }
        assert_eq!(PermitKey { key: b"amy", item: b"ab" }.field(), b"\x002:abamy");
    }

    #[test]
    fn a_malformed_field_is_read_as_a_plain_key() {
        // As Redis's scripts' `parts` reads it: only a zero byte, digits, a colon and at least
        // as many bytes as the digits say make an item.
        for bad in [
            &b"\x00"[..],
            b"\x00:ab",
            b"\x00x:ab",
            b"\x00+1:ab",
            b"\x00-1:ab",
            b"\x000:ab",
            b"\x003:ab",
            b"\x00 1:ab",
            b"\x0099999999999999999999:ab",
            b"\x001ab",
            b"1:ab",
        ] {
            assert_eq!(PermitKey::from_field(bad), PermitKey::single(bad), "{bad:?}");
        }
        assert_eq!(
            PermitKey::from_field(b"\x0001:ab"),
            PermitKey { key: b"b", item: b"a" },
            "leading zeros"
        );
    }
}
