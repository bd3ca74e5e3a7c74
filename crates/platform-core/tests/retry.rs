//! RetryPolicy on tokio's paused clock: no real sleeping, exact virtual time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use platform_core::{Error, ErrorKind, Idempotency, RetryPolicy};
use tokio::sync::Mutex;
use tokio::time::Instant;

fn unavailable() -> Error {
    Error::new(ErrorKind::Unavailable, "down")
}

/// Runs `policy` over an operation that fails `failures` times with `error()`, then
/// succeeds; returns the result, the attempts made and the virtual time between them.
async fn run(
    policy: &RetryPolicy,
    idempotency: Idempotency,
    failures: u32,
    error: fn() -> Error,
) -> (Result<u32, Error>, u32, Vec<Duration>) {
    let calls = Arc::new(AtomicU32::new(0));
    let stamps = Arc::new(Mutex::new(Vec::new()));
    let result = policy
        .retry(&idempotency, |attempt| {
            let calls = calls.clone();
            let stamps = stamps.clone();
            async move {
                stamps.lock().await.push(Instant::now());
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                assert_eq!(n, attempt, "attempt numbers are 1-based and consecutive");
                if n <= failures { Err(error()) } else { Ok(n) }
            }
        })
        .await;
    let stamps = stamps.lock().await;
    let gaps = stamps.windows(2).map(|w| w[1] - w[0]).collect();
    (result, calls.load(Ordering::SeqCst), gaps)
}

#[tokio::test(start_paused = true)]
async fn succeeds_after_transient_failures() {
    let policy = RetryPolicy::default().with_max_attempts(5);
    let (result, calls, _) = run(&policy, Idempotency::Idempotent, 2, unavailable).await;
    assert_eq!(result.unwrap(), 3);
    assert_eq!(calls, 3);
}

#[tokio::test(start_paused = true)]
async fn gives_up_at_once_on_a_non_retryable_error() {
    let policy = RetryPolicy::default().with_max_attempts(5);
    let (result, calls, _) = run(&policy, Idempotency::Idempotent, 3, || {
        Error::new(ErrorKind::InvalidInput, "bad email")
    })
    .await;
    assert_eq!(result.unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(calls, 1);
}

#[tokio::test(start_paused = true)]
async fn returns_the_last_error_after_max_attempts() {
    let policy = RetryPolicy::default().with_max_attempts(3);
    let (result, calls, _) = run(&policy, Idempotency::Idempotent, 10, unavailable).await;
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Unavailable);
    assert_eq!(calls, 3);
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_without_jitter() {
    let policy = RetryPolicy::default()
        .with_max_attempts(5)
        .with_initial_backoff(Duration::from_millis(100))
        .with_max_backoff(Duration::from_millis(300))
        .with_jitter(false);
    let (_, calls, gaps) = run(&policy, Idempotency::Idempotent, 10, unavailable).await;
    assert_eq!(calls, 5);
    let ms: Vec<u128> = gaps.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, vec![100, 200, 300, 300]);
}

