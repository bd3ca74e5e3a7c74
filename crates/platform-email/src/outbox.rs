//! [`OutboxMailer`]: the local default. Every message becomes a standard `.eml` file
//! (RFC 5322, `multipart/alternative` text + HTML) in a directory, which any mail
//! client opens.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mail_builder::MessageBuilder;
use mail_builder::headers::HeaderType;
use mail_builder::headers::address::Address;
use mail_builder::headers::text::Text;
use platform_core::{DynClock, Error, Result, system_clock};

use crate::Mailer;
use crate::local::{LocalCore, Sink};
use crate::types::{Batch, BatchReport, Email, MessageId, parse_mailbox};

/// The header listing a message's tags in `.eml` files (`name=value, name=value`).
pub const TAGS_HEADER: &str = "X-Platform-Tags";

/// A [`Mailer`] that writes each message as `<outbox>/<UTC timestamp>-<id>.eml`.
///
/// Files are written atomically (a temporary file, flushed, then renamed), and a
/// batch chunk is written all-or-nothing: a failure removes the chunk's files.
/// Validation and idempotency keys behave exactly as with the real provider (keys
/// are remembered for 24 hours, in this process).
#[derive(Clone)]
pub struct OutboxMailer {
    core: Arc<LocalCore>,
    sink: Arc<OutboxSink>,
}

struct OutboxSink {
    dir: PathBuf,
    clock: DynClock,
}

impl fmt::Debug for OutboxMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxMailer")
            .field("dir", &self.sink.dir)
            .finish_non_exhaustive()
    }
}

impl OutboxMailer {
    /// An outbox in `dir` (created if missing) on the system clock.
    ///
    /// # Errors
    /// `Config` if the directory cannot be created.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        Self::with_clock(dir, system_clock())
    }

    /// An outbox whose `Date` headers and file names come from `clock`.
    ///
    /// # Errors
    /// `Config` if the directory cannot be created.
    pub fn with_clock(dir: impl Into<PathBuf>, clock: DynClock) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::config(format!("cannot create the email outbox {}", dir.display())).with_source(e)
        })?;
        Ok(Self {
            core: Arc::new(LocalCore::default()),
            sink: Arc::new(OutboxSink { dir, clock }),
        })
    }

    /// The outbox directory.
    pub fn dir(&self) -> &Path {
        &self.sink.dir
    }

    /// The `.eml` files in the outbox, sorted by name (so by time, then id).
    ///
    /// # Errors
    /// `Unavailable` if the directory cannot be read.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        let entries = std::fs::read_dir(&self.sink.dir).map_err(|e| {
            Error::new(platform_core::ErrorKind::Unavailable, "cannot read the outbox").with_source(e)
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        Ok(files)
    }

    /// The `.eml` file of message `id`, if it is in the outbox.
    ///
    /// # Errors
    /// As [`OutboxMailer::files`].
    pub fn file_of(&self, id: &MessageId) -> Result<Option<PathBuf>> {
        let suffix = format!("-{id}.eml");
        Ok(self.files()?.into_iter().find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&suffix))
        }))
    }
}

