//! Lua scripts: each state change of a job is one atomic script, so a crash between
//! two Redis calls can never lose or duplicate a job.
//!
//! apalis-redis key layout used (queue name `Q` = `{prefix}:{queue}`): `Q:active`
//! (list of runnable task ids), `Q:scheduled` (zset, score = unix seconds),
//! `Q:data` (hash task id → JSON args), `Q:meta:{task}` (hash: attempts,
//! max_attempts, status, idempotency_key), `Q:signal`. This crate writes no
//! `Q:meta:{task}` hash: the fetch (apalis-redis's script, see [`FETCH`]) reads it for fields nothing here uses (its own
//! attempt count and status; attempts are counted in our job record), and one hash per
//! task, written at enqueue and deleted at acknowledgement, was the costliest per-job
//! key. The worker fills in the fields a fetched task's hash lacks (see
//! `worker::with_default_meta`), and acknowledgement still deletes the hash, which
//! apalis itself writes when its own backend puts back fetched tasks it never started
//! (their `status`; a worker's backend here leaves that to the worker's release).
//! Ours: `Q:pq:job:{id}` (job
//! record hash), `Q:pq:steps:{id}`, `Q:pq:dead` (zset, score = ms), `Q:pq:counts`
//! (hash: running, done, failed), `Q:pq:delayed` (zset of delayed task ids, score =
//! unix seconds).
//!
//! Delayed tasks (delayed jobs and retries) go to `Q:pq:delayed`, never to apalis's
//! `Q:scheduled`: apalis-redis 1.0's fetch script ([`FETCH`]) promotes *all* due members of
//! `Q:scheduled` with one Lua `unpack`, which fails beyond ~8,000 ids and stops the
//! worker. [`PROMOTE`] moves at most a bounded number of due tasks per call to
//! `Q:active` instead.
//!
//! Acknowledgement is ours, not apalis-redis's. Its `handle_results.lua` would move a
//! finished task from the worker's `Q:inflight:{worker}` set into `Q:done` and keep its
//! `Q:data` field and `Q:meta:{task}` hash for ever (one set of entries per attempt,
//! until the namespace is purged), in a second script call after the one that records
//! the outcome. Workers therefore run apalis with `persist_results(false)` (apalis sends
//! no acknowledgement) and the scripts that record an attempt's outcome ([`SETTLE`],
//! [`RETRY`], [`DEAD`]) also take the task out of the worker's in-flight set and delete
//! its entries, in the same atomic call: nothing per attempt is left behind, and no
//! state exists in which the outcome is stored but the task still looks in flight.
//! apalis's task leases are off too (`lock_tasks(false)`): they only write
//! `locked_at`/`locked_by` into `Q:meta:{task}` (nothing reads them; re-delivery of a
//! dead worker's tasks goes by its heartbeat), at the price of an `LREM` over the whole
//! `Q:active` list per task. [`SETTLE`] marks the job running instead.

use std::sync::LazyLock;

use redis::Script;

/// What enqueueing writes for a new job (see [`ENQUEUE`] and [`NEW_JOB`], whose keys
/// and arguments these are): its record, apalis's task data, and the task on
/// the active list or, when delayed, in the delayed set. The record has no `attempts`
/// field until the first delivery (`SETTLE` sets it; readers default it to 0) and no
/// `id` field (it is the key's suffix). apalis's `Q:signal` list is not pushed: nothing
/// in apalis-redis 1.0 reads it (workers poll `Q:active`/`Q:scheduled`).
macro_rules! write_new_job {
    () => {
        r#"
redis.call('HSET', KEYS[1], 'state', 'pending', 'task', ARGV[1], 'envelope', ARGV[2], 'max_attempts', ARGV[5])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if tonumber(ARGV[4]) > 0 then
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
else
  redis.call('RPUSH', KEYS[3], ARGV[1])
end
"#
    };
}

/// apalis-redis 1.0's fetch, its `lua/fetch_next.lua` unchanged but for the MIT
/// notice it carries (© 2025 apalis), run by the worker itself (see
/// `worker::FetchBackend`): apalis builds this script (hashing its source) for every
/// fetch.
///
/// KEYS: 1 workers zset, 2 active list, 3 the worker's in-flight set, 4 data hash, 5
/// signal list, 6 task meta prefix, 7 apalis's scheduled zset. ARGV: 1 now (unix
/// seconds), 2 most tasks to fetch, 3 worker name. Returns `{data, meta}`.
pub(crate) static FETCH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("fetch_next.lua")));

