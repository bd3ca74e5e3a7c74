//! Users, subscriptions, usage and webhook de-duplication through `platform::db`.
//!
//! Without `DATABASE_URL` it runs on the in-memory repositories (no network):
//!
//! ```sh
//! cargo run --example db
//! ```
//!
//! Against Postgres (the local server from `scripts/services.sh`, or Neon's direct
//! URL), migrations included; running it twice shows the idempotency:
//!
//! ```sh
//! DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/platform_test cargo run --example db
//! ```
#![allow(clippy::print_stdout, reason = "an example talks to its reader")]

use std::time::Duration;

use platform::db::{Database, Period, Repositories, SubscriptionUpsert, UsageRecord};
use platform::{EnvMap, Product, ProductCatalog};

#[tokio::main]
async fn main() -> platform::Result<()> {
    let env = EnvMap::from_env();
    let (repos, database) = if env.optional("DATABASE_URL").is_some() {
        let db = Database::builder().build_from(&env)?;
        db.migrate().await?;
        db.health().await?;
        println!("using Postgres ({db:?}); migrations applied");
        (db.repositories(), Some(db))
    } else {
        println!("DATABASE_URL is not set: using the in-memory repositories");
        let clock = platform::core::system_clock();
        (Repositories::in_memory(ProductCatalog::default(), clock), None)
    };

    // The seed's get_or_create_user: one row per Clerk id, however often it runs.
    let user = repos
        .users
        .get_or_create_user("user_example", "example@example.com")
        .await?;
    println!("user {} (clerk id {})", user.id, user.clerk_id);

    // Subscriptions: tiers come from the catalogue; a tier change keeps history.
    repos
        .subscriptions
        .upsert_current(SubscriptionUpsert::new(user.id, Product::KUMORI, "free"))
        .await?;
    let premium = repos
        .subscriptions
        .upsert_current(SubscriptionUpsert::new(user.id, Product::KUMORI, "premium"))
        .await?;
    println!("current kumori tier: {} ({})", premium.tier, premium.status);
    let refused = repos
        .subscriptions
        .upsert_current(SubscriptionUpsert::new(user.id, Product::KUMORI, "platinum"))
        .await;
    if let Err(e) = refused {
        println!("tier outside the catalogue refused: {e}");
    }

    // Usage: idempotent by key, batched, summed for quota checks.
    let batch: Vec<UsageRecord> = (0..1_000)
        .map(|i| UsageRecord::new(user.id, Product::KUMORI, "images", 1, format!("example-img-{i}")))
        .collect();
    let new_rows = repos.usage.record_batch(&batch).await?;
    let again = repos.usage.record_batch(&batch).await?;
    println!("recorded {new_rows} new usage rows; the same batch again added {again}");
    let now = premium.updated_at;
    let month = Period::new(
        now - Duration::from_secs(30 * 24 * 3600),
        now + Duration::from_secs(60),
    )?;
    let used = repos
        .usage
        .sum(user.id, &Product::KUMORI, "images", month)
        .await?;
    println!(
        "images in the last 30 days: {used}; kumori DAU {} / MAU {}",
        repos.usage.daily_active_users(&Product::KUMORI).await?,
        repos.usage.monthly_active_users(&Product::KUMORI).await?
    );

    // Webhook de-duplication: a handler that fails forgets the event, so that the
    // provider's redelivery is handled, not skipped.
    let first = repos.events.first_time("stripe", "evt_example").await?;
    let second = repos.events.first_time("stripe", "evt_example").await?;
    println!("stripe evt_example first time: {first}, then: {second}");
    repos.events.forget("stripe", "evt_example").await?;
    let redelivered = repos.events.first_time("stripe", "evt_example").await?;
    println!("after forget (its handler failed), the redelivery is first: {redelivered}");

    if let Some(db) = database {
        db.close().await;
    }
    Ok(())
}
