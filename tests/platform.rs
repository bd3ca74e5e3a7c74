//! The facade: local and configured construction, product scoping, every service
//! reachable through the platform, health and shutdown.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::time::Duration;

use platform::analytics::{AgentCreated, ProductEvent};
use platform::email::templates::Welcome;
use platform::queue::{JobError, NewJob, handler_fn};
use platform::storage::PutOptions;
use platform::storage::bytes::Bytes;
use platform::{Backend, ErrorKind, Mode, Platform, Product};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Starts a worker on `email` whose jobs never end, enqueues one through Arbor's
/// context and returns once it runs.
async fn run_a_job_that_never_ends(platform: &Platform) -> platform::ProductContext {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    platform
        .start_worker(
            "email",
            handler_fn(move |_| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(());
                    std::future::pending::<()>().await;
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    let arbor = platform.product(&Product::ARBOR).unwrap();
    arbor
        .enqueue("email", NewJob::json(&serde_json::json!({})).unwrap())
        .await
        .unwrap();
    rx.recv().await.unwrap();
    arbor
}

/// A worker with a job still running at the shutdown deadline (cancelled and put back
/// on its queue) makes the shutdown not clean, and the shutdown ends at its deadline.
#[tokio::test]
async fn a_shutdown_that_cuts_off_a_job_is_not_clean() {
    let platform = Platform::local().await.unwrap();
    run_a_job_that_never_ends(&platform).await;
    let report = platform.shutdown(Duration::from_millis(50)).await;
    let worker = report.workers[0].as_ref().unwrap();
    assert!(!worker.drained && worker.requeued == 1, "{worker:?}");
    assert!(!report.is_clean(), "{report:?}");
}

/// A shutdown made while another drains waits for it to end: it must not close
/// analytics and the database pools under a job still running.
#[tokio::test]
async fn a_concurrent_shutdown_waits_for_the_first() {
    let platform = Platform::local().await.unwrap();
    run_a_job_that_never_ends(&platform).await;
    let ended = std::sync::Mutex::new(Vec::new());
    let shutdown = |name: &'static str, timeout| {
        let (platform, ended) = (&platform, &ended);
        async move {
            let report = platform.shutdown(timeout).await;
            ended.lock().unwrap().push(name);
            report
        }
    };
    let (first, second) = tokio::join!(
        shutdown("first", Duration::from_millis(300)),
        shutdown("second", Duration::from_secs(5)),
    );
    assert_eq!(*ended.lock().unwrap(), ["first", "second"]);
    assert_eq!(first.workers.len(), 1, "{first:?}");
    assert!(second.workers.is_empty(), "{second:?}");
}

/// A shutdown waiting for another gives up at its own timeout, with an empty report.
#[tokio::test]
async fn a_concurrent_shutdown_waits_no_longer_than_its_timeout() {
    let platform = Platform::local().await.unwrap();
    run_a_job_that_never_ends(&platform).await;
    let first = platform.shutdown(Duration::from_secs(3600));
    tokio::pin!(first);
    // Polled once: it holds the shutdown and drains the worker (its job never ends).
    tokio::select! {
        biased;
        report = first.as_mut() => panic!("the first shutdown ended at once: {report:?}"),
        () = std::future::ready(()) => {}
    }
    let second = tokio::time::timeout(
        Duration::from_secs(60),
        platform.shutdown(Duration::from_millis(100)),
    )
    .await
    .expect("the second shutdown waited past its timeout");
    assert!(
        second.workers.is_empty() && second.analytics.is_none(),
        "{second:?}"
    );
}

/// Once shutdown has begun no worker starts: it would never be drained.
#[tokio::test]
async fn no_worker_starts_after_shutdown() {
    let platform = Platform::local().await.unwrap();
    assert!(platform.shutdown(Duration::from_secs(5)).await.is_clean());
    let err = platform
        .start_worker("email", handler_fn(|_| async { Ok(()) }))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.message().contains("shutting down"), "{err}");
}

/// A product event of the app's own, with no product of its own: a product context
/// tags it.
#[derive(serde::Serialize)]
struct ReportExported {
    format: &'static str,
}

impl ProductEvent for ReportExported {
    const NAME: &'static str = "report.exported";
    fn product(&self) -> Option<Product> {
        None
    }
}

