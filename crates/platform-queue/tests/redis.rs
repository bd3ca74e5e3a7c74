//! The behaviour suite against [`RedisQueue`] on a real Redis (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`; start it with `scripts/services.sh`), plus fault tests:
//! a worker killed mid-job, and a Redis server killed with SIGKILL.
//!
//! Every test uses its own key prefix and deletes it afterwards.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use platform_core::ErrorKind;
use platform_queue::conformance::{Harness, recv, reporting, run_case};
use platform_queue::{
    JobQueue, JobState, JobWorkers, NewJob, QueueCatalog, QueueConfig, QueueService, RedisQueue,
    RedisQueueBuilder, WorkerHandle, handler_fn,
};
use serde_json::json;
use tokio::sync::mpsc;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn fresh_prefix() -> String {
    format!("pqtest:{}", uuid::Uuid::new_v4().simple())
}

fn builder(url: &str, catalog: QueueCatalog) -> RedisQueueBuilder {
    RedisQueueBuilder::new()
        .with_url(url)
        .with_prefix(fresh_prefix())
        .with_catalog(catalog)
        .with_heartbeat(Duration::from_secs(1), 2)
        .with_poll_interval(Duration::from_millis(20))
}

/// Builds `builder`, failing with a pointer to scripts/services.sh when Redis is down.
async fn build(url: &str, builder: RedisQueueBuilder) -> RedisQueue {
    builder.build().await.unwrap_or_else(|e| {
        panic!("Redis is not reachable at {url} ({e}); start it with scripts/services.sh")
    })
}

/// A queue serving `catalog` under a fresh key prefix, returned with the prefix (for
/// tests that inspect the keys themselves).
async fn open_with_prefix(catalog: QueueCatalog) -> (RedisQueue, String) {
    let url = redis_url();
    let prefix = fresh_prefix();
    let queue = build(&url, builder(&url, catalog).with_prefix(&prefix)).await;
    (queue, prefix)
}

async fn open(catalog: QueueCatalog) -> RedisQueue {
    let url = redis_url();
    build(&url, builder(&url, catalog)).await
}

/// A plain connection for inspecting keys, as patient as the queue's (the redis
/// crate's default response timeout, 500 ms, is shorter than a large script takes
/// while other tests load the server).
async fn admin_connection(url: &str) -> redis::aio::ConnectionManager {
    let config =
        redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
    redis::Client::open(url)
        .unwrap()
        .get_connection_manager_with_config(config)
        .await
        .unwrap()
}

#[derive(Default)]
struct RedisHarness {
    opened: Mutex<Vec<RedisQueue>>,
}

#[async_trait]
impl Harness for RedisHarness {
    async fn open(&self, catalog: QueueCatalog) -> Arc<dyn QueueService> {
        let q = open(catalog).await;
        self.opened.lock().unwrap().push(q.clone());
        Arc::new(q)
    }

    async fn cleanup(&self) {
        let opened = std::mem::take(&mut *self.opened.lock().unwrap());
        for q in opened {
            q.purge().await.unwrap();
        }
    }
}

async fn harness() -> RedisHarness {
    RedisHarness::default()
}

platform_queue::queue_conformance_tests!(harness(), realtime);

fn one_queue(q: QueueConfig) -> QueueCatalog {
    QueueCatalog::empty().with_queue(q).unwrap()
}

/// Starts a worker on `name` that reports the id of every job it runs.
async fn start_reporting_ids(
    queue: &RedisQueue,
    name: &str,
) -> (WorkerHandle, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let worker = queue
        .start_worker(name, reporting(tx, |ctx| ctx.job_id().to_owned()))
        .await
        .unwrap();
    (worker, rx)
}

