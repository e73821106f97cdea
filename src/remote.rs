//! A sale shared by several nginx hosts through Redis, in plain Rust: the settings, the
//! atomic steps (Lua scripts, one round trip each), their replies, and the link's health.
//!
//! Nothing here knows about nginx. The glue (`offload.rs`) runs [`run`] on one of nginx's
//! thread pool threads so that no worker waits for Redis, and hands the reply back to the
//! worker that asked.

use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo, RedisConnectionInfo, Script};

use crate::line::{LineFigures, WAIT_BUCKETS};
use crate::parse;
use crate::sale::{Cap, Grant, Held, Overrides, OverridesPatch, PermitInfo, PermitKey};

/// What a host does with a new buyer when Redis does not answer in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// Turns the buyer away (`UNAVAILABLE`): never more than the cap, whatever happens.
    #[default]
    Closed,
    /// Admits against this host's own zone and cap: the sale goes on, the cap holds per host.
    Open,
}

/// `flash_sale_redis`: where a zone's permits live and how to talk to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    /// `password=FILE`: the file's path, read by the glue.
    pub password_file: Option<String>,
    pub password: Option<String>,
    /// The longest a connection, a write or a read may take.
    pub timeout_ms: u64,
    /// Put before every key, so that several sales (or test runs) share one Redis.
    pub prefix: String,
    pub on_error: OnError,
    /// How long a host trusts what Redis told it (a winner's permit, SOLD_OUT) before asking
    /// again; also how soon a revocation on one host is seen by the others.
    pub cache_ms: i64,
    /// `threads=NAME`: the nginx thread pool the round trips run on; `None` for "default".
    pub threads: Option<String>,
}

pub const DEFAULT_TIMEOUT_MS: u64 = 50;
pub const DEFAULT_CACHE_MS: i64 = 1000;
pub const DEFAULT_PREFIX: &str = "flash_sale:";

impl Settings {
    /// Parses the directive's parameters after `zone=NAME`; the error names the bad one.
    pub fn parse<'a>(params: impl IntoIterator<Item = &'a str>) -> Result<Settings, String> {
        let mut settings = Settings {
            host: String::new(),
            port: 0,
            password_file: None,
            password: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            prefix: DEFAULT_PREFIX.to_string(),
            on_error: OnError::Closed,
            cache_ms: DEFAULT_CACHE_MS,
            threads: None,
        };
        for param in params {
            let invalid = || format!("invalid parameter \"{param}\"");
            let (name, value) = param.split_once('=').ok_or_else(invalid)?;
            match name {
                "server" => {
                    let (host, port) = value.rsplit_once(':').ok_or_else(invalid)?;
                    let port = port.parse().ok().filter(|&p| p > 0).ok_or_else(invalid)?;
                    // An IPv6 address is written in brackets, as in nginx's `listen`.
                    let host =
                        host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
                    if host.is_empty() {
                        return Err(invalid());
                    }
                    settings.host = host.to_string();
                    settings.port = port;
                }
                "password" if !value.is_empty() => settings.password_file = Some(value.into()),
                "timeout" => {
                    settings.timeout_ms = parse::duration_ms(value).ok_or_else(invalid)? as u64;
                }
                "prefix" => settings.prefix = value.to_string(),
                "on_error" => {
                    settings.on_error = match value {
                        "closed" => OnError::Closed,
                        "open" => OnError::Open,
                        _ => return Err(invalid()),
                    }
                }
                "cache" => {
                    settings.cache_ms = parse::duration_or_zero_ms(value).ok_or_else(invalid)?;
                }
                "threads" if !value.is_empty() => settings.threads = Some(value.to_string()),
                _ => return Err(invalid()),
            }
        }
        if settings.host.is_empty() {
            return Err("a \"server=HOST:PORT\" parameter is required".to_string());
        }
        Ok(settings)
    }

    /// `HOST:PORT`, for log messages.
    pub fn server(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn connection_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            addr: ConnectionAddr::Tcp(self.host.clone(), self.port),
            redis: RedisConnectionInfo { password: self.password.clone(), ..Default::default() },
        }
    }
}

/// One atomic step on a zone's permits in Redis.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Admits `key` (a permit's field, see [`field`]) if it holds no permit, its item's
    /// permits are under the cap (an item's stock in Redis wins over `cap`) and its buyer holds
    /// permits for fewer than `max_per_buyer` items. With `recheck`, only says whether the key
    /// still holds a permit. With `settle`, the pre-queue's draw comes first, if nobody has
    /// made it yet.
    Admit {
        key: Vec<u8>,
        cap: Cap,
        max_per_buyer: Option<u64>,
        now_ms: i64,
        expires_ms: Option<i64>,
        recheck: bool,
        settle: Option<Box<Settle>>,
    },
    /// A step of the sale's waiting line for `key`, a buyer who may buy (see [`STEP`]): the
    /// pre-queue's draw if due, silent waiters leave, the pace calls, `key` joins or renews
    /// its place, and is admitted if called, as [`Command::Admit`] admits.
    Step(Box<LineStep>),
    /// Registers `key` (a permit's field) for the pre-queue's draw, unless the sale has opened
    /// in Redis; its item remembers `cap` for the draw.
    Register { key: Vec<u8>, cap: Cap },
    /// The sale's opening, once per host: the pre-queue's draw if nobody has made it yet
    /// (into the line when `line` is given), then every permit, for the host to know the
    /// draw's winners.
    Open {
        cap: Cap,
        max_per_buyer: Option<u64>,
        now_ms: i64,
        expires_ms: Option<i64>,
        line: Option<LineSettings>,
        settle: Settle,
    },
    /// The line's figures (and the pre-queue's registrations), for the metrics and the API.
    LineFigures,
    /// The permit of `key`, if it holds one.
    Get { key: Vec<u8>, now_ms: i64 },
    /// Revokes the permit of `key`.
    Revoke { key: Vec<u8> },
    /// Revokes every permit; the numbering goes on.
    Clear,
    /// Every permit (at most the cap's worth, in a sold-out sale): lets a host turn away
    /// unknown keys without asking, knowing none of them holds a permit.
    Permits { now_ms: i64 },
    /// Grants permits to keys that hold none, whatever the cap (an operator's decision).
    Grant { grants: Vec<Grant>, now_ms: i64 },
    /// The sale's secret for per-key draws, `proposal` if it has none yet: the same on every
    /// host, so that a buyer draws once per round whichever host he asks.
    DrawSecret { proposal: [u64; 2] },
    /// The sale's overrides (the admin API's PATCH), which every host applies.
    Overrides,
    /// Changes the sale's overrides as the patch says, field by field.
    SetOverrides { patch: OverridesPatch },
    /// Up to `limit` items (see [`items`]), in the order of their bytes, after the item
    /// `after`; replies [`Reply::Items`].
    Items { after: Option<Vec<u8>>, limit: usize },
    /// One item; replies [`Reply::Item`] (`None`: the zone has no such item).
    Item { item: Vec<u8> },
    /// Sets an item's stock (`None`: removes it, the configuration's applies); replies the
    /// item as it is then, [`Reply::Item`].
    SetItemStock { item: Vec<u8>, max_permits: Option<u64> },
}

/// A step of the line for `key`, a permit's field (see [`Command::Step`]): the line is the
/// buyer's, the permit the field's.
#[derive(Clone, Debug, PartialEq)]
pub struct LineStep {
    pub key: Vec<u8>,
    pub cap: Cap,
    /// `flash_sale_max_per_buyer`: how many items one buyer may hold permits for.
    pub max_per_buyer: Option<u64>,
    pub now_ms: i64,
    pub expires_ms: Option<i64>,
    pub line: LineSettings,
    pub settle: Option<Settle>,
}

