//! The store's Lua scripts, shared by the single-node and the cluster
//! store. Each touches exactly the keys it is given (one per session), so
//! on a cluster it runs on the master of that key's slot, unchanged.

use redis::{Cmd, Script};

/// Lua helpers every script starts with. Redis 7 runs Lua 5.1: no
/// `string.unpack`, and numbers are doubles, which cannot tell apart
/// neighbouring integers above 2^53. So an i64 from a header is never made
/// one number: it is kept as two exact 32-bit halves, compared half by half,
/// and written out in decimal digit by digit, so versions and expiries up
/// to `i64::MAX` compare and store exactly (strings are not compared with
/// `<`, which Lua does by the server's collation locale).
///
/// * `be64(s, at)`: the big-endian two's-complement i64 at byte `at`
///   (1-based) as `{hi, lo}`: `hi` the signed upper half, `lo` the unsigned
///   lower one.
/// * `later(a, b)`: whether the pair `a` is greater than `b`.
/// * `dec(s, at)`: the non-negative big-endian i64 at byte `at` in decimal,
///   exactly (long division of the bytes by 10), for `PXAT`/`PEXPIREAT`.
/// * `now_ms()`: Redis's own clock (`TIME`), in Unix milliseconds, as a pair.
/// * `judge(h)`: `nil` when `h` (a value's first 25 bytes) is a readable
///   record header with a version in `1..=i64::MAX`; otherwise the script's
///   answer for it: -1 unreadable header, -2 version out of range.
/// * `header(key)`: the record's 25-byte header; `nil` when the key is
///   missing; `nil, code` when the value is no record: -1 or -2 as `judge`
///   says, -3 when it is not a string (the caller reports each as
///   undecodable rather than guessing).
macro_rules! lua {
    ($body:literal) => {
        concat!(
            r"
local function be64(s, at)
  local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(s, at, at + 7)
  local hi = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  if b1 >= 128 then hi = hi - 4294967296 end
  return {hi, ((b5 * 256 + b6) * 256 + b7) * 256 + b8}
end
local function later(a, b)
  return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2])
end
local function dec(s, at)
  local b = {string.byte(s, at, at + 7)}
  local digits = {}
  repeat
    local rest, more = 0, false
    for i = 1, 8 do
      local cur = rest * 256 + b[i]
      b[i] = math.floor(cur / 10)
      rest = cur - b[i] * 10
      if b[i] ~= 0 then more = true end
    end
    digits[#digits + 1] = rest
  until not more
  return string.reverse(table.concat(digits))
end
local function now_ms()
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local hi = math.floor(ms / 4294967296)
  return {hi, ms - hi * 4294967296}
end
local function judge(h)
  local f = string.byte(h, 1)
  if string.len(h) < 25 or (f ~= 1 and f ~= 2) then return -1 end
  if string.byte(h, 2) >= 128 or string.sub(h, 2, 9) == string.rep('\0', 8) then return -2 end
  return nil
end
local function header(key)
  local h = redis.pcall('GETRANGE', key, 0, 24)
  if type(h) ~= 'string' then
    if type(h) == 'table' and type(h.err) == 'string' and string.sub(h.err, 1, 9) == 'WRONGTYPE' then
      return nil, -3
    end
    error(h)
  end
  if h == '' and redis.call('EXISTS', key) == 0 then return nil end
  local bad = judge(h)
  if bad then return nil, bad end
  return h
end
",
            $body
        )
    };
}

/// Compare-and-set. KEYS[1] the record; ARGV[1] the expected version (8
/// bytes, as in the header); ARGV[2] the new record. Expired (by the header
/// and Redis's clock) is gone whatever its version. The stored expiry is
/// the later of the old and the new one, in the header (bytes 18..25) and
/// the key's `PXAT` alike, so the key lives as long as the header says even
/// if another writer had given it a shorter TTL.
/// 0 = gone, 1 = conflict, 2 = updated, negative = not a record (see `header`).
const UPDATE_LUA: &str = lua!(
    r"
local h, bad = header(KEYS[1])
if bad then return bad end
if h == nil then return 0 end
local stored = be64(h, 18)
if not later(stored, now_ms()) then return 0 end
if string.sub(h, 2, 9) ~= ARGV[1] then return 1 end
-- Both expiries are past now here, so positive: dec() applies.
if later(stored, be64(ARGV[2], 18)) then
  redis.call('SET', KEYS[1], ARGV[2], 'PXAT', dec(h, 18))
  redis.call('SETRANGE', KEYS[1], 17, string.sub(h, 18, 25))
else
  redis.call('SET', KEYS[1], ARGV[2], 'PXAT', dec(ARGV[2], 18))
end
return 2
"
);