/// Starts a worker on `name` whose job reports its start, then does CPU-bound work
/// that does not yield for 500 ms (the scenario, not a wait: a shutdown past its
/// deadline waits for this poll to end) and never finishes. The flag says whether the
/// job is in that blocking section.
async fn start_busy_worker(
    queue: &RedisQueue,
    name: &str,
) -> (WorkerHandle, mpsc::UnboundedReceiver<()>, Arc<AtomicBool>) {
    let in_blocking_section = Arc::new(AtomicBool::new(false));
    let flag = in_blocking_section.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    let worker = queue
        .start_worker(
            name,
            handler_fn(move |_| {
                let (tx, flag) = (tx.clone(), flag.clone());
                async move {
                    flag.store(true, Ordering::SeqCst);
                    tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(500));
                    flag.store(false, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    (worker, rx, in_blocking_section)
}

/// Whether [`strand`] leaves a task as enqueued (`Readable`) or gives it a malformed
/// apalis meta hash (`Malformed`: a task no worker can read).
#[derive(PartialEq)]
enum Meta {
    Readable,
    Malformed,
}

/// Enqueues job `id` on `name`, delayed by an hour so that no worker fetches it, and
/// moves its task into `worker`'s in-flight set, where a fetch leaves its tasks.
/// Returns the admin connection it used.
async fn strand(
    queue: &RedisQueue,
    prefix: &str,
    name: &str,
    worker: &WorkerHandle,
    id: &str,
    meta: Meta,
) -> redis::aio::ConnectionManager {
    queue
        .enqueue(
            name,
            NewJob::new(json!({}))
                .with_job_id(id)
                .with_delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let mut conn = admin_connection(&redis_url()).await;
    let task = current_task(&mut conn, prefix, name, id).await;
    let mut moves = redis::pipe();
    moves
        .atomic()
        .cmd("ZREM")
        .arg(format!("{prefix}:{name}:pq:delayed"))
        .arg(&task)
        .cmd("SADD")
        .arg(format!("{prefix}:{name}:inflight:{}", worker.name()))
        .arg(&task);
    if meta == Meta::Malformed {
        moves
            .cmd("HSET")
            .arg(format!("{prefix}:{name}:meta:{task}"))
            .arg("attempts")
            .arg("x");
    }
    let moved: Vec<u64> = moves.query_async(&mut conn).await.unwrap();
    assert!(moved.iter().all(|&n| n == 1), "{moved:?}");
    conn
}

/// Enqueues an empty job with id `id` on `name`.
async fn enqueue_id(queue: &RedisQueue, name: &str, id: &str) {
    queue
        .enqueue(name, NewJob::new(json!({})).with_job_id(id))
        .await
        .unwrap();
}

/// The apalis task id of job `id`'s current attempt (its record's `task` field).
async fn current_task(
    conn: &mut redis::aio::ConnectionManager,
    prefix: &str,
    queue: &str,
    id: &str,
) -> String {
    redis::cmd("HGET")
        .arg(format!("{prefix}:{queue}:pq:job:{id}"))
        .arg("task")
        .query_async(conn)
        .await
        .unwrap()
}

/// apalis-redis's key names for `queue` under `prefix`.
fn apalis_keys(prefix: &str, queue: &str) -> apalis_redis::Config {
    apalis_redis::Config::default().queue(format!("{prefix}:{queue}"))
}

/// A task with the partial meta hash apalis writes when it puts back fetched tasks it
/// never started (only `status`) is read like one without a hash: its job runs, and
/// its acknowledgement deletes the hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_with_apalis_lone_status_field_runs_and_leaves_no_hash() {
    let (queue, prefix) = open_with_prefix(one_queue(QueueConfig::new("partial"))).await;
    let mut conn = admin_connection(&redis_url()).await;
    enqueue_id(&queue, "partial", "p-1").await;
    let task = current_task(&mut conn, &prefix, "partial", "p-1").await;
    let meta = format!("{}:{task}", apalis_keys(&prefix, "partial").job_meta_hash());
    let _: u64 = redis::cmd("HSET")
        .arg(&meta)
        .arg("status")
        .arg("Pending")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (worker, mut rx) = start_reporting_ids(&queue, "partial").await;
    assert_eq!(recv(&mut rx, "the job").await, "p-1");
    let report = worker.shutdown(Duration::from_secs(10)).await.unwrap();
    let exists: u64 = redis::cmd("EXISTS")
        .arg(&meta)
        .query_async(&mut conn)
        .await
        .unwrap();
    let stats = queue.stats("partial").await.unwrap();
    queue.purge().await.unwrap();
    assert!(report.drained, "{report:?}");
    assert_eq!(exists, 0, "the hash is deleted with the task");
    assert_eq!((stats.done, stats.dead, stats.unreadable), (1, 0, 0), "{stats:?}");
}

/// A job with a generated id (written by `NEW_JOB`) and one with an id
/// given by the caller (written by the `ENQUEUE` script) leave the same entries: the
/// same record fields, no apalis task meta hash, their task args, and their task on
/// `Q:active` (or, delayed, in `Q:pq:delayed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_with_generated_and_given_ids_are_stored_alike() {
    let (queue, prefix) = open_with_prefix(one_queue(QueueConfig::new("alike"))).await;
    let mut conn = admin_connection(&redis_url()).await;
    let apalis = apalis_keys(&prefix, "alike");
    type Map = std::collections::BTreeMap<String, String>;
    let mut stored = Vec::new();
    for (given, delay) in [(false, 0), (true, 0), (false, 60), (true, 60)] {
        let mut job = NewJob::new(json!({ "n": 1 })).with_delay(Duration::from_secs(delay));
        if given {
            job = job.with_job_id(format!("given-{delay}"));
        }
        let id = queue.enqueue("alike", job).await.unwrap().job_id;
        let mut record: Map = redis::cmd("HGETALL")
            .arg(format!("{prefix}:alike:pq:job:{id}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let task = record.remove("task").unwrap();
        let envelope: serde_json::Value = serde_json::from_str(&record.remove("envelope").unwrap()).unwrap();
        assert_eq!(envelope["payload"], json!({ "n": 1 }));
        let (meta, args, active, delayed): (Map, Option<String>, Option<u64>, Option<u64>) = redis::pipe()
            .cmd("HGETALL")
            .arg(format!("{}:{task}", apalis.job_meta_hash()))
            .cmd("HGET")
            .arg(apalis.job_data_hash())
            .arg(&task)
            .cmd("LPOS")
            .arg(apalis.active_jobs_list())
            .arg(&task)
            .cmd("ZSCORE")
            .arg(format!("{prefix}:alike:pq:delayed"))
            .arg(&task)
            .query_async(&mut conn)
            .await
            .unwrap();
        let args: serde_json::Value = serde_json::from_str(&args.unwrap()).unwrap();
        assert_eq!(args, json!({ "job": id, "task": task }));
        assert!(meta.is_empty(), "no meta hash: {meta:?}");
        stored.push((record, active.is_some(), delayed.is_some()));
    }
    assert_eq!(stored[0], stored[1], "not delayed");
    assert_eq!(stored[2], stored[3], "delayed");
    assert_eq!((stored[0].1, stored[0].2), (true, false), "on Q:active");
    assert_eq!((stored[2].1, stored[2].2), (false, true), "in Q:pq:delayed");
    queue.purge().await.unwrap();
}

/// `purge` removes every key of its catalogue's queues and their entries in apalis's
/// registry of queues, and nothing of a namespace nested under its prefix
/// (`{prefix}:staging` beside `{prefix}`), whose keys its prefix also starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_leaves_a_nested_namespace_alone() {
    let url = redis_url();
    let outer = fresh_prefix();
    let nested = format!("{outer}:staging");
    let catalog = || one_queue(QueueConfig::new("email"));
    let mut queues = Vec::new();
    for prefix in [&outer, &nested] {
        let queue = build(&url, builder(&url, catalog()).with_prefix(prefix)).await;
        queue
            .enqueue("email", NewJob::new(json!({ "to": prefix })))
            .await
            .unwrap();
        // A worker registers the queue in apalis's global registry.
        let worker = queue
            .start_worker("email", handler_fn(|_| async { Ok(()) }))
            .await
            .unwrap();
        worker.shutdown(Duration::from_secs(10)).await.unwrap();
        queues.push(queue);
    }
    let conn = admin_connection(&url).await;
    let keys = |prefix: &str| {
        let (mut conn, prefix) = (conn.clone(), prefix.to_owned());
        async move { keys_under(&mut conn, &prefix).await }
    };
    let registered = |prefix: &str| {
        let (mut conn, member) = (conn.clone(), format!("{prefix}:email:workers"));
        async move {
            let score: Option<f64> = redis::cmd("ZSCORE")
                .arg("core:apalis:queues:list")
                .arg(member)
                .query_async(&mut conn)
                .await
                .unwrap();
            score.is_some()
        }
    };
    let nested_before = keys(&nested).await;
    assert!(!nested_before.is_empty());
    assert!(registered(&outer).await && registered(&nested).await);
    assert!(queues[0].purge().await.unwrap() > 0);
    let outer_left: Vec<String> = keys(&outer)
        .await
        .into_iter()
        .filter(|k| !k.starts_with(&format!("{nested}:")))
        .collect();
    assert!(
        outer_left.is_empty(),
        "left of the purged namespace: {outer_left:?}"
    );
    assert_eq!(
        keys(&nested).await,
        nested_before,
        "the nested namespace is untouched"
    );
    assert!(!registered(&outer).await);
    assert!(registered(&nested).await);
    queues[1].purge().await.unwrap();
    assert!(keys(&outer).await.is_empty());
    assert!(!registered(&nested).await);
}

/// A worker dropped mid-job (task aborted, no ack) has its job re-delivered to another
/// worker after the heartbeat/orphan timeout (apalis-redis's orphan re-enqueueing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_job_is_redelivered_to_another_worker() {
    let h = RedisHarness::default();
    run_case(&h, |h| {
        Box::pin(async move {
            let svc = h
                .open(one_queue(QueueConfig::new("orphans").with_concurrency(1)))
                .await;
            svc.enqueue("orphans", NewJob::new(json!({})).with_job_id("o-1"))
                .await
                .unwrap();
            let (tx, mut rx) = mpsc::unbounded_channel();
            let tx1 = tx.clone();
            let crashing = svc
                .start_worker(
                    "orphans",
                    handler_fn(move |ctx| {
                        let tx = tx1.clone();
                        async move {
                            tx.send(("crashing", ctx.attempt())).unwrap();
                            std::future::pending::<()>().await;
                            Ok(())
                        }
                    }),
                )
                .await
                .unwrap();
            assert_eq!(recv(&mut rx, "the first delivery").await, ("crashing", 1));
            assert_eq!(svc.stats("orphans").await.unwrap().running, 1);
            crashing.kill();
            let started = tokio::time::Instant::now();
            let survivor = svc
                .start_worker("orphans", reporting(tx, |ctx| ("survivor", ctx.attempt())))
                .await
                .unwrap();
            assert_eq!(recv(&mut rx, "the re-delivery").await, ("survivor", 2));
            let took = started.elapsed();
            let report = survivor.shutdown(Duration::from_secs(10)).await.unwrap();
            assert!(report.drained);
            let job = svc.job("orphans", "o-1").await.unwrap().unwrap();
            assert_eq!(job.state, JobState::Done);
            assert_eq!(job.attempts, 2);
            // Counted as running once across both deliveries.
            assert_eq!(svc.stats("orphans").await.unwrap().running, 0);
            // Orphan timeout is 2 heartbeats of 1 s: re-delivery is not instantaneous.
            assert!(
                took >= Duration::from_millis(900),
                "re-delivered after only {took:?}"
            );
        })
    })
    .await;
}

struct Server {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Server {
    /// A new server on a free port, keeping its data in `dir`.
    async fn start_in(dir: &std::path::Path) -> Self {
        Self::start(free_port(), dir).await
    }

    async fn start(port: u16, dir: &std::path::Path) -> Self {
        let mut child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
            ])
            .args(["--appendfsync", "always", "--save", "", "--dir"])
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("redis-server must be on PATH (scripts/services.sh installs it)");
        let ready = Self::ready_signal(child.stdout.take().expect("piped stdout"));
        let server = Self {
            child,
            port,
            dir: dir.to_owned(),
        };
        // redis-server logs "Ready to accept connections" once it has loaded its
        // append-only file and listens: wait for that line, not for a timer.
        tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .unwrap_or_else(|_| panic!("redis-server on port {port} did not become ready"))
            .unwrap_or_else(|_| panic!("redis-server on port {port} exited before it was ready"));
        server
    }

    /// Reads the server's log on a thread (to its end, so the pipe never fills) and
    /// fires the returned signal at the "Ready to accept connections" line.
    fn ready_signal(stdout: std::process::ChildStdout) -> tokio::sync::oneshot::Receiver<()> {
        use std::io::BufRead;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("Ready to accept connections")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        rx
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL; returns how to start it again on the same port
    /// and directory.
    fn sigkill(mut self) -> (u16, std::path::PathBuf) {
        self.child.kill().unwrap(); // SIGKILL on Unix
        self.child.wait().unwrap();
        (self.port, self.dir.clone())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first success of `call` within three tries, on a handle whose server was just
/// restarted. The server is ready (signalled), so no waiting is needed: the connection
/// manager answers a call that finds its connection dead with an error and reconnects,
/// and the next call waits for that reconnection. A few calls are enough.
async fn once_reconnected<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = platform_core::Result<T>>,
{
    for _ in 0..3 {
        match call().await {
            Ok(v) => return v,
            Err(e) if e.is_retryable() => {}
            Err(e) => panic!("{e}"),
        }
    }
    panic!("queue handle did not reconnect")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A dedicated append-only redis-server is killed with SIGKILL right after the
/// enqueues return, restarted on the same directory, and every job is still there
/// (and then processed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_enqueued_job_is_lost_when_redis_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path()).await;
    let catalog = one_queue(QueueConfig::new("durable").with_concurrency(20));
    let queue = builder(&server.url(), catalog.clone()).build().await.unwrap();
    let mut ids = Vec::new();
    for n in 0..200 {
        let mut job = NewJob::new(json!({ "n": n })).with_job_id(format!("job-{n}"));
        if n % 10 == 0 {
            job = job.with_delay(Duration::from_secs(1));
        }
        assert!(queue.enqueue("durable", job).await.unwrap().created);
        ids.push(format!("job-{n}"));
    }
    let (port, dir_path) = server.sigkill();
    let err = queue.stats("durable").await.unwrap_err();
    assert!(err.is_retryable(), "a dead server is a retryable error: {err:?}");

    let server = Server::start(port, &dir_path).await;
    // The same handle reconnects; nothing enqueued before the kill is missing.
    let stats = once_reconnected(|| queue.stats("durable")).await;
    assert_eq!(stats.pending, 200, "{stats:?}");
    for id in &ids {
        let job = queue
            .job("durable", id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id} was lost"));
        assert_eq!(job.state, JobState::Pending);
    }
    let (worker, mut rx) = start_reporting_ids(&queue, "durable").await;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < ids.len() {
        seen.insert(recv(&mut rx, "a recovered job").await);
    }
    assert!(worker.shutdown(Duration::from_secs(10)).await.unwrap().drained);
    assert_eq!(queue.stats("durable").await.unwrap().done, 200);
    drop(server);
}

/// Redis restarts (SIGKILL, then the same append-only directory) while a job runs: the
/// worker keeps recording the job's outcome until Redis is back, so the job ends done,
/// ran once, and leaves nothing in flight; the worker goes on processing new jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_finishing_while_redis_restarts_is_recorded_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path()).await;
    let catalog = one_queue(QueueConfig::new("durable").with_concurrency(2));
    let prefix = fresh_prefix();
    let queue = builder(&server.url(), catalog)
        .with_prefix(&prefix)
        .build()
        .await
        .unwrap();
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = {
        let (runs, release) = (runs.clone(), release.clone());
        queue
            .start_worker(
                "durable",
                handler_fn(move |ctx| {
                    let (runs, release, tx) = (runs.clone(), release.clone(), tx.clone());
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let _ = tx.send(ctx.job_id().to_owned());
                        release.acquire().await.unwrap().forget();
                        Ok(())
                    }
                }),
            )
            .await
            .unwrap()
    };
    enqueue_id(&queue, "durable", "during-restart").await;
    assert_eq!(recv(&mut rx, "the job started").await, "during-restart");

    let (port, dir_path) = server.sigkill();
    let server = Server::start(port, &dir_path).await;
    // The handler returns now; its completion meets a dropped connection first.
    release.add_permits(1);

    // A job enqueued after the restart is processed by the same worker: it is alive.
    let enqueued =
        once_reconnected(|| queue.enqueue("durable", NewJob::new(json!({})).with_job_id("after-restart")))
            .await;
    assert!(enqueued.created);
    assert_eq!(recv(&mut rx, "a job after the restart").await, "after-restart");
    release.add_permits(1);

    // Shutting down waits for both attempts to be recorded.
    let report = worker.shutdown(Duration::from_secs(30)).await.unwrap();
    assert!(report.drained, "{report:?}");
    for id in ["during-restart", "after-restart"] {
        let job = queue.job("durable", id).await.unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Done, 1), "{id}: {job:?}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2, "each job ran once");
    let stats = queue.stats("durable").await.unwrap();
    assert_eq!((stats.done, stats.running, stats.pending), (2, 0, 0), "{stats:?}");
    let mut conn = admin_connection(&server.url()).await;
    let fp = footprint(&mut conn, &prefix, "durable").await;
    assert_eq!(
        (fp.data_fields, fp.meta_keys),
        (0, 0),
        "nothing left in flight: {fp:?}"
    );
    drop(server);
}

/// A worker stopping while it holds more tasks than one Lua `unpack` takes (~8,000;
/// e.g. tasks of fetches whose replies were lost) puts every one back on the queue.
/// The tasks are readable (their `Q:data` field exists, and they have no `Q:meta:{task}`
/// hash, as enqueued), so none is set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_requeues_more_than_8000_held_tasks() {
    const HELD: usize = 9_000;
    let (queue, prefix) = open_with_prefix(one_queue(QueueConfig::new("held"))).await;
    let worker = queue
        .start_worker("held", handler_fn(|_| async { Ok(()) }))
        .await
        .unwrap();
    let mut conn = admin_connection(&redis_url()).await;
    let inflight = format!("{prefix}:held:inflight:{}", worker.name());
    let ids: Vec<String> = (0..HELD).map(|n| format!("held-{n}")).collect();
    let mut readable = redis::pipe();
    for id in &ids {
        readable
            .cmd("HSET")
            .arg(format!("{prefix}:held:data"))
            .arg(id)
            .arg(json!({ "job": format!("job-{id}"), "task": id }).to_string())
            .ignore();
    }
    readable.query_async::<()>(&mut conn).await.unwrap();
    redis::cmd("SADD")
        .arg(&inflight)
        .arg(&ids)
        .query_async::<u64>(&mut conn)
        .await
        .unwrap();
    let report = worker.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(report.requeued, HELD as u64);
    let mut active: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("{prefix}:held:active"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    active.sort_by_key(|id| id[5..].parse::<usize>().unwrap());
    assert_eq!(active, ids, "every held task is back on the queue, once");
    let left: u64 = redis::cmd("EXISTS")
        .arg(&inflight)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
    queue.purge().await.unwrap();
}

/// A done job's record expires after the de-duplication window, to the millisecond,
/// and so do its step results when it saved any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_jobs_record_and_steps_expire_after_the_window() {
    let window = Duration::from_millis(600_999);
    let catalog = one_queue(QueueConfig::workflow("flow").with_dedupe_window(window));
    let before = std::time::Instant::now();
    let (queue, prefix) = open_with_prefix(catalog).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = queue
        .start_worker(
            "flow",
            handler_fn(move |ctx| {
                let tx = tx.clone();
                async move {
                    if ctx.payload_json()["steps"] == json!(true) {
                        ctx.step("one", || async { Ok(1) }).await?;
                    }
                    let _ = tx.send(ctx.job_id().to_owned());
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    for (id, steps) in [("with-steps", true), ("without-steps", false)] {
        queue
            .enqueue("flow", NewJob::new(json!({ "steps": steps })).with_job_id(id))
            .await
            .unwrap();
        assert_eq!(recv(&mut rx, "the job ran").await, id);
    }
    assert!(worker.shutdown(Duration::from_secs(10)).await.unwrap().drained);
    let conn = admin_connection(&redis_url()).await;
    let ttl = |key: String| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    // Set when the jobs finished, after `before`: at most the window, and at least
    // the window less the time since `before`.
    let (max, min) = (
        window.as_millis() as i64,
        (window - before.elapsed()).as_millis() as i64,
    );
    let base = format!("{prefix}:flow");
    for id in ["with-steps", "without-steps"] {
        let t = ttl(format!("{base}:pq:job:{id}")).await;
        assert!(
            (min..=max).contains(&t),
            "record of {id}: PTTL {t} ms, not in {min}..={max}"
        );
    }
    let t = ttl(format!("{base}:pq:steps:with-steps")).await;
    assert!(
        (min..=max).contains(&t),
        "steps: PTTL {t} ms, not in {min}..={max}"
    );
    assert_eq!(
        ttl(format!("{base}:pq:steps:without-steps")).await,
        -2,
        "no steps, no key"
    );
    queue.purge().await.unwrap();
}

#[tokio::test]
async fn builder_reports_missing_url_and_hides_it_in_debug() {
    let err = RedisQueueBuilder::from_iter([("PLATFORM_QUEUE_PREFIX", "x")])
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("REDIS_URL"), "{err}");
    let b = RedisQueueBuilder::from_iter([("REDIS_URL", "redis://:hunter2secret@127.0.0.1:6379")]);
    let shown = format!("{b:?}");
    assert!(!shown.contains("hunter2secret"), "{shown}");
    let bad = RedisQueueBuilder::from_iter([
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("PLATFORM_QUEUE_EMAIL_CONCURRENCY", "x"),
    ]);
    let err = bad.build().await.unwrap_err();
    assert!(
        err.to_string().contains("PLATFORM_QUEUE_EMAIL_CONCURRENCY"),
        "{err}"
    );
    let err = RedisQueueBuilder::new()
        .with_url(redis_url())
        .with_response_timeout(Duration::ZERO)
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("response timeout"), "{err}");
}

#[tokio::test]
async fn unreachable_redis_is_unavailable() {
    let port = free_port();
    let err = RedisQueueBuilder::new()
        .with_url(format!("redis://127.0.0.1:{port}"))
        .build()
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(err.provider(), Some("redis"));
}

/// What one queue's namespace holds, from a raw connection.
#[derive(Debug, PartialEq)]
struct Footprint {
    /// Fields of apalis's `Q:data` hash (one per unremoved task).
    data_fields: u64,
    /// Members of apalis's `Q:done` set (acknowledged tasks).
    done_members: u64,
    /// apalis `Q:meta:{task}` hashes.
    meta_keys: u64,
    /// Job records `Q:pq:job:{id}` (expected: one per job, kept for the de-duplication
    /// window or as a dead letter).
    records: u64,
    /// Every other key, by name (queue-level keys: must not grow with the job count).
    other: std::collections::BTreeSet<String>,
}

/// Every key under `{prefix}:`, sorted.
async fn keys_under(conn: &mut redis::aio::ConnectionManager, prefix: &str) -> Vec<String> {
    let mut keys = Vec::<String>::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut *conn)
            .await
            .unwrap();
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.sort();
    keys
}

async fn footprint(conn: &mut redis::aio::ConnectionManager, prefix: &str, queue: &str) -> Footprint {
    let base = format!("{prefix}:{queue}");
    let keys = keys_under(conn, prefix).await;
    let (data_fields, done_members): (u64, u64) = redis::pipe()
        .cmd("HLEN")
        .arg(format!("{base}:data"))
        .cmd("SCARD")
        .arg(format!("{base}:done"))
        .query_async(conn)
        .await
        .unwrap();
    let meta = format!("{base}:meta:");
    let record = format!("{base}:pq:job:");
    Footprint {
        data_fields,
        done_members,
        meta_keys: keys.iter().filter(|k| k.starts_with(&meta)).count() as u64,
        records: keys.iter().filter(|k| k.starts_with(&record)).count() as u64,
        other: keys
            .iter()
            .filter(|k| !k.starts_with(&meta) && !k.starts_with(&record))
            .cloned()
            .collect(),
    }
}

/// Processes jobs `from..to` of the "bounded" queue with one worker and drains it.
/// Every 10th job fails permanently (dead letter) unless revived, every 25th (+1) fails
/// once and succeeds on its retry, the rest succeed. Returns the number of apalis tasks
/// (attempts) this round ran.
async fn process_round(
    queue: &RedisQueue,
    from: usize,
    to: usize,
    revived: &Arc<Mutex<std::collections::HashSet<String>>>,
    also: &[&str],
) -> u64 {
    for n in from..to {
        let kind = match n {
            n if n % 10 == 0 => "dead",
            n if n % 25 == 1 => "flaky",
            _ => "ok",
        };
        let job = NewJob::new(json!({ "kind": kind })).with_job_id(format!("b-{n}"));
        assert!(queue.enqueue("bounded", job).await.unwrap().created);
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (revived_h, attempts_h) = (revived.clone(), attempts.clone());
    let worker = queue
        .start_worker(
            "bounded",
            handler_fn(move |ctx| {
                let (tx, revived, attempts) = (tx.clone(), revived_h.clone(), attempts_h.clone());
                async move {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    let id = ctx.job_id().to_owned();
                    let kind = ctx.payload_json()["kind"].as_str().unwrap().to_owned();
                    let revived = revived.lock().unwrap().contains(&id);
                    let result = match kind.as_str() {
                        "dead" if !revived => Err(platform_queue::JobError::permanent("boom")),
                        "flaky" if ctx.attempt() == 1 => {
                            return Err(platform_queue::JobError::retryable("once"));
                        }
                        _ => Ok(()),
                    };
                    tx.send(id).unwrap();
                    result
                }
            }),
        )
        .await
        .unwrap();
    let mut expected: std::collections::BTreeSet<String> = (from..to).map(|n| format!("b-{n}")).collect();
    expected.extend(also.iter().map(|s| (*s).to_owned()));
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < expected.len() {
        let id = recv(&mut rx, "a settled job").await;
        assert!(expected.contains(&id), "unexpected job {id}");
        seen.insert(id);
    }
    // Drained: nothing is left in the worker's in-flight set, so apalis has
    // acknowledged every task it ran.
    let report = worker.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(report.drained, "{report:?}");
    attempts.load(Ordering::SeqCst)
}

/// Bounded Redis growth: apalis-redis's own acknowledgement would keep every attempt's
/// `Q:data` field, `Q:meta:{task}` hash and `Q:done` member until the namespace is
/// purged; our scripts acknowledge and delete them in the call that records the
/// outcome. After 50 and then 200 more jobs (successes, retries, dead letters) no
/// per-attempt entry is left, the queue-level keys are the same set, and no stopped
/// worker's registration remains. Job records (de-duplication window, dead letters)
/// keep working, and a pending job keeps its task entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_does_not_grow_with_the_job_count() {
    let catalog = one_queue(QueueConfig::new("bounded").with_concurrency(10));
    let (queue, prefix) = open_with_prefix(catalog).await;
    let body = {
        let queue = queue.clone();
        async move {
            let mut conn = admin_connection(&redis_url()).await;
            let revived = Arc::new(Mutex::new(std::collections::HashSet::new()));
            let per_attempt = |fp: &Footprint| (fp.data_fields, fp.done_members, fp.meta_keys, fp.records);

            // Round 1: 50 jobs (5 dead, 2 retried once).
            let tasks = process_round(&queue, 0, 50, &revived, &[]).await;
            assert_eq!(tasks, 52);
            let after_50 = footprint(&mut conn, &prefix, "bounded").await;
            assert_eq!(per_attempt(&after_50), (0, 0, 0, 50), "{after_50:?}");
            assert!(after_50.other.len() <= 6, "{after_50:?}");
            assert!(
                !after_50.other.iter().any(|k| k.contains(":workers:metadata:")),
                "a stopped worker's registration is removed: {after_50:?}"
            );

            // Job records outlive their tasks: de-duplication, state and dead letters.
            let again = queue
                .enqueue("bounded", NewJob::new(json!({ "kind": "ok" })).with_job_id("b-1"))
                .await
                .unwrap();
            assert!(!again.created);
            assert_eq!(again.state, JobState::Done);
            assert_eq!(queue.stats("bounded").await.unwrap().dead, 5);
            revived.lock().unwrap().insert("b-0".to_owned());
            queue.retry_dead("bounded", "b-0").await.unwrap();

            // A queued job keeps its task entry until it has run (and has no apalis
            // meta hash: this crate writes none).
            let pending = footprint(&mut conn, &prefix, "bounded").await;
            assert_eq!((pending.data_fields, pending.meta_keys), (1, 0), "{pending:?}");

            // Round 2: 200 more jobs plus the revived dead one.
            let tasks = process_round(&queue, 50, 250, &revived, &["b-0"]).await;
            assert_eq!(tasks, 200 + 8 + 1);
            let after_250 = footprint(&mut conn, &prefix, "bounded").await;
            assert_eq!(per_attempt(&after_250), (0, 0, 0, 250), "{after_250:?}");
            assert_eq!(
                after_250.other, after_50.other,
                "queue-level keys are the same set"
            );
            assert_eq!(
                queue.job("bounded", "b-0").await.unwrap().unwrap().state,
                JobState::Done
            );
            let stats = queue.stats("bounded").await.unwrap();
            assert_eq!(
                (stats.done, stats.dead, stats.pending),
                (250 - 24, 24, 0),
                "{stats:?}"
            );
        }
    };
    let outcome = tokio::spawn(body).await;
    queue.purge().await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// apalis-redis 1.0's fetch script promotes every due task of `Q:scheduled` with one Lua
/// `unpack`, which fails beyond ~8,000 ids (the worker stopped). Delayed tasks wait in
/// our own delayed set and are promoted in bounded chunks: 9,000 jobs all due in the
/// same second are all processed, once each, none before its due time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_8000_delayed_jobs_due_at_once_are_all_processed() {
    use futures::StreamExt;
    const JOBS: usize = 9_000;
    let catalog = one_queue(QueueConfig::new("burst").with_concurrency(100));
    let (queue, prefix) = open_with_prefix(catalog).await;
    let body = {
        let queue = queue.clone();
        async move {
            // One due time for every job (a whole second, 1 to 2 s ahead), so they all
            // fall due in the same second.
            let due = chrono::DateTime::<chrono::Utc>::from_timestamp(chrono::Utc::now().timestamp() + 2, 0)
                .unwrap();
            let created = futures::stream::iter(0..JOBS)
                .map(|n| {
                    let queue = queue.clone();
                    async move {
                        let job = NewJob::new(json!({ "n": n }))
                            .with_job_id(format!("d-{n}"))
                            .with_run_at(due);
                        queue.enqueue("burst", job).await.unwrap().created
                    }
                })
                .buffer_unordered(64)
                .filter(|created| futures::future::ready(*created))
                .count()
                .await;
            assert_eq!(created, JOBS);
            assert_eq!(queue.stats("burst").await.unwrap().pending, JOBS as u64);
            // None of them went to apalis's own scheduled set.
            let mut conn = admin_connection(&redis_url()).await;
            let scheduled: u64 = redis::cmd("ZCARD")
                .arg(format!("{prefix}:burst:scheduled"))
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(scheduled, 0);

            let early = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let (tx, mut rx) = mpsc::unbounded_channel::<String>();
            let early_h = early.clone();
            let worker = queue
                .start_worker(
                    "burst",
                    handler_fn(move |ctx| {
                        let (tx, early) = (tx.clone(), early_h.clone());
                        async move {
                            if chrono::Utc::now() < due {
                                early.fetch_add(1, Ordering::SeqCst);
                            }
                            tx.send(ctx.job_id().to_owned()).unwrap();
                            Ok(())
                        }
                    }),
                )
                .await
                .unwrap();
            // Hang guard: a stopped worker (the old failure) never delivers them all.
            let mut seen = std::collections::BTreeSet::new();
            tokio::time::timeout(Duration::from_secs(240), async {
                while seen.len() < JOBS {
                    let Some(id) = rx.recv().await else {
                        panic!("the worker stopped after {} of {JOBS} jobs", seen.len());
                    };
                    seen.insert(id);
                }
            })
            .await
            .unwrap_or_else(|_| panic!("only {} of {JOBS} delayed jobs ran", seen.len()));
            let report = worker.shutdown(Duration::from_secs(30)).await.unwrap();
            assert!(report.drained, "{report:?}");
            assert_eq!(early.load(Ordering::SeqCst), 0, "jobs ran early");
            let stats = queue.stats("burst").await.unwrap();
            assert_eq!(
                (stats.done, stats.pending, stats.failed),
                (JOBS as u64, 0, 0),
                "{stats:?}"
            );
            assert_eq!(rx.try_recv().ok(), None, "no job ran twice");
        }
    };
    let outcome = tokio::spawn(body).await;
    queue.purge().await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A worker whose every slot is held by long jobs while it holds one more fetched task
/// (apalis buffers it and sends no heartbeat of its own meanwhile) keeps its
/// registration: another worker's heartbeats do not take it for dead and re-deliver
/// its jobs, however long they run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_holding_a_fetched_task_keeps_its_jobs() {
    let (queue, prefix) = open_with_prefix(one_queue(QueueConfig::new("busy").with_concurrency(2))).await;
    // Fetched two at a time: long-1 and short start; when short ends, the next fetch
    // takes long-2 (started) and held (buffered until a slot frees).
    for id in ["long-1", "short", "long-2", "held"] {
        enqueue_id(&queue, "busy", id).await;
    }
    let (release, released) = tokio::sync::watch::channel(false);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = handler_fn(move |ctx| {
        let (tx, mut released) = (tx.clone(), released.clone());
        async move {
            tx.send(ctx.job_id().to_owned()).unwrap();
            if ctx.job_id().starts_with("long") {
                released.wait_for(|r| *r).await.unwrap();
            }
            Ok(())
        }
    });
    let busy = queue.start_worker("busy", handler.clone()).await.unwrap();
    let mut started = Vec::new();
    for _ in 0..3 {
        started.push(recv(&mut rx, "the first three starts").await);
    }
    started.sort();
    assert_eq!(started, ["long-1", "long-2", "short"]);
    // Another worker, whose heartbeats re-queue the tasks of any worker not seen for
    // the orphan timeout (2 heartbeats of 1 s).
    let other = queue.start_worker("busy", handler).await.unwrap();
    // The scenario is time passing: stay busy for twice the orphan timeout.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut conn = admin_connection(&redis_url()).await;
    let workers = apalis_keys(&prefix, "busy").workers_set();
    let seen: Option<u64> = redis::cmd("ZSCORE")
        .arg(&workers)
        .arg(busy.name())
        .query_async(&mut conn)
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let seen = seen.expect("the busy worker is still registered");
    // Scores are rounded up to the second: `seen` may be a second ahead of `now`.
    let ago = now.saturating_sub(seen);
    assert!(ago <= 2, "last heartbeat {ago} s ago");
    release.send(true).unwrap();
    assert_eq!(recv(&mut rx, "the held job").await, "held");
    for worker in [busy, other] {
        let report = worker.shutdown(Duration::from_secs(10)).await.unwrap();
        assert_eq!(report.requeued, 0);
    }
    assert!(rx.try_recv().is_err(), "a job ran twice");
    assert_eq!(queue.stats("busy").await.unwrap().done, 4);
    queue.purge().await.unwrap();
}

/// A step finished by an attempt that is no longer current (here its job's record
/// expired meanwhile, as after another delivery finished it) saves nothing: the record
/// is not brought back as a bare `steps` field, and the job id can be enqueued again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_attempt_saves_no_step_result() {
    let (queue, prefix) = open_with_prefix(one_queue(QueueConfig::new("steps"))).await;
    let (go, gate) = tokio::sync::watch::channel(false);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = queue
        .start_worker(
            "steps",
            handler_fn(move |ctx| {
                let (tx, mut gate) = (tx.clone(), gate.clone());
                async move {
                    tx.send("started".to_owned()).unwrap();
                    gate.wait_for(|open| *open).await.unwrap();
                    let saved = ctx.step("a", || async { Ok(1) }).await;
                    tx.send(match &saved {
                        Ok(n) => format!("step a = {n}"),
                        Err(e) => e.to_string(),
                    })
                    .unwrap();
                    saved.map(|_: u32| ())
                }
            }),
        )
        .await
        .unwrap();
    enqueue_id(&queue, "steps", "s-1").await;
    assert_eq!(recv(&mut rx, "the first attempt").await, "started");
    let mut conn = admin_connection(&redis_url()).await;
    let record = format!("{prefix}:steps:pq:job:s-1");
    let steps = format!("{prefix}:steps:pq:steps:s-1");
    redis::cmd("DEL")
        .arg(&record)
        .query_async::<u64>(&mut conn)
        .await
        .unwrap();
    go.send(true).unwrap();
    let refused = recv(&mut rx, "the stale step").await;
    assert!(refused.contains("no longer the current attempt"), "{refused}");
    let left: u64 = redis::cmd("EXISTS")
        .arg(&record)
        .arg(&steps)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "the stale attempt wrote a record or step result");
    let again = queue
        .enqueue("steps", NewJob::new(json!({})).with_job_id("s-1"))
        .await
        .unwrap();
    assert!(again.created, "the job id is free again");
    assert_eq!(recv(&mut rx, "the new job").await, "started");
    assert_eq!(recv(&mut rx, "its step").await, "step a = 1");
    let report = worker.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(report.drained);
    let job = queue.job("steps", "s-1").await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Done);
    queue.purge().await.unwrap();
}