/// The line's pace and idle time, as a step sends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineSettings {
    /// Thousandths of a call per second (see [`crate::line::Rate`]).
    pub rate_milli: u64,
    pub idle_ms: i64,
}

/// The pre-queue's draw, for a step that may be the sale's first in Redis: the block ratio
/// and a seed for Redis's random numbers (from the host's: one draw per sale, whichever host
/// makes it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settle {
    pub ratio: f64,
    pub seed: u32,
}

/// The fields of the overrides' hash in Redis, in the order of [`Overrides`]'s fields; each
/// value is the field's number as Rust writes and reads it (ms since the Unix epoch for the
/// times).
pub const OVERRIDE_FIELDS: [&str; 5] =
    ["block_ratio", "max_permits", "start_ms", "end_ms", "queue_rate"];

/// Reads the overrides from the fields of an HGETALL; a field that does not parse is left
/// unset, as is a field that is not one of [`OVERRIDE_FIELDS`].
fn overrides_from_fields(fields: &[(String, String)]) -> Overrides {
    let [ratio, cap, start, end, rate] =
        OVERRIDE_FIELDS.map(|name| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()));
    Overrides {
        block_ratio: ratio.and_then(|v| v.parse().ok()),
        max_permits: cap.and_then(|v| v.parse().ok()),
        start_ms: start.and_then(|v| v.parse().ok()),
        end_ms: end.and_then(|v| v.parse().ok()),
        queue_rate: rate.and_then(|v| v.parse().ok()),
    }
}

/// A patch as [`SET_OVERRIDES`] takes it: a field and its new value per field the patch
/// changes, in the order of [`OVERRIDE_FIELDS`], `None` to remove the field.
fn override_changes(patch: &OverridesPatch) -> Vec<(&'static str, Option<String>)> {
    fn text<T: ToString>(change: Option<Option<T>>) -> Option<Option<String>> {
        change.map(|value| value.map(|v| v.to_string()))
    }
    let values = [
        text(patch.block_ratio),
        text(patch.max_permits),
        text(patch.start_ms),
        text(patch.end_ms),
        text(patch.queue_rate),
    ];
    OVERRIDE_FIELDS
        .into_iter()
        .zip(values)
        .filter_map(|(field, change)| Some((field, change?)))
        .collect()
}

/// What Redis said about a key's admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Admitted(Held),
    Permitted(Held),
    SoldOut,
    /// A recheck found no permit for the key (any more).
    NotHeld,
    /// No permit for the key: the buyer holds permits for `flash_sale_max_per_buyer` items
    /// already.
    LimitReached,
}

/// Redis's reply to a [`Command`], in the command's order.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Admission(Answer),
    Permit(Option<Held>),
    Revoked(Option<u64>),
    Cleared(u64),
    /// Every permit in Redis, in order of number.
    Permits(Vec<PermitInfo>),
    Granted {
        granted: u64,
        already: u64,
        permits: u64,
    },
    DrawSecret([u64; 2]),
    Overrides(Overrides),
    /// A line's step: an admission (the buyer held a permit, was sold out, or was called in),
    /// or his place.
    Lined(LineAnswer),
    /// A registration for the pre-queue: false when the sale had opened in Redis already.
    Registered(bool),
    /// The opening's copy of every permit, in order of number.
    Opened(Vec<PermitInfo>),
    /// The line's figures, and the buyers registered for the pre-queue's draw.
    Line(LineFigures, u64),
    /// A page of items (`registered` is 0: Redis does not count registrations per item).
    Items(Vec<crate::sale::ItemInfo>),
    /// One item, if the zone has it.
    Item(Option<crate::sale::ItemInfo>),
}

/// What a line's step said about one buyer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineAnswer {
    Admission(Answer),
    /// In line, not called yet: his ticket, the waiters ahead still to be called, and the
    /// waiters in line.
    Waiting {
        ticket: u64,
        position: u64,
        waiting: u64,
    },
}

/// The zone's keys: permits, expiry, seq (see [`ADMIT`]), draw (the per-key draws' secret)
/// and overrides (a hash of [`OVERRIDE_FIELDS`]); for a zone that sells several items, those
/// of [`item_keys`] too (items, buyers, stock, configured); for a line or a pre-queue, those
/// of [`line_keys`]. The braces are a hash tag: in a Redis Cluster, a zone's keys sit in one
/// slot, as a script's keys must.
pub fn keys(prefix: &str, zone: &str) -> [String; 5] {
    ["permits", "expiry", "seq", "draw", "overrides"]
        .map(|part| format!("{prefix}{{{zone}}}:{part}"))
}

/// The keys of the pre-queue and the line, in the same slot: prequeue (a set of registered
/// keys), opened (set by the sale's first step: no registration after it), line (a sorted set
/// of the waiters by ticket), seen (a sorted set of the waiters by the time they leave unless
/// they ask again, in Redis's clock), lstate (a hash: `last` ticket given, `called`, the
/// bucket's `units` and `filled` time, the `rate` of the last step, `admitted`, `left`, the
/// wait histogram `w1`..`w11` and `wsum`), joined (a hash: waiter -> when he joined) and
/// recent (a hash: Unix second -> admissions from the line in it).
pub fn line_keys(prefix: &str, zone: &str) -> [String; 7] {
    ["prequeue", "opened", "line", "seen", "lstate", "joined", "recent"]
        .map(|part| format!("{prefix}{{{zone}}}:{part}"))
}

/// The keys of a zone that sells several items, in the same slot, each a hash: items (item ->
/// permits held for it now, fields at 0 deleted), buyers (buyer's key -> items he holds
/// permits for now, fields at 0 deleted), stock (item -> the stock set through the admin API,
/// an integer as text; no field: not set) and configured (item -> the cap the last admission
/// or registration for it was configured with, as text; no field: none). The scripts keep
/// items and buyers exact with every permit they add or remove; a zone that sells one item
/// leaves all four alone.
pub fn item_keys(prefix: &str, zone: &str) -> [String; 4] {
    ["items", "buyers", "stock", "configured"].map(|part| format!("{prefix}{{{zone}}}:{part}"))
}

/// The permits' functions, shared by every script that adds or removes a permit ([`ADMIT`],
/// [`STEP`], [`OPEN`], [`GRANT`], [`REVOKE`], [`CLEAR`], [`REGISTER`]). KEYS: permits (a
/// permit's field, see [`field`] -> "seq:expires_ms:granted_ms", expires 0 for never), expiry
/// (a sorted set of the fields by expiry), seq (the last number given), then the seven of
/// [`line_keys`] (prequeue 4, opened 5, line 6, seen 7, lstate 8, joined 9, recent 10), then
/// the four of [`item_keys`] (items 11, buyers 12, stock 13, configured 14). Times are the
/// host's (`now`, Unix ms, as text), as for every permit. A cap or a limit is a number, -1
/// for none.
const PERMITS: &str = r"
-- A permit's field read back, as `PermitKey::from_field` reads it: the buyer's key and the item; the
-- item is nil in a zone that sells one item (the field is the key).
local function parts(field)
  if string.byte(field, 1) ~= 0 then return field, nil end
  local colon = string.find(field, ':', 2, true)
  if not colon then return field, nil end
  local digits = string.sub(field, 2, colon - 1)
  if not string.match(digits, '^%d+$') then return field, nil end
  local len, rest = tonumber(digits), string.sub(field, colon + 1)
  if len < 1 or len > #rest then return field, nil end
  return string.sub(rest, len + 1), string.sub(rest, 1, len)
end
-- A whole number kept as text (a stock, a configured cap), or nil.
local function whole(text)
  if text and string.match(text, '^%d+$') then return tonumber(text) end
  return nil
