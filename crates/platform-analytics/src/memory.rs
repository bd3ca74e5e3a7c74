//! [`LocalAnalytics`]: the embedded default. Records events in memory (with a
//! query API for tests), optionally appends them as JSON lines to a file, and
//! answers feature flags from static configuration. No network, no keys.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use platform_core::{Error, ErrorKind, Result};

use crate::Analytics;
use crate::pipeline::{Counters, Enricher, EnricherSettings, log_drop};
use crate::types::{AnalyticsEvent, FeatureFlags, FlagState, FlushReport, validate_text};

/// Feature flags from configuration: defaults for everyone, overrides per user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StaticFlags {
    defaults: FeatureFlags,
    users: HashMap<String, FeatureFlags>,
}

impl StaticFlags {
    /// No flags: everything is off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every user gets `flags`.
    pub fn from_flags(flags: FeatureFlags) -> Self {
        Self {
            defaults: flags,
            users: HashMap::new(),
        }
    }

    /// Sets flag `key` for everyone.
    #[must_use]
    pub fn with_flag(mut self, key: impl Into<String>, state: FlagState) -> Self {
        self.defaults = self.defaults.with(key, state);
        self
    }

    /// Sets flag `key` for `distinct_id` only (overrides the default).
    #[must_use]
    pub fn with_user_flag(
        mut self,
        distinct_id: impl Into<String>,
        key: impl Into<String>,
        state: FlagState,
    ) -> Self {
        let entry = self.users.entry(distinct_id.into()).or_default();
        *entry = std::mem::take(entry).with(key, state);
        self
    }

    /// The flags `distinct_id` gets.
    pub fn for_user(&self, distinct_id: &str) -> FeatureFlags {
        let mut flags = self.defaults.clone();
        if let Some(user) = self.users.get(distinct_id) {
            for key in user.keys() {
                if let (Some(value), payload) = (user.value(key), user.payload(key)) {
                    flags = flags.with(
                        key,
                        FlagState {
                            value: value.clone(),
                            payload: payload.cloned(),
                        },
                    );
                }
            }
        }
        flags
    }
}

/// Settings of a [`LocalAnalytics`].
pub struct LocalAnalyticsBuilder {
    enricher: EnricherSettings,
    capacity: usize,
    flags: StaticFlags,
    jsonl_path: Option<PathBuf>,
}

impl fmt::Debug for LocalAnalyticsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalAnalyticsBuilder")
            .field("enrichment", &self.enricher.enrichment)
            .field("capacity", &self.capacity)
            .field("jsonl_path", &self.jsonl_path)
            .field("before_send", &self.enricher.before_send.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for LocalAnalyticsBuilder {
    fn default() -> Self {
        Self {
            enricher: EnricherSettings::default(),
            capacity: LocalAnalytics::DEFAULT_CAPACITY,
            flags: StaticFlags::default(),
            jsonl_path: None,
        }
    }
}

impl LocalAnalyticsBuilder {
    /// The defaults: system clock, environment `development`, 100 000 events kept.
    pub fn new() -> Self {
        Self::default()
    }

    crate::pipeline::enricher_setters!();

    /// How many events are kept in memory; later events are dropped and counted,
    /// like the PostHog adapter's full queue. At least 1.
    #[must_use]
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// The flags [`Analytics::flags`] answers with.
    #[must_use]
    pub fn with_flags(mut self, flags: StaticFlags) -> Self {
        self.flags = flags;
        self
    }

    /// Also appends every recorded event as one JSON line to `path` (created if missing),
    /// written through: an event whose line cannot be written (e.g. the disk is full)
    /// is dropped and counted in [`FlushReport::dropped`], not recorded, and the part of
    /// its line that was written is cut back off the file, so the file holds whole
    /// lines only. The file should be this recorder's alone: lines another writer
    /// appends at the same moment could be cut with it.
    #[must_use]
    pub fn with_jsonl_file(mut self, path: impl AsRef<Path>) -> Self {
        self.jsonl_path = Some(path.as_ref().to_path_buf());
        self
    }

    /// Builds the recorder.
    ///
    /// # Errors
    /// `Config` if the JSON-lines file cannot be opened (the error names the path).
    pub fn build(self) -> Result<LocalAnalytics> {
        let file = match &self.jsonl_path {
            None => None,
            Some(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        Error::config(format!(
                            "cannot open analytics JSON-lines file {}",
                            path.display()
                        ))
                        .with_source(e)
                    })?,
            ),
        };
        Ok(self.finish(file))
    }

    fn finish(self, file: Option<File>) -> LocalAnalytics {
        LocalAnalytics {
            inner: Arc::new(Inner {
                enricher: self.enricher.build(),
                capacity: self.capacity,
                flags: self.flags,
                counters: Counters::default(),
                state: Mutex::new(State {
                    events: Vec::new(),
                    file,
                    closed: false,
                }),
            }),
        }
    }
}