/// Enqueues a job with an id given by the caller, unless a job with that id exists.
/// KEYS: 1 record, 2 data hash, 3 active list, 4 delayed zset (`Q:pq:delayed`).
/// ARGV: 1 task id, 2 envelope JSON, 3 task args JSON, 4 run-at seconds (0 = now),
/// 5 max attempts.
/// Returns {created (0/1), state}.
///
/// Kept to the minimum the guarantees need: one read (`EXISTS`; a record always has a
/// `state`, and only enqueueing creates records) and one write per key.
pub(crate) static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGET', KEYS[1], 'state')}
end
"#,
        write_new_job!(),
        "return {1, 'pending'}\n"
    ))
});

/// Enqueues a job with a generated id (a UUID v4, which names no existing job: there is
/// nothing to de-duplicate against). Keys and arguments as [`ENQUEUE`]; returns 1.
///
/// One script call with one small reply: measured beside a running worker, it paces
/// the enqueue loop of the throughput bench better than the same writes as a
/// MULTI/EXEC transaction (seven replies to read) or as [`ENQUEUE`].
pub(crate) static NEW_JOB: LazyLock<Script> =
    LazyLock::new(|| Script::new(concat!(write_new_job!(), "return 1\n")));

/// Lua shared by the scripts that finish a delivery: `ack(task, meta_key)` is
/// apalis-redis's acknowledgement done by this crate (the worker runs apalis with
/// `persist_results(false)`, so apalis never acknowledges), in the same atomic call
/// that records the attempt's outcome. When the task is in this worker's in-flight set
/// (`INFLIGHT`), it leaves it and its `Q:data` field and `Q:meta:{task}` hash are
/// deleted: a task is in exactly one of `Q:active`, a delayed set or one worker's
/// in-flight set, so once out of the set nothing can fetch it again. When it is not
/// there (apalis re-queued it as orphaned meanwhile), nothing is touched: the next
/// delivery finds the job moved on and acknowledges it then.
///
/// `stale(rec, task, meta_key)` settles a task whose outcome is stale, `rec` being its
/// job record's `task` and `state` fields: when the record still names the task as
/// waiting to run (`pending` or `retrying`: the start of this delivery was lost, e.g.
/// Redis restarted without its last writes), the task goes back on the active list
/// (`ACTIVE`) to run again; otherwise the job moved on and the task is acknowledged.
macro_rules! with_ack {
    ($inflight:literal, $data:literal, $active:literal, $body:expr) => {
        concat!(
            "local function ack(task, meta_key)\n",
            "  if redis.call('SREM', ",
            $inflight,
            ", task) == 1 then\n",
            "    redis.call('HDEL', ",
            $data,
            ", task)\n",
            "    redis.call('DEL', meta_key)\n",
            "  end\n",
            "end\n",
            "local function stale(rec, task, meta_key)\n",
            "  if rec[1] == task and (rec[2] == 'pending' or rec[2] == 'retrying') then\n",
            "    if redis.call('SREM', ",
            $inflight,
            ", task) == 1 then redis.call('RPUSH', ",
            $active,
            ", task) end\n",
            "  else\n",
            "    ack(task, meta_key)\n",
            "  end\n",
            "end\n",
            $body
        )
    };
}

/// Lua shared by the scripts that change a running attempt: `current(rec, task,
/// attempt)` says whether a job record's `task`, `state` and `attempts` fields (`rec`,
/// in that order, from `HMGET`) still name that task's attempt as the running one, so
/// that a stale delivery changes nothing.
macro_rules! current_attempt {
    () => {
        "local function current(rec, task, attempt)\n  return rec[1] == task and rec[2] == 'running' and tostring(rec[3]) == attempt\nend\n"
    };
}