/// Renders `email` as an RFC 5322 message with id `id` sent at `date`:
/// `multipart/alternative` with the text and HTML bodies, every header of the
/// message, and its tags in [`TAGS_HEADER`].
///
/// # Errors
/// `InvalidInput` if the message does not validate.
pub fn render_eml(email: &Email, id: &MessageId, date: DateTime<Utc>) -> Result<Vec<u8>> {
    email.validate()?;
    let mut builder = MessageBuilder::new()
        .message_id(format!("{id}@outbox.platform.invalid"))
        .date(date.timestamp())
        .from(address(&email.from))
        .to(address_list(&email.to))
        .subject(email.subject.as_str());
    if !email.cc.is_empty() {
        builder = builder.cc(address_list(&email.cc));
    }
    if !email.bcc.is_empty() {
        builder = builder.bcc(address_list(&email.bcc));
    }
    if !email.reply_to.is_empty() {
        builder = builder.reply_to(address_list(&email.reply_to));
    }
    for (name, value) in &email.headers {
        builder = builder.header(name.as_str(), HeaderType::Text(Text::new(value.as_str())));
    }
    if !email.tags.is_empty() {
        let tags: Vec<String> = email
            .tags
            .iter()
            .map(|t| format!("{}={}", t.name, t.value))
            .collect();
        builder = builder.header(TAGS_HEADER, HeaderType::Text(Text::new(tags.join(", "))));
    }
    if let Some(text) = &email.text {
        builder = builder.text_body(text.as_str());
    }
    if let Some(html) = &email.html {
        builder = builder.html_body(html.as_str());
    }
    builder
        .write_to_vec()
        .map_err(|e| Error::unexpected("cannot render the message").with_source(e))
}

fn address(raw: &str) -> Address<'_> {
    match parse_mailbox(raw) {
        Ok(m) => Address::new_address(m.name, m.address),
        Err(_) => Address::new_address(None::<&str>, raw),
    }
}

fn address_list(list: &[String]) -> Address<'_> {
    Address::new_list(list.iter().map(|a| address(a)).collect())
}

#[async_trait]
impl Sink for OutboxSink {
    async fn deliver(&self, emails: &[Email]) -> Result<Vec<MessageId>> {
        let now = self.clock.now();
        let stamp = now.format("%Y%m%dT%H%M%SZ").to_string();
        let mut files = Vec::with_capacity(emails.len());
        let mut ids = Vec::with_capacity(emails.len());
        for email in emails {
            let id = MessageId::new(uuid::Uuid::new_v4().to_string());
            let bytes = render_eml(email, &id, now)?;
            files.push((self.dir.join(format!("{stamp}-{id}.eml")), bytes));
            ids.push(id);
        }
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_all_or_nothing(&dir, files))
            .await
            .map_err(|e| Error::unexpected("the outbox writer stopped").with_source(e))??;
        tracing::debug!(
            provider = "outbox",
            operation = "send",
            count = ids.len(),
            outcome = "ok"
        );
        Ok(ids)
    }
}

/// Writes every file through a temporary file and a rename; on any failure removes
/// what was written, so a chunk is all or nothing.
fn write_all_or_nothing(dir: &Path, files: Vec<(PathBuf, Vec<u8>)>) -> Result<()> {
    let mut written: Vec<PathBuf> = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        if let Err(e) = write_atomic(dir, &path, &bytes) {
            for done in &written {
                let _ = std::fs::remove_file(done);
            }
            return Err(Error::new(
                platform_core::ErrorKind::Unavailable,
                format!("cannot write {} to the outbox", path.display()),
            )
            .with_provider("outbox")
            .with_operation("send")
            .with_source(e));
        }
        written.push(path);
    }
    Ok(())
}

fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("message.eml");
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Runs one delivery on a task of its own, so that a caller cancelled mid-write (an
/// attempt timeout, a shutdown) does not stop it between writing a message and
/// recording its idempotency key: the retry then finds the key and its message id
/// instead of writing the message a second time.
async fn uncancellable<T: Send + 'static>(
    delivery: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(delivery).await.map_err(|e| {
        Error::unexpected(format!("the outbox delivery task failed: {e}")).with_provider("outbox")
    })?
}

#[async_trait]
impl Mailer for OutboxMailer {
    async fn send(&self, email: &Email) -> Result<MessageId> {
        let (core, sink, email) = (self.core.clone(), self.sink.clone(), email.clone());
        uncancellable(async move { core.send(&*sink, &email).await }).await
    }

    async fn send_batch(&self, batch: &Batch) -> Result<BatchReport> {
        let (core, sink, batch) = (self.core.clone(), self.sink.clone(), batch.clone());
        uncancellable(async move { core.send_batch(&*sink, &batch).await }).await
    }
}