end
-- Keeps the counts of items and buyers as the permit of `field` is added (1) or removed (-1);
-- a count that reaches 0 is deleted. A zone that sells one item keeps none.
local function counted(field, by)
  local buyer, item = parts(field)
  if not item then return end
  if redis.call('HINCRBY', KEYS[11], item, by) <= 0 then redis.call('HDEL', KEYS[11], item) end
  if redis.call('HINCRBY', KEYS[12], buyer, by) <= 0 then redis.call('HDEL', KEYS[12], buyer) end
end
local function drop_permit(field)
  if redis.call('HDEL', KEYS[1], field) == 1 then counted(field, -1) end
  redis.call('ZREM', KEYS[2], field)
end
local function expire_permits(now)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
  for _, k in ipairs(gone) do drop_permit(k) end
end
local function held_permit(key, now)
  local held = redis.call('HGET', KEYS[1], key)
  if held then
    local expires = tonumber(string.match(held, '^%d+:(%d+)'))
    if expires == 0 or expires > tonumber(now) then return held end
    drop_permit(key)
  end
  return false
end
-- The cap an item's count is compared with: its stock set through the admin API, else `cap`.
local function item_cap(item, cap)
  return whole(redis.call('HGET', KEYS[13], item)) or cap
end
-- Whether the permit of `field` finds its item's count at its cap (the zone's count and
-- `cap` in a zone that sells one item).
local function sold_out(field, cap)
  local _, item = parts(field)
  if not item then return cap >= 0 and redis.call('HLEN', KEYS[1]) >= cap end
  cap = item_cap(item, cap)
  return cap >= 0 and (tonumber(redis.call('HGET', KEYS[11], item)) or 0) >= cap
end
-- Whether the buyer of `field` holds permits for `limit` items already.
local function limit_reached(field, limit)
  local buyer, item = parts(field)
  if limit < 0 or not item then return false end
  return (tonumber(redis.call('HGET', KEYS[12], buyer)) or 0) >= limit
end
-- Remembers the cap (text, -1 for none) an item was configured with, for the admin API.
local function configured(field, cap)
  local _, item = parts(field)
  if not item then return end
  if whole(cap) then
    redis.call('HSET', KEYS[14], item, cap)
  else
    redis.call('HDEL', KEYS[14], item)
  end
end
local function new_permit(key, now, expires)
  local permit = redis.call('INCR', KEYS[3]) .. ':' .. expires .. ':' .. now
  if expires ~= '0' then redis.call('ZADD', KEYS[2], expires, key) end
  if redis.call('HSET', KEYS[1], key, permit) == 1 then counted(key, 1) end
  return permit
