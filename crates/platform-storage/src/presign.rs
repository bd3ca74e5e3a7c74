//! Presigned URLs for the local implementations: HMAC-SHA256 signed, expiring like S3's,
//! and served by [`serve_presigned`] (wire it into any HTTP server: it takes and returns
//! plain request/response values).
//!
//! A URL looks like
//! `{base}/{bucket}/{key}?x-method=PUT&x-expires=1764201600&x-content-type=image%2Fpng&x-content-length=42&x-signature=…`.
//! The signature covers the method, bucket, key, expiry, content type and length, so
//! changing any of them (or the signature) gets a 403, as does using it after it expires.

use std::fmt;

use bytes::Bytes;
use chrono::TimeDelta;
use hmac::{Hmac, Mac};
use platform_core::{DynClock, Error, ErrorKind, ExposeSecret, Result, SecretString};
use sha2::Sha256;

use crate::types::{PresignMethod, PresignOptions, PresignedRequest, PutOptions, RedactedUrl};
use crate::validate::{decode, encode_component, encode_key, validate_object};
use crate::{GetOptions, ObjectStore};

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies local presigned URLs.
#[derive(Clone)]
pub struct UrlSigner {
    secret: SecretString,
    base_url: String,
    clock: DynClock,
}

impl fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlSigner")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// What a verified presigned URL allows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedUrl {
    /// GET or PUT.
    pub method: PresignMethod,
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// PUT: the content type the uploader must send.
    pub content_type: Option<String>,
    /// PUT: the exact body length.
    pub content_length: Option<u64>,
}

impl UrlSigner {
    /// A signer with `secret`, producing URLs under `base_url` (e.g. `http://127.0.0.1:8787/storage`).
    pub fn new(secret: SecretString, base_url: impl Into<String>, clock: DynClock) -> Self {
        Self {
            secret,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            clock,
        }
    }

    /// A signer with a fresh random secret (URLs die with the process).
    pub fn random(base_url: impl Into<String>, clock: DynClock) -> Self {
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        Self::new(SecretString::from(secret), base_url, clock)
    }

    /// The same signer (secret and base URL) on `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: DynClock) -> Self {
        self.clock = clock;
        self
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The clock the expiry is measured with.
    pub fn clock(&self) -> &DynClock {
        &self.clock
    }

    fn mac(&self, fields: &[&str]) -> Vec<u8> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match HmacSha256::new_from_slice(self.secret.expose_secret().as_bytes()) {
            Ok(m) => m,
            Err(_) => return Vec::new(),
        };
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                mac.update(b"\n");
            }
            mac.update(f.as_bytes());
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// Presigns `opts.method` on `bucket/key`.
    ///
    /// # Errors
    /// `InvalidInput` for a bad bucket, key, or options.
    pub fn sign(&self, bucket: &str, key: &str, opts: &PresignOptions) -> Result<PresignedRequest> {
        validate_object(bucket, key)?;
        opts.validate()?;
        let delta = TimeDelta::from_std(opts.expires_in)
            .map_err(|e| Error::invalid_input("presign expiry out of range").with_source(e))?;
        let expires_at = self.clock.now() + delta;
        let expires = expires_at.timestamp().to_string();
        let ct = opts.content_type.clone().unwrap_or_default();
        let len = opts.content_length.map(|l| l.to_string()).unwrap_or_default();
        let sig = hex::encode(self.mac(&[opts.method.as_str(), bucket, key, &expires, &ct, &len]));
        let mut url = format!(
            "{}/{bucket}/{}?x-method={}&x-expires={expires}",
            self.base_url,
            encode_key(key),
            opts.method.as_str()
        );
        let mut headers = Vec::new();
        if opts.method == PresignMethod::Put {
            url.push_str(&format!(
                "&x-content-type={}&x-content-length={len}",
                encode_component(&ct)
            ));
            headers.push(("content-type".to_owned(), ct));
            headers.push(("content-length".to_owned(), len));
        }
        url.push_str(&format!("&x-signature={sig}"));
        Ok(PresignedRequest::new(opts.method, url, headers, expires_at))
    }

    /// Verifies a presigned URL (absolute, or the path and query after the host).
    ///
    /// # Errors
    /// `PermissionDenied` when the signature does not match or the URL expired;
    /// `InvalidInput` when it is not one of this signer's URLs.
    pub fn verify(&self, url: &str) -> Result<VerifiedUrl> {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        // A trailing slash of the path is part of its key ("dir/" is a valid key); the
        // base URL has none (see `new`).
        let base_path = path_of(&self.base_url);
        let path = path_of(path);
        let rest = path
            .strip_prefix(base_path)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| Error::invalid_input("not a presigned storage URL"))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| Error::invalid_input("presigned URL has no key"))?;
        let bucket = decode(bucket).ok_or_else(|| Error::invalid_input("malformed bucket in URL"))?;
        let key = decode(key).ok_or_else(|| Error::invalid_input("malformed key in URL"))?;
        let mut method = None;
        let mut expires = None;
        let mut ct = String::new();
        let mut len = String::new();
        let mut sig = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v).ok_or_else(|| Error::invalid_input("malformed query in URL"))?;
            match k {
                "x-method" => method = Some(v),
                "x-expires" => expires = Some(v),
                "x-content-type" => ct = v,
                "x-content-length" => len = v,
                "x-signature" => sig = Some(v),
                _ => return Err(denied("unexpected query parameter")),
            }
        }
        let (Some(method), Some(expires), Some(sig)) = (method, expires, sig) else {
            return Err(denied("missing signature parameters"));
        };
        let expected = self.mac(&[&method, &bucket, &key, &expires, &ct, &len]);
        let given = hex::decode(&sig).map_err(|_| denied("signature does not match"))?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_slice(),
            given.as_slice(),
        )) {
            return Err(denied("signature does not match"));
        }
        let expires: i64 = expires.parse().map_err(|_| denied("malformed expiry"))?;
        if self.clock.unix_seconds() >= expires {
            return Err(denied("presigned URL expired"));
        }
        let method = match method.as_str() {
            "GET" => PresignMethod::Get,
            "PUT" => PresignMethod::Put,
            _ => return Err(denied("unknown method")),
        };
        let content_length = if len.is_empty() {
            None
        } else {
            Some(len.parse().map_err(|_| denied("malformed content length"))?)
        };
        Ok(VerifiedUrl {
            method,
            bucket,
            key,
            content_type: (!ct.is_empty()).then_some(ct),
            content_length,
        })
    }
}