#[tokio::test(start_paused = true)]
async fn full_jitter_stays_under_the_cap() {
    let policy = RetryPolicy::default()
        .with_max_attempts(8)
        .with_initial_backoff(Duration::from_millis(100))
        .with_max_backoff(Duration::from_secs(1))
        .with_max_elapsed(None);
    for _ in 0..20 {
        let (_, _, gaps) = run(&policy, Idempotency::Idempotent, 10, unavailable).await;
        for (i, gap) in gaps.iter().enumerate() {
            let cap = policy.backoff_cap(i as u32 + 1);
            assert!(*gap <= cap, "gap {gap:?} above cap {cap:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn honours_retry_after() {
    let policy = RetryPolicy::default()
        .with_initial_backoff(Duration::from_millis(1))
        .with_max_elapsed(None);
    let (result, calls, gaps) = run(&policy, Idempotency::Idempotent, 1, || {
        Error::new(ErrorKind::RateLimited, "slow down").with_retry_after(Duration::from_secs(7))
    })
    .await;
    assert!(result.is_ok());
    assert_eq!(calls, 2);
    assert!(gaps[0] >= Duration::from_secs(7), "waited {:?}", gaps[0]);
}

#[tokio::test(start_paused = true)]
async fn gives_up_when_retry_after_exceeds_the_elapsed_budget() {
    let policy = RetryPolicy::default().with_max_elapsed(Some(Duration::from_secs(5)));
    let (result, calls, _) = run(&policy, Idempotency::Idempotent, 1, || {
        Error::new(ErrorKind::RateLimited, "slow down").with_retry_after(Duration::from_secs(60))
    })
    .await;
    assert_eq!(result.unwrap_err().kind(), ErrorKind::RateLimited);
    assert_eq!(calls, 1);
}

/// A `Retry-After` as large as a `Duration` can be is over the budget, not a panic.
#[tokio::test(start_paused = true)]
async fn a_retry_after_of_any_size_is_compared_with_the_budget() {
    let policy = RetryPolicy::default().with_max_elapsed(Some(Duration::from_secs(5)));
    let (result, calls, _) = run(&policy, Idempotency::Idempotent, 1, || {
        Error::new(ErrorKind::RateLimited, "slow down").with_retry_after(Duration::MAX)
    })
    .await;
    assert_eq!(result.unwrap_err().kind(), ErrorKind::RateLimited);
    assert_eq!(calls, 1);
}

/// Without a budget, a `Retry-After` longer than the policy waits for (a daily quota)
/// returns the error at once, carrying it; one within it is waited out.
#[tokio::test(start_paused = true)]
async fn a_retry_after_past_the_longest_wait_is_handed_back_not_waited_out() {
    let policy = RetryPolicy::default()
        .with_max_elapsed(None)
        .with_max_retry_after(Duration::from_secs(30));
    let day = Duration::from_secs(86_400);
    let started = Instant::now();
    let (result, calls, _) = run(&policy, Idempotency::Idempotent, 1, || {
        Error::new(ErrorKind::RateLimited, "daily quota").with_retry_after(Duration::from_secs(86_400))
    })
    .await;
    assert_eq!(calls, 1);
    assert_eq!(result.unwrap_err().retry_after(), Some(day));
    assert_eq!(started.elapsed(), Duration::ZERO, "no wait");
    let (result, calls, gaps) = run(&policy, Idempotency::Idempotent, 1, || {
        Error::new(ErrorKind::RateLimited, "slow down").with_retry_after(Duration::from_secs(30))
    })
    .await;
    assert!(result.is_ok());
    assert_eq!(calls, 2);
    assert!(gaps[0] >= Duration::from_secs(30), "waited {:?}", gaps[0]);
}

/// A zero initial backoff stays zero at any attempt (not the maximum once the
/// multiplier's power overflows).
#[test]
fn a_zero_initial_backoff_stays_zero() {
    let policy = RetryPolicy::default().with_initial_backoff(Duration::ZERO);
    for attempt in [1, 2, 1_100, u32::MAX] {
        assert_eq!(policy.backoff_cap(attempt), Duration::ZERO, "attempt {attempt}");
    }
}

#[tokio::test(start_paused = true)]
async fn never_retries_a_non_idempotent_call_without_a_key() {
    let policy = RetryPolicy::default().with_max_attempts(5);
    let (result, calls, _) = run(&policy, Idempotency::NonIdempotent, 1, unavailable).await;
    assert!(result.is_err());
    assert_eq!(calls, 1);
    let (result, calls, _) = run(&policy, Idempotency::Key(String::new()), 1, unavailable).await;
    assert!(result.is_err(), "an empty key is no key");
    assert_eq!(calls, 1);
    let (result, calls, _) = run(&policy, Idempotency::Key("signup-42".into()), 1, unavailable).await;
    assert_eq!(result.unwrap(), 2);
    assert_eq!(calls, 2);
}

#[tokio::test(start_paused = true)]
async fn never_policy_tries_once() {
    let (result, calls, _) = run(&RetryPolicy::never(), Idempotency::Idempotent, 1, unavailable).await;
    assert!(result.is_err());
    assert_eq!(calls, 1);
}

/// `retry_if` retries a foreign error type only when the predicate says so, with the
/// policy's backoff, and hands the last error back unchanged.
#[tokio::test(start_paused = true)]
async fn retry_if_retries_only_what_the_predicate_accepts() {
    let policy = RetryPolicy::default()
        .with_max_attempts(5)
        .with_initial_backoff(Duration::from_millis(100))
        .with_jitter(false);
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let result: Result<u32, std::io::Error> = policy
        .retry_if(
            |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionRefused,
            |_| {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    match n {
                        1 | 2 => Err(std::io::ErrorKind::ConnectionRefused.into()),
                        _ => Err(std::io::Error::other("bad reply")),
                    }
                }
            },
        )
        .await;
    let err = result.unwrap_err();
    assert_eq!(err.to_string(), "bad reply", "the last error, unchanged");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "two refusals retried, then stopped"
    );
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(300),
        "backoff 100 + 200 ms"
    );
}

/// An uncapped backoff (`Duration::MAX`) is a valid setting: the caps saturate at it
/// instead of panicking, whatever the attempt.
#[test]
fn an_uncapped_backoff_saturates_instead_of_panicking() {
    let policy = RetryPolicy::default()
        .with_initial_backoff(Duration::MAX)
        .with_max_backoff(Duration::MAX);
    for attempt in [1, 2, 64, u32::MAX] {
        assert_eq!(policy.backoff_cap(attempt), Duration::MAX, "attempt {attempt}");
    }
    let growing = RetryPolicy::default()
        .with_initial_backoff(Duration::from_secs(1))
        .with_max_backoff(Duration::MAX);
    assert_eq!(growing.backoff_cap(3), Duration::from_secs(4));
    assert_eq!(
        growing.backoff_cap(100),
        Duration::MAX,
        "2^99 s is past Duration::MAX"
    );
}

/// The retry loop itself waits out such a backoff (jittered or not) and retries.
#[tokio::test(start_paused = true)]
async fn an_uncapped_backoff_is_waited_out() {
    for jitter in [false, true] {
        let policy = RetryPolicy::default()
            .with_max_attempts(2)
            .with_initial_backoff(Duration::MAX)
            .with_max_backoff(Duration::MAX)
            .with_max_elapsed(None)
            .with_jitter(jitter);
        let (result, calls, gaps) = run(&policy, Idempotency::Idempotent, 1, unavailable).await;
        assert_eq!(result.unwrap(), 2, "jitter {jitter}");
        assert_eq!((calls, gaps.len()), (2, 1));
    }
}
