//! Provider-neutral messages, batches and their outcomes, with the up-front validation
//! every [`Mailer`](crate::Mailer) runs before anything is sent.

use std::collections::BTreeMap;
use std::fmt;

use platform_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use crate::sender::Sender;
use crate::templates::EmailTemplate;

/// The most messages one provider request carries (Resend's documented batch limit).
pub const BATCH_CHUNK_SIZE: usize = 100;

/// The most addresses in each of `to`, `cc` and `bcc` (Resend's documented limit for `to`).
pub const MAX_RECIPIENTS: usize = 50;

/// The longest idempotency key a caller may supply (Resend allows 256; batch chunks
/// append `/<chunk>` to the caller's key).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 240;

/// The header carrying the platform's user id, so threads group per user in mail
/// clients and support can find a user's messages.
pub const ENTITY_REF_HEADER: &str = "X-Entity-Ref-ID";

/// Headers the mailer sets itself; callers may not add them through
/// [`Email::with_header`].
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "sender",
];

/// The id a mailer assigned to a sent message (Resend's email id, or the local
/// outbox's own id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

impl MessageId {
    /// Wraps an id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for MessageId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A tag attached to a message, reported back by the provider in delivery webhooks
/// (`name` and `value`: ASCII letters, digits, `_` and `-`, at most 256 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tag {
    /// The tag's name.
    pub name: String,
    /// The tag's value.
    pub value: String,
}

impl Tag {
    /// A tag `name=value`.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// One message: sender, recipients, subject, bodies, headers, tags.
///
/// Addresses are plain text (`user@example.com` or `Name <user@example.com>`) and
/// are validated when the message is sent, with an error naming the field
/// (`to[2]`, `reply_to[0]`, …). Build it with [`Email::new`] and the `with_*`
/// methods, or from a template with [`Email::from_template`].
///
/// It serialises to JSON (for job payloads) with every field by its name; empty
/// lists, maps and absent bodies may be left out when deserialising. Its `Debug` form
/// shows the bodies' lengths and the headers' names, not their contents: they may
/// carry one-time links (a password reset, an unsubscribe link) that logs must not
/// keep.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Email {
    /// The sender, `Name <address>` or `address`.
    pub from: String,
    /// Primary recipients (1 to 50).
    pub to: Vec<String>,
    /// Carbon-copy recipients (at most 50).
    #[serde(default)]
    pub cc: Vec<String>,
    /// Blind carbon-copy recipients (at most 50).
    #[serde(default)]
    pub bcc: Vec<String>,
    /// Where replies go (at most 50).
    #[serde(default)]
    pub reply_to: Vec<String>,
    /// The subject line (one line, not empty).
    pub subject: String,
    /// The HTML body.
    #[serde(default)]
    pub html: Option<String>,
    /// The plain-text body.
    #[serde(default)]
    pub text: Option<String>,
    /// Extra headers, e.g. [`ENTITY_REF_HEADER`].
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Tags reported back in delivery events.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// A key that makes sending this message again a no-op (same id back) for 24 hours
    /// at Resend; for the life of the process locally. Not allowed inside a [`Batch`]
    /// (set [`Batch::idempotency_key`] instead).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A message body in `Debug` output: its length only (see [`Email`]).
pub(crate) struct BodyLen<'a>(pub(crate) &'a str);

impl fmt::Debug for BodyLen<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Email")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("cc", &self.cc)
            .field("bcc", &self.bcc)
            .field("reply_to", &self.reply_to)
            .field("subject", &self.subject)
            .field("html", &self.html.as_deref().map(BodyLen))
            .field("text", &self.text.as_deref().map(BodyLen))
            // Names only: a value may be a link with a token (`List-Unsubscribe`).
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("tags", &self.tags)
            .field("idempotency_key", &self.idempotency_key)
            .finish()
    }
}

impl Email {
    /// A message from `from` to `to` with `subject` and no body yet.
    pub fn new(
        from: impl Into<String>,
        to: impl IntoIterator<Item = impl Into<String>>,
        subject: impl Into<String>,
    ) -> Self {
        Self {
            from: from.into(),
            to: to.into_iter().map(Into::into).collect(),
            cc: Vec::new(),
            bcc: Vec::new(),
            reply_to: Vec::new(),
            subject: subject.into(),
            html: None,
            text: None,
            headers: BTreeMap::new(),
            tags: Vec::new(),
            idempotency_key: None,
        }
    }