end
-- The pre-queue's registrants who hold no permit, taken out of the set, once: the first step
-- of an open sale marks it opened, and no registration is taken after that. nil when there
-- is nothing to draw. The random numbers are seeded with the host's seed.
local function registrants(now, seed)
  if redis.call('EXISTS', KEYS[5]) == 0 then redis.call('SET', KEYS[5], '1') end
  if redis.call('EXISTS', KEYS[4]) == 0 then return nil end
  local all = redis.call('SMEMBERS', KEYS[4])
  redis.call('DEL', KEYS[4])
  table.sort(all)
  math.randomseed(tonumber(seed))
  local open = {}
  for _, k in ipairs(all) do
    if not held_permit(k, now) then open[#open + 1] = k end
  end
  return open
end
-- A partial Fisher-Yates shuffle: the first `take` of `keys` are a uniform choice, in a
-- uniform order.
local function shuffle(keys, take)
  for i = 1, take do
    local j = math.random(i, #keys)
    keys[i], keys[j] = keys[j], keys[i]
  end
end
-- The pre-queue's draw without a line: the cap's room goes to a uniform choice of the
-- registrants, in a uniform order; without a cap, each draws once against the block ratio.
-- With items, every registration (a buyer for an item) in one uniform order: each item up
-- to its cap as remembered at registration (or its stock), without one by a draw, and
-- never past a buyer's `limit`.
local function settle_permits(now, expires, cap, ratio, seed, limit)
  local open = registrants(now, seed)
  if not open then return end
  if #open > 0 and select(2, parts(open[1])) then
    shuffle(open, #open)
    for _, f in ipairs(open) do
      local _, item = parts(f)
      local wins = not limit_reached(f, limit)
      if wins then
        local c = item_cap(item, whole(redis.call('HGET', KEYS[14], item)) or -1)
        if c >= 0 then
          wins = (tonumber(redis.call('HGET', KEYS[11], item)) or 0) < c
        else
          wins = math.random() >= ratio
        end
      end
      if wins then new_permit(f, now, expires) end
    end
    return
  end
  local take = #open
  if cap >= 0 then
    take = math.max(0, math.min(#open, cap - redis.call('HLEN', KEYS[1])))
  else
    local drawn = {}
    for _, k in ipairs(open) do
      if math.random() >= ratio then drawn[#drawn + 1] = k end
    end
    open, take = drawn, #drawn
  end
  shuffle(open, take)
  for i = 1, take do new_permit(open[i], now, expires) end
end
";

/// The line's functions, shared by [`STEP`] and [`OPEN`]. KEYS as for [`PERMITS`], then line,
/// seen, lstate, joined, recent (see [`line_keys`]). `rnow` is Redis's clock (Unix ms): the
/// pace and the idle time follow it, whatever the hosts' clocks.
const LINE: &str = r"
local function join(key, rnow, idle)
  local ticket = redis.call('HINCRBY', KEYS[8], 'last', 1)
  redis.call('ZADD', KEYS[6], ticket, key)
  redis.call('ZADD', KEYS[7], rnow + idle, key)
  redis.call('HSET', KEYS[9], key, rnow)
  return ticket
end
-- The pre-queue's draw with a line: every registrant takes a place at its front, in a
-- uniformly random order (the block ratio is the hosts' per-key draw, as for everyone); a
-- buyer once, whatever the items he registered for (one line per sale).
local function settle_line(now, seed, rnow, idle)
  local open = registrants(now, seed)
  if not open then return end
  shuffle(open, #open)
  for i = 1, #open do
    local buyer = parts(open[i])
    if not redis.call('ZSCORE', KEYS[6], buyer) then join(buyer, rnow, idle) end
  end
end
";

/// KEYS as for [`PERMITS`]. ARGV: the deadline (see [`LATE`]), the permit's field (see
/// [`field`]), cap (-1 for none; an item's stock in Redis wins over it), now_ms, expires_ms (0
/// for never), recheck (1 to only look), settle (1 for the pre-queue's draw), the block ratio,
/// a seed, max_per_buyer (-1 for none). In the order of `zone.rs`'s `barrier`: the permit,
/// the item's cap, the buyer's limit. Replies {code, permit}: 0 admitted, 1 held, 2 sold out,
/// 3 not held, 5 the buyer's limit reached.
const ADMIT: &str = r"
expire_permits(ARGV[4])
if ARGV[7] == '1' then
  settle_permits(ARGV[4], ARGV[5], tonumber(ARGV[3]), tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10]))
end
local held = held_permit(ARGV[2], ARGV[4])
if held then return {1, held} end
if ARGV[6] == '1' then return {3, ''} end
configured(ARGV[2], ARGV[3])
if sold_out(ARGV[2], tonumber(ARGV[3])) then return {2, ''} end
if limit_reached(ARGV[2], tonumber(ARGV[10])) then return {5, ''} end
return {0, new_permit(ARGV[2], ARGV[4], ARGV[5])}
";

/// One step of the line for a buyer who may buy, as the local zone's (`zone.rs`
/// `queue_step`), atomically: the pre-queue's draw if due; the buyer's permit or SOLD_OUT;
/// at most 1,024 silent waiters leave (a called one gives his slot back to the bucket); the time since the
/// last step is paid at the rate it ran at, and every whole slot calls the next uncalled
/// waiter, what is left capped at one second's worth; the buyer joins (once per key) or renews
/// his place; the pace calls again (an empty line's bucket is the newcomer's); and a called
/// buyer leaves the line admitted, with a permit as [`ADMIT`] gives it. The line is one per
/// sale, of buyers: a buyer waits once whatever the item he asks for, and is admitted for
/// the item of the step that finds him called.
/// KEYS as for [`LINE`]. ARGV: the deadline, the permit's field, cap (-1 for none), now_ms,
/// expires_ms, rate (thousandths a second), idle_ms, settle (1 for the pre-queue's draw), a
/// seed, max_per_buyer (-1 for none). Replies {code, permit, position, ticket, waiting}: 0
/// admitted, 1 held, 2 sold out, 4 waiting, 5 the buyer's limit reached.
const STEP: &str = r"
local SLOT = 1000000
local field, now, expires = ARGV[2], ARGV[4], ARGV[5]
local key = parts(field)
local rate, idle = tonumber(ARGV[6]), tonumber(ARGV[7])
local rnow = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
expire_permits(now)
if ARGV[8] == '1' then settle_line(now, ARGV[9], rnow, idle) end
local held = held_permit(field, now)
if held then return {1, held, 0, 0, 0} end
configured(field, ARGV[3])
if sold_out(field, tonumber(ARGV[3])) then return {2, '', 0, 0, 0} end
if limit_reached(field, tonumber(ARGV[10])) then return {5, '', 0, 0, 0} end
local f = redis.call('HMGET', KEYS[8], 'called', 'units', 'filled', 'rate')
local called, units = tonumber(f[1]) or 0, tonumber(f[2]) or 0
local filled, ran_at = tonumber(f[3]) or 0, tonumber(f[4]) or 0
local function burst(r) return math.max(r * 1000, SLOT) end
local gone = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', rnow, 'LIMIT', 0, 1024)
for _, k in ipairs(gone) do
  -- A called waiter who left gives his slot back to the bucket (one second's worth at most).
  local r = redis.call('ZRANK', KEYS[6], k)
  if r and r < called then
    called = called - 1
    units = math.min(units + SLOT, burst(ran_at > 0 and ran_at or rate))
  end
  redis.call('ZREM', KEYS[6], k)
  redis.call('ZREM', KEYS[7], k)
  redis.call('HDEL', KEYS[9], k)
end
if #gone > 0 then redis.call('HINCRBY', KEYS[8], 'left', #gone) end
local waiting = redis.call('ZCARD', KEYS[6])
if called > waiting then
  units = math.min(units + (called - waiting) * SLOT, burst(ran_at > 0 and ran_at or rate))
  called = waiting
end
local function call()
  local r = ran_at > 0 and ran_at or rate
  if filled == 0 then
    units = burst(r)
  else
    units = units + r * math.max(0, rnow - filled)
  end
  filled = math.max(filled, rnow)
  ran_at = rate
  local take = math.min(math.floor(units / SLOT), waiting - called)
  if take > 0 then
    called = called + take
    units = units - take * SLOT
  end
  units = math.min(units, burst(rate))
end
call()
local ticket = redis.call('ZSCORE', KEYS[6], key)
if ticket then
  ticket = tonumber(ticket)
  redis.call('ZADD', KEYS[7], rnow + idle, key)
else
  ticket = join(key, rnow, idle)
  waiting = waiting + 1
end
call()
local ahead = redis.call('ZRANK', KEYS[6], key)
local code, permit, position = 4, '', 0
if ahead < called then
  local joined = tonumber(redis.call('HGET', KEYS[9], key)) or rnow
  redis.call('ZREM', KEYS[6], key)
  redis.call('ZREM', KEYS[7], key)
  redis.call('HDEL', KEYS[9], key)
  called, waiting = called - 1, waiting - 1
  local waited = math.max(0, rnow - joined)
  local bucket = 11
  for i, le in ipairs({1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}) do
    if waited <= le * 1000 then bucket = i break end
  end
  redis.call('HINCRBY', KEYS[8], 'admitted', 1)
  redis.call('HINCRBY', KEYS[8], 'w' .. bucket, 1)
  redis.call('HINCRBY', KEYS[8], 'wsum', waited)
  local second = math.floor(rnow / 1000)
  redis.call('HINCRBY', KEYS[10], second, 1)
  if redis.call('HLEN', KEYS[10]) > 120 then
    for _, s in ipairs(redis.call('HKEYS', KEYS[10])) do
      if tonumber(s) <= second - 60 then redis.call('HDEL', KEYS[10], s) end
    end
  end
  code, permit = 0, new_permit(field, now, expires)
else
  position = ahead - called
end
redis.call('HSET', KEYS[8], 'called', called, 'units', units, 'filled', filled, 'rate', ran_at)
return {code, permit, position, ticket, waiting}
";

/// KEYS as for [`LINE`]; ARGV: the deadline, cap (-1 for none), now_ms, expires_ms, lined (1
/// when the sale has a line), idle_ms, the block ratio, a seed, max_per_buyer (-1 for none).
/// The pre-queue's draw if
/// nobody has made it yet; replies every permit, as an HGETALL, for a sale without a line
/// (the draw's winners hold permits), and none for a sale with one (they are in line).
const OPEN: &str = r"
expire_permits(ARGV[3])
if ARGV[5] == '1' then
  local rnow = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  settle_line(ARGV[3], ARGV[8], rnow, tonumber(ARGV[6]))
  return {}
end
settle_permits(ARGV[3], ARGV[4], tonumber(ARGV[2]), tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9]))
return redis.call('HGETALL', KEYS[1])
";

/// KEYS as for [`PERMITS`]; ARGV: the deadline, the permit's field, cap (-1 for none): an
/// item remembers it in configured, for the draw. Replies 1 when registered, 0 when the sale
/// has opened in Redis (its first step has made the draw).
const REGISTER: &str = r"
if redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
redis.call('SADD', KEYS[4], ARGV[2])
configured(ARGV[2], ARGV[3])
return 1
";

/// KEYS as for [`LINE`]. Reads the line's figures at Redis's clock: {waiting, serving ticket
/// (0 for none), admitted, left, admitted in the last minute, registered for the pre-queue,
/// wsum, w1..w11}.
const FIGURES: &str = r"
local clock = redis.call('TIME')
local second = tonumber(clock[1])
local f = redis.call('HMGET', KEYS[8], 'called', 'admitted', 'left', 'wsum',
  'w1', 'w2', 'w3', 'w4', 'w5', 'w6', 'w7', 'w8', 'w9', 'w10', 'w11')
local waiting = redis.call('ZCARD', KEYS[6])
local called = math.min(tonumber(f[1]) or 0, waiting)
local serving = 0
if called > 0 then
  serving = tonumber(redis.call('ZRANGE', KEYS[6], called - 1, called - 1, 'WITHSCORES')[2])
end
local minute = 0
local recent = redis.call('HGETALL', KEYS[10])
for i = 1, #recent, 2 do
  local s = tonumber(recent[i])
  if s > second - 60 and s <= second then minute = minute + tonumber(recent[i + 1]) end
end
local out = {waiting, serving, tonumber(f[2]) or 0, tonumber(f[3]) or 0, minute,
  redis.call('SCARD', KEYS[4]), tonumber(f[4]) or 0}
for i = 5, 15 do out[#out + 1] = tonumber(f[i]) or 0 end
return out
";

/// KEYS as for [`ADMIT`]; ARGV: the deadline, now_ms, then a permit's field and its
/// expires_ms (0 for never) per permit. Grants whatever the cap and the buyers' limit.
/// Replies {granted, already held, permits now}.
const GRANT: &str = r"
local granted, already = 0, 0
for i = 3, #ARGV, 2 do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  local expires = held and tonumber(string.match(held, '^%d+:(%d+)'))
  if held and (expires == 0 or expires > tonumber(ARGV[2])) then
    already = already + 1
  else
    local permit = redis.call('INCR', KEYS[3]) .. ':' .. ARGV[i + 1] .. ':' .. ARGV[2]
    if ARGV[i + 1] ~= '0' then
      redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[i])
    else
      redis.call('ZREM', KEYS[2], ARGV[i])
    end
    if redis.call('HSET', KEYS[1], ARGV[i], permit) == 1 then counted(ARGV[i], 1) end
    granted = granted + 1
  end
end
return {granted, already, redis.call('HLEN', KEYS[1])}
";

/// KEYS as for [`ADMIT`]; ARGV: the deadline, the permit's field. Replies the revoked permit,
/// or nil.
const REVOKE: &str = r"
local held = redis.call('HGET', KEYS[1], ARGV[2])
if not held then return false end
drop_permit(ARGV[2])
return held
";

/// KEYS: draw; ARGV: a proposed secret. Keeps the first secret ever proposed; replies it.
const DRAW_SECRET: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
";

/// KEYS: overrides; ARGV: the deadline, then a field and its value per change, an empty value
/// removing the field. Replies every field.
const SET_OVERRIDES: &str = r"
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return redis.call('HGETALL', KEYS[1])
";

/// KEYS as for [`ADMIT`]; ARGV: the deadline. Revokes every permit, and with them the counts
/// of items and buyers. Replies how many permits there were.
const CLEAR: &str = r"
local n = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[11], KEYS[12])
return n
";

/// The start of every script that changes something. ARGV[1] is the round trip's deadline in
/// Redis's own clock (Unix ms): a script that Redis runs after it (Redis was stopped or slow,
/// and the host has given up and answered the buyer) changes nothing, so that nobody told
/// `UNAVAILABLE` finds his admission made, nor an operator told 502 his revocation. Redis's
/// clock is read with TIME, which a script may call before it writes since Redis 5
/// (replicate_commands makes Redis 3.2 and 4 allow it too).
const LATE: &str = r"
redis.replicate_commands()
local clock = redis.call('TIME')
if clock[1] * 1000 + math.floor(clock[2] / 1000) > tonumber(ARGV[1]) then
  return redis.error_reply('LATE: Redis ran it after its deadline; nothing changed')
end
";

static SCRIPTS: LazyLock<[Script; 10]> = LazyLock::new(|| {
    let late = |body: &str| Script::new(&format!("{LATE}{body}"));
    [
        late(&format!("{PERMITS}{ADMIT}")),
        late(&format!("{PERMITS}{REVOKE}")),
        late(&format!("{PERMITS}{CLEAR}")),
        late(&format!("{PERMITS}{GRANT}")),
        Script::new(DRAW_SECRET),
        late(SET_OVERRIDES),
        late(&format!("{PERMITS}{LINE}{STEP}")),
        late(&format!("{PERMITS}{REGISTER}")),
        late(&format!("{PERMITS}{LINE}{OPEN}")),
        Script::new(FIGURES),
    ]
});

/// A draw secret as it is kept in Redis: two 16-digit hexadecimal numbers.
pub fn format_secret(secret: [u64; 2]) -> String {
    format!("{:016x}{:016x}", secret[0], secret[1])
}

pub fn parse_secret(text: &str) -> Option<[u64; 2]> {
    if text.len() != 32 || !text.is_ascii() {
        return None;
    }
    let half = |s: &str| u64::from_str_radix(s, 16).ok();
    Some([half(&text[..16])?, half(&text[16..])?])
}

/// A permit as the scripts store it: `seq:expires_ms:granted_ms`, expires 0 for never.
pub fn parse_permit(value: &str) -> Option<Held> {
    parse_stored(value).map(|(held, _)| held)
}

/// A stored permit and when it was granted.
fn parse_stored(value: &str) -> Option<(Held, i64)> {
    let mut fields = value.split(':');
    let seq = fields.next()?.parse().ok().filter(|&s| s > 0)?;
    let expires: i64 = fields.next()?.parse().ok()?;
    let granted = fields.next()?.parse().ok()?;
    if fields.next().is_some() {
        return None;
    }
    Some((Held { seq, expires_ms: (expires != 0).then_some(expires) }, granted))
}

/// Maps the admission script's reply to an [`Answer`].
pub fn parse_admission(code: i64, permit: &str) -> Option<Answer> {
    match code {
        0 => Some(Answer::Admitted(parse_permit(permit)?)),
        1 => Some(Answer::Permitted(parse_permit(permit)?)),
        2 => Some(Answer::SoldOut),
        3 => Some(Answer::NotHeld),
        5 if permit.is_empty() => Some(Answer::LimitReached),
        _ => None,
    }
}

/// Maps the line step's reply to a [`LineAnswer`].
pub fn parse_step(
    code: i64,
    permit: &str,
    position: u64,
    ticket: u64,
    waiting: u64,
) -> Option<LineAnswer> {
    match code {
        0..=2 | 5 => parse_admission(code, permit).map(LineAnswer::Admission),
        4 if ticket > 0 => Some(LineAnswer::Waiting { ticket, position, waiting }),
        _ => None,
    }
}

/// Reads [`FIGURES`]'s reply: the line's figures and the buyers registered for the pre-queue.
pub fn parse_figures(values: &[u64]) -> Option<(LineFigures, u64)> {
    let [waiting, serving, admitted, left, last_minute, prequeued, waited_ms, ref waited @ ..] =
        *values
    else {
        return None;
    };
    let waited: [u64; WAIT_BUCKETS.len() + 1] = waited.try_into().ok()?;
    let line = LineFigures {
        waiting,
        admitted,
        left,
        admitted_last_minute: last_minute,
        serving: (serving > 0).then_some(serving),
        waited,
        waited_ms,
    };
    Some((line, prequeued))
}

/// Why a round trip to Redis failed: said in the error log, and counted by kind in
/// `flash_sale_redis_errors_total{kind=...}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer within `timeout=` (a stopped or overloaded Redis, a lost network).
    Timeout { timeout_ms: u64 },
    /// No connection could be made, or it was lost (Redis down or restarting).
    Connection(String),
    /// Redis wants a password, or refused the one given.
    Auth(String),
    /// Redis answered an error, or something else than the scripts' replies (a script it ran
    /// after its deadline included).
    Reply(String),
    /// nginx could not run the round trip (its thread pool's queue was full).
    Local(String),
}

impl Failure {
    /// The kinds, in the order of [`Failure::index`]: the `kind` label's values.
    pub const KINDS: [&'static str; 5] = ["timeout", "connection", "auth", "reply", "local"];

    pub fn index(&self) -> usize {
        match self {
            Failure::Timeout { .. } => 0,
            Failure::Connection(_) => 1,
            Failure::Auth(_) => 2,
            Failure::Reply(_) => 3,
            Failure::Local(_) => 4,
        }
    }

    /// What redis-rs reports, by kind.
    fn of(settings: &Settings, e: &redis::RedisError) -> Failure {
        let text = e.to_string();
        if e.is_timeout() {
            Failure::Timeout { timeout_ms: settings.timeout_ms }
        } else if e.kind() == redis::ErrorKind::AuthenticationFailed
            || text.contains("NOAUTH")
            || text.contains("WRONGPASS")
        {
            Failure::Auth(text)
        } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
            Failure::Connection(text)
        } else {
            Failure::Reply(text)
        }
    }
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Timeout { timeout_ms } => write!(f, "no answer within timeout={timeout_ms}ms"),
            Failure::Connection(e) => write!(f, "connection failed: {e}"),
            Failure::Auth(e) => write!(f, "authentication failed: {e}"),
            Failure::Reply(e) => write!(f, "bad reply: {e}"),
            Failure::Local(e) => write!(f, "{e}"),
        }
    }
}

/// A connection to Redis, and Redis's clock as read when it was opened: its TIME (Unix ms),
/// the host's monotonic clock then, and the round trip that read took. A script's deadline is
/// sent in Redis's clock, derived from the monotonic one (so that neither a host whose clock
/// differs from Redis's nor a step of the host's clock moves it), and a round trip early (so
/// that a script Redis runs just before the deadline is answered before the host gives up).
struct Kept {
    conn: redis::Connection,
    redis_ms: i64,
    at: Instant,
    round_trip_ms: i64,
}

/// Connections kept open between requests, by server, in this worker process. A connection
/// that failed is dropped, never put back.
static IDLE: Mutex<Vec<(String, Kept)>> = Mutex::new(Vec::new());

/// The most idle connections kept per worker: as many as nginx's thread pool has threads.
const MAX_IDLE: usize = 32;

/// Runs `command` on the zone's permits in Redis, on a kept connection if there is one, and
/// gives up at `deadline`: the whole exchange (connecting, writing, reading, and the one retry
/// on a fresh connection) takes no longer, so that `timeout=` is the most a buyer waits for
/// Redis. Blocks until then at most: call it off the worker's event loop.
pub fn run(
    settings: &Settings,
    zone: &str,
    command: &Command,
    deadline: Instant,
) -> Result<Reply, Failure> {
    let server = settings.server();
    let kept = IDLE.lock().ok().and_then(|mut idle| {
        let i = idle.iter().position(|(s, _)| *s == server)?;
        Some(idle.swap_remove(i).1)
    });
    let reused = kept.is_some();
    let mut conn = match kept {
        Some(conn) => conn,
        None => connect(settings, deadline)?,
    };
    let mut reply = execute_by(&mut conn, settings, zone, command, deadline);
    if reply.is_err() && reused && Instant::now() < deadline {
        // A kept connection may have been closed by a restarted Redis: try once on a fresh
        // one, in the time left. Every command is idempotent per key, so a repeat admits
        // nobody twice.
        conn = connect(settings, deadline)?;
        reply = execute_by(&mut conn, settings, zone, command, deadline);
    }
    let reply = reply?;
    if let Ok(mut idle) = IDLE.lock() {
        if idle.len() < MAX_IDLE {
            idle.push((server, conn));
        }
    }
    Ok(reply)
}

/// The time left until `deadline`; a timeout once it has passed.
fn time_left(settings: &Settings, deadline: Instant) -> Result<Duration, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Failure::Timeout { timeout_ms: settings.timeout_ms });
    }
    Ok(left)
}