/// Settles a batch of deliveries, atomically, in one script call: starts them and
/// records successful attempts (both arrive in bursts: apalis hands a worker up to
/// `batch_size` tasks at once, and quick jobs finish together). A completion and a
/// stale delivery are acknowledged in the same call (see `with_ack!`).
///
/// Per-job keys are built here from their prefixes (as apalis-redis's own scripts
/// build `Q:meta:{task}`), which keeps a batch's arguments to four short strings per
/// operation.
///
/// Running jobs are counted, not listed (field `running` of `Q:pq:counts`, changed
/// once per batch): a start counts the job unless its record already says `running`
/// (a re-delivery after its worker stopped or was seen dead), and every script that
/// moves a job out of `running` (a completion here, [`RETRY`], [`DEAD`]) uncounts it,
/// only when it applies. So each running job is counted exactly once.
///
/// KEYS: 1 counts, 2 the worker's in-flight set, 3 data hash, 4 dead zset, 5 active
/// list.
/// ARGV: 1 now ms, 2 de-duplication window ms, 3 job record key prefix
/// (`Q:pq:job:`), 4 steps key prefix (`Q:pq:steps:`), 5 task meta key prefix
/// (`Q:meta:`), then per operation: kind (`s` start, `c` complete), task id, job id,
/// and for a start the delivery id (unique per hand-over of a task to a job function),
/// for a completion the attempt.
///
/// A start counts an attempt once per delivery: the record keeps the delivery id of
/// the attempt it counted (field `delivery`), so a start sent again after its reply
/// was lost returns the attempt it already counted. A new delivery of a job that has
/// used every attempt (each one cut off without an outcome: its worker stopped or
/// crashed while running it) dead-letters the job instead, and is stale.
///
/// A start is only for a task in the worker's in-flight set: one that left it (put
/// back on the queue when the worker was released, recovered after a lost fetch reply,
/// or taken for dead and re-queued by another worker) may already be another worker's,
/// and a start sent late, after its job was cancelled, would count an attempt that
/// never ran.
///
/// Returns one string: one entry per operation, in order (a single bulk reply, which
/// the client decodes far more cheaply than nested arrays of values; see
/// `worker::Settled::decode_all`). An entry is `-` for a stale operation: a start whose
/// task is no longer in the worker's in-flight set, or whose task id is no longer the
/// job's current task or whose job is done/dead (the task is then acknowledged); a
/// completion that is not the job's current attempt (its task is then settled by
/// `stale`, see `with_ack!`). It is `+` for an applied completion, whose task is
/// acknowledged. An applied start is
/// `s{attempts},{max_attempts},{byte length of the envelope}:{envelope}`. An operation
/// that raised an error (its job's keys cannot be read or written, e.g. a key of the
/// wrong type) is `e{byte length of the message}:{message}`: its counts are not applied
/// and, when its record cannot be read, it changed nothing (each operation reads its
/// record first; an error on a shared key can come after the record was written), and
/// the batch's other operations and their counts still apply. A done job's record, and its step results if
/// it saved any (field `steps` of the record, set by the first saved step), expire
/// after the window.
pub(crate) static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_ack!(
        "KEYS[2]",
        "KEYS[3]",
        "KEYS[5]",
        concat!(
            current_attempt!(),
            r#"
-- One operation: its entry and its changes to the done and running counts.
local function settle(kind, task, job, num)
  local rec_key, meta_key = ARGV[3] .. job, ARGV[5] .. task
  if kind == 's' then
    local rec = false
    if redis.call('SISMEMBER', KEYS[2], task) == 1 then
      rec = redis.call('HMGET', rec_key, 'task', 'state', 'envelope', 'max_attempts', 'attempts', 'delivery')
    end
    if not rec then
      return '-', 0, 0
    elseif not rec[1] or rec[1] ~= task or rec[2] == 'done' or rec[2] == 'dead' then
      ack(task, meta_key)
      return '-', 0, 0
    end
    local attempts, max = tonumber(rec[5]) or 0, tonumber(rec[4]) or 1
    if rec[6] ~= num and attempts >= max then
      -- The last attempt started and recorded no outcome: its worker crashed or
      -- was killed while running it (a job that kills its worker must not be
      -- delivered for ever; an attempt cut off by a stop is uncounted by RELEASE).
      redis.call('HSET', rec_key, 'state', 'dead', 'finished_at', ARGV[1], 'last_error',
        'attempt ' .. attempts .. ' of ' .. max .. ' was cut off without an outcome (its worker crashed or was killed while running it)')
      redis.call('ZADD', KEYS[4], ARGV[1], job)
      ack(task, meta_key)
      return '-', 0, (rec[2] == 'running') and -1 or 0
    end
    local running = 0
    if rec[6] ~= num then
      attempts = attempts + 1
      redis.call('HSET', rec_key, 'attempts', attempts, 'state', 'running', 'started_at', ARGV[1], 'delivery', num)
      if rec[2] ~= 'running' then running = 1 end
    end
    local envelope = rec[3] or ''
    return 's' .. attempts .. ',' .. max .. ',' .. #envelope .. ':' .. envelope, 0, running
  end
  local rec = redis.call('HMGET', rec_key, 'task', 'state', 'attempts', 'steps')
  if not current(rec, task, num) then
    stale(rec, task, meta_key)
    return '-', 0, 0
  end
  redis.call('HSET', rec_key, 'state', 'done', 'finished_at', ARGV[1])
  redis.call('PEXPIRE', rec_key, ARGV[2])
  if rec[4] then redis.call('PEXPIRE', ARGV[4] .. job, ARGV[2]) end
  ack(task, meta_key)
  return '+', 1, -1
end
local out = {}
local done, running = 0, 0
local n = (#ARGV - 5) / 4
for i = 1, n do
  -- num: a start's delivery id, a completion's attempt
  local ok, entry, d, r = pcall(settle, ARGV[4 * i + 2], ARGV[4 * i + 3], ARGV[4 * i + 4], ARGV[4 * i + 5])
  if ok then
    out[i], done, running = entry, done + d, running + r
  else
    -- A job whose keys cannot be read or written (e.g. of the wrong type) fails
    -- alone: the batch's other operations still apply.
    local err = tostring(type(entry) == 'table' and entry.err or entry)
    out[i] = 'e' .. #err .. ':' .. err
  end
end
if done > 0 then redis.call('HINCRBY', KEYS[1], 'done', done) end
if running ~= 0 then redis.call('HINCRBY', KEYS[1], 'running', running) end
return table.concat(out)
"#
        )
    ))
});

