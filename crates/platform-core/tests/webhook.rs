//! Webhook signature verification: published vectors, rotation, tolerance edges,
//! tampering, header parsing, and secrets never leaking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use platform_core::webhook::{StandardWebhookVerifier, StripeWebhookVerifier, WebhookError};
use platform_core::{Error, ErrorKind, ManualClock, SecretString};

const SVIX_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SVIX_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SVIX_TS: i64 = 1614265330;
const SVIX_BODY: &[u8] = br#"{"test": 2432232314}"#;
const SVIX_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

fn svix_at(now: i64) -> StandardWebhookVerifier {
    StandardWebhookVerifier::new([secret(SVIX_SECRET)])
        .unwrap()
        .with_clock(ManualClock::at_unix(now).shared())
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    map
}

#[test]
fn accepts_the_published_svix_example() {
    let v = svix_at(SVIX_TS);
    let h = headers(&[
        ("webhook-id", SVIX_ID),
        ("webhook-timestamp", "1614265330"),
        ("webhook-signature", SVIX_SIG),
    ]);
    let verified = v.verify(&h, SVIX_BODY).unwrap();
    assert_eq!(verified.id, SVIX_ID);
    assert_eq!(verified.timestamp.timestamp(), SVIX_TS);
    // Signing reproduces the published signature.
    assert_eq!(v.sign(SVIX_ID, SVIX_TS, SVIX_BODY), SVIX_SIG);
}