    /// A message rendered from `template`, sent from `sender` (its `from` and
    /// `reply_to`) to `to`, tagged `template=<name>`.
    ///
    /// # Errors
    /// Whatever [`EmailTemplate::render`] returns (`InvalidInput` for bad template data).
    pub fn from_template<T: EmailTemplate + ?Sized>(
        sender: &Sender,
        to: impl Into<String>,
        template: &T,
    ) -> Result<Self> {
        let rendered = template.render()?;
        let mut email = Self::new(sender.from.clone(), [to.into()], rendered.subject)
            .with_html(rendered.html)
            .with_text(rendered.text)
            .with_tag("template", template.name());
        if let Some(reply_to) = &sender.reply_to {
            email = email.with_reply_to(reply_to.clone());
        }
        Ok(email)
    }

    /// Sets the HTML body.
    #[must_use]
    pub fn with_html(mut self, html: impl Into<String>) -> Self {
        self.html = Some(html.into());
        self
    }

    /// Sets the plain-text body.
    #[must_use]
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// Adds a `cc` recipient.
    #[must_use]
    pub fn with_cc(mut self, address: impl Into<String>) -> Self {
        self.cc.push(address.into());
        self
    }

    /// Adds a `bcc` recipient.
    #[must_use]
    pub fn with_bcc(mut self, address: impl Into<String>) -> Self {
        self.bcc.push(address.into());
        self
    }

    /// Adds a `reply_to` address.
    #[must_use]
    pub fn with_reply_to(mut self, address: impl Into<String>) -> Self {
        self.reply_to.push(address.into());
        self
    }

    /// Sets a header (replacing an earlier value of the same name).
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the [`ENTITY_REF_HEADER`] (`X-Entity-Ref-ID`) to the platform user's id.
    #[must_use]
    pub fn with_entity_ref(self, user_id: impl Into<String>) -> Self {
        self.with_header(ENTITY_REF_HEADER, user_id)
    }

    /// Adds a tag.
    #[must_use]
    pub fn with_tag(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.push(Tag::new(name, value));
        self
    }

    /// Sets the idempotency key (see [`Email::idempotency_key`]).
    #[must_use]
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Checks everything a provider would reject, so nothing invalid is ever sent.
    ///
    /// # Errors
    /// `InvalidInput` naming the first bad field: `from`, `to`, `to[2]`, `cc[0]`,
    /// `bcc[0]`, `reply_to[0]`, `subject`, `body`, `headers.<name>`, `tags[0].name`,
    /// `idempotency_key`.
    pub fn validate(&self) -> Result<()> {
        self.validate_at("")
    }

    /// [`validate`](Self::validate) with every field name prefixed (`emails[3].`).
    pub(crate) fn validate_at(&self, prefix: &str) -> Result<()> {
        let field = |name: &str| format!("{prefix}{name}");
        check_mailbox(&self.from).map_err(|why| invalid(&field("from"), &why))?;
        if self.to.is_empty() {
            return Err(invalid(&field("to"), "at least one recipient is required"));
        }
        for (name, list) in [
            ("to", &self.to),
            ("cc", &self.cc),
            ("bcc", &self.bcc),
            ("reply_to", &self.reply_to),
        ] {
            if list.len() > MAX_RECIPIENTS {
                return Err(invalid(
                    &field(name),
                    &format!("{} addresses given, at most {MAX_RECIPIENTS} allowed", list.len()),
                ));
            }
            for (i, address) in list.iter().enumerate() {
                check_mailbox(address).map_err(|why| invalid(&field(&format!("{name}[{i}]")), &why))?;
            }
        }
        if self.subject.trim().is_empty() {
            return Err(invalid(&field("subject"), "must not be empty"));
        }
        if has_line_break(&self.subject) {
            return Err(invalid(&field("subject"), "must be one line (no CR or LF)"));
        }
        let html_empty = self.html.as_deref().is_none_or(|h| h.trim().is_empty());
        let text_empty = self.text.as_deref().is_none_or(|t| t.trim().is_empty());
        if html_empty && text_empty {
            return Err(invalid(
                &field("body"),
                "an HTML or a plain-text body is required",
            ));
        }
        for (name, value) in &self.headers {
            let at = field(&format!("headers.{name}"));
            let valid_name = !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
            if !valid_name {
                return Err(invalid(
                    &at,
                    "header names are printable ASCII without ':' or spaces",
                ));
            }
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(invalid(
                    &at,
                    "this header is set by the mailer; use the Email field",
                ));
            }
            if has_line_break(value) {
                return Err(invalid(&at, "header values must be one line (no CR or LF)"));
            }
        }
        for (i, tag) in self.tags.iter().enumerate() {
            check_tag_part(&tag.name, false)
                .map_err(|why| invalid(&field(&format!("tags[{i}].name")), &why))?;
            check_tag_part(&tag.value, true)
                .map_err(|why| invalid(&field(&format!("tags[{i}].value")), &why))?;
        }
        if let Some(key) = &self.idempotency_key {
            check_idempotency_key(key).map_err(|why| invalid(&field("idempotency_key"), &why))?;
        }
        Ok(())
    }

    /// This message without its idempotency key (what keys are compared on).
    pub(crate) fn without_key(&self) -> Self {
        Self {
            idempotency_key: None,
            ..self.clone()
        }
    }
}

