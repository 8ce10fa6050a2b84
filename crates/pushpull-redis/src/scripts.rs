//! The Lua scripts that make a publish and a read each one atomic step in Redis.
//!
//! Keys of one topic share a hash tag (`{topic}`), so the scripts also run on a Redis Cluster.
//! A stream entry's ID is `OFFSET-0`; its fields are `p` (payload), `t` (milliseconds since the
//! Unix epoch), and when present `e` (event type), `c` (content type) and `k` (idempotency key).

/// Shared helpers, prepended to both scripts.
const HELPERS: &str = r#"
local function field(entry, name)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return nil
end
local function offset_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end
-- The Redis running this script, as replication names it: a replica promoted to master, a
-- restarted server or another master of a cluster each has another ID.
--
-- A replica refuses: a cluster client whose map of slots is stale may send a script to a node
-- that was the slot's master and came back as a replica, which (the client having asked for
-- READONLY, as redis-rs does on every connection) would run it on data that may be stale or
-- empty; READONLY sends the client to the master instead.
local function writer()
  local info = redis.call('INFO', 'replication')
  if string.find(info, 'role:slave', 1, true) then
    error({err = 'READONLY this node is a replica now: its slots have another master'})
  end
  return string.match(info, 'master_replid:(%w+)')
end
-- The log's epoch; a log without one (new, or lost by Redis) starts a new incarnation. A log
-- last written by another Redis (a replica took over, the server restarted, its slot moved)
-- may have lost what that one acknowledged past what reached this one: it gets a new epoch,
-- remembering the old one (`prev`) and its last offset here (`base`), so a reader of the old
-- epoch at or before `base` goes on, and one past it (it read what was lost) gets a gap.
local function incarnation(meta, log, keys, candidate)
  local state = redis.call('HMGET', meta, 'epoch', 'writer', 'last')
  local epoch, by, last = state[1], state[2], state[3]
  local here = writer()
  if not epoch then
    redis.call('DEL', log, keys)
    epoch = candidate
    redis.call('HSET', meta, 'epoch', epoch, 'last', 0, 'bytes', 0, 'writer', here)
  elseif by ~= here then
    redis.call('HSET', meta, 'prev', epoch, 'base', last, 'epoch', candidate, 'writer', here)
    epoch = candidate
  end
  return epoch
end
"#;

/// Appends a message to a log (creating its epoch if it has none), applies retention and
/// wakes the log's readers (on the log's channel, and on the shared one for its first
/// message): what a publish does, and what a join or a leave does to a presence
/// log. `now` is milliseconds as text. Returns {epoch, offset, timestamp}; a message whose
/// idempotency key matches a retained one is not stored again (its receipt is returned).
const APPEND: &str = r#"
local function append(meta, log, keys, candidate, now, payload, event, ctype, key,
                      max_messages, max_bytes, max_age, channel, shared, topic)
  local epoch = incarnation(meta, log, keys, candidate)
  local now_ms = tonumber(now)
  if key ~= '' then
    local prior = redis.call('HGET', keys, key)
    if prior then
      local entry = redis.call('XRANGE', log, prior .. '-0', prior .. '-0')
      if #entry > 0 then
        return {epoch, tonumber(prior), tonumber(field(entry[1], 't'))}
      end
      redis.call('HDEL', keys, key)
    end
  end
  local offset = redis.call('HINCRBY', meta, 'last', 1)
  local fields = {'p', payload, 't', now}
  if event ~= '' then table.insert(fields, 'e'); table.insert(fields, event) end
  if ctype ~= '' then table.insert(fields, 'c'); table.insert(fields, ctype) end
  if key ~= '' then
    table.insert(fields, 'k'); table.insert(fields, key)
    redis.call('HSET', keys, key, offset)
  end
  redis.call('XADD', log, offset .. '-0', unpack(fields))
  local bytes = redis.call('HINCRBY', meta, 'bytes', #payload)
  local count = redis.call('XLEN', log)
  -- Retention: drop the oldest while any limit is passed (never the message just stored).
  while count > 1 do
    local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
    local t = tonumber(field(oldest, 't'))
    local over = count > max_messages or bytes > max_bytes or (max_age > 0 and now_ms - t > max_age)
    if not over then break end
    redis.call('XDEL', log, oldest[1])
    redis.call('HSET', meta, 'dropped_t', t)
    count = count - 1
    bytes = redis.call('HINCRBY', meta, 'bytes', -#field(oldest, 'p'))
    local k = field(oldest, 'k')
    if k then redis.call('HDEL', keys, k) end
  end
  -- The topic's own (sharded) channel wakes the nodes that follow it; the shared one hears
  -- of a log's first message only, for subscriptions by prefix on every node.
  local wake = topic .. ' ' .. epoch .. ' ' .. offset
  redis.call('SPUBLISH', channel, wake)
  if offset == 1 then redis.call('PUBLISH', shared, wake) end
  return {epoch, offset, now_ms}
end
"#;

/// KEYS: meta, log, keys. ARGV: 1 epoch candidate, 2 now (ms), 3 payload, 4 event, 5 content
/// type, 6 idempotency key ('' for none), 7 max messages, 8 max bytes, 9 max age (ms, 0: none),
/// 10 the topic's wake channel, 11 the shared one, 12 topic. Returns {epoch, offset,
/// timestamp}.
const PUBLISH: &str = r#"
return append(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
              tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10], ARGV[11],
              ARGV[12])
"#;

/// Presence: a topic's members are a hash (`client` → the member's JSON) beside its presence
/// log (a log like any other, under the presence topic's name), and their leases a sorted set
/// (`client` scored by when its lease lapses), all in the presence topic's slot. Joins and
/// leaves are appended to the presence log in the same script that changes the hash, so the
/// two never disagree and a snapshot (hash and log end, read in one script) has no hole.
///
/// The scripts below share KEYS: members, meta, log, keys (of the presence log), leases; and
/// ARGV 1 epoch candidate, 2 now (ms), 3 max messages, 4 max bytes, 5 max age, 6 the presence
/// log's wake channel, 7 the shared one, 8 the presence topic.
const PRESENCE: &str = r#"
local members, meta, log, keys, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local function member_event(json, event)
  append(meta, log, keys, ARGV[1], ARGV[2], json, event, 'application/json', '',
         tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8])