/// The local analytics implementation: an in-memory recorder with a query API.
///
/// Cheap to clone; clones share the recorded events.
#[derive(Clone)]
pub struct LocalAnalytics {
    inner: Arc<Inner>,
}

struct Inner {
    enricher: Enricher,
    capacity: usize,
    flags: StaticFlags,
    counters: Counters,
    state: Mutex<State>,
}

struct State {
    events: Vec<AnalyticsEvent>,
    /// Unbuffered: each event's line is written whole or not at all (see
    /// [`append_line`]), so a failed write is that event's drop (counted), never bytes
    /// left in a buffer or in the file for a later line to follow.
    file: Option<File>,
    closed: bool,
}

impl fmt::Debug for LocalAnalytics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalAnalytics")
            .field("enricher", &self.inner.enricher)
            .field("capacity", &self.inner.capacity)
            .field("recorded", &self.lock().events.len())
            .finish_non_exhaustive()
    }
}

impl Default for LocalAnalytics {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalAnalytics {
    /// Events kept in memory by default.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// A recorder with the defaults (system clock, no file, no flags).
    pub fn new() -> Self {
        LocalAnalyticsBuilder::new().finish(None)
    }

    /// A builder to set the clock, enrichment, hook, capacity, flags and file.
    pub fn builder() -> LocalAnalyticsBuilder {
        LocalAnalyticsBuilder::new()
    }

    /// Every recorded event, in capture order, as enriched (and scrubbed) for delivery.
    pub fn events(&self) -> Vec<AnalyticsEvent> {
        self.lock().events.clone()
    }

    /// The recorded events named `name`, in capture order.
    pub fn events_named(&self, name: &str) -> Vec<AnalyticsEvent> {
        self.lock()
            .events
            .iter()
            .filter(|e| e.name() == name)
            .cloned()
            .collect()
    }

    /// The recorded events about `distinct_id`, in capture order.
    pub fn events_for(&self, distinct_id: &str) -> Vec<AnalyticsEvent> {
        self.lock()
            .events
            .iter()
            .filter(|e| e.distinct_id() == distinct_id)
            .cloned()
            .collect()
    }

    /// Forgets the recorded events (counters are kept; the file is untouched).
    pub fn clear(&self) {
        self.lock().events.clear();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, event: AnalyticsEvent) -> std::result::Result<(), &'static str> {
        let mut state = self.lock();
        if state.closed {
            return Err("captured after shutdown");
        }
        if state.events.len() >= self.inner.capacity {
            return Err("local recorder is full");
        }
        if let Some(file) = state.file.as_mut() {
            let written = serde_json::to_vec(&event)
                .map_err(std::io::Error::from)
                .and_then(|mut line| {
                    line.push(b'\n');
                    append_line(file, &line)
                });
            if let Err(e) = written {
                tracing::warn!(error = %e, "cannot append analytics event to the JSON-lines file");
                return Err("cannot append the event to the JSON-lines file");
            }
        }
        state.events.push(event);
        Ok(())
    }

