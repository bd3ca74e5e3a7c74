//! Storage benchmarks, each against a baseline measured in the same run:
//!
//! - presigned URLs per second: the crate's S3 presign vs raw aws-sdk-s3 presign, and
//!   the local HMAC signer;
//! - a 64 MiB upload to s3s-fs (in-process, real SigV4) through the crate (`put`, and
//!   `put_stream` = multipart) vs a raw aws-sdk-s3 `PutObject`; the ratio is printed;
//! - peak heap growth during a streamed 64 MiB upload (counting allocator), which must
//!   stay under the stated bound `(concurrency + 1) × part size + 16 MiB` — far below
//!   the body size. The in-process server's allocations are included.
//!
//! `cargo bench -p platform-storage --bench storage -- --warm-up-time 1 --measurement-time 3`
#![allow(unsafe_code, reason = "a counting global allocator measures peak memory")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark fails loudly and reports its figures"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_main};
use hyper_util::rt::{TokioExecutor, TokioIo};
use platform_core::{SecretString, system_clock};
use platform_storage::{
    BodyStream, ObjectStore, PresignOptions, PutOptions, S3ObjectStore, S3ObjectStoreBuilder, UrlSigner,
};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded to the system allocator with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded to the system allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now =
                    CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MIB: usize = 1024 * 1024;
const BODY: usize = 64 * MIB;
const BUCKET: &str = "bench-bucket";

async fn start_s3s(dir: &std::path::Path) -> String {
    let fs = s3s_fs::FileSystem::new(dir).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single("AK", "SK"));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(sock), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn raw_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("auto"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("AK", "SK", None, None, "bench"))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn crate_store(endpoint: &str) -> S3ObjectStore {
    S3ObjectStoreBuilder::new()
        .with_endpoint(endpoint)
        .with_credentials("AK", SecretString::from("SK"))
        .build()
        .unwrap()
}

/// A 64 MiB body generated 1 MiB at a time (never whole in memory).
fn generated_body() -> BodyStream {
    Box::pin(futures::stream::iter(0..BODY / MIB).map(|i| Ok(Bytes::from(vec![i as u8; MIB]))))
}

use futures::StreamExt as _;

struct Env {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    endpoint: String,
}

fn env() -> Env {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = rt.block_on(start_s3s(dir.path()));
    rt.block_on(crate_store(&endpoint).create_bucket(BUCKET)).unwrap();
    Env {
        rt,
        _dir: dir,
        endpoint,
    }
}

fn presign(c: &mut Criterion) {
    let env = env();
    let store = crate_store(&env.endpoint);
    let raw = raw_client(&env.endpoint);
    let signer = UrlSigner::random("http://127.0.0.1/local", system_clock());
    let opts = PresignOptions::put(Duration::from_secs(900), "image/png", 1234);
    let mut g = c.benchmark_group("presign");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_sdk_put", |b| {
        b.iter(|| {
            env.rt.block_on(async {
                raw.put_object()
                    .bucket(BUCKET)
                    .key("a/b.png")
                    .content_type("image/png")
                    .content_length(1234)
                    .presigned(PresigningConfig::expires_in(Duration::from_secs(900)).unwrap())
                    .await
                    .unwrap()
            })
        })
    });
    g.bench_function("crate_s3_put", |b| {
        b.iter(|| {
            env.rt
                .block_on(store.presign(BUCKET, "a/b.png", opts.clone()))
                .unwrap()
        })
    });
    g.bench_function("crate_local_put", |b| {
        b.iter(|| signer.sign(BUCKET, "a/b.png", &opts).unwrap())
    });
    g.finish();

    // Ratio, measured here so it is printed in one place.
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        env.rt
            .block_on(
                raw.get_object()
                    .bucket(BUCKET)
                    .key("a/b.png")
                    .presigned(PresigningConfig::expires_in(Duration::from_secs(900)).unwrap()),
            )
            .unwrap();
    }
    let raw_rate = f64::from(n) / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..n {
        env.rt
            .block_on(store.presign(BUCKET, "a/b.png", PresignOptions::get(Duration::from_secs(900))))
            .unwrap();
    }
    let crate_rate = f64::from(n) / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..n {
        signer
            .sign(BUCKET, "a/b.png", &PresignOptions::get(Duration::from_secs(900)))
            .unwrap();
    }
    let local_rate = f64::from(n) / t.elapsed().as_secs_f64();
    eprintln!(
        "RESULT presign GET/s: raw sdk {raw_rate:.0}, crate s3 {crate_rate:.0} ({:.2}x of raw), local hmac {local_rate:.0}",
        crate_rate / raw_rate
    );
}