/// Shutdown sends the analytics events captured before it while the workers drain: a
/// job still running at the deadline leaves PostHog the time to take them (they used
/// to wait for the drain, and got no time). The event, tracked through Arbor's
/// context, carries Arbor.
#[tokio::test]
async fn a_shutdown_delivers_analytics_while_a_job_is_cut_off() {
    let posthog = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/batch/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"status": "Ok"})))
        .mount(&posthog)
        .await;
    let platform = Platform::from_iter(env(&[
        ("POSTHOG_API_KEY", "phc_test"),
        ("POSTHOG_HOST", &posthog.uri()),
    ]))
    .await
    .unwrap();
    let arbor = run_a_job_that_never_ends(&platform).await;
    arbor.track("user_1", &ReportExported { format: "csv" }).unwrap();
    let report = platform.shutdown(Duration::from_millis(500)).await;
    assert_eq!(report.workers[0].as_ref().unwrap().requeued, 1, "{report:?}");
    let analytics = report.analytics.unwrap();
    assert_eq!((analytics.delivered, analytics.pending), (1, 0), "{analytics:?}");
    let sent: Vec<serde_json::Value> = posthog
        .received_requests()
        .await
        .unwrap()
        .iter()
        .flat_map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            body["batch"].as_array().unwrap().clone()
        })
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["event"], "report.exported");
    assert_eq!(sent[0]["properties"]["product"], "arbor", "{sent:?}");
    assert_eq!(sent[0]["properties"]["format"], "csv");
}

/// `Duration::MAX` ("no limit") is a valid shutdown timeout: nothing overflows.
#[tokio::test]
async fn a_shutdown_without_a_limit_completes() {
    let platform = Platform::local().await.unwrap();
    platform
        .product(&Product::ARBOR)
        .unwrap()
        .track("user_1", &ReportExported { format: "pdf" })
        .unwrap();
    let report = platform.shutdown(Duration::MAX).await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.analytics.unwrap().delivered, 1);
}

