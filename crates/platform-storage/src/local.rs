//! [`LocalObjectStore`]: objects in a local directory, the embedded default.
//!
//! Layout under the root: one directory per bucket; each object is one file
//! `{bucket}/objects/{hh}/{sha256(key)}.obj` holding the body, then a JSON header
//! (key, size, etag, content type, cache control, metadata), then the header's length
//! as 4 big-endian bytes. Because the file name is a hash, no key can name a path
//! outside the root (and keys such as `../x` are refused anyway). Every write goes
//! to a temporary file in `{bucket}/.tmp/`, is flushed, then renamed (or hard-linked
//! for create-only puts) into place, so readers never see a partial object. A write
//! cut short removes its temporary file; one whose process died leaves it, and
//! `create_bucket` (run at start-up by `Storage::ensure_buckets`) deletes those not
//! written to for [`STALE_TEMP`].

use std::collections::BTreeMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use platform_core::{DynClock, Error, ErrorKind, Result, system_clock};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::ObjectStore;
use crate::memory::{Subject, acting_on, body_acting_on, missing_bucket, missing_key, page_of};
use crate::presign::{LocalHttpRequest, LocalHttpResponse, UrlSigner, serve_presigned};
use crate::types::{
    BodyStream, GetOptions, GetResult, LifecycleRule, ListOptions, ListPage, ObjectMeta, PresignOptions,
    PresignedRequest, PutOptions, body_from_bytes, validate_rules,
};
use crate::validate::{
    DELETE_BATCH_LIMIT, validate_bucket, validate_key, validate_object, validate_prefix, validate_put,
};

const PROVIDER: &str = "local";
const CHUNK: usize = 64 * 1024;

/// How long a file in a bucket's `.tmp/` must have gone unwritten to be taken for one
/// left behind by a process that died mid-write (a write in progress keeps writing
/// to it, and no write pauses that long).
pub const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Objects under a root directory, with the same rules and errors as S3.
#[derive(Debug)]
pub struct LocalObjectStore {
    root: PathBuf,
    clock: DynClock,
    signer: UrlSigner,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    key: String,
    size: u64,
    etag: String,
    last_modified: i64,
    content_type: Option<String>,
    cache_control: Option<String>,
    metadata: BTreeMap<String, String>,
}

impl Header {
    fn into_meta(self) -> ObjectMeta {
        let mut m = ObjectMeta::new(self.key, self.size);
        m.etag = Some(self.etag);
        m.last_modified = DateTime::<Utc>::from_timestamp(self.last_modified, 0);
        m.content_type = self.content_type;
        m.cache_control = self.cache_control;
        m.metadata = self.metadata;
        m
    }
}

/// A temp file under `{bucket}/.tmp/`, removed when dropped unless it was moved into
/// place: a put that fails, or is cancelled mid-write (its future dropped by a timeout
/// or a client gone), leaves no partial file behind.
struct TempPath {
    path: Option<PathBuf>,
}

impl TempPath {
    fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// The file was renamed into place: nothing to remove.
    fn moved(mut self) {
        self.path = None;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // One unlink, also when the runtime is gone (a cancelled future).
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Makes the entries of directory `dir` durable (a file renamed or linked into it).
async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

fn io_error(op: &'static str, e: std::io::Error) -> Error {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        _ => ErrorKind::Unavailable,
    };
    // The OS's reason in the message ("No space left on device"), not only the source.
    Error::new(kind, format!("local storage I/O failed during {op}: {e}"))
        .with_provider(PROVIDER)
        .with_operation(op)
        .with_source(e)
}

/// Deletes the files of `tmp_dir` (a bucket's `.tmp/`) not written to for
/// [`STALE_TEMP`]: the temporary files of writes whose process died. A missing
/// directory has none; a file that vanishes meanwhile (another process swept it) is
/// skipped.
async fn sweep_stale_temp(tmp_dir: &Path) -> Result<()> {
    let mut entries = match tokio::fs::read_dir(tmp_dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("create_bucket", e)),
    };
    let mut swept = 0usize;
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| io_error("create_bucket", e))?
    {
        let stale = entry
            .metadata()
            .await
            .and_then(|m| m.modified())
            .is_ok_and(|at| at.elapsed().is_ok_and(|age| age >= STALE_TEMP));
        if !stale {
            continue;
        }
        match tokio::fs::remove_file(entry.path()).await {
            Ok(()) => swept += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("create_bucket", e)),
        }
    }
    if swept > 0 {
        tracing::info!(provider = PROVIDER, dir = %tmp_dir.display(), swept, "deleted temporary files left by unfinished writes");
    }
    Ok(())
}

