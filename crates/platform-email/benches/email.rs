//! Email benchmarks, each against a baseline measured in the same run.
//!
//! - `render/<template>`: rendering each template (askama, subject + HTML + text, with
//!   link checks) vs `render_baseline/<template>`: the same text built with `format!`
//!   and hand-called HTML escaping (no validation) — the cost floor.
//! - `batch_10k/resend_adapter`: sends per second of a 10,000-message batch through
//!   `ResendMailer` against a local wiremock answering like `POST /emails/batch`
//!   (the setup asserts exactly ceil(10000/100) = 100 HTTP calls) vs
//!   `batch_10k/raw_reqwest`: the same 100 chunk bodies, pre-serialized, posted with a
//!   bare `reqwest::Client` — so the ratio is the adapter's overhead (validation,
//!   JSON encoding, idempotency keys, retry wrapper, tracing span, id decoding).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "bench setup fails loudly; criterion's macros generate undocumented items"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use platform_core::RetryPolicy;
use platform_email::templates::{
    AgentComplete, GenerationComplete, NewFollower, PasswordReset, QuotaWarning, Welcome, escape_html,
};
use platform_email::{BATCH_CHUNK_SIZE, Batch, Email, EmailTemplate, Mailer, ResendMailerBuilder};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const MESSAGES: usize = 10_000;

type Baseline = Box<dyn Fn() -> (String, String, String)>;

fn templates() -> Vec<(Box<dyn EmailTemplate>, Baseline)> {
    let name = "Ada <Lovelace> & co";
    let e = |s: &str| escape_html(s);
    vec![
        (
            Box::new(Welcome::new(name, "Arbor", "https://arbor.example.com/dashboard")),
            Box::new(move || {
                (
                    "Welcome to our platform!".to_owned(),
                    format!(
                        "<!DOCTYPE html><html><body><h1>Welcome to {}, {}!</h1><p>Your account is ready.</p><p><a href=\"{}\">Open your dashboard</a></p></body></html>",
                        e("Arbor"),
                        e(name),
                        e("https://arbor.example.com/dashboard")
                    ),
                    format!("Welcome to Arbor, {name}!\n\nhttps://arbor.example.com/dashboard\n"),
                )
            }),
        ),
        (
            Box::new(PasswordReset::new(
                name,
                "https://arbor.example.com/reset?t=abc&u=1",
                30,
            )),
            Box::new(move || {
                (
                    "Reset your password".to_owned(),
                    format!(
                        "<!DOCTYPE html><html><body><p>Hi {}</p><p><a href=\"{}\">Choose a new password</a></p><p>Expires in {} minutes.</p></body></html>",
                        e(name),
                        e("https://arbor.example.com/reset?t=abc&u=1"),
                        30
                    ),
                    format!(
                        "Hi {name}\n\nhttps://arbor.example.com/reset?t=abc&u=1\n\nExpires in 30 minutes.\n"
                    ),
                )
            }),
        ),
        (
            Box::new(AgentComplete::new(
                name,
                "Researcher",
                "Found 3 <b>sources</b>",
                "https://arbor.example.com/r/1",
            )),
            Box::new(move || {
                (
                    "Your agent has finished processing".to_owned(),
                    format!(
                        "<!DOCTYPE html><html><body><p>Hi {}, your agent <strong>{}</strong> is done.</p><blockquote>{}</blockquote><a href=\"{}\">View</a></body></html>",
                        e(name),
                        e("Researcher"),
                        e("Found 3 <b>sources</b>"),
                        e("https://arbor.example.com/r/1")
                    ),
                    format!(
                        "Hi {name}, Researcher is done.\n\nFound 3 <b>sources</b>\nhttps://arbor.example.com/r/1\n"
                    ),
                )
            }),
        ),
        (
            Box::new(QuotaWarning::new(
                name,
                850,
                1000,
                "user",
                "https://arbor.example.com/billing",
            )),
            Box::new(move || {
                (
                    "API quota warning".to_owned(),
                    format!(
                        "<!DOCTYPE html><html><body><p>Hi {}, you used <strong>{}%</strong> of {} ({} of {}).</p><a href=\"{}\">Upgrade</a></body></html>",
                        e(name),
                        85,
                        e("user"),
                        850,
                        1000,
                        e("https://arbor.example.com/billing")
                    ),
                    format!(
                        "Hi {name}, you used 85% of user (850 of 1000).\nhttps://arbor.example.com/billing\n"
                    ),
                )
            }),
        ),
        (
            Box::new(GenerationComplete::new(
                name,
                "a fox in the snow",
                "https://cdn.kumori.example.com/i/1.png",
                "https://kumori.example.com/g/1",
            )),
            Box::new(move || {
                (
                    "Your image is ready!".to_owned(),
                    format!(
                        "<!DOCTYPE html><html><body><p>Hi {}</p><blockquote>{}</blockquote><a href=\"{}\"><img src=\"{}\" alt=\"{}\"></a></body></html>",
                        e(name),
                        e("a fox in the snow"),
                        e("https://kumori.example.com/g/1"),
                        e("https://cdn.kumori.example.com/i/1.png"),
                        e("a fox in the snow")
                    ),
                    format!("Hi {name}\n\nPrompt: a fox in the snow\nhttps://kumori.example.com/g/1\n"),
                )
            }),
        ),
        (
            Box::new(NewFollower::new(name, "Bob", "https://kumori.example.com/u/bob")),
            Box::new(move || {
                (
                    "You have a new follower".to_owned(),
                    format!(
                        "<!DOCTYPE html><html><body><p>Hi {}, <strong>{}</strong> started following you.</p><a href=\"{}\">Profile</a></body></html>",
                        e(name),
                        e("Bob"),
                        e("https://kumori.example.com/u/bob")
                    ),
                    format!("Hi {name}, Bob started following you.\nhttps://kumori.example.com/u/bob\n"),
                )
            }),
        ),
    ]
}