    fn report(&self) -> FlushReport {
        self.inner.counters.report(0)
    }
}

#[async_trait]
impl Analytics for LocalAnalytics {
    fn capture(&self, event: AnalyticsEvent) {
        let Some(event) = self.inner.enricher.prepare(event) else {
            self.inner.counters.add_filtered();
            return;
        };
        match self.record(event) {
            Ok(()) => self.inner.counters.add_delivered(1),
            Err(reason) => {
                let total = self.inner.counters.add_dropped(1);
                log_drop(total, 1, reason);
            }
        }
    }

    async fn capture_now(&self, event: AnalyticsEvent) -> Result<()> {
        if self.lock().closed {
            return Err(shut_down("capture_now"));
        }
        let Some(event) = self.inner.enricher.prepare(event) else {
            self.inner.counters.add_filtered();
            return Ok(());
        };
        match self.record(event) {
            Ok(()) => {
                self.inner.counters.add_delivered(1);
                Ok(())
            }
            Err(reason) => Err(Error::new(ErrorKind::Unavailable, reason)
                .with_provider("local")
                .with_operation("capture_now")),
        }
    }

    async fn flags(&self, distinct_id: &str) -> Result<crate::FeatureFlags> {
        validate_text("distinct_id", distinct_id, 200)?;
        Ok(self.inner.flags.for_user(distinct_id))
    }

    async fn flush(&self, _timeout: Duration) -> FlushReport {
        self.report()
    }

    async fn shutdown(&self, _timeout: Duration) -> FlushReport {
        self.lock().closed = true;
        self.report()
    }
}

fn shut_down(operation: &'static str) -> Error {
    Error::new(ErrorKind::Unavailable, "the analytics client is shut down")
        .with_provider("local")
        .with_operation(operation)
}

/// A file a line can be cut back from.
trait CutBack {
    /// Where the file ends now, when it can be cut back to there (a regular file).
    fn end(&self) -> Option<u64>;
    /// Cuts the file back to `len` bytes.
    fn cut_back(&self, len: u64) -> io::Result<()>;
}

impl CutBack for File {
    fn end(&self) -> Option<u64> {
        self.metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len())
    }

    fn cut_back(&self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
}

/// Appends `line` to `file` whole or not at all: a write that fails partway (the disk
/// filled up mid-line) is cut back to where the file ended before it, so that no half
/// line is left for the next line to follow. The file is the recorder's alone: lines
/// another writer appended meanwhile would be cut too.
fn append_line(file: &mut (impl Write + CutBack), line: &[u8]) -> io::Result<()> {
    let end = file.end();
    let written = file.write_all(line);
    if written.is_err()
        && let Some(end) = end
        && let Err(e) = file.cut_back(end)
    {
        tracing::warn!(error = %e, "cannot cut a partly written line off the analytics JSON-lines file");
    }
    written
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    /// A file that takes `room` more bytes, then fails as a full disk does.
    struct FillsUp {
        file: File,
        room: usize,
    }

    impl Write for FillsUp {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from(io::ErrorKind::StorageFull));
            }
            let n = self.file.write(&buf[..buf.len().min(self.room)])?;
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.file.flush()
        }
    }

    impl CutBack for FillsUp {
        fn end(&self) -> Option<u64> {
            self.file.end()
        }

        fn cut_back(&self, len: u64) -> io::Result<()> {
            self.file.cut_back(len)
        }
    }

    /// A line the disk takes only part of is cut back off the file, so the lines
    /// before it stay whole and the next line starts where they end.
    #[test]
    fn a_line_written_only_in_part_is_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let mut file = FillsUp { file, room: 20 };
        append_line(&mut file, b"{\"n\":1}\n").unwrap();
        let err = append_line(&mut file, b"{\"n\":2,\"long\":\"enough to fill up\"}\n").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":1}\n");
        file.room = 100;
        append_line(&mut file, b"{\"n\":3}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":1}\n{\"n\":3}\n");
    }
}