end
-- Every member whose lease lapsed by now leaves. Returns how many.
local function expire()
  local due = redis.call('ZRANGEBYSCORE', leases, '-inf', ARGV[2])
  for _, client in ipairs(due) do
    redis.call('ZREM', leases, client)
    local json = redis.call('HGET', members, client)
    if json then
      redis.call('HDEL', members, client)
      member_event(json, 'leave')
    end
  end
  return #due
end
"#;

/// ARGV 9 max members, then triples of client, member JSON, lease end (ms). Each client not
/// yet a member joins (unless the topic is full); each lease is set. Returns the number of
/// clients refused because the topic was full.
const JOIN: &str = r#"
local max_members = tonumber(ARGV[9])
local refused = 0
for i = 10, #ARGV, 3 do
  local client, json, lease = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HEXISTS', members, client) == 1 then
    redis.call('ZADD', leases, lease, client)
  elseif redis.call('HLEN', members) >= max_members then
    refused = refused + 1
  else
    redis.call('HSET', members, client, json)
    redis.call('ZADD', leases, lease, client)
    member_event(json, 'join')
  end
end
return refused
"#;

/// ARGV 9 client. Returns 1 if it was a member.
const LEAVE: &str = r#"
local json = redis.call('HGET', members, ARGV[9])
redis.call('ZREM', leases, ARGV[9])
if not json then return 0 end
redis.call('HDEL', members, ARGV[9])
member_event(json, 'leave')
return 1
"#;

/// Ends the lapsed leases of one topic. Returns how many lapsed.
const EXPIRE: &str = r#"
return expire()
"#;

/// Ends the lapsed leases, then returns {epoch, last offset of the presence log, the members'
/// JSON}.
const SNAPSHOT: &str = r#"
expire()
local epoch = incarnation(meta, log, keys, ARGV[1])
local last = tonumber(redis.call('HGET', meta, 'last'))
return {epoch, last, redis.call('HVALS', members)}
"#;

/// Which topics have leases that may have lapsed: one sorted set (`TOPIC\nCLIENT` scored by
/// the lease's end) for every node to find the members of a node that died. It is written
/// before the topic's own leases and cleaned after them, so it never misses a lease; an entry
/// it holds too long costs one look. KEYS: the set. ARGV: 1 the entry, 2 its score as read.
/// Removes the entry unless it was renewed since it was read.
const UNLIST: &str = r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"#;