/// A worker whose apalis loop stops on an error (here its registration is removed, so
/// its next fetch fails with "worker not registered") is restarted under the same
/// name: it registers again and goes on processing jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_by_an_error_is_restarted() {
    let (queue, prefix) = open_with_prefix(one_queue(QueueConfig::new("restart"))).await;
    let (worker, mut rx) = start_reporting_ids(&queue, "restart").await;
    enqueue_id(&queue, "restart", "r-1").await;
    assert_eq!(recv(&mut rx, "the first job").await, "r-1");
    let mut conn = admin_connection(&redis_url()).await;
    let workers = apalis_keys(&prefix, "restart").workers_set();
    let removed: u64 = redis::cmd("ZREM")
        .arg(&workers)
        .arg(worker.name())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    enqueue_id(&queue, "restart", "r-2").await;
    assert_eq!(recv(&mut rx, "a job after the restart").await, "r-2");
    let registered: Option<u64> = redis::cmd("ZSCORE")
        .arg(&workers)
        .arg(worker.name())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(registered.is_some(), "registered again");
    let report = worker.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(report.drained, "{report:?}");
    assert_eq!(queue.stats("restart").await.unwrap().done, 2);
    queue.purge().await.unwrap();
}

/// Tasks apalis cannot read (here: one with a malformed `Q:meta:{task}` hash, one whose
/// arguments are not ours, as an incompatible version could leave them) stop the
/// worker that fetched them; they are set aside before it restarts, so that they do
/// not stop every worker in turn, and the jobs fetched with them still run. The one
/// whose job is known is dead-lettered, and retrying it from the dead list runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_no_worker_can_read_are_set_aside() {
    let (queue, prefix) = open_with_prefix(one_queue(QueueConfig::new("poison"))).await;
    let mut conn = admin_connection(&redis_url()).await;
    let apalis = apalis_keys(&prefix, "poison");
    for id in ["bad-meta", "bad-args", "no-record", "fetched-with-them"] {
        enqueue_id(&queue, "poison", id).await;
    }
    let bad_meta = current_task(&mut conn, &prefix, "poison", "bad-meta").await;
    let bad_args = current_task(&mut conn, &prefix, "poison", "bad-args").await;
    let no_record = current_task(&mut conn, &prefix, "poison", "no-record").await;
    // "no-record" is unreadable as "bad-meta" is, and its job's record is gone too.
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(format!("{}:{bad_meta}", apalis.job_meta_hash()))
        .arg("attempts")
        .arg("x")
        .ignore()
        .cmd("HSET")
        .arg(format!("{}:{no_record}", apalis.job_meta_hash()))
        .arg("attempts")
        .arg("x")
        .ignore()
        .cmd("DEL")
        .arg(format!("{prefix}:poison:pq:job:no-record"))
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: u64 = redis::cmd("HSET")
        .arg(apalis.job_data_hash())
        .arg(&bad_args)
        .arg(r#"{"job_id":"bad-args","v":2}"#)
        .query_async(&mut conn)
        .await
        .unwrap();

    let (worker, mut rx) = start_reporting_ids(&queue, "poison").await;
    assert_eq!(
        recv(&mut rx, "the job fetched with them").await,
        "fetched-with-them"
    );
    let stats = queue.stats("poison").await.unwrap();
    assert_eq!(
        (stats.dead, stats.unreadable, stats.pending),
        (1, 2, 0),
        "{stats:?}"
    );
    let dead = queue.job("poison", "bad-meta").await.unwrap().unwrap();
    assert_eq!(dead.state, JobState::Dead);
    let why = dead.last_error.unwrap_or_default();
    assert!(why.contains("invalid digit"), "{why}");
    let kept = queue.unreadable_tasks("poison").await.unwrap();
    assert_eq!(kept.len(), 2, "{kept:?}");
    let reason = |task: &str| {
        let kept = kept.iter().find(|k| k.task_id == task);
        kept.map(|k| k.reason.clone()).unwrap_or_default()
    };
    let why = reason(&bad_args);
    assert!(why.contains("missing field") && why.contains("job_id"), "{why}");
    let why = reason(&no_record);
    assert!(why.contains("invalid digit"), "{why}");
    assert!(queue.discard_unreadable("poison", &no_record).await.unwrap());
    assert!(queue.discard_unreadable("poison", &bad_args).await.unwrap());
    assert!(
        !queue.discard_unreadable("poison", &bad_args).await.unwrap(),
        "already discarded"
    );
    assert_eq!(queue.stats("poison").await.unwrap().unreadable, 0);
    assert!(queue.unreadable_tasks("poison").await.unwrap().is_empty());
    let unknown = queue.unreadable_tasks("no-such-queue").await.unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::InvalidInput, "{unknown}");

    // Retrying the dead-lettered job writes it a new task, which runs.
    queue.retry_dead("poison", "bad-meta").await.unwrap();
    assert_eq!(recv(&mut rx, "the retried job").await, "bad-meta");
    let report = worker.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(report.drained, "{report:?}");
    let stats = queue.stats("poison").await.unwrap();
    assert_eq!((stats.done, stats.dead, stats.running), (2, 0, 0), "{stats:?}");
    queue.purge().await.unwrap();
}