#[tokio::test]
async fn local_platform_serves_the_seed_products_on_local_backends() {
    let platform = Platform::local().await.unwrap();
    assert_eq!(platform.settings().mode, Mode::Local);
    for (service, backend) in platform.backends() {
        assert_eq!(backend, Backend::Local, "{service}");
    }
    let arbor = platform.product(&Product::ARBOR).unwrap();
    assert_eq!(arbor.product(), &Product::ARBOR);
    assert_eq!(arbor.config().display_name, "Arbor");
    let err = platform.product(&Product::new("mori").unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(platform.health().await.is_healthy());
}

#[tokio::test]
async fn from_iter_reads_mode_environment_and_version() {
    let platform = Platform::from_iter(env(&[
        ("PLATFORM_MODE", "local"),
        ("PLATFORM_ENV", "staging"),
        ("PLATFORM_APP_VERSION", "9.9.9"),
        // Ignored in local mode: no provider is contacted.
        ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
    ]))
    .await
    .unwrap();
    assert_eq!(platform.settings().mode, Mode::Local);
    assert_eq!(platform.settings().environment, "staging");
    assert_eq!(platform.settings().app_version, "9.9.9");
    assert!(platform.database().is_none());
    let configured = Platform::from_iter(env(&[])).await.unwrap();
    assert_eq!(configured.settings().mode, Mode::Configured);
    assert!(configured.backends().iter().all(|(_, b)| *b == Backend::Local));
}

#[tokio::test]
async fn invalid_variables_are_named() {
    let err = Platform::from_iter(env(&[("PLATFORM_MODE", "cloudy")]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("PLATFORM_MODE"), "{err}");
    let err = Platform::from_iter(env(&[("PLATFORM_CATALOG", "/nonexistent/catalog.toml")]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("/nonexistent/catalog.toml"), "{err}");
    // A catalogue that cannot be parsed is named too, with the variable.
    let path = std::env::temp_dir().join(format!("platform-bad-catalog-{}.toml", std::process::id()));
    std::fs::write(&path, "[products.arbor]\nnot toml at all").unwrap();
    let err = Platform::from_iter(env(&[("PLATFORM_CATALOG", path.to_str().unwrap())]))
        .await
        .unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("PLATFORM_CATALOG"), "{err}");
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    let err = Platform::from_iter(env(&[("DATABASE_URL", "mysql://x")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("DATABASE_URL"), "{err}");
}

/// A provider configured by half (a key pair missing its secret, a PostHog host
/// without its key) is a `Config` error naming what is missing, never a silent local
/// fallback that would keep production data on the machine.
#[tokio::test]
async fn a_half_configured_provider_is_an_error_naming_what_is_missing() {
    const ENDPOINT: (&str, &str) = ("R2_ENDPOINT", "http://127.0.0.1:9");
    for (vars, missing) in [
        (vec![ENDPOINT, ("R2_ACCESS_KEY_ID", "ak")], "R2_SECRET_ACCESS_KEY"),
        (vec![ENDPOINT, ("R2_SECRET_ACCESS_KEY", "sk")], "R2_ACCESS_KEY_ID"),
        (
            vec![
                ENDPOINT,
                ("R2_ACCESS_KEY_ID", "ak"),
                ("AWS_SECRET_ACCESS_KEY", "sk"),
            ],
            "R2_SECRET_ACCESS_KEY",
        ),
        (vec![ENDPOINT], "R2_ACCESS_KEY_ID"),
        (
            vec![("R2_ACCESS_KEY_ID", "ak"), ("R2_SECRET_ACCESS_KEY", "sk")],
            "R2_ENDPOINT",
        ),
        (
            vec![
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
                ("AWS_ACCESS_KEY_ID", "ak"),
            ],
            "AWS_SECRET_ACCESS_KEY",
        ),
        (
            vec![("POSTHOG_HOST", "https://eu.i.posthog.com")],
            "POSTHOG_API_KEY",
        ),
    ] {
        let err = Platform::from_iter(env(&vars))
            .await
            .expect_err(&format!("{vars:?}"));
        assert_eq!(err.kind(), ErrorKind::Config, "{vars:?}");
        assert!(err.to_string().contains(missing), "{vars:?}: {err}");
    }
}

/// Production mode names every missing provider variable at once, not one per deploy.
#[tokio::test]
async fn production_mode_names_every_missing_provider_variable() {
    let err = Platform::from_iter(env(&[("PLATFORM_MODE", "production")]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    for var in [
        "POSTHOG_API_KEY",
        "DATABASE_URL",
        "REDIS_URL",
        "RESEND_API_KEY",
        "R2_ACCESS_KEY_ID",
    ] {
        assert!(err.to_string().contains(var), "{var}: {err}");
    }
    let err = Platform::from_iter(env(&[
        ("PLATFORM_MODE", "production"),
        ("POSTHOG_API_KEY", "phc_x"),
        ("RESEND_API_KEY", "re_x"),
    ]))
    .await
    .unwrap_err();
    assert!(!err.to_string().contains("POSTHOG_API_KEY"), "{err}");
    assert!(
        err.to_string()
            .contains("DATABASE_URL, REDIS_URL, R2_ACCESS_KEY_ID"),
        "{err}"
    );
}

/// In production mode a database that does not answer fails start-up, not the first
/// request (its pools connect lazily).
#[tokio::test]
async fn production_mode_checks_the_database_at_start_up() {
    let err = Platform::from_iter(env(&[
        ("PLATFORM_MODE", "production"),
        ("POSTHOG_API_KEY", "phc_test"),
        ("DATABASE_URL", "postgres://postgres:s3cretpw@127.0.0.1:1/none"),
        ("DATABASE_ACQUIRE_TIMEOUT_SECS", "2"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("RESEND_API_KEY", "re_test"),
        ("EMAIL_DOMAIN", "mail.example.org"),
        ("R2_ACCESS_KEY_ID", "id"),
        ("R2_SECRET_ACCESS_KEY", "secret"),
        ("R2_ENDPOINT", "http://127.0.0.1:1"),
    ]))
    .await
    .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{err}"
    );
    assert!(err.message().contains("checks the database at start-up"), "{err}");
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("postgres://") && !shown.contains("s3cretpw"),
        "no URL nor password: {err:?}"
    );
}

#[tokio::test]
async fn configured_mode_uses_postgres_and_redis_when_their_urls_are_set() {
    let db_url = std::env::var("PLATFORM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    let platform = Platform::from_iter(env(&[
        ("DATABASE_URL", &db_url),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        (
            "PLATFORM_QUEUE_PREFIX",
            &format!("platform-facade-test-{}", std::process::id()),
        ),
    ]))
    .await
    .unwrap();
    let backends = platform.backends();
    assert!(
        backends.contains(&("db", Backend::Provider("postgres"))),
        "{backends:?}"
    );
    assert!(
        backends.contains(&("queue", Backend::Provider("redis"))),
        "{backends:?}"
    );
    let health = platform.health().await;
    assert!(health.is_healthy(), "{health:?} (run scripts/services.sh)");
    let report = platform.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");
}

/// With Resend configured, senders left on the placeholder domain (which Resend
/// refuses to send from) fail start-up naming what to set, not every send later.
#[tokio::test]
async fn resend_without_a_sender_domain_is_a_config_error() {
    let err = Platform::from_iter(env(&[
        ("PLATFORM_MODE", "configured"),
        ("RESEND_API_KEY", "re_test_123"),
        ("EMAIL_FROM_ARBOR", "Arbor <hi@arbor.ai>"),
    ]))
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.message().contains("EMAIL_DOMAIN") && err.message().contains("EMAIL_FROM_KUMORI"),
        "{err}"
    );
    assert!(!err.message().contains("re_test_123"), "{err}");
    let platform = Platform::from_iter(env(&[
        ("PLATFORM_MODE", "configured"),
        ("RESEND_API_KEY", "re_test_123"),
        ("EMAIL_DOMAIN", "mail.example.org"),
    ]))
    .await
    .unwrap();
    assert!(
        platform
            .backends()
            .contains(&("email", Backend::Provider("resend")))
    );
    platform.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_third_product_is_added_by_configuration() {
    let dir = std::env::temp_dir().join(format!("platform-catalog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("catalog.toml");
    std::fs::write(
        &path,
        r#"
[products.mori]
display_name = "Mori"
tiers = [{ name = "basic" }, { name = "plus" }]
"#,
    )
    .unwrap();
    let platform = Platform::from_iter(env(&[
        ("PLATFORM_MODE", "local"),
        ("PLATFORM_CATALOG", path.to_str().unwrap()),
        ("PLATFORM_QUEUES", "mori-export"),
    ]))
    .await
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mori = platform.product(&Product::new("mori").unwrap()).unwrap();
    assert_eq!(mori.config().tiers.len(), 2);
    assert_eq!(mori.sender().from, "Mori <noreply@mori.example.com>");
    // Its bucket, by convention, usable at once.
    assert_eq!(mori.bucket().unwrap(), "mori-files");
    let stored = platform
        .storage()
        .store()
        .put(
            "mori-files",
            "notes/1.txt",
            Bytes::from_static(b"hi"),
            PutOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(stored.size, 2);
    // Its queue, named in the environment.
    let job = mori
        .enqueue("mori-export", NewJob::new(serde_json::json!({"note": 1})))
        .await
        .unwrap();
    assert!(job.created);
    // The seed's products stay beside it.
    assert_eq!(
        platform.product(&Product::ARBOR).unwrap().bucket().unwrap(),
        "arbor-artifacts"
    );
    let report = platform.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test]
async fn product_context_tags_events_jobs_objects_and_email() {
    let platform = Platform::local().await.unwrap();
    let arbor = platform.product(&Product::ARBOR).unwrap();

    // Analytics: the event carries the product.
    arbor
        .track(
            "user_1",
            &AgentCreated {
                agent_id: "a1".into(),
                agent_type: "research".into(),
            },
        )
        .unwrap();
    let report = platform.analytics().flush(Duration::from_secs(5)).await;
    assert_eq!(report.delivered, 1, "{report:?}");

    // Queue: the job's metadata carries the product, and a worker started through
    // the platform is drained at shutdown.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    platform
        .start_worker(
            "email",
            handler_fn(move |ctx| {
                let tx = tx.clone();
                async move {
                    tx.send(ctx.meta().product.clone())
                        .map_err(|e| JobError::permanent(e.to_string()))?;
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    arbor
        .enqueue(
            "email",
            NewJob::json(&serde_json::json!({"to": "ada@example.com"})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rx.recv().await.unwrap(), Some(Product::ARBOR));

    // Storage: the product's bucket, and the product recorded in the object metadata.
    let bucket = arbor.bucket().unwrap().to_owned();
    assert_eq!(bucket, "arbor-artifacts");
    let meta = platform
        .storage()
        .upload(
            &bucket,
            "runs/1.json",
            Bytes::from_static(b"{}"),
            PutOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(meta.metadata.get("product").map(String::as_str), Some("arbor"));

    // Email: sent from the product's sender into the local outbox.
    let id = arbor
        .send_email(
            "ada@example.com",
            Some("user_1"),
            &Welcome::new("Ada", "Arbor", "https://arbor.example.com/start"),
        )
        .await
        .unwrap();
    assert!(!id.as_str().is_empty());
    assert!(
        arbor.sender().from.contains("noreply@arbor."),
        "{}",
        arbor.sender().from
    );

    // DB: in-memory repositories behind the same traits; no pool without Postgres.
    let user = platform
        .repositories()
        .users
        .get_or_create_user("clerk_1", "ada@example.com")
        .await
        .unwrap();
    assert_eq!(user.email, "ada@example.com");
    assert_eq!(arbor.db_pool().unwrap_err().kind(), ErrorKind::Unsupported);

    let report = platform.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.workers.len(), 1);
}
