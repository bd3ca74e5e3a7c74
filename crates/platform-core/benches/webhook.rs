//! Webhook verification throughput, Standard Webhooks and Stripe, 1 KiB and 64 KiB
//! bodies. The baseline in the same run is one bare HMAC-SHA256 over the same
//! bytes (the unavoidable cost), so `verify / baseline` is the overhead of parsing,
//! tolerance checks, base64/hex decoding and constant-time comparison.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use platform_core::webhook::{StandardWebhookVerifier, StripeWebhookVerifier};
use platform_core::{ManualClock, SecretString};
use sha2::Sha256;

const TS: i64 = 1_700_000_000;

fn bench(c: &mut Criterion) {
    let clock = ManualClock::at_unix(TS).shared();
    let svix = StandardWebhookVerifier::new([SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")])
        .unwrap()
        .with_clock(clock.clone());
    let stripe = StripeWebhookVerifier::new([SecretString::from("whsec_stripe_bench_secret")])
        .unwrap()
        .with_clock(clock);

    let mut group = c.benchmark_group("webhook_verify");
    group.throughput(Throughput::Elements(1));
    for size in [1024usize, 64 * 1024] {
        let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        let label = format!("{}KiB", size / 1024);

        group.bench_with_input(
            BenchmarkId::new("baseline_hmac_sha256", &label),
            &body,
            |b, body| {
                b.iter(|| {
                    let mut mac =
                        Hmac::<Sha256>::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
                    mac.update(black_box(body));
                    black_box(mac.finalize().into_bytes())
                })
            },
        );

        let sig = svix.sign("msg_bench", TS, &body);
        let ts = TS.to_string();
        group.bench_with_input(BenchmarkId::new("standard_webhooks", &label), &body, |b, body| {
            b.iter(|| {
                svix.verify_parts("msg_bench", &ts, &sig, black_box(body))
                    .unwrap()
            })
        });

        let header = stripe.sign(TS, &body);
        group.bench_with_input(BenchmarkId::new("stripe", &label), &body, |b, body| {
            b.iter(|| stripe.verify_header(&header, black_box(body)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