fn denied(why: &'static str) -> Error {
    Error::new(ErrorKind::PermissionDenied, why).with_provider("local")
}

/// The path of a URL (drops `scheme://host`).
fn path_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => url,
    }
}

/// A plain HTTP request for [`serve_presigned`]. Its `Debug` output leaves out the
/// URL's query (the signature), the header values and the body.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct LocalHttpRequest {
    /// `GET` or `PUT`.
    pub method: String,
    /// The URL (absolute, or path and query).
    pub url: String,
    /// Request headers (names compared case-insensitively).
    pub headers: Vec<(String, String)>,
    /// The body (PUT).
    pub body: Bytes,
}

impl fmt::Debug for LocalHttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("LocalHttpRequest")
            .field("method", &self.method)
            .field("url", &RedactedUrl(&self.url))
            .field("header_names", &header_names)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl LocalHttpRequest {
    /// A request.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP response from [`serve_presigned`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalHttpResponse {
    /// The status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl LocalHttpResponse {
    fn status(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type".to_owned(), "text/plain".to_owned())],
            body: Bytes::from(message.into()),
        }
    }

    fn from_error(e: &Error) -> Self {
        let status = match e.kind() {
            ErrorKind::NotFound => 404,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::Conflict => 409,
            ErrorKind::InvalidInput => 400,
            _ => 500,
        };
        Self::status(status, e.message().to_owned())
    }
}

