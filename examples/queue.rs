//! Background jobs and a durable workflow: locally by default, on Redis when
//! `REDIS_URL` is set.
//!
//! ```sh
//! cargo run --example queue                                   # in-process queue
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example queue  # apalis on Redis
//! ```
//!
//! Runs an email-like queue (de-duplicated job ids, a transient failure retried with
//! backoff, idempotency keys) and a two-step workflow whose second step fails once:
//! the retried run skips the first step.
#![allow(clippy::print_stdout, reason = "an example talks to its reader")]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use platform::Product;
use platform::queue::{
    JobError, JobQueueExt, LocalQueue, NewJob, QueueService, RedisQueueBuilder, handler_fn,
};

#[tokio::main]
async fn main() -> platform::Result<()> {
    let (queue, redis): (Arc<dyn QueueService>, Option<platform::queue::RedisQueue>) =
        if std::env::var_os("REDIS_URL").is_some() {
            let q = RedisQueueBuilder::from_env()
                .with_prefix(format!("platform-example-{}", std::process::id()))
                .build()
                .await?;
            println!("queue: Redis (apalis) at REDIS_URL");
            (Arc::new(q.clone()), Some(q))
        } else {
            println!("queue: in-process (set REDIS_URL to use Redis)");
            (Arc::new(LocalQueue::new()), None)
        };

    // 1. An email-like queue.
    for (user, template) in [
        ("ada", "welcome"),
        ("grace", "welcome"),
        ("ada", "welcome"),
        ("linus", "receipt"),
    ] {
        let payload = HashMap::from([
            ("to", format!("{user}@example.com")),
            ("template", template.to_owned()),
        ]);
        let job = NewJob::json(&payload)?
            .with_product(Product::ARBOR)
            .with_job_id(format!("{template}-{user}"));
        let out = queue.enqueue("email", job).await?;
        println!("enqueue {:<16} created={}", out.job_id, out.created);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let emails = queue
        .start_worker(
            "email",
            handler_fn(move |ctx| {
                let tx = tx.clone();
                async move {
                    let email: HashMap<String, String> = ctx.payload()?;
                    if ctx.job_id() == "receipt-linus" && ctx.attempt() == 1 {
                        println!("  {} attempt 1: provider answered 503, will retry", ctx.job_id());
                        return Err(JobError::retryable("email provider unavailable"));
                    }
                    println!(
                        "  sent {} to {} (attempt {}, idempotency key {})",
                        email["template"],
                        email["to"],
                        ctx.attempt(),
                        ctx.idempotency_key()
                    );
                    tx.send(()).ok();
                    Ok(())
                }
            }),
        )
        .await?;
    for _ in 0..3 {
        rx.recv().await;
    }
    let report = emails.shutdown(Duration::from_secs(5)).await?;
    let stats = queue.stats("email").await?;
    println!(
        "email: done {} failed attempts {} dead {} (shutdown drained: {})",
        stats.done, stats.failed, stats.dead, report.drained
    );

    // 2. A two-step workflow, started by its trigger event.
    let run = queue
        .emit(
            "agent-execution.requested",
            NewJob::json(&HashMap::from([("task", "summarise")]))?,
        )
        .await?;
    println!("workflow run {} started", run.job_id);
    let planned = Arc::new(AtomicU32::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let p = planned.clone();
    let flows = queue
        .start_worker(
            "agent-execution",
            handler_fn(move |ctx| {
                let (p, tx) = (p.clone(), tx.clone());
                async move {
                    let plan: Vec<String> = ctx
                        .step("plan", || async {
                            p.fetch_add(1, Ordering::SeqCst);
                            Ok(vec!["read".to_owned(), "summarise".to_owned()])
                        })
                        .await?;
                    let result: String = ctx
                        .step("execute", || async {
                            if ctx.attempt() == 1 {
                                println!("  execute failed on attempt 1; the run will resume here");
                                return Err(JobError::retryable("tool call timed out"));
                            }
                            Ok(format!("ran {} steps", plan.len()))
                        })
                        .await?;
                    tx.send((ctx.attempt(), result)).ok();
                    Ok(())
                }
            }),
        )
        .await?;
    if let Some((attempt, result)) = rx.recv().await {
        println!(
            "  run finished on attempt {attempt}: {result}; 'plan' ran {} time(s)",
            planned.load(Ordering::SeqCst)
        );
    }
    flows.shutdown(Duration::from_secs(5)).await?;
    if let Some(status) = queue.job("agent-execution", &run.job_id).await? {
        println!(
            "workflow run {} is {} after {} attempt(s)",
            status.id, status.state, status.attempts
        );
    }
    if let Some(redis) = redis {
        redis.purge().await?;
    }
    Ok(())
}
