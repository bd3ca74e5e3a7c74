//! Input rules every implementation applies before touching storage, so the local
//! implementations are never laxer than S3/R2 and no key can escape a directory.

use std::collections::BTreeMap;

use platform_core::{Error, Result};

use crate::types::PutOptions;

/// Longest key S3 accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest total size of user metadata (keys + values) S3 accepts.
pub const MAX_METADATA_BYTES: usize = 2048;
/// Most keys R2 accepts in one batch delete.
pub const DELETE_BATCH_LIMIT: usize = 700;

/// Checks a bucket name: 3–63 characters, lowercase letters, digits, `-`, starting and
/// ending with a letter or digit.
///
/// # Errors
/// `InvalidInput` naming the bucket and the rule.
pub fn validate_bucket(bucket: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::invalid_input(format!(
            "invalid bucket name {bucket:?}: {why}"
        )))
    };
    if !(3..=63).contains(&bucket.len()) {
        return bad("must be 3 to 63 characters");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only lowercase letters, digits and '-' are allowed");
    }
    if bucket.starts_with('-') || bucket.ends_with('-') {
        return bad("must start and end with a letter or digit");
    }
    Ok(())
}

/// Checks an object key.
///
/// Refused: empty keys, keys over 1024 bytes, absolute keys (`/x`), `.` or `..`
/// segments (`../x`, `a/../../x`), empty segments (`a//b`), backslashes and control
/// characters. These rules hold for every implementation, so a key accepted locally
/// is accepted on R2 and can never escape a directory.
///
/// # Errors
/// `InvalidInput` naming the key and the rule.
pub fn validate_key(key: &str) -> Result<()> {
    check_key("object key", key, false)
}

/// Checks a key prefix for listing: empty, or the start of a valid key. Its last
/// segment may be the start of a longer one (`x/.` lists `x/.env`), so only the
/// complete segments before it follow the key rules on `.` and `..`.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        Ok(())
    } else {
        check_key("key prefix", prefix, true)
    }
}

/// The rules of [`validate_key`]; with `partial_last`, a last segment not followed by
/// `/` may be `.` or `..` (a prefix of a longer segment).
fn check_key(what: &str, key: &str, partial_last: bool) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid_input(format!("invalid {what} {key:?}: {why}")));
    if key.is_empty() {
        return bad("must not be empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return bad("must be at most 1024 bytes");
    }
    if key.starts_with('/') {
        return bad("must be relative (no leading '/')");
    }
    if key.chars().any(|c| c.is_control()) {
        return bad("must not contain control characters");
    }
    if key.contains('\\') {
        return bad("must not contain '\\'");
    }
    // A trailing '/' is allowed (directory markers), other empty segments are not.
    let trimmed = key.strip_suffix('/').unwrap_or(key);
    let segments: Vec<&str> = trimmed.split('/').collect();
    let complete = match segments.split_last() {
        Some((_, before)) if partial_last && !key.ends_with('/') => before,
        _ => &segments[..],
    };
    for segment in complete {
        match *segment {
            "" => return bad("must not contain empty segments ('//')"),
            "." | ".." => return bad("must not contain '.' or '..' segments (path traversal)"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks user metadata: keys lowercase `[a-z0-9-]`, values printable ASCII, total ≤ 2 KiB.
///
/// # Errors
/// `InvalidInput` naming the entry.
pub fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<()> {
    let mut total = 0;
    for (k, v) in metadata {
        if k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::invalid_input(format!(
                "invalid metadata key {k:?}: use lowercase letters, digits and '-'"
            )));
        }
        if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) || v.starts_with(' ') || v.ends_with(' ') {
            return Err(Error::invalid_input(format!(
                "invalid value of metadata {k:?}: printable ASCII without surrounding spaces only"
            )));
        }
        total += k.len() + v.len();
    }
    if total > MAX_METADATA_BYTES {
        return Err(Error::invalid_input(format!(
            "user metadata is {total} bytes; at most {MAX_METADATA_BYTES} are allowed"
        )));
    }
    Ok(())
}

pub(crate) fn validate_header_value(what: &str, v: &str) -> Result<()> {
    if v.is_empty() || !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Error::invalid_input(format!(
            "invalid {what} {v:?}: printable ASCII only"
        )));
    }
    Ok(())
}

/// Checks everything about a put: bucket, key, metadata, content type, cache control.
pub(crate) fn validate_put(bucket: &str, key: &str, opts: &PutOptions) -> Result<()> {
    validate_bucket(bucket)?;
    validate_key(key)?;
    validate_metadata(&opts.metadata)?;
    if let Some(ct) = &opts.content_type {
        validate_header_value("content type", ct)?;
    }
    if let Some(cc) = &opts.cache_control {
        validate_header_value("cache control", cc)?;
    }
    Ok(())
}

/// Checks a bucket and a key.
pub(crate) fn validate_object(bucket: &str, key: &str) -> Result<()> {
    validate_bucket(bucket)?;
    validate_key(key)
}

/// Percent-encodes a key for a URL path, keeping `/` and unreserved characters.
pub(crate) fn encode_key(key: &str) -> String {
    encode(key, true)
}

/// Percent-encodes a query component (RFC 3986 unreserved characters kept).
pub(crate) fn encode_component(s: &str) -> String {
    encode(s, false)
}

fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and nothing else); `None` when malformed or not UTF-8.
pub(crate) fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_bad_keys_are_refused() {
        for key in [
            "",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a/./b",
            "..",
            ".",
            "a//b",
            "a\\..\\b",
            "a\u{0}b",
        ] {
            let err = validate_key(key).unwrap_err();
            assert_eq!(err.kind(), platform_core::ErrorKind::InvalidInput, "{key:?}");
        }
        for key in ["a", "a/b/c.txt", "dir/", "..hidden", "a..b", "x/.config"] {
            assert!(validate_key(key).is_ok(), "{key:?}");
        }
        assert!(validate_key(&"k".repeat(1025)).is_err());
    }

    #[test]
    fn bucket_and_metadata_rules() {
        assert!(validate_bucket("arbor-artifacts").is_ok());
        for b in ["ab", "Upper", "-x-", "a_b", "a.b"] {
            assert!(validate_bucket(b).is_err(), "{b}");
        }
        let ok: BTreeMap<_, _> = [("product".to_owned(), "arbor".to_owned())].into();
        assert!(validate_metadata(&ok).is_ok());
        let bad: BTreeMap<_, _> = [("Product".to_owned(), "x".to_owned())].into();
        assert!(validate_metadata(&bad).is_err());
        let bad: BTreeMap<_, _> = [("k".to_owned(), "caf\u{e9}".to_owned())].into();
        assert!(validate_metadata(&bad).is_err());
        let big: BTreeMap<_, _> = [("k".to_owned(), "v".repeat(3000))].into();
        assert!(validate_metadata(&big).is_err());
    }

    #[test]
    fn percent_encoding_round_trips() {
        let key = "a b/ü+%?.txt";
        let enc = encode_key(key);
        assert_eq!(enc, "a%20b/%C3%BC%2B%25%3F.txt");
        assert_eq!(decode(&enc).as_deref(), Some(key));
        assert_eq!(decode("%zz"), None);
    }
}