/// Saves one step result of a running attempt and marks the job record as having step
/// results (so that [`SETTLE`] expires them with the record). Nothing is written for
/// an attempt that is no longer the job's current one (returns 0): a second delivery
/// of a job (its worker taken for dead) must not add results after another finished
/// it, nor bring back an expired record as a bare `steps` field, which would hold
/// the job id for ever.
/// The attempt is named by its delivery too: a delivery cut off by a stop gives its
/// task back with the same attempt number (see [`RELEASE`]), and a leftover of it (a
/// task it spawned with its context) must not save into the next delivery's run.
/// KEYS: 1 steps hash, 2 job record. ARGV: 1 step name, 2 result JSON, 3 task id,
/// 4 attempt, 5 delivery id.
pub(crate) static SAVE_STEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        current_attempt!(),
        r#"
local rec = redis.call('HMGET', KEYS[2], 'task', 'state', 'attempts', 'delivery')
if not current(rec, ARGV[3], ARGV[4]) or rec[4] ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], 'steps', 1)
return 1
"#
    ))
});

/// A script recording a failed attempt: when the delivery is stale, settles its task
/// as `stale` does (see `with_ack!`) and returns 0; otherwise acknowledges it,
/// uncounts the job as running (see [`SETTLE`]) and counts the failure before `$body`
/// (which returns 1).
///
/// KEYS: 1 record, 2 counts, 3 the worker's in-flight set, 4 data hash, 5 task meta,
/// 6 active list, then the script's own. ARGV: 1 task id, 2 job id, 3 attempt,
/// 4 error, then the script's own.
macro_rules! failed_attempt {
    ($body:literal) => {
        with_ack!(
            "KEYS[3]",
            "KEYS[4]",
            "KEYS[6]",
            concat!(
                current_attempt!(),
                r#"
local rec = redis.call('HMGET', KEYS[1], 'task', 'state', 'attempts')
if not current(rec, ARGV[1], ARGV[3]) then
  stale(rec, ARGV[1], KEYS[5])
  return 0
end
ack(ARGV[1], KEYS[5])
redis.call('HINCRBY', KEYS[2], 'running', -1)
redis.call('HINCRBY', KEYS[2], 'failed', 1)
"#,
                $body
            )
        )
    };
}

/// Records a failed attempt that will be retried (see `failed_attempt!`).
/// KEYS 7: delayed zset (`Q:pq:delayed`). ARGV 5: new task id,
/// 6: new task args, 7: run-at seconds. Returns 1 when applied, 0 when stale.
pub(crate) static RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(failed_attempt!(
        r#"
redis.call('HSET', KEYS[1], 'task', ARGV[5], 'state', 'retrying', 'last_error', ARGV[4], 'run_at', ARGV[7])
redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
redis.call('ZADD', KEYS[7], ARGV[7], ARGV[5])
return 1
"#
    ))
});

