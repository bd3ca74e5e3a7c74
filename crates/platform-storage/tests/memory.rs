//! The behaviour suite against [`InMemoryObjectStore`], also through `Arc<dyn ObjectStore>`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::sync::Arc;

use bytes::Bytes;
use platform_core::{ErrorKind, ManualClock};
use platform_storage::conformance::{Harness, InProcessClient};
use platform_storage::{
    DynObjectStore, InMemoryObjectStore, LocalHttpRequest, ObjectStore, ObjectStoreExt as _, PutOptions,
};

async fn harness() -> Harness {
    let clock = ManualClock::new(chrono::Utc::now());
    let store = Arc::new(InMemoryObjectStore::with_clock(clock.shared()));
    // Through Arc<dyn ObjectStore>, as callers hold it.
    let dyn_store: DynObjectStore = store.clone();
    let http = InProcessClient::new(Box::new(move |req| {
        let store = store.clone();
        Box::pin(async move { store.handle_presigned(req).await })
    }));
    Harness::new(dyn_store, clock, Arc::new(http)).await
}

platform_storage::object_store_conformance!(harness());

#[tokio::test]
async fn arc_forwarding_impl_works() {
    let store = Arc::new(InMemoryObjectStore::new());
    let double: Arc<Arc<InMemoryObjectStore>> = Arc::new(store.clone());
    double.create_bucket("fwd-bucket").await.unwrap();
    double
        .put("fwd-bucket", "k", Bytes::from_static(b"v"), PutOptions::new())
        .await
        .unwrap();
    assert_eq!(
        store.get_bytes("fwd-bucket", "k").await.unwrap(),
        Bytes::from_static(b"v")
    );
    assert_eq!(double.provider(), "memory");
    assert_eq!(
        double.head("fwd-bucket", "../k").await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[tokio::test]
async fn presigned_handler_refuses_wrong_method() {
    let store = Arc::new(InMemoryObjectStore::new());
    store.create_bucket("m-bucket").await.unwrap();
    store
        .put("m-bucket", "k", Bytes::from_static(b"v"), PutOptions::new())
        .await
        .unwrap();
    let get = store
        .presign(
            "m-bucket",
            "k",
            platform_storage::PresignOptions::get(std::time::Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let resp = store
        .handle_presigned(LocalHttpRequest::new("PUT", &get.url).with_body(Bytes::from_static(b"x")))
        .await;
    assert_eq!(resp.status, 403);
    assert_eq!(
        store.get_bytes("m-bucket", "k").await.unwrap(),
        Bytes::from_static(b"v")
    );
    let resp = store
        .handle_presigned(LocalHttpRequest::new("GET", "/not/a/url"))
        .await;
    assert_eq!(resp.status, 400);
}