/// A job whose stored envelope cannot be read (written by an incompatible version, or
/// changed by hand: here one that is not JSON, and one whose text is not UTF-8, which
/// must not run with its payload silently altered) is dead-lettered with the reason
/// instead of being left running, and the dead list stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_an_unreadable_envelope_is_dead_lettered() {
    let (queue, prefix) = open_with_prefix(one_queue(QueueConfig::new("broken"))).await;
    let record = |id: &str| format!("{prefix}:broken:pq:job:{id}");
    enqueue_id(&queue, "broken", "b-1").await;
    queue
        .enqueue("broken", NewJob::new(json!("café")).with_job_id("b-3"))
        .await
        .unwrap();
    let mut conn = admin_connection(&redis_url()).await;
    let envelope: Vec<u8> = redis::cmd("HGET")
        .arg(record("b-3"))
        .arg("envelope")
        .query_async(&mut conn)
        .await
        .unwrap();
    // "é" in Latin-1 (0xE9), as another writer might leave it, not UTF-8 (0xC3 0xA9).
    let at = envelope.windows(2).position(|w| w == [0xC3, 0xA9]).unwrap();
    let latin1 = [&envelope[..at], &[0xE9], &envelope[at + 2..]].concat();
    for (id, envelope) in [("b-1", b"{not json".to_vec()), ("b-3", latin1)] {
        redis::cmd("HSET")
            .arg(record(id))
            .arg("envelope")
            .arg(envelope)
            .query_async::<u64>(&mut conn)
            .await
            .unwrap();
    }
    let (worker, mut rx) = start_reporting_ids(&queue, "broken").await;
    enqueue_id(&queue, "broken", "b-2").await;
    assert_eq!(recv(&mut rx, "the job after the broken ones").await, "b-2");
    // The drain waits for the broken jobs' outcomes too.
    let report = worker.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(report.drained, "{report:?}");
    for id in ["b-1", "b-3"] {
        let (state, error): (String, String) = redis::cmd("HMGET")
            .arg(record(id))
            .arg("state")
            .arg("last_error")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(state, "dead", "{id}");
        assert!(error.contains("envelope cannot be read"), "{id}: {error}");
    }
    // They are listed with the reason, and the dead list stays readable.
    let dead = queue.dead_jobs("broken", 10).await.unwrap();
    let mut ids: Vec<&str> = dead.iter().map(|j| j.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["b-1", "b-3"], "{dead:?}");
    for job in &dead {
        assert_eq!(job.state, JobState::Dead);
        assert_eq!(job.payload, serde_json::Value::Null);
        assert!(
            job.last_error
                .as_deref()
                .is_some_and(|e| e.contains("envelope cannot be read"))
        );
        assert_eq!(queue.job("broken", &job.id).await.unwrap().as_ref(), Some(job));
    }
    let stats = queue.stats("broken").await.unwrap();
    assert_eq!((stats.running, stats.dead, stats.done), (0, 2, 1));
    queue.purge().await.unwrap();
}

