//! The platform on its embedded defaults: no keys, no network.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! Walks through every service on its local implementation: the product catalogue,
//! a verified webhook, a retried flaky call, analytics, the database repositories,
//! object storage with a temporary upload, a background job and a welcome email.
//! The same code runs against real providers with `Platform::from_env()`.
#![allow(clippy::print_stdout, reason = "an example talks to its reader")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use platform::analytics::ImageGenerated;
use platform::core::webhook::StandardWebhookVerifier;
use platform::core::{Idempotency, SecretString};
use platform::email::templates::Welcome;
use platform::queue::{JobError, NewJob, handler_fn};
use platform::storage::bytes::Bytes;
use platform::storage::{PutOptions, UploadPurpose};
use platform::{Error, ErrorKind, Platform, Product, RetryPolicy};

#[tokio::main]
async fn main() -> platform::Result<()> {
    let platform = Platform::local().await?;
    println!(
        "platform (mode {:?}, environment {}, data in {})",
        platform.settings().mode,
        platform.settings().environment,
        platform.settings().data_dir.display()
    );
    for (service, backend) in platform.backends() {
        println!("  {service:<10} {backend:?}");
    }

    // 1. The product catalogue: tiers in order, quotas, roles.
    for (product, config) in platform.catalog().products() {
        let tiers: Vec<&str> = config.tiers.iter().map(|t| t.name.as_str()).collect();
        println!(
            "product {product} ({}): tiers {}",
            config.display_name,
            tiers.join(" < ")
        );
    }
    let kumori = platform.product(&Product::KUMORI)?;
    let change = kumori.config().compare_tiers("free", "premium")?;
    println!("  kumori free -> premium is {change:?}");

    // 2. A webhook signed as Svix signs them (Clerk, Resend, Replicate), then verified.
    let secret = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let verifier = StandardWebhookVerifier::new([secret])?.with_clock(platform.clock().clone());
    let body = br#"{"type":"user.created","data":{"id":"user_123"}}"#;
    let now = platform.clock().unix_seconds();
    let signature = verifier.sign("msg_quickstart", now, body);
    let verified = verifier.verify_parts("msg_quickstart", &now.to_string(), &signature, body)?;
    println!(
        "webhook {} verified (signed at {})",
        verified.id, verified.timestamp
    );
    let tampered = verifier.verify_parts("msg_quickstart", &now.to_string(), &signature, b"{}");
    println!(
        "  tampered body refused: {}",
        tampered.err().map(|e| e.to_string()).unwrap_or_default()
    );

    // 3. A call that fails twice with a retryable error, retried with backoff.
    let attempts = AtomicU32::new(0);
    let policy = RetryPolicy::default().with_initial_backoff(Duration::from_millis(10));
    let answer = policy
        .retry(&Idempotency::Idempotent, |attempt| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                if attempt < 3 {
                    Err(Error::new(ErrorKind::Unavailable, "provider is warming up"))
                } else {
                    Ok(42)
                }
            }
        })
        .await?;
    println!(
        "flaky call answered {answer} after {} attempts",
        attempts.load(Ordering::SeqCst)
    );

    // 4. Database: a user signs up (idempotent), gets a subscription.
    let repos = platform.repositories();
    let user = repos
        .users
        .get_or_create_user("user_123", "ada@example.com")
        .await?;
    let again = repos
        .users
        .get_or_create_user("user_123", "ada@example.com")
        .await?;
    println!("db: user {} (same id on retry: {})", user.id, user.id == again.id);

    // 5. Analytics: a typed Kumori event, tagged with the product.
    kumori.track(
        &user.id.to_string(),
        &ImageGenerated {
            filter_id: "noir".into(),
            duration: Duration::from_millis(1840),
        },
    )?;
    let report = platform.analytics().flush(Duration::from_secs(5)).await;
    println!(
        "analytics: {} delivered, {} pending, {} dropped",
        report.delivered, report.pending, report.dropped
    );

    // 6. Storage: an upload to Kumori's bucket, a presigned link, a temporary upload slot.
    let bucket = kumori.bucket()?.to_owned();
    let meta = platform
        .storage()
        .upload(
            &bucket,
            "images/ada/1.png",
            Bytes::from_static(b"\x89PNG..."),
            PutOptions::new(),
        )
        .await?;
    println!(
        "storage: {bucket}/{} ({} bytes, metadata {:?})",
        meta.key, meta.size, meta.metadata
    );
    let link = platform
        .storage()
        .presign_download(&bucket, &meta.key, Duration::from_secs(300))
        .await?;
    // Its Debug form hides the query: the signature is a credential.
    println!("  presigned GET: {link:?}");
    let slot = platform
        .storage()
        .temp_uploads()
        .issue(UploadPurpose::PreviewFiles, "preview.png", "image/png", 1024)
        .await?;
    println!("  temp upload slot {} expires {}", slot.key, slot.expires_at);

    // 7. Queue: a worker on the `email` queue, a de-duplicated job.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    platform
        .start_worker(
            "email",
            handler_fn(move |ctx| {
                let done = done_tx.clone();
                async move {
                    let _ = done.send(format!("{} (attempt {})", ctx.idempotency_key(), ctx.attempt()));
                    Ok::<(), JobError>(())
                }
            }),
        )
        .await?;
    let job = NewJob::json(&serde_json::json!({"template": "welcome", "to": "ada@example.com"}))?
        .with_job_id("welcome-user_123");
    let first = kumori.enqueue("email", job.clone()).await?;
    let second = kumori.enqueue("email", job).await?;
    println!(
        "queue: enqueued {} (created {}), again (created {})",
        first.job_id, first.created, second.created
    );
    if let Some(ran) = done_rx.recv().await {
        println!("  worker ran {ran}");
    }

    // 8. Email: Kumori's welcome email, written to the local outbox as a .eml file.
    let welcome = Welcome::new("Ada", "Kumori", "https://kumori.example.com/start");
    let id = kumori
        .send_email("ada@example.com", Some(&user.id.to_string()), &welcome)
        .await?;
    println!(
        "email: welcome from {:?} -> message {}",
        kumori.sender().from,
        id.as_str()
    );

    // Health and a clean shutdown: workers drain, analytics flush.
    println!("healthy: {}", platform.health().await.is_healthy());
    let report = platform.shutdown(Duration::from_secs(5)).await;
    println!("shutdown clean: {}", report.is_clean());
    Ok(())
}
