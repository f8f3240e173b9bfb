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
///   exactly, for `PXAT`/`PEXPIREAT`. Below 2^53 (every real expiry) a
///   double holds it exactly and `%.0f` prints it; above, long division of
///   the bytes by 10, which cost Redis about 11 µs a call and was most of
///   what an update script cost (`INFO commandstats`: 16.8 µs per update
///   before, about 6 after).
/// * `now_ms()`: Redis's own clock (`TIME`), in Unix milliseconds, as a pair.
/// * `judge(h)`: `nil` when `h` (a value's first 25 bytes) is a readable
///   record header with a version in `1..=i64::MAX`; otherwise the script's
///   answer for it: -1 unreadable header, -2 version out of range.
/// * `header(key)`: the record's first 283 bytes (the 25-byte header, and
///   for format 3 the user key after it, so `rkey` reads it without another
///   call); `nil` when the key is
///   missing; `nil, code` when the value is no record: -1 or -2 as `judge`
///   says, -3 when it is not a string (the caller reports each as
///   undecodable rather than guessing).
///
/// The user index (see [`user_set_key`](crate::user_set_key)): a record
/// of format 3 carries its user key after the header (bytes 26..27, 1-based,
/// the length n as u16 big-endian, then n bytes), so the scripts read it
/// without decoding the body, and touch the index only for such records:
/// a session bound to no user (format 1 or 2) costs a format-byte check.
///
/// * `now_dec()`: Redis's clock in Unix milliseconds, in decimal (a score).
/// * `ukey(key)`: the user key of the format-3 record stored under `key`
///   (read with `GETRANGE`), `nil` if its length is unreadable.
/// * `rkey(r)`: the user key of the record bytes `r`, `nil` when `r` is not
///   format 3 (bound to no user) or its key is unreadable.
/// * `uset(prefix, u)`: the key of user `u`'s index in the namespace
///   `prefix`: a sorted set whose members are session ids (hex) and whose
///   scores cover the records' expiries (Unix ms; see `score`).
/// * `index_add(set, id, at)`: lists `id` in `set` with the score `at`
///   (decimal ms) and makes the set live at least until `at` (`GT` only
///   ever lengthens its TTL; a set without one, just made, gets `at`).
/// * `score(s, at)`: the index score of the expiry at byte `at` of `s`: the
///   last millisecond of its window of 2^17 ms (about 131 s), so that the
///   many saves of a busy session, each moving its expiry a little, find
///   their entry's score still covering it and write nothing to the index
///   (`same_window`). The cost: an expired session's entry outlives it by
///   up to one window. Expiries beyond 2^52 ms (year 144,000) or before
///   1970 score exactly (no window), so they always rewrite the entry.
///
/// `lua!(first: fast, body)` puts `fast` before the helpers: a common case
/// that needs none of them answers there, and pays nothing for defining
/// them (each call of a script runs its `local function` statements, and
/// making those closures cost a short script a fifth of its Redis CPU).
macro_rules! lua {
    ($body:literal) => {
        lua!(first: "", $body)
    };
    (first: $first:literal, $body:literal) => {
        concat!(
            $first,
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
  local v = be64(s, at)
  if v[1] >= 0 and v[1] < 2097152 then
    return string.format('%.0f', v[1] * 4294967296 + v[2])
  end
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
  if string.len(h) < 25 or f < 1 or f > 3 then return -1 end
  if string.byte(h, 2) >= 128 or string.sub(h, 2, 9) == string.rep('\0', 8) then return -2 end
  return nil
end
local function header(key)
  local h = redis.pcall('GETRANGE', key, 0, 282)
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
local function now_dec()
  local t = redis.call('TIME')
  return t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
end
local function ukey(key)
  local t = redis.call('GETRANGE', key, 25, 282)
  if string.len(t) < 2 then return nil end
  local n = string.byte(t, 1) * 256 + string.byte(t, 2)
  if n < 1 or n > 256 or string.len(t) < n + 2 then return nil end
  return string.sub(t, 3, n + 2)
end
local function rkey(r)
  if string.byte(r, 1) ~= 3 or string.len(r) < 27 then return nil end
  local n = string.byte(r, 26) * 256 + string.byte(r, 27)
  if n < 1 or n > 256 or string.len(r) < n + 27 then return nil end
  return string.sub(r, 28, n + 27)
end
local function uset(prefix, u)
  return prefix .. 'user:' .. redis.sha1hex(u)
end
local function index_add(set, id, at)
  redis.call('ZADD', set, at, id)
  if redis.call('PEXPIREAT', set, at, 'GT') == 0 then
    redis.call('PEXPIREAT', set, at, 'NX')
  end
end
local W = 131072
local function window(s, at)
  local e = be64(s, at)
  if e[1] >= 1048576 or e[1] < 0 then return nil end
  return e[1] * 32768 + math.floor(e[2] / W)
end
local function score(s, at)
  local w = window(s, at)
  if w == nil then return dec(s, at) end
  return string.format('%.0f', (w + 1) * W - 1)
end
local function same_window(a, at_a, b, at_b)
  local wa = window(a, at_a)
  return wa ~= nil and wa == window(b, at_b)
end
",
            $body
        )
    };
}