/// Opens a connection and reads Redis's clock (TIME) against this host's, within the time left.
fn connect(settings: &Settings, deadline: Instant) -> Result<Kept, Failure> {
    let left = time_left(settings, deadline)?;
    let failure = |e: redis::RedisError| Failure::of(settings, &e);
    let client = redis::Client::open(settings.connection_info()).map_err(failure)?;
    let mut conn = client.get_connection_with_timeout(left).map_err(failure)?;
    bound(&mut conn, settings, deadline)?;
    let before = Instant::now();
    let (seconds, micros): (i64, i64) = redis::cmd("TIME").query(&mut conn).map_err(failure)?;
    let round_trip = before.elapsed();
    Ok(Kept {
        conn,
        redis_ms: seconds * 1000 + micros / 1000,
        at: before + round_trip / 2,
        round_trip_ms: round_trip.as_millis() as i64,
    })
}

/// Bounds the connection's reads and writes by the time left.
fn bound(
    conn: &mut redis::Connection,
    settings: &Settings,
    deadline: Instant,
) -> Result<(), Failure> {
    let left = time_left(settings, deadline)?;
    let failure = |e: redis::RedisError| Failure::of(settings, &e);
    conn.set_read_timeout(Some(left)).map_err(failure)?;
    conn.set_write_timeout(Some(left)).map_err(failure)
}