/// Many messages sent together, in chunks of at most [`BATCH_CHUNK_SIZE`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Batch {
    /// The messages, in order.
    pub emails: Vec<Email>,
    /// A caller-chosen key; chunk `n` is sent with the key `<key>/<n>`, so sending the
    /// same batch again with the same key never delivers a message twice.
    pub idempotency_key: Option<String>,
}

impl Batch {
    /// A batch of `emails`.
    pub fn new(emails: impl IntoIterator<Item = Email>) -> Self {
        Self {
            emails: emails.into_iter().collect(),
            idempotency_key: None,
        }
    }

    /// Sets the batch's idempotency key.
    #[must_use]
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Validates every message (fields named `emails[3].to[0]`, …) and the key.
    ///
    /// # Errors
    /// `InvalidInput` naming the first bad field; also when a message carries its own
    /// idempotency key (batches are de-duplicated per chunk, by the batch key).
    pub fn validate(&self) -> Result<()> {
        for (i, email) in self.emails.iter().enumerate() {
            let prefix = format!("emails[{i}].");
            email.validate_at(&prefix)?;
            if email.idempotency_key.is_some() {
                return Err(invalid(
                    &format!("{prefix}idempotency_key"),
                    "not supported inside a batch; set the batch's idempotency key",
                ));
            }
        }
        if let Some(key) = &self.idempotency_key {
            check_idempotency_key(key).map_err(|why| invalid("idempotency_key", &why))?;
        }
        Ok(())
    }

    /// The idempotency key of chunk `index` derived from `base`.
    pub fn chunk_key(base: &str, index: usize) -> String {
        format!("{base}/{index}")
    }
}

/// What happened to each message of a [`Batch`], in the batch's order.
///
/// A batch never fails silently in part: every message has its own outcome, and
/// [`BatchReport::into_result`] turns any failure into an error.
#[derive(Debug, Default)]
#[must_use = "a batch may fail in part; check the report"]
pub struct BatchReport {
    outcomes: Vec<Result<MessageId>>,
}

impl BatchReport {
    /// A report from per-message outcomes.
    pub fn new(outcomes: Vec<Result<MessageId>>) -> Self {
        Self { outcomes }
    }

    /// Each message's outcome, in the batch's order.
    pub fn outcomes(&self) -> &[Result<MessageId>] {
        &self.outcomes
    }

    /// The number of messages in the batch.
    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    /// Whether the batch was empty.
    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    /// The ids of the messages that were sent, in order.
    pub fn sent(&self) -> impl Iterator<Item = &MessageId> {
        self.outcomes.iter().filter_map(|o| o.as_ref().ok())
    }

    /// The messages that failed, as `(index in the batch, error)`.
    pub fn failures(&self) -> impl Iterator<Item = (usize, &Error)> {
        self.outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.as_ref().err().map(|e| (i, e)))
    }

    /// How many messages were sent.
    pub fn sent_count(&self) -> usize {
        self.sent().count()
    }

    /// How many messages failed.
    pub fn failed_count(&self) -> usize {
        self.len() - self.sent_count()
    }

    /// Whether every message was sent.
    pub fn is_complete(&self) -> bool {
        self.outcomes.iter().all(Result::is_ok)
    }

    /// Every id in order, or the first failure (its message says how many failed).
    ///
    /// # Errors
    /// The first failed message's error kind, naming its index.
    pub fn into_result(self) -> Result<Vec<MessageId>> {
        let failed = self.failed_count();
        let total = self.len();
        let mut ids = Vec::with_capacity(total);
        for (i, outcome) in self.outcomes.into_iter().enumerate() {
            match outcome {
                Ok(id) => ids.push(id),
                Err(e) => {
                    let message = format!(
                        "{failed} of {total} messages failed; emails[{i}]: {}",
                        e.message()
                    );
                    return Err(copy_error(&e, message).with_source(e));
                }
            }
        }
        Ok(ids)
    }
}