/// Compare-and-delete. KEYS[1] the record; ARGV[1] the expected version.
/// 0 = gone (missing or expired), 1 = conflict, 2 = deleted, negative =
/// not a record (see `header`).
const DELETE_IF_LUA: &str = lua!(
    r"
local h, bad = header(KEYS[1])
if bad then return bad end
if h == nil then return 0 end
if not later(be64(h, 18), now_ms()) then return 0 end
if string.sub(h, 2, 9) ~= ARGV[1] then return 1 end
redis.call('DEL', KEYS[1])
return 2
"
);

/// Moves a live record's expiry forward only. KEYS[1] the record; ARGV[1]
/// the new expiry as 8 header bytes. A later expiry is patched into the
/// value in place (`SETRANGE` keeps the TTL) and the TTL follows it. An
/// expiry no later than the header's leaves the header alone, but the key
/// is still made to live at least as long as the header says (`GT` only
/// ever lengthens a TTL, and writes nothing when it already does): a
/// foreign writer may have given it a shorter TTL, and `true` promises the
/// record lives to its expiry.
/// 0 = missing or expired, 1 = live, negative = not a record (see `header`).
const TOUCH_LUA: &str = lua!(
    r"
local h, bad = header(KEYS[1])
if bad then return bad end
if h == nil then return 0 end
local stored = be64(h, 18)
if not later(stored, now_ms()) then return 0 end
-- Both expiries are past now here, so positive: dec() applies.
if later(be64(ARGV[1], 1), stored) then
  redis.call('SETRANGE', KEYS[1], 17, ARGV[1])
  redis.call('PEXPIREAT', KEYS[1], dec(ARGV[1], 1))
else
  redis.call('PEXPIREAT', KEYS[1], dec(h, 18), 'GT')
end
return 1
"
);

/// How many of KEYS are not expired by their header (Redis's clock). A key
/// that vanished since the `SCAN` reads as empty and is not counted, nor is
/// a value of another type (no session store writes one). A string that is
/// no readable record is counted, as `get` reports it as an error rather
/// than as absent.
const COUNT_LIVE_LUA: &str = lua!(
    r"
local now = now_ms()
local n = 0
for i = 1, #KEYS do
  local h = redis.pcall('GETRANGE', KEYS[i], 0, 24)
  if type(h) == 'string' and h ~= '' then
    if judge(h) or later(be64(h, 18), now) then n = n + 1 end
  end
end
return n
"
);

/// A script, sent by `EVALSHA`, or by `EVAL` with its body when a server
/// does not know it yet (a new node, a promoted replica, a flushed script
/// cache). `EVAL` also caches the script on that server, so later calls
/// there go by hash again.
pub(crate) struct Lua {
    script: Script,
    body: &'static str,
}

impl Lua {
    fn new(body: &'static str) -> Self {
        Lua {
            script: Script::new(body),
            body,
        }
    }

    /// `EVALSHA` of the script on `keys` with `args`.
    pub(crate) fn by_hash(&self, keys: &[&str], args: &[&[u8]]) -> Cmd {
        Self::call("EVALSHA", self.script.get_hash(), keys, args)
    }

    /// `EVAL` of the script's body on `keys` with `args`.
    pub(crate) fn by_body(&self, keys: &[&str], args: &[&[u8]]) -> Cmd {
        Self::call("EVAL", self.body, keys, args)
    }

    /// The script as `SCRIPT LOAD` takes it.
    pub(crate) fn body(&self) -> &'static str {
        self.body
    }

    fn call(command: &str, script: &str, keys: &[&str], args: &[&[u8]]) -> Cmd {
        let mut cmd = redis::cmd(command);
        cmd.arg(script).arg(keys.len()).arg(keys);
        for arg in args {
            cmd.arg(*arg);
        }
        cmd
    }
}

/// The store's Lua scripts.
pub(crate) struct Scripts {
    pub(crate) update: Lua,
    pub(crate) delete_if: Lua,
    pub(crate) touch: Lua,
    pub(crate) count_live: Lua,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            update: Lua::new(UPDATE_LUA),
            delete_if: Lua::new(DELETE_IF_LUA),
            touch: Lua::new(TOUCH_LUA),
            count_live: Lua::new(COUNT_LIVE_LUA),
        }
    }
}