/// KEYS: meta, log, keys. ARGV: 1 epoch candidate, 2 now (ms), 3 max age (ms, 0: none),
/// 4 mode (`b` beginning, `l` latest, `a` after a cursor, `n` the last N, `s` since a time),
/// 5 the cursor's epoch, 6 its offset (N for `n`, the time in ms for `s`), 7 limit.
/// Returns {epoch, last, first retained, position, gap, entries, from}: gap is '' (none),
/// 'retention', 'epoch', 'rebase' (the cursor read past what the log kept when another Redis
/// took over) or 'ahead' (the cursor is ahead of the log); `from` is where the
/// cursor stood (resolved for `n` and `s`), so a retention gap misses `from + 1 ..= first - 1`
/// (for a rebase, `from` is the cursor's offset, or where the log stood at the takeover if
/// that is less).
///
/// `since` finds the first retained entry at or after the time by bisection over offsets;
/// when none is retained that old and the newest dropped entry (`dropped_t`) is at or after
/// the time, every dropped offset may be missed: `from` is 0.
const READ: &str = r#"
local meta, log, keys = KEYS[1], KEYS[2], KEYS[3]
local epoch = incarnation(meta, log, keys, ARGV[1])
local last = tonumber(redis.call('HGET', meta, 'last'))
local now, max_age = tonumber(ARGV[2]), tonumber(ARGV[3])
local first = last + 1
local from = '-'
for _ = 1, 100 do
  local batch = redis.call('XRANGE', log, from, '+', 'COUNT', 100)
  if #batch == 0 then break end
  local found = false
  for _, entry in ipairs(batch) do
    if max_age == 0 or now - tonumber(field(entry, 't')) <= max_age then
      first = offset_of(entry[1]); found = true; break
    end
  end
  if found then break end
  from = '(' .. batch[#batch][1]
end
local mode = ARGV[4]
local position, gap, from = 0, '', 0
local function after(at)
  from = at
  if at > last then return false end
  if at + 1 < first then gap = 'retention'; position = first - 1 else position = at end
  return true
end
local function time_of(offset)
  local entry = redis.call('XRANGE', log, offset .. '-0', offset .. '-0')
  if #entry == 0 then return nil end
  return tonumber(field(entry[1], 't'))
end
if mode == 'b' then
  position = first - 1
elseif mode == 'l' then
  position = last
elseif mode == 'n' then
  after(math.max(last - tonumber(ARGV[6]), 0))
elseif mode == 's' then
  local since = tonumber(ARGV[6])
  -- The oldest entry still stored (expired by age or not) bounds the search.
  local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
  local low = last + 1
  if #oldest > 0 then low = offset_of(oldest[1][1]) end
  local lo, hi = low, last + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local t = time_of(mid)
    if t == nil or t < since then lo = mid + 1 else hi = mid end
  end
  local at = lo - 1
  local dropped = tonumber(redis.call('HGET', meta, 'dropped_t') or '-1')
  if lo == low and low > 1 and dropped >= since then at = 0 end
  after(at)
elseif ARGV[5] == epoch then
  if not after(tonumber(ARGV[6])) then return {epoch, last, first, from, 'ahead', {}, from} end
elseif ARGV[5] == redis.call('HGET', meta, 'prev') then
  -- A cursor of the epoch before another Redis took over: what it read up to `base` is
  -- still here; past it, it read what was lost. Either way it goes on in the new epoch with
  -- a gap saying so, missing only what retention dropped since.
  gap = 'rebase'
  from = math.min(tonumber(ARGV[6]), tonumber(redis.call('HGET', meta, 'base')))
  position = math.max(from, first - 1)
else
  gap = 'epoch'; position = first - 1
end
local entries = {}
local limit = tonumber(ARGV[7])
if limit > 0 and position < last then
  entries = redis.call('XRANGE', log, (position + 1) .. '-0', '+', 'COUNT', limit)
end
return {epoch, last, first, position, gap, entries, from}
"#;

/// The publish script.
pub(crate) fn publish() -> redis::Script {
    redis::Script::new(&format!("{HELPERS}{APPEND}{PUBLISH}"))
}

/// The presence scripts: join (and renew), leave, expire, snapshot; and unlist.
pub(crate) fn presence() -> ([redis::Script; 4], redis::Script) {
    let scripts = [JOIN, LEAVE, EXPIRE, SNAPSHOT]
        .map(|body| redis::Script::new(&format!("{HELPERS}{APPEND}{PRESENCE}{body}")));
    (scripts, redis::Script::new(UNLIST))
}

/// The read script.
pub(crate) fn read() -> redis::Script {
    redis::Script::new(&format!("{HELPERS}{READ}"))
}
