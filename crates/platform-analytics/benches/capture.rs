//! Capture benchmarks, each against a baseline measured in the same run.
//!
//! - `capture/trait` vs `capture/posthog_rs_direct`: the cost of one `capture` of a
//!   typed Arbor event through `Arc<dyn Analytics>` (serialize, enrich, queue)
//!   against building the same posthog-rs `Event` (same five properties) and calling
//!   `posthog_rs::Client::capture` directly. Queues are flushed between timed
//!   chunks (untimed), so neither side measures a full-queue drop.
//! - `deliver_10k/trait` vs `deliver_10k/posthog_rs_direct`: capture 10 000 events
//!   and flush until delivered to a local HTTP endpoint (batches of 100);
//!   throughput in events/s.
//!
//! The endpoint is a tiny HTTP/1.1 server on 127.0.0.1 answering every request
//! with PostHog's `/batch/` success body.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmarks fail loudly; criterion_group! generates undocumented items"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use platform_analytics::{AgentCreated, Analytics, AnalyticsExt, DynAnalytics, Enrichment, PostHogAnalytics};
use platform_core::{Product, SecretString};
use tokio::runtime::Runtime;

const CHUNK: u64 = 2_000;

/// Serves keep-alive HTTP/1.1 connections, answering 200 `{"status":"Ok"}`.
fn start_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    addr
}

fn serve(stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"Ok\"}";
        if writer.write_all(answer).is_err() {
            return;
        }
    }
}

fn enrichment() -> Enrichment {
    Enrichment::new("production", "1.0.0")
}

fn event() -> AgentCreated {
    AgentCreated {
        agent_id: "ag-123456".into(),
        agent_type: "research".into(),
    }
}

fn direct_event() -> posthog_rs::Event {
    let ev = event();
    let mut e = posthog_rs::Event::new("agent_created", "user-1");
    e.insert_prop("agent_id", &ev.agent_id).unwrap();
    e.insert_prop("type", &ev.agent_type).unwrap();
    e.insert_prop("environment", "production").unwrap();
    e.insert_prop("app_version", "1.0.0").unwrap();
    e.insert_prop("product", Product::ARBOR.as_str()).unwrap();
    e
}

fn ours(rt: &Runtime, addr: SocketAddr) -> DynAnalytics {
    rt.block_on(async {
        let a = PostHogAnalytics::builder()
            .with_api_key(SecretString::from("phc_bench"))
            .with_base_url(format!("http://{addr}"))
            .with_batch_size(100)
            .with_queue_capacity(20_000)
            .with_enrichment(enrichment())
            .build()
            .await
            .unwrap();
        Arc::new(a) as DynAnalytics
    })
}

fn direct(rt: &Runtime, addr: SocketAddr) -> posthog_rs::Client {
    rt.block_on(async {
        let options = posthog_rs::ClientOptionsBuilder::default()
            .api_key("phc_bench".to_owned())
            .host(format!("http://{addr}"))
            .flush_at(100usize)
            .max_batch_size(100usize)
            .max_queue_size(20_000usize)
            .disable_geoip(true)
            .build()
            .unwrap();
        posthog_rs::client(options).await
    })
}

fn bench_capture(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let addr = start_server();
    let analytics = ours(&rt, addr);
    let client = direct(&rt, addr);

    let mut group = c.benchmark_group("capture");
    group.bench_function("posthog_rs_direct", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(CHUNK);
                let start = Instant::now();
                for _ in 0..n {
                    client.capture(std::hint::black_box(direct_event()));
                }
                timed += start.elapsed();
                rt.block_on(client.flush());
                left -= n;
            }
            timed
        });
    });
    group.bench_function("trait", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(CHUNK);
                let start = Instant::now();
                for _ in 0..n {
                    analytics.track("user-1", std::hint::black_box(&event())).unwrap();
                }
                timed += start.elapsed();
                let report = rt.block_on(analytics.flush(Duration::from_secs(30)));
                assert_eq!(report.dropped, 0, "{report}");
                left -= n;
            }
            timed
        });
    });
    group.finish();
    rt.block_on(async {
        analytics.shutdown(Duration::from_secs(10)).await;
        client.shutdown().await;
    });
}

fn bench_deliver(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let addr = start_server();
    let analytics = ours(&rt, addr);
    let client = direct(&rt, addr);
    const N: u64 = 10_000;

    let mut group = c.benchmark_group("deliver_10k");
    group.throughput(Throughput::Elements(N));
    group.sample_size(10);
    group.bench_function("posthog_rs_direct", |b| {
        b.iter(|| {
            for _ in 0..N {
                client.capture(direct_event());
            }
            rt.block_on(client.flush());
        });
    });
    group.bench_function("trait", |b| {
        b.iter(|| {
            let before = rt.block_on(analytics.flush(Duration::from_secs(1))).delivered;
            for _ in 0..N {
                analytics.track("user-1", &event()).unwrap();
            }
            let report = rt.block_on(analytics.flush(Duration::from_secs(60)));
            assert_eq!(report.delivered - before, N, "{report}");
        });
    });
    group.finish();
    rt.block_on(async {
        analytics.shutdown(Duration::from_secs(10)).await;
        client.shutdown().await;
    });
}

criterion_group!(benches, bench_capture, bench_deliver);
criterion_main!(benches);
