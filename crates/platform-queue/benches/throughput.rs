//! End-to-end throughput (enqueue 10,000 no-op jobs, process them at concurrency 50)
//! through `RedisQueue` vs apalis-redis used directly on the same Redis, the worker's
//! own throughput (5,000 no-op jobs already queued when it starts), and enqueue
//! latency of both. Needs Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`).
//! End to end, the jobs are enqueued by the thread blocking on the runtime, then (the
//! second group) by a task on it (see [`Producer`]).
//!
//! `cargo bench -p platform-queue --bench throughput -- --warm-up-time 1 --measurement-time 3`
//!
//! With `PQ_BENCH_SIDE=platform_queue` or `apalis_redis_direct` (and optionally
//! `PQ_BENCH_JOBS`, `PQ_BENCH_PRODUCER=task` to enqueue from a task, and
//! `PQ_BENCH_QUEUED=1` to queue the jobs before the worker starts), the binary
//! instead makes one run of that side and exits:
//! `scripts/queue-instructions.sh` runs it so under callgrind, which counts the
//! instructions each side costs, unmoved by the machine's load. Its idle poll interval
//! is then 1 s, or `PQ_BENCH_POLL_MS` (20 as in the criterion runs, to profile a single
//! side natively). `PQ_BENCH_RUNS` repeats the run in the same process, and
//! `PQ_BENCH_SIDE` may name both sides, comma-separated (each side's runs in turn);
//! `PQ_BENCH_THREADS` sets the runtime's worker threads (2 by default, in every mode).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a bench fails loudly"
)]
#![allow(clippy::print_stderr, reason = "the bench prints the ratio it measured")]
#![allow(missing_docs, reason = "criterion's macros generate undocumented items")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use apalis::prelude::{BackendExt, TaskSink, WorkerBuilder, WorkerBuilderExt, WorkerContext};
use apalis_redis::RedisStorage;
use criterion::{Criterion, Throughput, criterion_group};
use platform_queue::{
    JobQueue, JobWorkers, NewJob, QueueCatalog, QueueConfig, RedisQueue, RedisQueueBuilder, handler_fn,
};
use tokio::sync::Notify;

const JOBS: usize = 10_000;
/// Jobs queued before the worker starts, in the worker-bound group: apalis-redis 1.0
/// cannot start on many more (see [`run_apalis`]).
const QUEUED_JOBS: usize = 5_000;
const CONCURRENCY: usize = 50;
/// The idle poll interval of both sides (see [`poll`]).
static POLL: OnceLock<Duration> = OnceLock::new();
/// Interleaved baseline/ours runs after the criterion groups (see `throughput`).
const PAIRS: usize = 15;

/// The idle poll interval of both sides: 20 ms, or in a single run (see [`main`]) 1 s
/// unless `PQ_BENCH_POLL_MS` says otherwise: under callgrind it runs some 50 times
/// slower.
fn poll() -> Duration {
    *POLL.get_or_init(|| Duration::from_millis(20))
}

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn platform_queue() -> RedisQueue {
    let catalog = QueueCatalog::empty()
        .with_queue(QueueConfig::new("bench").with_concurrency(CONCURRENCY))
        .unwrap();
    RedisQueueBuilder::new()
        .with_url(url())
        .with_prefix(format!("pqbench:{}", uuid::Uuid::new_v4().simple()))
        .with_catalog(catalog)
        .with_poll_interval(poll())
        .build()
        .await
        .expect("Redis must be running (scripts/services.sh)")
}

/// When a run's jobs are enqueued.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// One after another while the worker runs (end to end), by `Producer`: the run
    /// is timed from the first enqueue.
    WhileRunning(Producer),
    /// All before the worker starts, by the caller: the run is timed from the worker's
    /// start, so it measures the worker alone.
    Queued,
}

/// What enqueues the jobs of an end-to-end run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Producer {
    /// The thread that blocks on the runtime, outside it (as a program's `main`
    /// would): every enqueue's reply crosses from a runtime thread to it, so its wait
    /// depends on how busy the worker keeps the runtime's two threads.
    Caller,
    /// A task on the runtime the worker runs on, as an app server's request handler
    /// enqueues.
    Task,
}

