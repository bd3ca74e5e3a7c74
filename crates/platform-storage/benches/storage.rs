//! Storage benchmarks, each against a baseline measured in the same run:
//!
//! - presigned URLs per second: the crate's S3 presign vs raw aws-sdk-s3 presign, and
//!   the local HMAC signer;
//! - a 64 MiB upload to s3s-fs (in-process, real SigV4) through the crate vs a raw
//!   aws-sdk-s3 `PutObject` of the same in-memory body; the ratios are printed:
//!   `put` (in-memory body), `put_stream` with a declared length (one streaming
//!   `PutObject`, nothing buffered), `put_stream` of unknown length (multipart, 8 MiB
//!   parts × 4 in flight by default, plus 16 MiB × 2 and 8 MiB × 8 variants);
//! - where a multipart upload's time goes, with the raw SDK: the parts vs the
//!   `CompleteMultipartUpload` call (s3s-fs re-reads, re-hashes and rewrites every part
//!   into the final file on complete);
//! - peak heap growth during the streamed 64 MiB uploads (counting allocator): multipart
//!   must stay under `(concurrency + 1) × part size + 16 MiB`, the sized stream under
//!   16 MiB — both below the body size. The in-process server's allocations are included.
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

#[path = "../tests/support/server.rs"]
mod server;
use server::start_s3s;

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

/// A 64 MiB body streamed 1 MiB at a time (never whole in memory): the same 1 MiB
/// chunk 64 times, so the generator costs nothing measurable.
fn generated_body() -> BodyStream {
    let chunk = Bytes::from(vec![7u8; MIB]);
    Box::pin(futures::stream::iter(0..BODY / MIB).map(move |_| Ok(chunk.clone())))
}

fn sized() -> PutOptions {
    PutOptions::new().with_content_length(BODY as u64)
}

fn multipart_store(endpoint: &str, part_mib: usize, concurrency: usize) -> S3ObjectStore {
    S3ObjectStoreBuilder::new()
        .with_endpoint(endpoint)
        .with_credentials("AK", SecretString::from("SK"))
        .with_part_size(part_mib * MIB)
        .with_upload_concurrency(concurrency)
        .build()
        .unwrap()
}

/// A raw-SDK multipart upload of `body` in 8 MiB parts, 4 in flight; returns the
/// seconds spent on create + parts and on `CompleteMultipartUpload`.
async fn raw_multipart(raw: &aws_sdk_s3::Client, body: &Bytes) -> (f64, f64) {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let t = Instant::now();
    let id = raw
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("raw-mp")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    let part = 8 * MIB;
    let mut parts: Vec<CompletedPart> = futures::stream::iter(0..body.len() / part)
        .map(|i| {
            let (raw, id, chunk) = (raw.clone(), id.clone(), body.slice(i * part..(i + 1) * part));
            async move {
                let n = i32::try_from(i + 1).unwrap();
                let out = raw
                    .upload_part()
                    .bucket(BUCKET)
                    .key("raw-mp")
                    .upload_id(id)
                    .part_number(n)
                    .body(ByteStream::from(chunk))
                    .send()
                    .await
                    .unwrap();
                CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .build()
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    parts.sort_by_key(|p| p.part_number());
    let parts_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    raw.complete_multipart_upload()
        .bucket(BUCKET)
        .key("raw-mp")
        .upload_id(id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .unwrap();
    (parts_s, t.elapsed().as_secs_f64())
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
    g.bench_function("crate_put_stream_sized", |b| {
        b.iter(|| {
            env.rt
                .block_on(store.put_stream(BUCKET, "sized", generated_body(), sized()))
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
    let variants = [(16, 2), (8, 8)].map(|(mib, n)| (mib, n, multipart_store(&env.endpoint, mib, n)));
    let rounds = 7;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); 6 + variants.len()];
    let timed = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    for _ in 0..rounds {
        times[0].push(timed(&mut || env.rt.block_on(raw_put("raw"))));
        times[1].push(timed(&mut || {
            env.rt
                .block_on(store.put(BUCKET, "crate", body.clone(), PutOptions::new()))
                .unwrap();
        }));
        times[2].push(timed(&mut || {
            env.rt
                .block_on(store.put_stream(BUCKET, "sized", generated_body(), sized()))
                .unwrap();
        }));
        times[3].push(timed(&mut || {
            env.rt
                .block_on(store.put_stream(BUCKET, "stream", generated_body(), PutOptions::new()))
                .unwrap();
        }));
        let (parts, complete) = env.rt.block_on(raw_multipart(&raw, &body));
        times[4].push(complete / (parts + complete));
        times[5].push(parts + complete);
        for (i, (_, _, s)) in variants.iter().enumerate() {
            times[6 + i].push(timed(&mut || {
                env.rt
                    .block_on(s.put_stream(BUCKET, "variant", generated_body(), PutOptions::new()))
                    .unwrap();
            }));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m: Vec<f64> = times.iter_mut().map(median).collect();
    let mbps = |s: f64| BODY as f64 / MIB as f64 / s;
    let raw_s = m[0];
    eprintln!(
        "RESULT upload 64 MiB, median of {rounds} interleaved rounds: raw PutObject {:.0} MiB/s",
        mbps(raw_s)
    );
    for (name, s) in [
        ("crate put (in-memory body)", m[1]),
        ("crate put_stream, declared length (streaming PutObject)", m[2]),
        ("crate put_stream, unknown length (multipart 8 MiB x 4)", m[3]),
    ] {
        eprintln!("RESULT   {name}: {:.0} MiB/s = {:.2}x of raw", mbps(s), raw_s / s);
    }
    for (i, (mib, n, _)) in variants.iter().enumerate() {
        let s = m[6 + i];
        eprintln!(
            "RESULT   crate put_stream, unknown length (multipart {mib} MiB x {n}): {:.0} MiB/s = {:.2}x of raw",
            mbps(s),
            raw_s / s
        );
    }
    eprintln!(
        "RESULT   raw SDK multipart (8 MiB x 4, signed parts): {:.0} MiB/s = {:.2}x of raw PutObject; CompleteMultipartUpload is {:.0}% of its time (s3s-fs re-reads, re-hashes and rewrites the parts on complete)",
        mbps(m[5]),
        raw_s / m[5],
        m[4] * 100.0
    );

    // Peak heap growth of streamed uploads.
    drop(body);
    let peak_of = |opts: PutOptions| {
        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        env.rt
            .block_on(store.put_stream(BUCKET, "mem", generated_body(), opts))
            .unwrap();
        PEAK.load(Ordering::Relaxed) - base
    };
    let bound = (4 + 1) * store.part_size() + 16 * MIB;
    let sized_bound = 16 * MIB;
    for (what, peak, bound) in [
        ("multipart", peak_of(PutOptions::new()), bound),
        ("declared-length", peak_of(sized()), sized_bound),
    ] {
        eprintln!(
            "RESULT peak heap growth during a {what} streamed 64 MiB upload: {:.1} MiB (bound {:.0} MiB, body {} MiB)",
            peak as f64 / MIB as f64,
            bound as f64 / MIB as f64,
            BODY / MIB
        );
        assert!(
            peak < bound,
            "{what} streamed upload used {peak} bytes, over the bound {bound}"
        );
        assert!(bound < BODY, "the bound must be below the body size");
    }
}

mod group {
    #![allow(missing_docs, unreachable_pub, reason = "generated by criterion")]
    use super::{presign, upload};
    criterion::criterion_group!(benches, presign, upload);
}
criterion_main!(group::benches);
