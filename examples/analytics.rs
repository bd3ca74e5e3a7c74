//! Typed Arbor and Kumori analytics events: recorded locally by default, sent to
//! PostHog when `POSTHOG_API_KEY` is set (with `POSTHOG_HOST` etc., see
//! `platform::analytics` docs).
//!
//! ```sh
//! cargo run --example analytics                           # local, offline
//! POSTHOG_API_KEY=phc_... cargo run --example analytics   # PostHog
//! ```
#![allow(clippy::print_stdout, reason = "An example talks to its reader.")]

use std::sync::Arc;
use std::time::Duration;

use platform::analytics::{
    AgentCreated, AgentExecuted, Analytics, AnalyticsEvent, AnalyticsExt, DynAnalytics, Enrichment,
    FilterApplied, FlagState, ImageGenerated, ImageShared, LocalAnalytics, PostHogAnalyticsBuilder,
    SignUpMethod, StaticFlags, ToolUsed, UserSignedUp, UserTraits, UserUpgraded,
};
use platform::{EnvMap, Product};

#[tokio::main]
async fn main() -> platform::Result<()> {
    let env = EnvMap::from_env();
    let local = LocalAnalytics::builder()
        .with_enrichment(Enrichment::new("development", env!("CARGO_PKG_VERSION")))
        .with_flags(
            StaticFlags::new()
                .with_flag("new-editor", FlagState::enabled(true))
                .with_user_flag("user-kumori-1", "hd-export", FlagState::variant("4k")),
        )
        .build()?;
    let analytics: DynAnalytics = if env.optional("POSTHOG_API_KEY").is_some() {
        println!("sending to PostHog");
        Arc::new(PostHogAnalyticsBuilder::from_env_map(&env).build().await?)
    } else {
        println!("POSTHOG_API_KEY not set: recording locally");
        Arc::new(local.clone())
    };

    // Users of both products.
    analytics.track(
        "user-arbor-1",
        &UserSignedUp {
            product: Product::ARBOR,
            method: SignUpMethod::Github,
        },
    )?;
    analytics.identify(
        "user-arbor-1",
        UserTraits::new()
            .with_products([Product::ARBOR])
            .with_total_spend(0.0)
            .with_lifetime_value(0.0),
    )?;
    analytics.alias("user-arbor-1", "anon-7f3a")?;

    // Arbor: an agent is created, runs, and calls tools.
    analytics.track(
        "user-arbor-1",
        &AgentCreated {
            agent_id: "ag-1".into(),
            agent_type: "research".into(),
        },
    )?;
    analytics.track(
        "user-arbor-1",
        &ToolUsed {
            tool_name: "web_search".into(),
            success: true,
        },
    )?;
    analytics.track(
        "user-arbor-1",
        &AgentExecuted {
            agent_id: "ag-1".into(),
            duration: Duration::from_millis(2140),
        },
    )?;

    // Kumori: an image is generated, filtered and shared; the user upgrades.
    analytics.track(
        "user-kumori-1",
        &ImageGenerated {
            filter_id: "f-noir".into(),
            duration: Duration::from_millis(830),
        },
    )?;
    analytics.track(
        "user-kumori-1",
        &FilterApplied {
            filter_name: "noir".into(),
        },
    )?;
    analytics.track(
        "user-kumori-1",
        &ImageShared {
            platform: "instagram".into(),
        },
    )?;
    analytics.track(
        "user-kumori-1",
        &UserUpgraded {
            product: Product::KUMORI,
            from_tier: "free".into(),
            to_tier: "premium".into(),
        },
    )?;

    // A billing-grade event, confirmed before moving on.
    let usage = AnalyticsEvent::new("api_call.metered", "user-arbor-1")?
        .with_product(Product::ARBOR)
        .with_property("calls", 3)?;
    match analytics.capture_now(usage).await {
        Ok(()) => println!("metered usage confirmed"),
        Err(e) => println!("metered usage not confirmed: {e}"),
    }

    match analytics.flags("user-kumori-1").await {
        Ok(flags) => println!(
            "flags for user-kumori-1: new-editor={} hd-export={:?}",
            flags.is_enabled("new-editor"),
            flags.variant("hd-export")
        ),
        Err(e) => println!("flags unavailable: {e}"),
    }

    let report = analytics.shutdown(Duration::from_secs(10)).await;
    println!("analytics: {report}");
    if env.optional("POSTHOG_API_KEY").is_none() {
        for event in local.events() {
            println!(
                "  {:<18} {:<14} product={}",
                event.name(),
                event.distinct_id(),
                event.product().map_or("-", |p| p.as_str())
            );
        }
    }
    Ok(())
}