fn upload(c: &mut Criterion) {
    let env = env();
    let store = Arc::new(crate_store(&env.endpoint));
    let raw = raw_client(&env.endpoint);
    let body = Bytes::from(vec![7u8; BODY]);
    let mut g = c.benchmark_group("upload_64mib");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(BODY as u64));
    let raw_put = |key: &'static str| {
        let raw = raw.clone();
        let body = body.clone();
        async move {
            raw.put_object()
                .bucket(BUCKET)
                .key(key)
                .content_length(BODY as i64)
                .body(ByteStream::from(body))
                .send()
                .await
                .unwrap();
        }
    };
    g.bench_function("raw_sdk_put_object", |b| {
        b.iter(|| env.rt.block_on(raw_put("raw")))
    });
    g.bench_function("crate_put", |b| {
        b.iter(|| {
            env.rt
                .block_on(store.put(BUCKET, "crate", body.clone(), PutOptions::new()))
                .unwrap()
        })
    });
    g.bench_function("crate_put_stream_multipart", |b| {
        b.iter(|| {
            env.rt
                .block_on(store.put_stream(BUCKET, "stream", generated_body(), PutOptions::new()))
                .unwrap()
        })
    });
    g.finish();

    // Interleaved rounds for the ratios (median of each).
    let rounds = 7;
    let (mut t_raw, mut t_put, mut t_stream) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        env.rt.block_on(raw_put("raw"));
        t_raw.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        env.rt
            .block_on(store.put(BUCKET, "crate", body.clone(), PutOptions::new()))
            .unwrap();
        t_put.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        env.rt
            .block_on(store.put_stream(BUCKET, "stream", generated_body(), PutOptions::new()))
            .unwrap();
        t_stream.push(t.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (raw_s, put_s, stream_s) = (median(&mut t_raw), median(&mut t_put), median(&mut t_stream));
    let mbps = |s: f64| BODY as f64 / MIB as f64 / s;
    eprintln!(
        "RESULT upload 64 MiB: raw PutObject {:.0} MiB/s; crate put {:.0} MiB/s ({:.2}x of raw); crate put_stream (multipart) {:.0} MiB/s ({:.2}x of raw)",
        mbps(raw_s),
        mbps(put_s),
        raw_s / put_s,
        mbps(stream_s),
        raw_s / stream_s
    );

    // Peak heap growth of a streamed upload.
    drop(body);
    let bound = (4 + 1) * 8 * MIB + 16 * MIB;
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    env.rt
        .block_on(store.put_stream(BUCKET, "mem", generated_body(), PutOptions::new()))
        .unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - base;
    eprintln!(
        "RESULT peak heap growth during a streamed 64 MiB upload: {:.1} MiB (bound {:.0} MiB, body {} MiB)",
        peak as f64 / MIB as f64,
        bound as f64 / MIB as f64,
        BODY / MIB
    );
    assert!(
        peak < bound,
        "streamed upload used {peak} bytes, over the bound {bound}"
    );
}

mod group {
    #![allow(missing_docs, unreachable_pub, reason = "generated by criterion")]
    use super::{presign, upload};
    criterion::criterion_group!(benches, presign, upload);
}
criterion_main!(group::benches);