/// Compare-and-set. KEYS[1] the record; ARGV[1] the expected version (8
/// bytes, as in the header); ARGV[2] the new record; ARGV[3] how to keep the
/// user index, ARGV[4] what that needs; ARGV[5] the app's clock plus a
/// margin, in Unix ms as 8 bytes, never negative. Expired (by the header and
/// Redis's clock) is gone whatever its version. A header expiring after
/// ARGV[5] is live without asking Redis's clock: `TIME` and its arithmetic
/// were a third of the script's Redis CPU (`scripts/redis-script-cost`), and
/// Redis has already dropped every record of this store whose `PXAT` (its
/// header's expiry) passed by its own clock. Only a record due within the
/// margin, or another writer's whose TTL outlives its header, is judged by
/// `TIME`, as `get` does. The stored expiry is the later of
/// the old and the new one, in the header (bytes 18..25) and the key's
/// `PXAT` alike, so the key lives as long as the header says even if
/// another writer had given it a shorter TTL.
///
/// The index, by ARGV[3]:
/// * `s` (one server; ARGV[4] the prefix): here, in the same step. The
///   record leaves its old user's set when its user changes, and is listed
///   in its new user's with the stored expiry.
/// * `c` (cluster, first try): the sets live in other slots, so the caller
///   lists the record in its new user's set before it is written. When the
///   record is bound to a user it was not bound to, nothing is written and
///   the answer is the stored expiry the set's entry must reach (decimal).
/// * `x` (cluster, the entry is in place; ARGV[4] its score as 8 bytes):
///   as `c`, but the write goes ahead unless the expiry to store is later
///   than the entry's score (a touch meanwhile), answered as for `c`.
///
/// A record whose user is unchanged, or bound to no user before and
/// after, costs two format-byte checks.
///
/// ARGV[6]: the new record's expiry in decimal (`PXAT`), which the fast
/// path writes as it is. The fast path, before the helpers, is the common
/// save: a record bound to no user before and after, its header readable
/// with the expected version, live by ARGV[5], and the new expiry no
/// earlier than the stored one (every expiry below 2^53, so one exact Lua
/// number each). It does what the full script does for such a record, in
/// about half the Redis CPU (`scripts/redis-script-cost`: the helpers'
/// closures, `TIME`, and `string.format` of the `PXAT` are what it skips);
/// anything else falls through to the full script, which reads the header
/// again.
/// 0 = gone, 1 = conflict, 2 = updated, negative = not a record (see
/// `header`), a decimal string = index first (cluster).
const UPDATE_LUA: &str = lua!(
    first: r"
do
  local h, r = redis.pcall('GETRANGE', KEYS[1], 0, 24), ARGV[2]
  if type(h) == 'string' and string.len(h) == 25 and string.sub(h, 2, 9) == ARGV[1]
      and ARGV[1] ~= '\0\0\0\0\0\0\0\0' and string.byte(r, 1) ~= 3 then
    local f = string.byte(h, 1)
    local s1, s2, s3, s4, s5, s6, s7, s8 = string.byte(h, 18, 25)
    local n1, n2, n3, n4, n5, n6, n7, n8 = string.byte(r, 18, 25)
    local m1, m2, m3, m4, m5, m6, m7, m8 = string.byte(ARGV[5], 1, 8)
    if (f == 1 or f == 2) and s1 == 0 and s2 < 32 and n1 == 0 and n2 < 32
        and m1 == 0 and m2 < 32 then
      local stored = (((((s2 * 256 + s3) * 256 + s4) * 256 + s5) * 256 + s6) * 256 + s7) * 256 + s8
      local new = (((((n2 * 256 + n3) * 256 + n4) * 256 + n5) * 256 + n6) * 256 + n7) * 256 + n8
      local live_after = (((((m2 * 256 + m3) * 256 + m4) * 256 + m5) * 256 + m6) * 256 + m7) * 256 + m8
      if stored > live_after and new >= stored then
        redis.call('SET', KEYS[1], r, 'PXAT', ARGV[6])
        return 2
      end
    end
  end
end
",
    r"
local h, bad = header(KEYS[1])
if bad then return bad end
if h == nil then return 0 end
local stored = be64(h, 18)
if not later(stored, be64(ARGV[5], 1)) and not later(stored, now_ms()) then return 0 end
if string.sub(h, 2, 9) ~= ARGV[1] then return 1 end
local old, new
old = rkey(h)
if string.byte(ARGV[2], 1) == 3 then new = rkey(ARGV[2]) end
local mode = ARGV[3]
local keep = later(stored, be64(ARGV[2], 18))
-- The bytes whose expiry is stored: the old header, or the new record.
local at = h
if not keep then at = ARGV[2] end
if new and new ~= old and mode ~= 's' then
  if mode == 'c' or later(be64(at, 18), be64(ARGV[4], 1)) then return dec(at, 18) end
end
-- Both expiries are past now here, so positive: dec() applies.
if keep then
  redis.call('SET', KEYS[1], ARGV[2], 'PXAT', dec(h, 18))
  redis.call('SETRANGE', KEYS[1], 17, string.sub(h, 18, 25))
else
  redis.call('SET', KEYS[1], ARGV[2], 'PXAT', dec(ARGV[2], 18))
end
if mode == 's' and (old or new) then
  local id = string.sub(KEYS[1], string.len(ARGV[4]) + 1)
  if old and old ~= new then redis.call('ZREM', uset(ARGV[4], old), id) end
  if new and (new ~= old or not same_window(h, 18, at, 18)) then
    index_add(uset(ARGV[4], new), id, score(at, 18))
  end
end
return 2
"
);