impl LocalObjectStore {
    /// A store rooted at `root` (created if missing), on the system clock, presigning
    /// under `http://127.0.0.1/local`.
    ///
    /// # Errors
    /// `Config` if the root cannot be created.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| {
            Error::config(format!("cannot create storage root {}", root.display())).with_source(e)
        })?;
        let clock = system_clock();
        Ok(Self {
            root,
            signer: UrlSigner::random("http://127.0.0.1/local", clock.clone()),
            clock,
        })
    }

    /// Uses `clock` for timestamps and presigned URL expiry (the signer keeps its
    /// secret and base URL, in whichever order the two are set).
    #[must_use]
    pub fn with_clock(mut self, clock: DynClock) -> Self {
        self.signer = self.signer.with_clock(clock.clone());
        self.clock = clock;
        self
    }

    /// Uses `signer` for presigned URLs (its base URL, secret and clock).
    #[must_use]
    pub fn with_signer(mut self, signer: UrlSigner) -> Self {
        self.signer = signer;
        self
    }

    /// The signer of this store's presigned URLs.
    pub fn signer(&self) -> &UrlSigner {
        &self.signer
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Serves a presigned URL of this store (see [`serve_presigned`]).
    pub async fn handle_presigned(&self, req: LocalHttpRequest) -> LocalHttpResponse {
        serve_presigned(self, &self.signer, req).await
    }

    async fn bucket_dir(&self, bucket: &str) -> Result<PathBuf> {
        let dir = self.root.join(bucket);
        match tokio::fs::metadata(&dir).await {
            Ok(m) if m.is_dir() => Ok(dir),
            _ => Err(missing_bucket(PROVIDER, bucket)),
        }
    }

    fn object_path(dir: &Path, key: &str) -> PathBuf {
        let hash = hex::encode(Sha256::digest(key.as_bytes()));
        dir.join("objects").join(&hash[..2]).join(format!("{hash}.obj"))
    }

    /// A new temporary file in the bucket directory `dir`, for operation `op`.
    async fn temp_file(dir: &Path, op: &'static str) -> Result<(TempPath, tokio::fs::File)> {
        let tmp_dir = dir.join(".tmp");
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(|e| io_error(op, e))?;
        let path = tmp_dir.join(uuid::Uuid::new_v4().simple().to_string());
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| io_error(op, e))?;
        Ok((TempPath { path: Some(path) }, file))
    }

    /// Writes `body` then the header into a temp file and moves it into place.
    async fn write_object(
        &self,
        bucket: &str,
        key: &str,
        body: BodyStream,
        opts: &PutOptions,
    ) -> Result<ObjectMeta> {
        self.write_object_file(bucket, key, body, opts)
            .await
            .map_err(|e| acting_on(e, &Subject::Object(bucket, key)))
    }

    async fn write_object_file(
        &self,
        bucket: &str,
        key: &str,
        body: BodyStream,
        opts: &PutOptions,
    ) -> Result<ObjectMeta> {
        let mut body = opts.checked_body(body);
        let dir = self.bucket_dir(bucket).await?;
        let (tmp, mut file) = Self::temp_file(&dir, "put").await?;
        let result = async {
            let tmp = tmp.path();
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                size += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(|e| io_error("put", e))?;
            }
            let digest = hasher.finalize();
            let header = Header {
                key: key.to_owned(),
                size,
                etag: format!("\"{}\"", hex::encode(&digest[..16])),
                last_modified: self.clock.unix_seconds(),
                content_type: Some(
                    opts.content_type
                        .clone()
                        .unwrap_or_else(|| "application/octet-stream".to_owned()),
                ),
                cache_control: opts.cache_control.clone(),
                metadata: opts.metadata.clone(),
            };
            let json = serde_json::to_vec(&header)
                .map_err(|e| Error::unexpected("cannot encode object header").with_source(e))?;
            let len =
                u32::try_from(json.len()).map_err(|_| Error::invalid_input("object header too large"))?;
            file.write_all(&json).await.map_err(|e| io_error("put", e))?;
            file.write_all(&len.to_be_bytes())
                .await
                .map_err(|e| io_error("put", e))?;
            file.sync_all().await.map_err(|e| io_error("put", e))?;
            drop(file);
            let dest = Self::object_path(&dir, key);
            let shard = dest.parent().unwrap_or(&dir);
            tokio::fs::create_dir_all(shard)
                .await
                .map_err(|e| io_error("put", e))?;
            if opts.create_only {
                // A hard link fails if the destination exists: an atomic create-only.
                match tokio::fs::hard_link(&tmp, &dest).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Err(Error::conflict(format!(
                            "object {key:?} already exists in bucket {bucket:?}"
                        ))
                        .with_provider(PROVIDER)
                        .with_operation("put"));
                    }
                    Err(e) => return Err(io_error("put", e)),
                }
                // The temp file goes when `tmp` is dropped.
            } else {
                tokio::fs::rename(tmp, &dest)
                    .await
                    .map_err(|e| io_error("put", e))?;
            }
            // Until the directories are synced, a power cut can undo the rename or
            // link, or the shard directory's creation (here or by a concurrent put
            // that has not synced it yet): a put that returned would be lost. A sync
            // that fails leaves the put failed with the object maybe stored, as a lost
            // reply does on S3.
            sync_dir(shard).await.map_err(|e| io_error("put", e))?;
            if let Some(objects) = shard.parent() {
                sync_dir(objects).await.map_err(|e| io_error("put", e))?;
            }
            Ok(header.into_meta())
        }
        .await;
        if result.is_ok() && !opts.create_only {
            tmp.moved();
        }
        result
    }

    /// Opens an object: the file and its header.
    async fn open(&self, bucket: &str, key: &str) -> Result<(tokio::fs::File, ObjectMeta)> {
        let dir = self.bucket_dir(bucket).await?;
        let path = Self::object_path(&dir, key);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(missing_key(PROVIDER, bucket, key));
            }
            Err(e) => return Err(acting_on(io_error("get", e), &Subject::Object(bucket, key))),
        };
        let meta = read_header(&mut file)
            .await
            .map_err(|e| acting_on(e, &Subject::Object(bucket, key)))?;
        Ok((file, meta))
    }

    async fn all_objects(&self, dir: &Path) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let objects = dir.join("objects");
        let mut shards = match tokio::fs::read_dir(&objects).await {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_error("list", e)),
        };
        while let Some(shard) = shards.next_entry().await.map_err(|e| io_error("list", e))? {
            let mut files = tokio::fs::read_dir(shard.path())
                .await
                .map_err(|e| io_error("list", e))?;
            while let Some(f) = files.next_entry().await.map_err(|e| io_error("list", e))? {
                // Only object files: a stray file (a `.DS_Store`) is not an object.
                if f.path().extension().is_none_or(|e| e != "obj") {
                    continue;
                }
                // An object deleted while listing is simply not listed; any other
                // failure to read one fails the listing rather than leave it out.
                let mut file = match tokio::fs::File::open(f.path()).await {
                    Ok(file) => file,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_error("list", e)),
                };
                out.push(read_header(&mut file).await?);
            }
        }
        Ok(out)
    }
}