impl Producer {
    /// Runs `enqueue` (the run's enqueues) from this producer; returns their times.
    async fn run(self, enqueue: impl Future<Output = Vec<Duration>> + Send + 'static) -> Vec<Duration> {
        match self {
            Self::Caller => enqueue.await,
            Self::Task => tokio::spawn(enqueue).await.unwrap(),
        }
    }
}

/// What one run measured.
#[derive(Clone, Copy)]
struct EndToEnd {
    /// Until the last job finished, from the first enqueue or the worker's start (see
    /// [`Feed`]).
    elapsed: Duration,
    /// The median time one enqueue took: while the worker runs, the jobs are enqueued
    /// one after another, so this paces the run.
    enqueue: Duration,
    /// The CPU the run cost over `elapsed` (not the connecting before it or the
    /// clean-up after it).
    cpu: Cpu,
}

/// CPU seconds (user + system): used so far (see [`Cpu::now`]), or spent since then
/// (see [`Cpu::since`]).
#[derive(Clone, Copy)]
struct Cpu {
    /// This process.
    client: f64,
    /// The part of `client` spent on the thread calling `block_on`: the enqueues when
    /// they are made by [`Producer::Caller`]; the rest is the runtime's threads (the
    /// worker, the Redis connection's driver, and a [`Producer::Task`]).
    caller: f64,
    redis: f64,
}

impl Cpu {
    /// What this process, the calling thread (the one blocking on the runtime) and the
    /// Redis server have used so far.
    async fn now() -> Self {
        Self {
            client: process_cpu(),
            caller: thread_cpu(),
            redis: redis_cpu().await,
        }
    }

    /// What was spent since `self` (taken with [`Cpu::now`]).
    async fn since(&self) -> Self {
        let now = Self::now().await;
        Self {
            client: now.client - self.client,
            caller: now.caller - self.caller,
            redis: now.redis - self.redis,
        }
    }
}

/// Enqueues `jobs` no-op jobs one after another; returns each one's time.
async fn enqueue_platform(q: RedisQueue, jobs: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let sent = Instant::now();
        q.enqueue("bench", NewJob::new(serde_json::Value::Null))
            .await
            .unwrap();
        times.push(sent.elapsed());
    }
    times
}

/// Pushes `jobs` jobs one after another; returns each one's time.
async fn push_apalis(mut storage: RedisStorage<u32>, jobs: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(jobs);
    for n in 0..jobs {
        let sent = Instant::now();
        storage.push(n as u32).await.unwrap();
        times.push(sent.elapsed());
    }
    times
}