fn bench_render(c: &mut Criterion) {
    let mut group = c.benchmark_group("render");
    group.throughput(Throughput::Elements(1));
    for (template, baseline) in templates() {
        let name = template.name();
        group.bench_function(format!("askama/{name}"), |b| {
            b.iter(|| black_box(template.render().unwrap()))
        });
        group.bench_function(format!("format_baseline/{name}"), |b| {
            b.iter(|| black_box(baseline()))
        });
    }
    group.finish();
}

/// Answers `POST /emails/batch` as Resend does, counting the calls.
struct CountingBatch {
    calls: Arc<AtomicUsize>,
}

impl Respond for CountingBatch {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let items: Vec<Value> = serde_json::from_slice(&request.body).unwrap();
        let data: Vec<Value> = (0..items.len())
            .map(|i| json!({ "id": format!("4ef9a417-02e9-4d39-ad75-{i:012}") }))
            .collect();
        ResponseTemplate::new(200).set_body_json(json!({ "data": data }))
    }
}

fn bench_batch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let server = rt.block_on(async {
        let server = MockServer::builder().disable_request_recording().start().await;
        Mock::given(wiremock::matchers::method("POST"))
            .and(wiremock::matchers::path("/emails/batch"))
            .respond_with(CountingBatch { calls: calls.clone() })
            .mount(&server)
            .await;
        server
    });
    let mailer = ResendMailerBuilder::new()
        .with_api_key("re_bench_key")
        .with_base_url(server.uri())
        .with_requests_per_second(0)
        .with_retry_policy(RetryPolicy::never())
        .build()
        .unwrap();
    let emails: Vec<Email> = (0..MESSAGES)
        .map(|i| {
            Email::new(
                "Arbor <noreply@arbor.example.com>",
                [format!("user{i}@example.com")],
                "API quota warning",
            )
            .with_text(format!("Hi user {i}, you used 85% of your quota."))
            .with_html(format!(
                "<p>Hi user {i}, you used <strong>85%</strong> of your quota.</p>"
            ))
            .with_entity_ref(format!("user_{i}"))
            .with_tag("template", "quota_warning")
        })
        .collect();
    let batch = Batch::new(emails.clone());

    // Setup check: one batch of 10,000 is exactly ceil(n/100) HTTP calls, all sent.
    let report = rt.block_on(mailer.send_batch(&batch)).unwrap();
    assert_eq!(report.sent_count(), MESSAGES);
    let expected_calls = MESSAGES.div_ceil(BATCH_CHUNK_SIZE);
    assert_eq!(
        calls.swap(0, Ordering::SeqCst),
        expected_calls,
        "HTTP calls = ceil(n/100)"
    );

    // Baseline: the same chunks, serialized up front, posted with bare reqwest.
    let bodies: Vec<Vec<u8>> = emails
        .chunks(BATCH_CHUNK_SIZE)
        .map(|chunk| {
            let wire: Vec<Value> = chunk
                .iter()
                .map(|e| {
                    json!({
                        "from": e.from, "to": e.to, "subject": e.subject, "html": e.html,
                        "text": e.text, "headers": e.headers,
                        "tags": [{"name": "template", "value": "quota_warning"}],
                    })
                })
                .collect();
            serde_json::to_vec(&wire).unwrap()
        })
        .collect();
    let client = reqwest::Client::new();
    let url = format!("{}/emails/batch", server.uri());
    let raw = || async {
        let mut ids = 0;
        for (i, body) in bodies.iter().enumerate() {
            let resp = client
                .post(&url)
                .bearer_auth("re_bench_key")
                .header("Idempotency-Key", format!("bench/{i}"))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let v: Value = resp.json().await.unwrap();
            ids += v["data"].as_array().unwrap().len();
        }
        ids
    };
    assert_eq!(rt.block_on(raw()), MESSAGES);
    assert_eq!(calls.swap(0, Ordering::SeqCst), expected_calls);

    let mut group = c.benchmark_group("batch_10k");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    group.sample_size(10);
    group.bench_function("resend_adapter", |b| {
        b.iter(|| {
            let report = rt.block_on(mailer.send_batch(&batch)).unwrap();
            assert!(report.is_complete());
            black_box(report)
        })
    });
    group.bench_function("raw_reqwest", |b| b.iter(|| black_box(rt.block_on(raw()))));
    group.finish();
    drop(server);
}

criterion_group!(benches, bench_render, bench_batch);
criterion_main!(benches);