/// Compare-and-delete. KEYS[1] the record; ARGV[1] the expected version;
/// ARGV[2] `s` to take the record out of its user's index here (one
/// server; ARGV[3] the prefix), `c` to answer its user key instead (the
/// cluster store removes it from the set, in another slot).
/// 0 = gone (missing or expired), 1 = conflict, 2 = deleted, negative =
/// not a record (see `header`), a string = deleted, and it was bound to
/// that user (`c`).
const DELETE_IF_LUA: &str = lua!(
    r"
local h, bad = header(KEYS[1])
if bad then return bad end
if h == nil then return 0 end
if not later(be64(h, 18), now_ms()) then return 0 end
if string.sub(h, 2, 9) ~= ARGV[1] then return 1 end
local old = rkey(h)
redis.call('DEL', KEYS[1])
if old then
  if ARGV[2] ~= 's' then return old end
  redis.call('ZREM', uset(ARGV[3], old), string.sub(KEYS[1], string.len(ARGV[3]) + 1))
end
return 2
"
);

/// Deletes a record, whatever it holds. KEYS[1] the record; ARGV[1] and
/// ARGV[2] as ARGV[2] and ARGV[3] of [`DELETE_IF_LUA`].
/// 0 = done, a string = done, and it was bound to that user (`c`).
const DELETE_LUA: &str = lua!(
    r"
local old
if redis.pcall('GETRANGE', KEYS[1], 0, 0) == '\3' then old = ukey(KEYS[1]) end
redis.call('DEL', KEYS[1])
if old then
  if ARGV[1] ~= 's' then return old end
  redis.call('ZREM', uset(ARGV[2], old), string.sub(KEYS[1], string.len(ARGV[2]) + 1))
end
return 0
"
);

/// One server, after `delete` took a bound record out (`GETDEL`): takes
/// its id out of its user's set, unless the key holds a record bound to
/// that same user again (a `set` landed in between, and listed it).
/// KEYS[1] the record; KEYS[2] the user's set; ARGV[1] the user key;
/// ARGV[2] the id (hex). 1 = removed, 0 = kept.
const UNINDEX_LUA: &str = lua!(
    r"
if redis.pcall('GETRANGE', KEYS[1], 0, 0) == '\3' and ukey(KEYS[1]) == ARGV[1] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"
);