/// A task no worker can read that is in a stopping worker's in-flight set (a fetch in
/// flight at the stop, which apalis drops unread) is set aside by the shutdown, not put
/// back on the queue, where it would stop the next worker that fetched it. Here a
/// job's task with a malformed apalis meta hash is moved into the worker's set by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_sets_aside_a_task_no_worker_can_read() {
    let (queue, prefix) = open_with_prefix(one_queue(QueueConfig::new("poison"))).await;
    let (worker, _rx) = start_reporting_ids(&queue, "poison").await;
    strand(&queue, &prefix, "poison", &worker, "unreadable", Meta::Malformed).await;
    let report = worker.shutdown(Duration::from_secs(10)).await.unwrap();
    let stats = queue.stats("poison").await.unwrap();
    let job = queue.job("poison", "unreadable").await.unwrap().unwrap();
    queue.purge().await.unwrap();
    assert_eq!(report.requeued, 0, "{report:?}");
    assert_eq!((stats.pending, stats.dead), (0, 1), "{stats:?}");
    assert_eq!(job.state, JobState::Dead, "{job:?}");
}

/// The tasks of a fetch whose reply was lost (the script ran, the reply never came)
/// are put back on the queue when the worker retries its failed call, not left in its
/// in-flight set until it stops. Here a job's task is moved into the worker's set by
/// hand, as such a fetch would leave it, and Redis is paused past the client's
/// response timeout so that the worker's next fetch fails and is retried. Its
/// heartbeats are 30 s apart, so that the call the pause fails is a fetch, as when a
/// fetch's reply is lost (a worker recovers before retrying a fetch only: recovering
/// while it still holds fetched tasks to hand over would put those back too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_fetch_whose_reply_was_lost_are_requeued() {
    let url = redis_url();
    let prefix = fresh_prefix();
    let queue = build(
        &url,
        builder(&url, one_queue(QueueConfig::new("lost")))
            .with_prefix(&prefix)
            .with_heartbeat(Duration::from_secs(30), 2)
            .with_response_timeout(Duration::from_millis(500)),
    )
    .await;
    let (worker, mut rx) = start_reporting_ids(&queue, "lost").await;
    enqueue_id(&queue, "lost", "first").await;
    assert_eq!(recv(&mut rx, "the first job").await, "first");
    // In the worker's in-flight set, where a fetch whose reply was lost leaves its tasks.
    let mut conn = strand(&queue, &prefix, "lost", &worker, "stranded", Meta::Readable).await;
    // Longer than the client's response timeout (500 ms): the worker's next fetch fails.
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1200)
        .arg("ALL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert_eq!(recv(&mut rx, "the stranded job").await, "stranded");
    let report = worker.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(report.drained, "{report:?}");
    assert_eq!(report.requeued, 0);
    queue.purge().await.unwrap();
}