/// [`execute`], bounded by the time left, with the deadline in Redis's clock for its scripts.
fn execute_by(
    link: &mut Kept,
    settings: &Settings,
    zone: &str,
    command: &Command,
    deadline: Instant,
) -> Result<Reply, Failure> {
    bound(&mut link.conn, settings, deadline)?;
    let since_opened = deadline.saturating_duration_since(link.at).as_millis() as i64;
    let redis_deadline = link.redis_ms + since_opened - link.round_trip_ms - 1;
    execute(&mut link.conn, settings, zone, command, redis_deadline)
        .map_err(|e| Failure::of(settings, &e))
}

fn execute(
    conn: &mut redis::Connection,
    settings: &Settings,
    zone: &str,
    command: &Command,
    deadline: i64,
) -> redis::RedisResult<Reply> {
    let [permits, expiry, seq, draw, overrides] = keys(&settings.prefix, zone);
    let lines = line_keys(&settings.prefix, zone);
    let items = item_keys(&settings.prefix, zone);
    let [admit, revoke, clear, grant, draw_secret, set_overrides, step, register, open, figures] =
        &*SCRIPTS;
    let malformed = || redis::RedisError::from((redis::ErrorKind::TypeError, "unexpected reply"));
    let cap_arg = |cap: &Cap| cap.map_or(-1, |c| i64::try_from(c).unwrap_or(i64::MAX));
    // The keys of the scripts that change permits, in the order of [`PERMITS`] and [`LINE`].
    let all_keys = |script: &'static Script| {
        let mut invocation = script.key(&permits);
        invocation.key(&expiry).key(&seq);
        for key in lines.iter().chain(&items) {
            invocation.key(key);
        }
        invocation
    };
    match command {
        Command::Admit { key, cap, max_per_buyer, now_ms, expires_ms, recheck, settle } => {
            let (code, permit): (i64, String) = all_keys(admit)
                .arg(deadline)
                .arg(key.as_slice())
                .arg(cap_arg(cap))
                .arg(now_ms)
                .arg(expires_ms.unwrap_or(0))
                .arg(u8::from(*recheck))
                .arg(u8::from(settle.is_some()))
                .arg(settle.as_ref().map_or(0.0, |s| s.ratio))
                .arg(settle.as_ref().map_or(0, |s| s.seed))
                .arg(cap_arg(max_per_buyer))
                .invoke(conn)?;
            parse_admission(code, &permit).map(Reply::Admission).ok_or_else(malformed)
        }
        Command::Step(step_args) => {
            let LineStep { key, cap, max_per_buyer, now_ms, expires_ms, line, settle } =
                &**step_args;
            let (code, permit, position, ticket, waiting): (i64, String, u64, u64, u64) =
                all_keys(step)
                    .arg(deadline)
                    .arg(key.as_slice())
                    .arg(cap_arg(cap))
                    .arg(now_ms)
                    .arg(expires_ms.unwrap_or(0))
                    .arg(line.rate_milli)
                    .arg(line.idle_ms)
                    .arg(u8::from(settle.is_some()))
                    .arg(settle.map_or(0, |s| s.seed))
                    .arg(cap_arg(max_per_buyer))
                    .invoke(conn)?;
            parse_step(code, &permit, position, ticket, waiting)
                .map(Reply::Lined)
                .ok_or_else(malformed)
        }
        Command::Register { key, cap } => {
            let registered: i64 = all_keys(register)
                .arg(deadline)
                .arg(key.as_slice())
                .arg(cap_arg(cap))
                .invoke(conn)?;
            Ok(Reply::Registered(registered == 1))
        }
        Command::Open { cap, max_per_buyer, now_ms, expires_ms, line, settle } => {
            let all: Vec<(Vec<u8>, String)> = all_keys(open)
                .arg(deadline)
                .arg(cap_arg(cap))
                .arg(now_ms)
                .arg(expires_ms.unwrap_or(0))
                .arg(u8::from(line.is_some()))
                .arg(line.map_or(0, |l| l.idle_ms))
                .arg(settle.ratio)
                .arg(settle.seed)
                .arg(cap_arg(max_per_buyer))
                .invoke(conn)?;
            Ok(Reply::Opened(live_permits(all, *now_ms)))
        }
        Command::LineFigures => {
            let values: Vec<u64> = all_keys(figures).invoke(conn)?;
            parse_figures(&values)
                .map(|(line, prequeued)| Reply::Line(line, prequeued))
                .ok_or_else(malformed)
        }
        Command::Get { key, now_ms } => {
            let permit: Option<String> =
                redis::cmd("HGET").arg(&permits).arg(key.as_slice()).query(conn)?;
            let held = permit.as_deref().and_then(parse_permit);
            Ok(Reply::Permit(held.filter(|h| h.expires_ms.is_none_or(|e| e > *now_ms))))
        }
        Command::Revoke { key } => {
            let permit: Option<String> =
                all_keys(revoke).arg(deadline).arg(key.as_slice()).invoke(conn)?;
            Ok(Reply::Revoked(permit.as_deref().and_then(parse_permit).map(|h| h.seq)))
        }
        Command::Clear => {
            let cleared: u64 = all_keys(clear).arg(deadline).invoke(conn)?;
            Ok(Reply::Cleared(cleared))
        }
        Command::Permits { now_ms } => {
            let all: Vec<(Vec<u8>, String)> = redis::cmd("HGETALL").arg(&permits).query(conn)?;
            Ok(Reply::Permits(live_permits(all, *now_ms)))
        }
        Command::Grant { grants, now_ms } => {
            let mut invocation = all_keys(grant);
            invocation.arg(deadline).arg(now_ms);
            for (key, item, ttl_ms) in grants {
                invocation
                    .arg(PermitKey { key, item }.field())
                    .arg(ttl_ms.map_or(0, |ttl| crate::sale::expiry(*now_ms, ttl)));
            }
            let (granted, already, permits): (u64, u64, u64) = invocation.invoke(conn)?;
            Ok(Reply::Granted { granted, already, permits })
        }
        Command::DrawSecret { proposal } => {
            let secret: String =
                draw_secret.key(&draw).arg(format_secret(*proposal)).invoke(conn)?;
            parse_secret(&secret).map(Reply::DrawSecret).ok_or_else(malformed)
        }
        Command::Overrides => {
            let fields: Vec<(String, String)> =
                redis::cmd("HGETALL").arg(&overrides).query(conn)?;
            Ok(Reply::Overrides(overrides_from_fields(&fields)))
        }
        Command::SetOverrides { patch } => {
            let mut invocation = set_overrides.key(&overrides);
            invocation.arg(deadline);
            for (field, value) in override_changes(patch) {
                invocation.arg(field).arg(value.as_deref().unwrap_or(""));
            }
            let fields: Vec<(String, String)> = invocation.invoke(conn)?;
            Ok(Reply::Overrides(overrides_from_fields(&fields)))
        }
        Command::Items { .. } | Command::Item { .. } | Command::SetItemStock { .. } => {
            items::execute(conn, &settings.prefix, zone, command, deadline)
        }
    }
}