/// Records a job's last failed attempt: a dead letter (see `failed_attempt!`).
/// KEYS 7: dead zset. ARGV 5: now ms. Returns 1 when applied, 0 when stale.
pub(crate) static DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(failed_attempt!(
        r#"
redis.call('HSET', KEYS[1], 'state', 'dead', 'last_error', ARGV[4], 'finished_at', ARGV[5])
redis.call('ZADD', KEYS[7], ARGV[5], ARGV[2])
return 1
"#
    ))
});

/// KEYS: 1 record, 2 dead zset, 3 data hash, 4 active list, 5 signal list.
/// ARGV: 1 job id, 2 new task id, 3 new task args. Returns 1 when applied, 0 if not dead.
pub(crate) static RETRY_DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'dead' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'task', ARGV[2], 'state', 'pending', 'attempts', 0)
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('RPUSH', KEYS[4], ARGV[2])
redis.call('DEL', KEYS[5])
redis.call('LPUSH', KEYS[5], 1)
return 1
"#,
    )
});

/// Moves at most `limit` due tasks (score ≤ now, whole seconds) from `Q:pq:delayed` to
/// the end of apalis's `Q:active` list, atomically (a task is in exactly one of them).
/// Never early: a task's score is its due time rounded up to the second.
/// KEYS: 1 delayed zset, 2 active list. ARGV: 1 now (unix seconds), 2 limit.
/// Returns how many tasks were moved.
pub(crate) static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('RPUSH', KEYS[2], unpack(ids))
end
return #ids
"#,
    )
});

/// Lua shared by the scripts that put back a task whose delivery was cut off (a worker
/// stopped, or its apalis loop ended on an error, dropping its jobs): `uncount(id)`
/// makes the job pending again when its record names task `id` as running, uncounting
/// the cut-off attempt (the job did not crash the worker; see [`SETTLE`]: its next
/// start counts it again), and returns 1, else 0. A task whose arguments or record
/// cannot be read (e.g. a key of the wrong type) is skipped, so it fails alone.
/// `$data` is the data hash's key, `$prefix` the job record key prefix.
macro_rules! with_uncount {
    ($data:literal, $prefix:literal, $body:expr) => {
        concat!(
            "local function uncount_task(id)\n",
            "  local args = cjson.decode(redis.call('HGET', ",
            $data,
            ", id) or '')\n",
            "  if type(args) ~= 'table' or type(args.job) ~= 'string' then return 0 end\n",
            "  local rec_key = ",
            $prefix,
            " .. args.job\n",
            r#"  local rec = redis.call('HMGET', rec_key, 'task', 'state')
  if rec[1] == id and rec[2] == 'running' then
    redis.call('HSET', rec_key, 'state', 'pending')
    redis.call('HINCRBY', rec_key, 'attempts', -1)
    return 1
  end
  return 0
end
local function uncount(id)
  local ok, n = pcall(uncount_task, id)
  if ok then return n end
  return 0
end
"#,
            $body
        )
    };
}

/// Puts a stopped worker's in-flight tasks back on the active list and deletes its
/// registration (the workers zset entry and its metadata hash). The tasks are pushed
/// 1,000 per `RPUSH` (Lua's `unpack` fails beyond ~8,000 values). A job that was
/// running on one of them is pending again, no longer counted as running, and its
/// cut-off attempt is uncounted (see `with_uncount!`).
/// KEYS: 1 worker inflight set, 2 active list, 3 signal list, 4 workers zset,
/// 5 worker metadata hash, 6 data hash, 7 counts.
/// ARGV: 1 worker name, 2 job record key prefix. Returns how many tasks were re-queued.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_uncount!(
        "KEYS[6]",
        "ARGV[2]",
        r#"
local ids = redis.call('SMEMBERS', KEYS[1])
local stopped = 0
for _, id in ipairs(ids) do
  stopped = stopped + uncount(id)
end
if stopped > 0 then redis.call('HINCRBY', KEYS[7], 'running', -stopped) end
if #ids > 0 then
  for i = 1, #ids, 1000 do
    redis.call('RPUSH', KEYS[2], unpack(ids, i, math.min(i + 999, #ids)))
  end
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[3])
  redis.call('LPUSH', KEYS[3], 1)
end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[5])
return #ids
"#
    ))
});

/// Puts one task of a worker's in-flight set back on the active list, if it is still
/// there (see `RunState::run_task`).
/// KEYS: 1 the worker's in-flight set, 2 active list. ARGV: 1 task id.
/// Returns 1 when the task was moved, else 0.
pub(crate) static PUT_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
"#,
    )
});