/// A shutdown past its deadline re-queues a job only once its attempt has stopped
/// running: here the handler is inside a blocking section (CPU-bound work) when the
/// deadline passes, and `shutdown` returns only after that section ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_past_its_deadline_waits_for_the_running_poll_to_end() {
    let (queue, _prefix) = open_with_prefix(one_queue(QueueConfig::new("busy"))).await;
    let (worker, mut rx, in_blocking_section) = start_busy_worker(&queue, "busy").await;
    enqueue_id(&queue, "busy", "cpu").await;
    recv(&mut rx, "the job's start").await;
    let report = worker.shutdown(Duration::from_millis(50)).await.unwrap();
    assert!(
        !in_blocking_section.load(Ordering::SeqCst),
        "the job was still running when its task was re-queued"
    );
    assert!(!report.drained);
    assert_eq!(report.requeued, 1);
    queue.purge().await.unwrap();
}

/// A shutdown the caller cuts short (its own timeout drops the shutdown future while
/// the worker waits for a job's poll to end) leaves the worker killed: its heartbeat
/// stops, and its job is re-delivered to another worker once it is seen dead, instead
/// of staying in its in-flight set behind a registration kept fresh for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_cut_short_leaves_the_worker_killed() {
    let queue = open(one_queue(QueueConfig::new("cut"))).await;
    let (worker, mut rx, _) = start_busy_worker(&queue, "cut").await;
    enqueue_id(&queue, "cut", "stuck").await;
    recv(&mut rx, "the job's start").await;
    let cut_short = tokio::time::timeout(
        Duration::from_millis(100),
        worker.shutdown(Duration::from_millis(50)),
    )
    .await;
    assert!(cut_short.is_err(), "the shutdown must be cut short");
    let (other, mut ran) = start_reporting_ids(&queue, "cut").await;
    assert_eq!(recv(&mut ran, "the job, re-delivered").await, "stuck");
    other.shutdown(Duration::from_secs(5)).await.unwrap();
    queue.purge().await.unwrap();
}