#[test]
fn accepts_svix_header_aliases_and_bare_base64_secret() {
    let v = StandardWebhookVerifier::new([secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")])
        .unwrap()
        .with_clock(ManualClock::at_unix(SVIX_TS).shared());
    let h = headers(&[
        ("svix-id", SVIX_ID),
        ("svix-timestamp", "1614265330"),
        ("svix-signature", SVIX_SIG),
    ]);
    assert!(v.verify(&h, SVIX_BODY).is_ok());
}

#[test]
fn tampered_body_id_or_timestamp_is_refused() {
    let v = svix_at(SVIX_TS);
    let tampered_body = br#"{"test": 2432232315}"#;
    assert_eq!(
        v.verify_parts(SVIX_ID, "1614265330", SVIX_SIG, tampered_body),
        Err(WebhookError::NoMatchingSignature)
    );
    assert_eq!(
        v.verify_parts("msg_other", "1614265330", SVIX_SIG, SVIX_BODY),
        Err(WebhookError::NoMatchingSignature)
    );
    assert_eq!(
        v.verify_parts(SVIX_ID, "1614265331", SVIX_SIG, SVIX_BODY),
        Err(WebhookError::NoMatchingSignature)
    );
}

#[test]
fn several_signatures_and_rotated_secrets() {
    let old = StandardWebhookVerifier::new([secret("whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZA==")]).unwrap();
    let new = StandardWebhookVerifier::new([secret(SVIX_SECRET)]).unwrap();
    let clock = ManualClock::at_unix(SVIX_TS).shared();
    // The receiver accepts both during rotation.
    let both = StandardWebhookVerifier::new([
        secret("whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZA=="),
        secret(SVIX_SECRET),
    ])
    .unwrap()
    .with_clock(clock.clone());
    for signer in [&old, &new] {
        let sig = signer.sign(SVIX_ID, SVIX_TS, SVIX_BODY);
        assert!(both.verify_parts(SVIX_ID, "1614265330", &sig, SVIX_BODY).is_ok());
    }
    // A header carrying a wrong signature and a right one is accepted.
    let header = format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= {SVIX_SIG}");
    let only_new = svix_at(SVIX_TS);
    assert!(
        only_new
            .verify_parts(SVIX_ID, "1614265330", &header, SVIX_BODY)
            .is_ok()
    );
    // Only the old secret configured: the new signature does not match.
    let only_old = StandardWebhookVerifier::new([secret("whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZA==")])
        .unwrap()
        .with_clock(clock);
    assert_eq!(
        only_old.verify_parts(SVIX_ID, "1614265330", SVIX_SIG, SVIX_BODY),
        Err(WebhookError::NoMatchingSignature)
    );
    // Unknown versions are ignored, not accepted.
    let v2 = SVIX_SIG.replacen("v1,", "v2,", 1);
    assert_eq!(
        only_new.verify_parts(SVIX_ID, "1614265330", &v2, SVIX_BODY),
        Err(WebhookError::MalformedHeader("webhook-signature"))
    );
}

#[test]
fn tolerance_edges_in_both_directions() {
    for (offset, ok) in [(-300, true), (-301, false), (300, true), (301, false), (0, true)] {
        let v = svix_at(SVIX_TS + offset);
        let result = v.verify_parts(SVIX_ID, "1614265330", SVIX_SIG, SVIX_BODY);
        assert_eq!(result.is_ok(), ok, "clock offset {offset}: {result:?}");
        if !ok {
            assert!(matches!(
                result,
                Err(WebhookError::TimestampOutsideTolerance { .. })
            ));
        }
    }
    let wide = svix_at(SVIX_TS + 3600).with_tolerance(Duration::from_secs(3600));
    assert!(
        wide.verify_parts(SVIX_ID, "1614265330", SVIX_SIG, SVIX_BODY)
            .is_ok()
    );
}

#[test]
fn distinct_reasons_for_missing_and_malformed_headers() {
    let v = svix_at(SVIX_TS);
    let missing = headers(&[
        ("webhook-timestamp", "1614265330"),
        ("webhook-signature", SVIX_SIG),
    ]);
    assert_eq!(
        v.verify(&missing, SVIX_BODY),
        Err(WebhookError::MissingHeader("webhook-id"))
    );
    let bad_ts = headers(&[
        ("webhook-id", SVIX_ID),
        ("webhook-timestamp", "yesterday"),
        ("webhook-signature", SVIX_SIG),
    ]);
    assert_eq!(
        v.verify(&bad_ts, SVIX_BODY),
        Err(WebhookError::MalformedHeader("webhook-timestamp"))
    );
    assert_eq!(
        v.verify_parts(SVIX_ID, "1614265330", "garbage", SVIX_BODY),
        Err(WebhookError::MalformedHeader("webhook-signature"))
    );
    let err: Error = WebhookError::NoMatchingSignature.into();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    let err: Error = WebhookError::MissingHeader("webhook-id").into();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn bad_secrets_are_config_errors_that_do_not_echo_the_secret() {
    let err = StandardWebhookVerifier::new([secret("whsec_not*base64!")]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(!err.to_string().contains("not*base64"), "{err}");
    assert!(!format!("{err:?}").contains("not*base64"));
    assert_eq!(
        StandardWebhookVerifier::new(Vec::<SecretString>::new())
            .unwrap_err()
            .kind(),
        ErrorKind::Config
    );
    assert_eq!(
        StripeWebhookVerifier::new([secret("")]).unwrap_err().kind(),
        ErrorKind::Config
    );
    assert_eq!(
        StripeWebhookVerifier::new([secret("  ")]).unwrap_err().kind(),
        ErrorKind::Config
    );
    // An empty HMAC key would accept signatures anyone can compute: refused, even
    // next to a good secret.
    for empty in ["", "  ", "whsec_", " whsec_ "] {
        let err = StandardWebhookVerifier::new([secret(SVIX_SECRET), secret(empty)]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{empty:?}");
        assert!(err.to_string().contains("webhook secret #2 is empty"), "{err}");
    }
}

// --- Stripe ---------------------------------------------------------------

const STRIPE_SECRET: &str = "whsec_test_secret";
const STRIPE_TS: i64 = 1_700_000_000;
const STRIPE_BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
/// HMAC-SHA256("whsec_test_secret", "1700000000." + body), computed independently
/// with Python's `hmac` module.
const STRIPE_SIG: &str = "0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd";

fn stripe_at(now: i64, secrets: &[&str]) -> StripeWebhookVerifier {
    StripeWebhookVerifier::new(secrets.iter().map(|s| secret(s)))
        .unwrap()
        .with_clock(ManualClock::at_unix(now).shared())
}

#[test]
fn stripe_accepts_an_independently_computed_signature() {
    let v = stripe_at(STRIPE_TS, &[STRIPE_SECRET]);
    let header = format!("t={STRIPE_TS},v1={STRIPE_SIG}");
    assert_eq!(
        v.verify_header(&header, STRIPE_BODY).unwrap().timestamp(),
        STRIPE_TS
    );
    assert_eq!(v.sign(STRIPE_TS, STRIPE_BODY), header);
    let h = headers(&[("stripe-signature", &header)]);
    assert!(v.verify(&h, STRIPE_BODY).is_ok());
}

/// A secret read from a file often ends in a newline: it is trimmed, as for Standard
/// Webhooks secrets, rather than becoming a different HMAC key.
#[test]
fn stripe_trims_its_secret() {
    for padded in ["whsec_test_secret\n", " whsec_test_secret \r\n"] {
        let v = stripe_at(STRIPE_TS, &[padded]);
        let header = format!("t={STRIPE_TS},v1={STRIPE_SIG}");
        assert!(v.verify_header(&header, STRIPE_BODY).is_ok(), "{padded:?}");
    }
}

#[test]
fn stripe_multi_signature_header_and_rotation() {
    let v = stripe_at(STRIPE_TS, &[STRIPE_SECRET]);
    let header = format!("t={STRIPE_TS},v1={},v1={STRIPE_SIG},v0=deadbeef", "ab".repeat(32));
    assert!(v.verify_header(&header, STRIPE_BODY).is_ok());

    let rotated = stripe_at(STRIPE_TS, &["whsec_new_secret", STRIPE_SECRET]);
    assert!(
        rotated
            .verify_header(&format!("t={STRIPE_TS},v1={STRIPE_SIG}"), STRIPE_BODY)
            .is_ok()
    );
    let new_sig = stripe_at(STRIPE_TS, &["whsec_new_secret"]).sign(STRIPE_TS, STRIPE_BODY);
    assert!(rotated.verify_header(&new_sig, STRIPE_BODY).is_ok());
    assert_eq!(
        v.verify_header(&new_sig, STRIPE_BODY),
        Err(WebhookError::NoMatchingSignature)
    );
}

#[test]
fn stripe_refuses_tampering_bad_headers_and_stale_timestamps() {
    let v = stripe_at(STRIPE_TS, &[STRIPE_SECRET]);
    let header = format!("t={STRIPE_TS},v1={STRIPE_SIG}");
    assert_eq!(
        v.verify_header(&header, br#"{"id":"evt_2","object":"event"}"#),
        Err(WebhookError::NoMatchingSignature)
    );
    // The timestamp is part of what is signed.
    assert_eq!(
        stripe_at(STRIPE_TS + 1, &[STRIPE_SECRET])
            .verify_header(&format!("t={},v1={STRIPE_SIG}", STRIPE_TS + 1), STRIPE_BODY),
        Err(WebhookError::NoMatchingSignature)
    );
    assert_eq!(
        v.verify_header(&format!("v1={STRIPE_SIG}"), STRIPE_BODY),
        Err(WebhookError::MalformedHeader("stripe-signature"))
    );
    assert_eq!(
        v.verify_header("t=abc,v1=00", STRIPE_BODY),
        Err(WebhookError::MalformedHeader("stripe-signature"))
    );
    assert_eq!(
        v.verify_header(&format!("t={STRIPE_TS}"), STRIPE_BODY),
        Err(WebhookError::NoMatchingSignature)
    );
    assert_eq!(
        v.verify(&HeaderMap::new(), STRIPE_BODY),
        Err(WebhookError::MissingHeader("stripe-signature"))
    );
    for (offset, ok) in [(300, true), (301, false), (-300, true), (-301, false)] {
        let result = stripe_at(STRIPE_TS + offset, &[STRIPE_SECRET]).verify_header(&header, STRIPE_BODY);
        assert_eq!(result.is_ok(), ok, "offset {offset}: {result:?}");
    }
}

#[test]
fn debug_and_errors_never_print_secrets() {
    let svix = svix_at(SVIX_TS);
    let stripe = stripe_at(STRIPE_TS, &[STRIPE_SECRET]);
    let shown = format!("{svix:?} {stripe:?}");
    assert!(!shown.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "{shown}");
    assert!(!shown.contains("test_secret"), "{shown}");
    assert!(shown.contains("redacted"));
    let errors = [
        svix.verify_parts(SVIX_ID, "1614265330", SVIX_SIG, b"x")
            .unwrap_err(),
        stripe.verify_header("t=1,v1=00", b"x").unwrap_err(),
    ];
    for e in errors {
        let e: Error = e.into();
        let text = format!("{e} {e:?}");
        assert!(
            !text.contains("MfKQ9r8") && !text.contains("test_secret"),
            "{text}"
        );
    }
}