/// A new error with `err`'s kind, provider, operation, status, request id and
/// retry-after, and `message` (errors are not `Clone`; batches report one failure
/// for every message of a chunk).
pub(crate) fn copy_error(err: &Error, message: impl Into<String>) -> Error {
    let mut copy = Error::new(err.kind(), message.into());
    if let Some(p) = err.provider() {
        copy = copy.with_provider(p);
    }
    if let Some(op) = err.operation() {
        copy = copy.with_operation(op.to_owned());
    }
    if let Some(s) = err.status() {
        copy = copy.with_status(s);
    }
    if let Some(id) = err.request_id() {
        copy = copy.with_request_id(id);
    }
    if let Some(ra) = err.retry_after() {
        copy = copy.with_retry_after(ra);
    }
    copy
}

pub(crate) fn invalid(field: &str, why: &str) -> Error {
    Error::new(ErrorKind::InvalidInput, format!("{field}: {why}"))
}

fn has_line_break(s: &str) -> bool {
    s.contains(['\r', '\n'])
}

pub(crate) fn check_idempotency_key(key: &str) -> std::result::Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"));
    }
    if !key.bytes().all(|b| (33..=126).contains(&b)) {
        return Err("must be printable ASCII without spaces".to_owned());
    }
    Ok(())
}

fn check_tag_part(s: &str, allow_empty: bool) -> std::result::Result<(), String> {
    if s.is_empty() && !allow_empty {
        return Err("must not be empty".to_owned());
    }
    if s.len() > 256 {
        return Err("at most 256 characters".to_owned());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("only ASCII letters, digits, '_' and '-' are allowed".to_owned());
    }
    Ok(())
}

/// A parsed `Name <address>` or bare `address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mailbox<'a> {
    pub(crate) name: Option<&'a str>,
    pub(crate) address: &'a str,
}

/// Splits `Name <address>` / `address` (no validation beyond the shape).
pub(crate) fn parse_mailbox(raw: &str) -> std::result::Result<Mailbox<'_>, String> {
    let raw = raw.trim();
    if let Some(open) = raw.rfind('<') {
        let rest = &raw[open + 1..];
        let Some(address) = rest.strip_suffix('>') else {
            return Err("'<' without a closing '>'".to_owned());
        };
        let name = raw[..open].trim();
        let name = name
            .strip_prefix('"')
            .and_then(|n| n.strip_suffix('"'))
            .unwrap_or(name)
            .trim();
        Ok(Mailbox {
            name: (!name.is_empty()).then_some(name),
            address: address.trim(),
        })
    } else {
        Ok(Mailbox {
            name: None,
            address: raw,
        })
    }
}

/// Checks a mailbox: display name one line without `<>"`, address `local@domain`
/// with a dotted domain of letters, digits and hyphens.
pub(crate) fn check_mailbox(raw: &str) -> std::result::Result<(), String> {
    if raw.trim().is_empty() {
        return Err("an email address is required".to_owned());
    }
    if has_line_break(raw) {
        return Err("must be one line (no CR or LF)".to_owned());
    }
    let mailbox = parse_mailbox(raw)?;
    if let Some(name) = mailbox.name
        && name.contains(['<', '>', '"'])
    {
        return Err("display name must not contain '<', '>' or '\"'".to_owned());
    }
    check_address(mailbox.address).map_err(|why| format!("{why} (got {raw:?})"))
}

fn check_address(address: &str) -> std::result::Result<(), &'static str> {
    if address.len() > 254 {
        return Err("address longer than 254 characters");
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err("not an email address: missing '@'");
    };
    if local.is_empty() || local.len() > 64 {
        return Err("not an email address: the part before '@' must be 1 to 64 characters");
    }
    let local_ok = local
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    if !local_ok {
        return Err("not an email address: invalid characters before '@'");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err("not an email address: the domain needs a dot");
    }
    for label in labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("not an email address: invalid domain");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_shapes() {
        for ok in [
            "a@b.co",
            "Ada Lovelace <ada@example.com>",
            "\"Support, Arbor\" <support@arbor.example.com>",
            "first.last+tag@sub.example.org",
        ] {
            assert!(check_mailbox(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "plain",
            "a@b",
            "a@@b.com",
            "@b.com",
            "a@.com",
            "a b@c.com",
            "Name <a@b.com",
            "a@b.com\r\nBcc: x@y.com",
            "a..b@c.com",
            "a@-b.com",
        ] {
            assert!(check_mailbox(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parse_mailbox_splits_name() {
        let m = parse_mailbox("\"Arbor\" <noreply@arbor.example.com>").ok();
        assert_eq!(
            m,
            Some(Mailbox {
                name: Some("Arbor"),
                address: "noreply@arbor.example.com"
            })
        );
    }
}