/// The median of `times`.
fn median_of(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// One run through the crate: a worker at concurrency 50 processes `jobs` no-op jobs
/// enqueued one by one (see [`Feed`]).
async fn run_platform(jobs: usize, feed: Feed) -> EndToEnd {
    let q = platform_queue().await;
    let done = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(Notify::new());
    let mut enqueue = Vec::new();
    if feed == Feed::Queued {
        enqueue = enqueue_platform(q.clone(), jobs).await;
    }
    let mark = Cpu::now().await;
    let start = Instant::now();
    let (d, f) = (done.clone(), finished.clone());
    let worker = q
        .start_worker(
            "bench",
            handler_fn(move |_| {
                let (d, f) = (d.clone(), f.clone());
                async move {
                    if d.fetch_add(1, Ordering::SeqCst) + 1 == jobs {
                        f.notify_one();
                    }
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    if let Feed::WhileRunning(producer) = feed {
        enqueue = producer.run(enqueue_platform(q.clone(), jobs)).await;
    }
    finished.notified().await;
    let elapsed = start.elapsed();
    let cpu = mark.since().await;
    worker.shutdown(Duration::from_secs(30)).await.unwrap();
    q.purge().await.unwrap();
    EndToEnd {
        elapsed,
        enqueue: median_of(enqueue),
        cpu,
    }
}

fn apalis_config(queue: &str) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(queue)
        .batch_size(CONCURRENCY)
        .emit_events(false)
}

async fn purge(conn: &mut apalis_redis::ConnectionManager, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<u64>(conn)
            .await
            .unwrap();
    }
    redis::cmd("ZREM")
        .arg("core:apalis:queues:list")
        .arg(format!("{prefix}:workers"))
        .query_async::<u64>(conn)
        .await
        .unwrap();
}

/// The baseline: the same work with apalis-redis directly.
///
/// End to end, the worker runs while jobs are pushed (as for ours): pushing 10,000
/// first would crash it, because apalis-redis 1.0 puts every push in its scheduled set
/// and promotes all due ids with one Lua `unpack`, which fails beyond ~8,000 ids.
async fn run_apalis(jobs: usize, feed: Feed) -> EndToEnd {
    let mut conn = apalis_redis::connect(url()).await.unwrap();
    let name = format!("pqbench-direct:{}", uuid::Uuid::new_v4().simple());
    let storage = RedisStorage::<u32>::new(conn.clone()).with_config(apalis_config(&name));
    let done = Arc::new(AtomicUsize::new(0));
    let mut enqueue = Vec::new();
    if feed == Feed::Queued {
        enqueue = push_apalis(storage.clone(), jobs).await;
    }
    let finished = Arc::new(Notify::new());
    let mark = Cpu::now().await;
    let start = Instant::now();
    let (d, f) = (done.clone(), finished.clone());
    let worker = WorkerBuilder::new(format!("direct-{}", uuid::Uuid::new_v4().simple()))
        .backend(storage.clone().poll_with_interval(poll()))
        .concurrency(CONCURRENCY)
        .build(move |_n: u32, wrk: WorkerContext| {
            let (d, f) = (d.clone(), f.clone());
            async move {
                if d.fetch_add(1, Ordering::SeqCst) + 1 == jobs {
                    f.notify_one();
                    let _ = wrk.stop();
                }
                Ok::<(), std::io::Error>(())
            }
        });
    let running = tokio::spawn(worker.run());
    if let Feed::WhileRunning(producer) = feed {
        enqueue = producer.run(push_apalis(storage, jobs)).await;
    }
    // Timed to the last job's end, as for ours, not to the end of the worker's stop.
    finished.notified().await;
    let elapsed = start.elapsed();
    let cpu = mark.since().await;
    running.await.unwrap().unwrap();
    purge(&mut conn, &name).await;
    EndToEnd {
        elapsed,
        enqueue: median_of(enqueue),
        cpu,
    }
}

/// Runs `run` `iters` times, keeping each run's time in `out`; returns their sum.
fn timed<F: Future<Output = EndToEnd>>(
    rt: &tokio::runtime::Runtime,
    iters: u64,
    run: impl Fn() -> F,
    out: &mut Vec<Duration>,
) -> Duration {
    (0..iters)
        .map(|_| {
            let t = rt.block_on(run()).elapsed;
            out.push(t);
            t
        })
        .sum()
}

/// The runtime both sides run on: two worker threads, as the machine has two cores.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_number("PQ_BENCH_THREADS", 2))
        .enable_all()
        .build()
        .unwrap()
}

/// Runs one criterion group of `jobs` jobs fed as `feed` through both sides, and
/// prints the rates it measured and their ratio. Returns false when the group was
/// filtered out on the command line.
fn compare(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, jobs: usize, feed: Feed) -> bool {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .throughput(Throughput::Elements(jobs as u64));
    let mut ours = Vec::new();
    let mut base = Vec::new();
    group.bench_function("apalis_redis_direct", |b| {
        b.iter_custom(|iters| timed(rt, iters, || run_apalis(jobs, feed), &mut base))
    });
    group.bench_function("platform_queue", |b| {
        b.iter_custom(|iters| timed(rt, iters, || run_platform(jobs, feed), &mut ours))
    });
    group.finish();
    if ours.is_empty() || base.is_empty() {
        return false;
    }
    let rate = |v: &[Duration]| jobs as f64 * v.len() as f64 / v.iter().sum::<Duration>().as_secs_f64();
    let (r_ours, r_base) = (rate(&ours), rate(&base));
    eprintln!(
        "{name}: platform_queue {r_ours:.0} jobs/s, apalis-redis direct {r_base:.0} jobs/s, ratio {:.2}x",
        r_ours / r_base
    );
    true
}

/// The worker alone: `QUEUED_JOBS` jobs queued before it starts. Its own pace, not
/// the enqueuer's, sets the time.
fn worker_throughput(c: &mut Criterion) {
    let rt = runtime();
    compare(
        c,
        &rt,
        "worker_5k_queued_jobs_concurrency_50",
        QUEUED_JOBS,
        Feed::Queued,
    );
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    for (group, producer) in [
        ("end_to_end_10k_jobs_concurrency_50", Producer::Caller),
        (
            "end_to_end_10k_jobs_concurrency_50_enqueued_by_a_task",
            Producer::Task,
        ),
    ] {
        if compare(c, &rt, group, JOBS, Feed::WhileRunning(producer)) {
            pairs(&rt, group, producer);
        }
    }
}

/// `PAIRS` interleaved end-to-end runs of both sides, enqueued by `producer`.
///
/// The criterion groups run all baseline samples, then all of ours: on a shared
/// machine a load change between them skews the ratio. Interleaved pairs do not. Each
/// run also reports the CPU it cost while timed (this process + Redis; not the
/// connecting before it or the clean-up after it), which is less sensitive to the
/// machine's load than time, and its median enqueue latency: the jobs are enqueued one
/// after another and the last finishes right after the last enqueue, so a run lasts
/// about `JOBS` enqueues, each slowed by the worker's load on the two cores and on
/// Redis.
fn pairs(rt: &tokio::runtime::Runtime, group: &str, producer: Producer) {
    let feed = Feed::WhileRunning(producer);
    // Alternate which runs first (ABBA), so neither always follows the other's purge.
    let pairs: Vec<(EndToEnd, EndToEnd)> = (0..PAIRS)
        .map(|i| {
            if i % 2 == 0 {
                let base = rt.block_on(run_apalis(JOBS, feed));
                (base, rt.block_on(run_platform(JOBS, feed)))
            } else {
                let ours = rt.block_on(run_platform(JOBS, feed));
                (rt.block_on(run_apalis(JOBS, feed)), ours)
            }
        })
        .collect();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (ratio, lo, hi) = median(
        &mut pairs
            .iter()
            .map(|(b, o)| b.elapsed.as_secs_f64() / o.elapsed.as_secs_f64())
            .collect(),
    );
    eprintln!("{group}, {PAIRS} interleaved pairs: median ratio {ratio:.2}x (min {lo:.2}x, max {hi:.2}x)");
    let per_job = |secs: f64| secs * 1e6 / JOBS as f64;
    let (base_runs, our_runs): (Vec<EndToEnd>, Vec<EndToEnd>) = pairs.into_iter().unzip();
    // Both sides and Redis share the machine's cores: where they are near saturation,
    // the wall-clock ratio follows the inverse ratio of the CPU each job costs in all.
    let total = |runs: &[EndToEnd]| median(&mut runs.iter().map(|r| r.cpu.client + r.cpu.redis).collect()).0;
    let (base_total, our_total) = (total(&base_runs), total(&our_runs));
    eprintln!(
        "{group}: CPU per job (bench process + redis-server, median): platform_queue {:.1} µs, apalis-redis direct {:.1} µs; inverse ratio {:.2}x",
        per_job(our_total),
        per_job(base_total),
        base_total / our_total
    );
    for (name, runs) in [("apalis-redis direct", base_runs), ("platform_queue", our_runs)] {
        let (client, ..) = median(&mut runs.iter().map(|r| r.cpu.client).collect());
        let (caller, ..) = median(&mut runs.iter().map(|r| r.cpu.caller).collect());
        let (redis, ..) = median(&mut runs.iter().map(|r| r.cpu.redis).collect());
        let (enqueue, ..) = median(&mut runs.iter().map(|r| r.enqueue.as_secs_f64()).collect());
        eprintln!(
            "cpu per job, median of {PAIRS}: {name}: bench process {:.1} µs (of which the calling thread {:.1} µs) + redis-server {:.1} µs; one enqueue while the worker runs: {:.1} µs (median)",
            per_job(client),
            per_job(caller),
            per_job(redis),
            enqueue * 1e6
        );
    }
}

/// CPU seconds (user + system) of this process so far (clock ticks of 10 ms).
fn process_cpu() -> f64 {
    cpu_of("/proc/self/stat")
}

/// CPU seconds (user + system) of the calling thread so far.
fn thread_cpu() -> f64 {
    cpu_of("/proc/thread-self/stat")
}

/// User + system CPU seconds from a `/proc` `stat` file.
fn cpu_of(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14, 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// CPU seconds (user + system) of the Redis server so far, from `INFO cpu`.
async fn redis_cpu() -> f64 {
    let mut conn = apalis_redis::connect(url()).await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_sys:")
                .or_else(|| l.strip_prefix("used_cpu_user:"))
        })
        .map(|v| v.trim().parse::<f64>().unwrap())
        .sum()
}

fn enqueue_latency(c: &mut Criterion) {
    let rt = runtime();
    let q = rt.block_on(platform_queue());
    let mut conn = rt.block_on(apalis_redis::connect(url())).unwrap();
    let name = format!("pqbench-direct:{}", uuid::Uuid::new_v4().simple());
    let mut storage = RedisStorage::<u32>::new(conn.clone()).with_config(apalis_config(&name));
    let mut group = c.benchmark_group("enqueue_latency");
    group.bench_function("apalis_redis_push", |b| {
        b.iter(|| rt.block_on(storage.push(1)).unwrap());
    });
    group.bench_function("platform_queue_enqueue", |b| {
        b.iter(|| {
            rt.block_on(q.enqueue("bench", NewJob::new(serde_json::Value::Null)))
                .unwrap()
        });
    });
    group.finish();
    rt.block_on(q.purge()).unwrap();
    rt.block_on(purge(&mut conn, &name));
}

criterion_group!(benches, throughput, worker_throughput, enqueue_latency);

/// The criterion benches, or with `PQ_BENCH_SIDE` set one run of that side (see the
/// crate docs above).
fn main() {
    let Ok(side) = std::env::var("PQ_BENCH_SIDE") else {
        benches();
        Criterion::default().configure_from_args().final_summary();
        return;
    };
    let jobs = env_number("PQ_BENCH_JOBS", JOBS);
    assert!(jobs > 0, "PQ_BENCH_JOBS: at least one job");
    let poll_ms = env_number("PQ_BENCH_POLL_MS", 1000);
    POLL.set(Duration::from_millis(poll_ms)).expect("set once, first");
    let feed = if std::env::var_os("PQ_BENCH_QUEUED").is_some() {
        Feed::Queued
    } else if std::env::var("PQ_BENCH_PRODUCER").is_ok_and(|p| p == "task") {
        Feed::WhileRunning(Producer::Task)
    } else {
        Feed::WhileRunning(Producer::Caller)
    };
    let runs = env_number("PQ_BENCH_RUNS", 1);
    let rt = runtime();
    for side in side.split(',').flat_map(|side| std::iter::repeat_n(side, runs)) {
        let run = match side {
            "platform_queue" => rt.block_on(run_platform(jobs, feed)),
            "apalis_redis_direct" => rt.block_on(run_apalis(jobs, feed)),
            other => panic!("PQ_BENCH_SIDE: platform_queue or apalis_redis_direct, not {other:?}"),
        };
        eprintln!("{side}: {jobs} jobs in {:?}", run.elapsed);
    }
}

/// The number in environment variable `name`, or `default` when it is not set.
fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).map_or(default, |n| {
        n.parse()
            .unwrap_or_else(|_| panic!("{name}: a number, not {n:?}"))
    })
}