/// Serves one presigned request against `store`: verifies the URL with `signer`, then
/// returns the object (GET) or stores the body (PUT, which must carry exactly the
/// signed content type and length).
///
/// Answers 403 for a bad or expired signature, a method other than the signed one, or
/// a content type or length that differs from what was signed (as S3 answers a
/// signature mismatch), 404 for a missing object.
pub async fn serve_presigned(
    store: &dyn ObjectStore,
    signer: &UrlSigner,
    req: LocalHttpRequest,
) -> LocalHttpResponse {
    let span =
        tracing::info_span!("storage.serve_presigned", provider = store.provider(), method = %req.method);
    let _enter = span.enter();
    let verified = match signer.verify(&req.url) {
        Ok(v) => v,
        Err(e) => return LocalHttpResponse::from_error(&e),
    };
    if !req.method.eq_ignore_ascii_case(verified.method.as_str()) {
        return LocalHttpResponse::status(403, "method does not match the signature");
    }
    match verified.method {
        PresignMethod::Get => match store
            .get(&verified.bucket, &verified.key, GetOptions::new())
            .await
        {
            Ok(got) => {
                let mut headers = vec![("content-length".to_owned(), got.meta.size.to_string())];
                if let Some(ct) = &got.meta.content_type {
                    headers.push(("content-type".to_owned(), ct.clone()));
                }
                if let Some(etag) = &got.meta.etag {
                    headers.push(("etag".to_owned(), etag.clone()));
                }
                match got.bytes().await {
                    Ok(body) => LocalHttpResponse {
                        status: 200,
                        headers,
                        body,
                    },
                    Err(e) => LocalHttpResponse::from_error(&e),
                }
            }
            Err(e) => LocalHttpResponse::from_error(&e),
        },
        PresignMethod::Put => {
            let ct = req.header("content-type").map(str::trim);
            if ct != verified.content_type.as_deref() {
                return LocalHttpResponse::status(403, "content type does not match the signature");
            }
            let declared = req
                .header("content-length")
                .and_then(|v| v.trim().parse::<u64>().ok());
            let actual = req.body.len() as u64;
            if verified.content_length != Some(actual) || declared.is_some_and(|d| d != actual) {
                return LocalHttpResponse::status(403, "content length does not match the signature");
            }
            let mut opts = PutOptions::new();
            opts.content_type = verified.content_type.clone();
            match store.put(&verified.bucket, &verified.key, req.body, opts).await {
                Ok(meta) => LocalHttpResponse {
                    status: 200,
                    headers: meta
                        .etag
                        .map(|e| vec![("etag".to_owned(), e)])
                        .unwrap_or_default(),
                    body: Bytes::new(),
                },
                Err(e) => LocalHttpResponse::from_error(&e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use platform_core::ManualClock;

    use super::*;

    /// A signer with secret "s3cr3t" under `base_url`, on a manual clock (returned too).
    fn test_signer(base_url: &str) -> (ManualClock, UrlSigner) {
        let clock = ManualClock::at_unix(1_800_000_000);
        let signer = UrlSigner::new(SecretString::from("s3cr3t"), base_url, clock.shared());
        (clock, signer)
    }

    /// A key may end in slashes (a directory marker): they are part of its URL.
    #[test]
    fn keys_ending_in_a_slash_verify() {
        let (_clock, signer) = test_signer("http://127.0.0.1:1/files/");
        for key in ["dir/", "a/b/"] {
            let req = signer
                .sign("bkt-one", key, &PresignOptions::get(Duration::from_secs(60)))
                .unwrap();
            let path_and_query = req.url.strip_prefix("http://127.0.0.1:1").unwrap();
            for url in [req.url.as_str(), path_and_query] {
                let verified = signer.verify(url).unwrap();
                assert_eq!(
                    (verified.bucket.as_str(), verified.key.as_str()),
                    ("bkt-one", key),
                    "{url}"
                );
            }
        }
    }

    #[test]
    fn signs_verifies_and_refuses_tampering_and_expiry() {
        let (clock, signer) = test_signer("http://127.0.0.1:1/files");
        let req = signer
            .sign(
                "bkt-one",
                "a b/c.png",
                &PresignOptions::put(Duration::from_secs(60), "image/png", 3),
            )
            .unwrap();
        assert!(
            req.url
                .starts_with("http://127.0.0.1:1/files/bkt-one/a%20b/c.png?x-method=PUT")
        );
        // The request a local HTTP server hands over shows no signature either.
        let mut http = LocalHttpRequest::new("PUT", req.url.clone());
        http.headers = vec![("content-type".to_owned(), "image/png".to_owned())];
        let shown = format!("{http:?}");
        let (base, query) = req.url.split_once('?').unwrap();
        assert!(query.contains("x-signature="), "{query}");
        assert!(shown.contains(&format!("{base}?[redacted]")), "{shown}");
        assert!(
            !shown.contains("signature") && !shown.contains("image/png"),
            "{shown}"
        );
        let v = signer.verify(&req.url).unwrap();
        assert_eq!(v.key, "a b/c.png");
        assert_eq!(v.content_length, Some(3));
        // Path-only form works too.
        let path = req.url.trim_start_matches("http://127.0.0.1:1");
        assert!(signer.verify(path).is_ok());
        // Tampered key, length, signature.
        for bad in [
            req.url.replace("c.png", "d.png"),
            req.url.replace("x-content-length=3", "x-content-length=4"),
            req.url.replace("x-signature=", "x-signature=00"),
        ] {
            assert_eq!(
                signer.verify(&bad).unwrap_err().kind(),
                ErrorKind::PermissionDenied,
                "{bad}"
            );
        }
        // Another secret refuses.
        let other = UrlSigner::new(
            SecretString::from("other"),
            "http://127.0.0.1:1/files",
            clock.shared(),
        );
        assert!(other.verify(&req.url).is_err());
        clock.advance(Duration::from_secs(60));
        let err = signer.verify(&req.url).unwrap_err();
        assert!(err.message().contains("expired"), "{err}");
        assert!(!format!("{signer:?}").contains("s3cr3t"));
    }
}