/// `SET` on one server: the record, and its user index in the same step.
/// KEYS[1] the record; ARGV[1] the new record; ARGV[2] its `PXAT`; ARGV[3]
/// the prefix. The record leaves the set of the user the old one was bound
/// to, and is listed under its own user while its expiry is to come.
const SET_LUA: &str = lua!(
    r"
local old
if redis.pcall('GETRANGE', KEYS[1], 0, 0) == '\3' then old = ukey(KEYS[1]) end
local new = rkey(ARGV[1])
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
if old or new then
  local id = string.sub(KEYS[1], string.len(ARGV[3]) + 1)
  if old and old ~= new then redis.call('ZREM', uset(ARGV[3], old), id) end
  if new then
    if later(be64(ARGV[1], 18), now_ms()) then
      index_add(uset(ARGV[3], new), id, score(ARGV[1], 18))
    else
      redis.call('ZREM', uset(ARGV[3], new), id)
    end
  end
end
return 1
"
);

/// `SET NX` of a record bound to a user, on one server, listing it in its
/// user's index in the same step. KEYS[1] the record; ARGV[1] the record;
/// ARGV[2] its `PXAT`; ARGV[3] the prefix. (A record bound to no user is
/// created by a plain `SET NX`.) 1 = created, 0 = a record was there.
const CREATE_BOUND_LUA: &str = lua!(
    r"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PXAT', ARGV[2]) then return 0 end
local new = rkey(ARGV[1])
if new and later(be64(ARGV[1], 18), now_ms()) then
  index_add(uset(ARGV[3], new), string.sub(KEYS[1], string.len(ARGV[3]) + 1), score(ARGV[1], 18))
end
return 1
"
);

/// Moves a live record's expiry forward only. KEYS[1] the record; ARGV[1]
/// the new expiry as 8 header bytes. A later expiry is patched into the
/// value in place (`SETRANGE` keeps the TTL) and the TTL follows it. An
/// expiry no later than the header's leaves the header alone, but the key
/// is still made to live at least as long as the header says (`GT` only
/// ever lengthens a TTL, and writes nothing when it already does): a
/// foreign writer may have given it a shorter TTL, and `true` promises the
/// record lives to its expiry. With ARGV[2] (one server: the prefix), a
/// record bound to a user has its index entry follow its new expiry (the
/// cluster's entries do not follow: see the cluster store).
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
  if ARGV[2] and string.byte(h, 1) == 3 and not same_window(h, 18, ARGV[1], 1) then
    local u = rkey(h)
    if u then
      index_add(uset(ARGV[2], u), string.sub(KEYS[1], string.len(ARGV[2]) + 1), score(ARGV[1], 1))
    end
  end
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

/// The live sessions of one user, on one server, in one step. KEYS[1] the
/// user's set; ARGV[1] the prefix; ARGV[2] the user key. Entries whose
/// score has passed go first (a score covers its record's expiry); every
/// other entry whose record is not a live record bound to exactly that
/// user is dropped too (none should be: every write keeps the set in the
/// same step). Answers the listed records as id, bytes, id, bytes, ...
const SESSIONS_OF_LUA: &str = lua!(
    r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_dec())
local now = now_ms()
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local v = redis.pcall('GET', ARGV[1] .. id)
  if type(v) == 'string' and not judge(v) and rkey(v) == ARGV[2] and later(be64(v, 18), now) then
    out[#out + 1] = id
    out[#out + 1] = v
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"
);

/// Deletes one user's records, on one server, in one step. KEYS[1] the
/// user's set; ARGV[1] the prefix; ARGV[2] the user key; ARGV[3] the id
/// to keep (empty for none). Each listed record that is bound to exactly
/// that user (its own key checked, live or expired) is deleted and
/// answered; an entry whose record is not is dropped.
const REVOKE_LUA: &str = lua!(
    r"
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. id
  if redis.pcall('GETRANGE', key, 0, 0) == '\3' and ukey(key) == ARGV[2] then
    if id ~= ARGV[3] then
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[1], id)
      out[#out + 1] = id
    end
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"
);

/// Drops the entries of expired records from the user sets in KEYS (one
/// server; ARGV[1] the prefix). Entries whose score has passed go at once;
/// those whose score is within one window ahead (their record may have
/// expired inside the window the score covers) go when their record is
/// missing or expired, so an expired session's entry never outlives the
/// first `flush` after its expiry. A key that is not a sorted set is passed
/// over. Answers how many entries went.
const FLUSH_INDEX_LUA: &str = lua!(
    r"
local now = now_dec()
local soon = string.format('%.0f', tonumber(now) + W)
local clock = now_ms()
local n = 0
for i = 1, #KEYS do
  local gone = redis.pcall('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if type(gone) == 'number' then
    n = n + gone
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[i], '(' .. now, soon)) do
      local h = redis.pcall('GETRANGE', ARGV[1] .. id, 0, 24)
      if type(h) == 'string' and (h == '' or (not judge(h) and not later(be64(h, 18), clock))) then
        redis.call('ZREM', KEYS[i], id)
        n = n + 1
      end
    end
  end
end
return n
"
);