/// Puts back on the active list every task of a worker's in-flight set that the worker
/// does not hold (see `WorkerConnection::recover`), atomically. A job that was running on
/// one of them (its apalis loop ended on an error and dropped it) is pending again, no
/// longer counted as running, and its cut-off attempt is uncounted, as by [`RELEASE`].
/// KEYS: 1 the worker's in-flight set, 2 active list, 3 data hash, 4 counts.
/// ARGV: 1 job record key prefix, then the task ids it holds.
/// Returns how many tasks were re-queued.
pub(crate) static RECOVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_uncount!(
        "KEYS[3]",
        "ARGV[1]",
        r#"
local held = {}
for i = 2, #ARGV do held[ARGV[i]] = true end
local moved, stopped = 0, 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not held[id] then
    stopped = stopped + uncount(id)
    redis.call('SREM', KEYS[1], id)
    redis.call('RPUSH', KEYS[2], id)
    moved = moved + 1
  end
end
if stopped > 0 then redis.call('HINCRBY', KEYS[4], 'running', -stopped) end
return moved
"#
    ))
});

/// Reads every task of a worker's in-flight set as apalis-redis's fetch script returns
/// them: `{data, meta}`, where `data[i]` is the task's `Q:data` field (or false) and
/// `meta[i]` its id followed by its `Q:meta:{task}` hash's fields and values, if it has
/// one. The worker decodes them as its fetches are decoded (see
/// `set_aside_unreadable`).
/// KEYS: 1 the worker's in-flight set, 2 data hash. ARGV: 1 task meta key prefix
/// (`Q:meta:`).
pub(crate) static INSPECT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local data, meta = {}, {}
for i, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  data[i] = redis.call('HGET', KEYS[2], id)
  local fields = redis.call('HGETALL', ARGV[1] .. id)
  table.insert(fields, 1, id)
  meta[i] = fields
end
return {data, meta}
"#,
    )
});

/// Takes tasks no worker can read out of a worker's in-flight set, atomically, so that
/// they are never fetched again (see `set_aside_unreadable`). A task whose job is known
/// and whose record still names it is dead-lettered with the reason (retrying it from
/// the dead list writes a new task); one whose job is unknown (its arguments cannot
/// be read, its job has no record, or the record cannot be read) is kept in
/// `Q:pq:unreadable` (task id → description); one whose job moved on (its record names
/// another task, or the job is done or dead) is stale and only removed. Either way its
/// `Q:data` field and `Q:meta:{task}` hash are deleted. A task no longer in the set is
/// left alone. While one of its keys is of the wrong type, it fails (`WRONGTYPE`)
/// before it writes anything.
/// KEYS: 1 the worker's in-flight set, 2 data hash, 3 unreadable hash, 4 counts,
/// 5 dead zset. ARGV: 1 now ms, 2 job record key prefix, 3 task meta key prefix, then
/// per task: task id, job id (empty when unknown), description.
/// Returns {dead-lettered, kept as unreadable}.
pub(crate) static SET_ASIDE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- A shared key of the wrong type fails the call before anything is written (Lua
-- does not undo the writes made before an error).
for i, want in ipairs({'set', 'hash', 'hash', 'hash', 'zset'}) do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. t .. ', not a ' .. want)
  end
end
local dead, kept = 0, 0
for i = 4, #ARGV, 3 do
  local task, job, why = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('SREM', KEYS[1], task) == 1 then
    redis.call('HDEL', KEYS[2], task)
    redis.call('DEL', ARGV[3] .. task)
    if job == '' then
      redis.call('HSET', KEYS[3], task, why)
      kept = kept + 1
    else
      local rec_key = ARGV[2] .. job
      -- A record that cannot be read (a key of the wrong type) is as no record.
      local ok, rec = pcall(redis.call, 'HMGET', rec_key, 'task', 'state')
      if not ok or not rec[1] then
        redis.call('HSET', KEYS[3], task, why)
        kept = kept + 1
      elseif rec[1] == task and rec[2] ~= 'done' and rec[2] ~= 'dead' then
        if rec[2] == 'running' then redis.call('HINCRBY', KEYS[4], 'running', -1) end
        redis.call('HSET', rec_key, 'state', 'dead', 'last_error', why, 'finished_at', ARGV[1])
        redis.call('ZADD', KEYS[5], ARGV[1], job)
        dead = dead + 1
      end
    end
  end
end
return {dead, kept}
"#,
    )
});
