//! The behaviour suite against the in-memory repositories (through `Arc<dyn …>`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use platform_core::{ManualClock, ProductCatalog};
use platform_db::Repositories;
use platform_db::conformance::{Harness, start_time};

async fn harness() -> (Harness, ()) {
    let clock = ManualClock::new(start_time());
    let catalog = ProductCatalog::default();
    let repos = Repositories::in_memory(catalog.clone(), clock.shared());
    (Harness::new(repos, clock, catalog), ())
}

platform_db::repository_conformance!(harness);

#[tokio::test]
async fn debug_shows_counts_not_contents() {
    let (h, ()) = harness().await;
    h.repos
        .users
        .get_or_create_user("user_dbg", "secret-person@example.com")
        .await
        .unwrap();
    let shown = format!("{:?}", h.repos.users);
    assert!(shown.contains("users: 1"), "{shown}");
    assert!(!shown.contains("secret-person"), "{shown}");
}
