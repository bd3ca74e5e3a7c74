//! s3s-fs 0.14.1 in-process on 127.0.0.1 with real SigV4 checks (access key `AK`,
//! secret `SK`), shared by the S3 tests and the benches (`#[path]`-included).

use hyper_util::rt::{TokioExecutor, TokioIo};

/// Serves the objects under `dir` until the runtime stops; returns the endpoint URL.
pub(crate) async fn start_s3s(dir: &std::path::Path) -> String {
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