async fn read_header(file: &mut tokio::fs::File) -> Result<ObjectMeta> {
    let corrupt = || Error::unexpected("corrupt local object file").with_provider(PROVIDER);
    let total = file.metadata().await.map_err(|e| io_error("get", e))?.len();
    if total < 4 {
        return Err(corrupt());
    }
    file.seek(SeekFrom::Start(total - 4))
        .await
        .map_err(|e| io_error("get", e))?;
    let mut len = [0u8; 4];
    file.read_exact(&mut len).await.map_err(|e| io_error("get", e))?;
    let len = u64::from(u32::from_be_bytes(len));
    let start = total.checked_sub(4 + len).ok_or_else(corrupt)?;
    file.seek(SeekFrom::Start(start))
        .await
        .map_err(|e| io_error("get", e))?;
    let mut json = vec![0u8; usize::try_from(len).map_err(|_| corrupt())?];
    file.read_exact(&mut json).await.map_err(|e| io_error("get", e))?;
    let header: Header = serde_json::from_slice(&json).map_err(|e| corrupt().with_source(e))?;
    if header.size != start {
        return Err(corrupt());
    }
    Ok(header.into_meta())
}

fn file_body(file: tokio::fs::File, start: u64, end: u64) -> BodyStream {
    Box::pin(futures::stream::unfold(
        (file, start, end, false),
        |(mut file, pos, end, mut seeked)| async move {
            if pos >= end {
                return None;
            }
            if !seeked {
                if let Err(e) = file.seek(SeekFrom::Start(pos)).await {
                    return Some((Err(io_error("get", e)), (file, end, end, true)));
                }
                seeked = true;
            }
            let want = usize::try_from((end - pos).min(CHUNK as u64)).unwrap_or(CHUNK);
            let mut buf = vec![0u8; want];
            match file.read_exact(&mut buf).await {
                Ok(_) => Some((Ok(Bytes::from(buf)), (file, pos + want as u64, end, seeked))),
                Err(e) => Some((Err(io_error("get", e)), (file, end, end, seeked))),
            }
        },
    ))
}

