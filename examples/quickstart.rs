//! The platform on its embedded defaults: no keys, no network.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! Shows the product catalogue, a webhook verified the way Clerk/Resend/Replicate
//! sign them, and a flaky call retried with backoff. Each service crate adds its
//! part here as it lands.
#![allow(clippy::print_stdout)] // An example talks to its reader.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use platform::core::webhook::StandardWebhookVerifier;
use platform::core::{Idempotency, SecretString};
use platform::{Error, ErrorKind, Platform, Product, RetryPolicy};

#[tokio::main]
async fn main() -> platform::Result<()> {
    let platform = Platform::local()?;
    println!(
        "platform (mode {:?}, environment {})",
        platform.settings().mode,
        platform.settings().environment
    );

    // 1. The product catalogue: tiers in order, quotas, roles.
    for (product, config) in platform.catalog().products() {
        let tiers: Vec<&str> = config.tiers.iter().map(|t| t.name.as_str()).collect();
        println!(
            "  product {product} ({}): tiers {}",
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
        "  webhook {} verified (signed at {})",
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
        "  flaky call answered {answer} after {} attempts",
        attempts.load(Ordering::SeqCst)
    );
    Ok(())
}