/// Dropping a `WorkerHandle` leaves its worker running, as documented: a job enqueued
/// after the drop still runs. The worker ends with the runtime it runs on (as in a
/// crash, the job's completion may not be recorded by then), so this test owns its
/// runtime: it drops it, then purges the keys from another one, through a queue of
/// its own (the first queue's connection belonged to the dropped runtime).
#[test]
fn a_dropped_handle_leaves_its_worker_running() {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let catalog = one_queue(QueueConfig::new("dropped"));
    let first = runtime();
    let prefix = first.block_on(async {
        let (queue, prefix) = open_with_prefix(catalog.clone()).await;
        let (worker, mut rx) = start_reporting_ids(&queue, "dropped").await;
        drop(worker);
        enqueue_id(&queue, "dropped", "d-1").await;
        assert_eq!(recv(&mut rx, "a job enqueued after the drop").await, "d-1");
        prefix
    });
    drop(first);
    runtime().block_on(async {
        let url = redis_url();
        let queue = build(&url, builder(&url, catalog).with_prefix(&prefix)).await;
        assert!(queue.purge().await.unwrap() > 0);
    });
}

/// A busy worker fetches no more tasks than it has free slots: with one slot free it
/// takes one task, and the others stay on the queue, counted as pending, for another
/// worker to run at once (not buffered behind the busy worker's long jobs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_fetches_only_what_it_can_start() {
    let url = redis_url();
    let catalog = one_queue(QueueConfig::new("busy").with_concurrency(2));
    // A long idle poll: the busy worker's next fetch comes after both j2 and j3 are
    // enqueued, with one slot free.
    let queue = build(
        &url,
        builder(&url, catalog).with_poll_interval(Duration::from_secs(1)),
    )
    .await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (release, released) = tokio::sync::watch::channel(false);
    let handler = handler_fn(move |ctx| {
        let (tx, mut released) = (tx.clone(), released.clone());
        async move {
            tx.send(ctx.job_id().to_owned()).unwrap();
            if ctx.job_id() != "j3" {
                let _ = released.wait_for(|r| *r).await;
            }
            Ok(())
        }
    });
    let busy = queue.start_worker("busy", handler.clone()).await.unwrap();
    enqueue_id(&queue, "busy", "j1").await;
    assert_eq!(recv(&mut rx, "j1").await, "j1");
    enqueue_id(&queue, "busy", "j2").await;
    enqueue_id(&queue, "busy", "j3").await;
    assert_eq!(recv(&mut rx, "j2").await, "j2");
    let stats = queue.stats("busy").await.unwrap();
    assert_eq!(
        (stats.running, stats.pending),
        (2, 1),
        "j3 waits on the queue: {stats:?}"
    );
    let idle = queue.start_worker("busy", handler).await.unwrap();
    assert_eq!(recv(&mut rx, "j3, on the idle worker").await, "j3");
    release.send(true).unwrap();
    for worker in [busy, idle] {
        assert!(worker.shutdown(Duration::from_secs(10)).await.unwrap().drained);
    }
    assert_eq!(queue.stats("busy").await.unwrap().done, 3);
    queue.purge().await.unwrap();
}