#[async_trait]
impl ObjectStore for LocalObjectStore {
    fn provider(&self) -> &'static str {
        PROVIDER
    }

    async fn create_bucket(&self, bucket: &str) -> Result<()> {
        validate_bucket(bucket)?;
        let dir = self.root.join(bucket);
        let created = async {
            let io = |e| io_error("create_bucket", e);
            tokio::fs::create_dir_all(dir.join("objects")).await.map_err(io)?;
            // The new directories' entries, durable before objects are put in them.
            sync_dir(&dir).await.map_err(io)?;
            sync_dir(&self.root).await.map_err(io)?;
            sweep_stale_temp(&dir.join(".tmp")).await
        }
        .await;
        created.map_err(|e| acting_on(e, &Subject::Bucket(bucket)))
    }

    async fn put(&self, bucket: &str, key: &str, body: Bytes, opts: PutOptions) -> Result<ObjectMeta> {
        validate_put(bucket, key, &opts)?;
        opts.check_length(body.len() as u64)?;
        self.write_object(bucket, key, body_from_bytes(body), &opts).await
    }

    async fn put_stream(
        &self,
        bucket: &str,
        key: &str,
        body: BodyStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        validate_put(bucket, key, &opts)?;
        self.write_object(bucket, key, body, &opts).await
    }

    async fn get(&self, bucket: &str, key: &str, opts: GetOptions) -> Result<GetResult> {
        validate_object(bucket, key)?;
        let (file, meta) = self.open(bucket, key).await?;
        let (start, end) = match opts.range {
            Some(r) => r.resolve(meta.size)?,
            None => (0, meta.size),
        };
        let body = body_acting_on(file_body(file, start, end), &Subject::Object(bucket, key));
        Ok(GetResult::new(meta, (start, end), body))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta> {
        validate_object(bucket, key)?;
        Ok(self.open(bucket, key).await?.1)
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        validate_object(bucket, key)?;
        let dir = self.bucket_dir(bucket).await?;
        match tokio::fs::remove_file(Self::object_path(&dir, key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(acting_on(io_error("delete", e), &Subject::Object(bucket, key))),
        }
    }

    async fn delete_many(&self, bucket: &str, keys: &[String]) -> Result<()> {
        validate_bucket(bucket)?;
        keys.iter().try_for_each(|k| validate_key(k))?;
        self.bucket_dir(bucket).await?;
        for chunk in keys.chunks(DELETE_BATCH_LIMIT) {
            for k in chunk {
                self.delete(bucket, k).await?;
            }
        }
        Ok(())
    }

    async fn list(&self, bucket: &str, prefix: &str, opts: ListOptions) -> Result<ListPage> {
        validate_bucket(bucket)?;
        validate_prefix(prefix)?;
        opts.page_size()?;
        let dir = self.bucket_dir(bucket).await?;
        let all = self
            .all_objects(&dir)
            .await
            .map_err(|e| acting_on(e, &Subject::Bucket(bucket)))?;
        page_of(all, prefix, &opts)
    }

    async fn copy(
        &self,
        from_bucket: &str,
        from_key: &str,
        to_bucket: &str,
        to_key: &str,
        replace: Option<PutOptions>,
    ) -> Result<ObjectMeta> {
        validate_object(from_bucket, from_key)?;
        validate_object(to_bucket, to_key)?;
        let (file, src) = self.open(from_bucket, from_key).await?;
        let opts = match replace {
            Some(o) => {
                validate_put(to_bucket, to_key, &o)?;
                o
            }
            None => {
                let mut o = PutOptions::new();
                o.content_type = src.content_type.clone();
                o.cache_control = src.cache_control.clone();
                o.metadata = src.metadata.clone();
                o
            }
        };
        let body = body_acting_on(
            file_body(file, 0, src.size),
            &Subject::Source(from_bucket, from_key),
        );
        self.write_object(to_bucket, to_key, body, &opts).await
    }

    async fn presign(&self, bucket: &str, key: &str, opts: PresignOptions) -> Result<PresignedRequest> {
        validate_object(bucket, key)?;
        opts.validate()?;
        // Offline, as on S3: the bucket is checked when the URL is used.
        self.signer.sign(bucket, key, &opts)
    }

    async fn put_lifecycle(&self, bucket: &str, rules: &[LifecycleRule]) -> Result<()> {
        validate_bucket(bucket)?;
        validate_rules(rules)?;
        let dir = self.bucket_dir(bucket).await?;
        let json = serde_json::to_vec_pretty(rules)
            .map_err(|e| Error::unexpected("cannot encode lifecycle rules").with_source(e))?;
        let written = async {
            let (tmp, mut file) = Self::temp_file(&dir, "put_lifecycle").await?;
            let io = |e| io_error("put_lifecycle", e);
            file.write_all(&json).await.map_err(io)?;
            file.sync_all().await.map_err(io)?;
            drop(file);
            tokio::fs::rename(tmp.path(), dir.join("lifecycle.json"))
                .await
                .map_err(io)?;
            tmp.moved();
            sync_dir(&dir).await.map_err(io)
        };
        written.await.map_err(|e| acting_on(e, &Subject::Bucket(bucket)))
    }

    async fn get_lifecycle(&self, bucket: &str) -> Result<Vec<LifecycleRule>> {
        validate_bucket(bucket)?;
        let dir = self.bucket_dir(bucket).await?;
        match tokio::fs::read(dir.join("lifecycle.json")).await {
            Ok(json) => serde_json::from_slice(&json).map_err(|e| {
                let corrupt = Error::unexpected("corrupt lifecycle file").with_source(e);
                acting_on(corrupt, &Subject::Bucket(bucket))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(acting_on(io_error("get_lifecycle", e), &Subject::Bucket(bucket))),
        }
    }
}
