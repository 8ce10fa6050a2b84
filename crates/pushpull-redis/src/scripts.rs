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
-- The log's epoch; a log without one (new, or lost by Redis) starts a new incarnation.
local function incarnation(meta, log, keys, candidate)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    redis.call('DEL', log, keys)
    epoch = candidate
    redis.call('HSET', meta, 'epoch', epoch, 'last', 0, 'bytes', 0)
  end
  return epoch
end
"#;

/// KEYS: meta, log, keys. ARGV: 1 epoch candidate, 2 now (ms), 3 payload, 4 event, 5 content
/// type, 6 idempotency key ('' for none), 7 max messages, 8 max bytes, 9 max age (ms, 0: none),
/// 10 wake channel, 11 topic. Returns {epoch, offset, timestamp}.
const PUBLISH: &str = r#"
local meta, log, keys = KEYS[1], KEYS[2], KEYS[3]
local epoch = incarnation(meta, log, keys, ARGV[1])
local now = tonumber(ARGV[2])
local key = ARGV[6]
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
local fields = {'p', ARGV[3], 't', ARGV[2]}
if ARGV[4] ~= '' then table.insert(fields, 'e'); table.insert(fields, ARGV[4]) end
if ARGV[5] ~= '' then table.insert(fields, 'c'); table.insert(fields, ARGV[5]) end
if key ~= '' then
  table.insert(fields, 'k'); table.insert(fields, key)
  redis.call('HSET', keys, key, offset)
end
redis.call('XADD', log, offset .. '-0', unpack(fields))
local bytes = redis.call('HINCRBY', meta, 'bytes', #ARGV[3])
local count = redis.call('XLEN', log)
local max_messages, max_bytes, max_age = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
-- Retention: drop the oldest while any limit is passed (never the message just stored).
while count > 1 do
  local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
  local t = tonumber(field(oldest, 't'))
  local over = count > max_messages or bytes > max_bytes or (max_age > 0 and now - t > max_age)
  if not over then break end
  redis.call('XDEL', log, oldest[1])
  count = count - 1
  bytes = redis.call('HINCRBY', meta, 'bytes', -#field(oldest, 'p'))
  local k = field(oldest, 'k')
  if k then redis.call('HDEL', keys, k) end
end
redis.call('PUBLISH', ARGV[10], ARGV[11] .. ' ' .. epoch .. ' ' .. offset)
return {epoch, offset, now}
"#;

/// KEYS: meta, log, keys. ARGV: 1 epoch candidate, 2 now (ms), 3 max age (ms, 0: none),
/// 4 mode (`b` beginning, `l` latest, `a` after a cursor), 5 the cursor's epoch, 6 its offset,
/// 7 limit. Returns {epoch, last, first retained, position, gap, entries}: gap is '' (none),
/// 'retention', 'epoch' or 'ahead' (the cursor is ahead of the log).
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
local position, gap = 0, ''
if mode == 'b' then
  position = first - 1
elseif mode == 'l' then
  position = last
elseif ARGV[5] == epoch then
  local at = tonumber(ARGV[6])
  if at > last then return {epoch, last, first, at, 'ahead', {}} end
  if at + 1 < first then gap = 'retention'; position = first - 1 else position = at end
else
  gap = 'epoch'; position = first - 1
end
local entries = {}
local limit = tonumber(ARGV[7])
if limit > 0 and position < last then
  entries = redis.call('XRANGE', log, (position + 1) .. '-0', '+', 'COUNT', limit)
end
return {epoch, last, first, position, gap, entries}
"#;

/// The publish script.
pub(crate) fn publish() -> redis::Script {
    redis::Script::new(&format!("{HELPERS}{PUBLISH}"))
}

/// The read script.
pub(crate) fn read() -> redis::Script {
    redis::Script::new(&format!("{HELPERS}{READ}"))
}