/// After `clear` deleted a namespace's records: drops from the user sets in
/// KEYS (one server; ARGV[1] the prefix) every entry whose record is gone,
/// expired, or not bound to that set's user. A record written since (with
/// its entry, in one step) keeps it.
const CLEAR_INDEX_LUA: &str = lua!(
    r"
local now = now_dec()
for i = 1, #KEYS do
  local set = KEYS[i]
  local hash = string.sub(set, -40)
  if type(redis.pcall('ZREMRANGEBYSCORE', set, '-inf', now)) == 'number' then
    for _, id in ipairs(redis.call('ZRANGE', set, 0, -1)) do
      local key = ARGV[1] .. id
      local u
      if redis.pcall('GETRANGE', key, 0, 0) == '\3' then u = ukey(key) end
      if not u or redis.sha1hex(u) ~= hash then redis.call('ZREM', set, id) end
    end
  end
end
return 0
"
);

/// Cluster: whether the record under KEYS[1] is bound to exactly the user
/// ARGV[1] (live or expired); if so it is deleted. 1 = deleted, 0 = not
/// that user's (missing, bound to no one or to another user).
const REVOKE_ONE_LUA: &str = lua!(
    r"
if redis.pcall('GETRANGE', KEYS[1], 0, 0) == '\3' and ukey(KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"
);

/// Cluster: the ids in the user set KEYS[1] whose score has passed by
/// this node's clock.
const DUE_LUA: &str = lua!(
    r"
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_dec())
"
);

/// Cluster: drops from the user set KEYS[1] each id in ARGV whose score
/// (the latest expiry any write announced for it before writing) has
/// passed by this node's clock. The caller saw each one's record not
/// bound to the set's user; a write binding it since announced a later
/// expiry first, so its entry stays. Answers how many went.
const DROP_DUE_LUA: &str = lua!(
    r"
local now = tonumber(now_dec())
local n = 0
for i = 1, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= now then
    redis.call('ZREM', KEYS[1], ARGV[i])
    n = n + 1
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

    /// Runs the script on `keys` with `args`: by hash, and by body if the
    /// server does not know it yet (nothing ran then).
    pub(crate) async fn run<C, R>(
        &self,
        conn: &mut C,
        keys: &[&str],
        args: &[&[u8]],
    ) -> redis::RedisResult<R>
    where
        C: redis::aio::ConnectionLike + Send,
        R: redis::FromRedisValue,
    {
        match self.by_hash(keys, args).query_async(conn).await {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                self.by_body(keys, args).query_async(conn).await
            }
            other => other,
        }
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
    pub(crate) delete: Lua,
    pub(crate) unindex: Lua,
    pub(crate) set: Lua,
    pub(crate) create_bound: Lua,
    pub(crate) touch: Lua,
    pub(crate) count_live: Lua,
    pub(crate) sessions_of: Lua,
    pub(crate) revoke: Lua,
    pub(crate) flush_index: Lua,
    pub(crate) clear_index: Lua,
    pub(crate) revoke_one: Lua,
    pub(crate) due: Lua,
    pub(crate) drop_due: Lua,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            update: Lua::new(UPDATE_LUA),
            delete_if: Lua::new(DELETE_IF_LUA),
            delete: Lua::new(DELETE_LUA),
            unindex: Lua::new(UNINDEX_LUA),
            set: Lua::new(SET_LUA),
            create_bound: Lua::new(CREATE_BOUND_LUA),
            touch: Lua::new(TOUCH_LUA),
            count_live: Lua::new(COUNT_LIVE_LUA),
            sessions_of: Lua::new(SESSIONS_OF_LUA),
            revoke: Lua::new(REVOKE_LUA),
            flush_index: Lua::new(FLUSH_INDEX_LUA),
            clear_index: Lua::new(CLEAR_INDEX_LUA),
            revoke_one: Lua::new(REVOKE_ONE_LUA),
            due: Lua::new(DUE_LUA),
            drop_due: Lua::new(DROP_DUE_LUA),
        }
    }
}