/// The permits of an HGETALL that are still valid at `now_ms`, in order of number.
pub fn live_permits(all: Vec<(Vec<u8>, String)>, now_ms: i64) -> Vec<PermitInfo> {
    let mut live: Vec<PermitInfo> = all
        .into_iter()
        .filter_map(|(field, value)| {
            let (held, granted_ms) = parse_stored(&value)?;
            let live = held.expires_ms.is_none_or(|e| e > now_ms);
            let PermitKey { key, item } = PermitKey::from_field(&field);
            live.then_some(PermitInfo {
                key: key.to_vec(),
                item: item.to_vec(),
                seq: held.seq,
                granted_ms,
                expires_ms: held.expires_ms,
            })
        })
        .collect();
    live.sort_by_key(|p| p.seq);
    live
}

pub mod items;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_take_defaults_and_every_parameter() {
        let s = Settings::parse(["server=127.0.0.1:6379"]).unwrap();
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 6379));
        assert_eq!(s.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(s.cache_ms, DEFAULT_CACHE_MS);
        assert_eq!(s.on_error, OnError::Closed);
        assert_eq!(s.prefix, DEFAULT_PREFIX);
        let s = Settings::parse([
            "server=redis.local:7000",
            "password=redis.pass",
            "timeout=200ms",
            "prefix=shop:",
            "on_error=open",
            "cache=5s",
            "threads=redis",
        ])
        .unwrap();
        assert_eq!(s.threads.as_deref(), Some("redis"));
        assert_eq!(s.server(), "redis.local:7000");
        assert_eq!(s.password_file.as_deref(), Some("redis.pass"));
        assert_eq!((s.timeout_ms, s.cache_ms), (200, 5000));
        assert_eq!((s.prefix.as_str(), s.on_error), ("shop:", OnError::Open));
        assert_eq!(Settings::parse(["server=[::1]:6379"]).unwrap().host, "::1");
        assert_eq!(Settings::parse(["server=h:1", "cache=0"]).unwrap().cache_ms, 0);
    }

    #[test]
    fn settings_name_the_bad_parameter() {
        for bad in [
            "server=localhost",
            "server=:6379",
            "server=h:0",
            "server=h:65536",
            "server=h:x",
            "timeout=0",
            "timeout=fast",
            "on_error=maybe",
            "cache=-1s",
            "password=",
            "threads=",
            "colour=blue",
            "server",
        ] {
            let err = Settings::parse(["server=h:1", bad]).unwrap_err();
            assert_eq!(err, format!("invalid parameter \"{bad}\""));
        }
        assert!(Settings::parse(["timeout=1s"]).unwrap_err().contains("server=HOST:PORT"));
    }

    #[test]
    fn keys_share_a_cluster_slot_and_the_prefix() {
        assert_eq!(
            keys("shop:", "sale"),
            [
                "shop:{sale}:permits",
                "shop:{sale}:expiry",
                "shop:{sale}:seq",
                "shop:{sale}:draw",
                "shop:{sale}:overrides"
            ]
        );
    }

    #[test]
    fn replies_parse_strictly() {
        let held = |seq, expires_ms| Held { seq, expires_ms };
        assert_eq!(parse_permit("7:0:5"), Some(held(7, None)));
        assert_eq!(parse_permit("8:1700000000123:5"), Some(held(8, Some(1_700_000_000_123))));
        for bad in ["", "7", ":0:5", "0:0:5", "x:0:5", "7:x:5", "-1:0:5", "7:0", "7:0:x", "7:0:5:6"]
        {
            assert_eq!(parse_permit(bad), None, "{bad:?}");
        }
        assert_eq!(parse_admission(0, "3:0:9"), Some(Answer::Admitted(held(3, None))));
        assert_eq!(parse_admission(1, "3:0:9"), Some(Answer::Permitted(held(3, None))));
        assert_eq!(parse_admission(2, ""), Some(Answer::SoldOut));
        assert_eq!(parse_admission(3, ""), Some(Answer::NotHeld));
        assert_eq!(parse_admission(5, ""), Some(Answer::LimitReached));
        assert_eq!(parse_admission(0, ""), None);
        assert_eq!(parse_admission(4, "3:0:9"), None);
        assert_eq!(parse_admission(5, "3:0:9"), None, "a buyer at his limit gets no permit");
        assert_eq!(parse_admission(6, ""), None);
    }

    #[test]
    fn line_steps_parse_strictly() {
        let held = Held { seq: 3, expires_ms: None };
        assert_eq!(
            parse_step(0, "3:0:9", 0, 0, 0),
            Some(LineAnswer::Admission(Answer::Admitted(held)))
        );
        assert_eq!(
            parse_step(1, "3:0:9", 0, 0, 0),
            Some(LineAnswer::Admission(Answer::Permitted(held)))
        );
        assert_eq!(parse_step(2, "", 0, 0, 0), Some(LineAnswer::Admission(Answer::SoldOut)));
        assert_eq!(parse_step(5, "", 0, 0, 0), Some(LineAnswer::Admission(Answer::LimitReached)));
        assert_eq!(
            parse_step(4, "", 17, 40, 90),
            Some(LineAnswer::Waiting { ticket: 40, position: 17, waiting: 90 })
        );
        assert_eq!(parse_step(4, "", 17, 0, 90), None, "tickets start at 1");
        assert_eq!(parse_step(3, "", 0, 0, 0), None, "no recheck in a step");
        assert_eq!(parse_step(0, "", 0, 0, 0), None);
        assert_eq!(parse_step(6, "", 0, 1, 0), None);
    }

    #[test]
    fn line_figures_parse_in_order() {
        let mut values = vec![12, 40, 300, 7, 55, 3, 90_500];
        values.extend(1..=11);
        let (line, prequeued) = parse_figures(&values).unwrap();
        assert_eq!(prequeued, 3);
        assert_eq!(
            (line.waiting, line.serving, line.admitted, line.left, line.admitted_last_minute),
            (12, Some(40), 300, 7, 55)
        );
        assert_eq!(line.waited_ms, 90_500);
        assert_eq!(line.waited, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        values[1] = 0;
        assert_eq!(parse_figures(&values).unwrap().0.serving, None, "nobody called");
        assert_eq!(parse_figures(&values[..17]), None);
        values.push(0);
        assert_eq!(parse_figures(&values), None);
    }

    #[test]
    fn the_item_keys_share_the_zone_slot() {
        assert_eq!(
            item_keys("shop:", "sale"),
            [
                "shop:{sale}:items",
                "shop:{sale}:buyers",
                "shop:{sale}:stock",
                "shop:{sale}:configured"
            ]
        );
        // Every script that adds or removes a permit keeps the items' and buyers' counts.
        for script in [ADMIT, STEP, OPEN, GRANT, REVOKE, CLEAR, REGISTER] {
            assert!(!script.contains("local function parts"));
        }
        assert!(PERMITS.contains("local function parts"));
        assert!(CLEAR.contains("KEYS[11], KEYS[12]"));
    }

    #[test]
    fn the_line_keys_share_the_zone_slot() {
        let keys = line_keys("shop:", "sale");
        assert_eq!(keys[0], "shop:{sale}:prequeue");
        assert_eq!(keys[2], "shop:{sale}:line");
        assert!(keys.iter().all(|k| k.starts_with("shop:{sale}:")));
        // The scripts that admit share their functions: one text each, no copy.
        for script in [ADMIT, STEP, OPEN] {
            assert!(!script.contains("local function held_permit"));
        }
        assert!(PERMITS.contains("local function held_permit"));
    }

    #[test]
    fn a_copy_of_the_permits_keeps_the_live_ones_in_order() {
        let all = vec![
            (b"cy".to_vec(), "3:0:30".to_string()),
            (b"amy".to_vec(), "1:500:10".to_string()),
            (b"bob".to_vec(), "2:2000:20".to_string()),
            (b"bad".to_vec(), "junk".to_string()),
        ];
        let live = live_permits(all, 1_000);
        let keys: Vec<&[u8]> = live.iter().map(|p| p.key.as_slice()).collect();
        assert_eq!(keys, [&b"bob"[..], b"cy"]);
        let bob = PermitInfo {
            item: Vec::new(),
            key: b"bob".to_vec(),
            seq: 2,
            granted_ms: 20,
            expires_ms: Some(2_000),
        };
        assert_eq!(live[0], bob);
    }

    #[test]
    fn overrides_read_their_fields_and_skip_bad_ones() {
        let fields = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
        };
        assert_eq!(overrides_from_fields(&[]), Overrides::default());
        let all = fields(&[
            ("block_ratio", "0.25"),
            ("max_permits", "7"),
            ("start_ms", "1000"),
            ("end_ms", "2000"),
        ]);
        assert_eq!(
            overrides_from_fields(&all),
            Overrides {
                block_ratio: Some(0.25),
                max_permits: Some(7),
                start_ms: Some(1000),
                end_ms: Some(2000),
                queue_rate: None
            }
        );
        let bad = fields(&[("max_permits", "-1"), ("colour", "blue")]);
        assert_eq!(overrides_from_fields(&bad), Overrides::default());
    }

    #[test]
    fn a_patch_is_sent_as_the_fields_it_changes() {
        assert_eq!(override_changes(&OverridesPatch::default()), []);
        let patch = OverridesPatch {
            block_ratio: Some(Some(0.25)),
            max_permits: Some(None),
            start_ms: None,
            end_ms: Some(Some(1_628_380_800_000)),
            queue_rate: None,
        };
        assert_eq!(
            override_changes(&patch),
            [
                ("block_ratio", Some("0.25".to_string())),
                ("max_permits", None),
                ("end_ms", Some("1628380800000".to_string())),
            ]
        );
        // What is sent reads back as the overrides the patch makes.
        let set = OverridesPatch {
            block_ratio: Some(Some(0.1)),
            max_permits: Some(Some(u64::MAX)),
            start_ms: Some(Some(-5)),
            end_ms: Some(Some(i64::MAX)),
            queue_rate: None,
        };
        let sent: Vec<(String, String)> = override_changes(&set)
            .into_iter()
            .map(|(field, value)| (field.to_string(), value.unwrap_or_default()))
            .collect();
        assert_eq!(overrides_from_fields(&sent), Overrides::default().patched(&set));
    }

    #[test]
    fn failures_are_told_apart_by_kind() {
        let settings = Settings::parse(["server=127.0.0.1:6379", "timeout=200ms"]).unwrap();
        let io = |kind| redis::RedisError::from(std::io::Error::new(kind, "x"));
        let of = |e: redis::RedisError| Failure::of(&settings, &e);
        assert_eq!(of(io(std::io::ErrorKind::TimedOut)), Failure::Timeout { timeout_ms: 200 });
        assert_eq!(of(io(std::io::ErrorKind::WouldBlock)).index(), 0);
        assert_eq!(of(io(std::io::ErrorKind::ConnectionRefused)).index(), 1);
        assert_eq!(of(io(std::io::ErrorKind::ConnectionReset)).index(), 1);
        let auth = redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "no"));
        assert_eq!(of(auth).index(), 2);
        let odd = redis::RedisError::from((redis::ErrorKind::TypeError, "unexpected reply"));
        assert_eq!(of(odd).index(), 3);
        assert_eq!(
            Failure::Timeout { timeout_ms: 200 }.to_string(),
            "no answer within timeout=200ms"
        );
        assert_eq!(Failure::KINDS[Failure::Local(String::new()).index()], "local");
    }

    #[test]
    fn draw_secrets_round_trip_through_their_text() {
        let secret = [0x0123_4567_89ab_cdef, u64::MAX];
        assert_eq!(format_secret(secret), "0123456789abcdefffffffffffffffff");
        assert_eq!(parse_secret(&format_secret(secret)), Some(secret));
        for bad in
            ["", "0123", "0123456789abcdefffffffffffffffffff", "g123456789abcdefffffffffffffffff"]
        {
            assert_eq!(parse_secret(bad), None, "{bad:?}");
        }
    }
}
