//! Typed email templates: each template is a Rust type whose fields are the data it
//! needs, and renders a subject, an HTML body (user data escaped) and a plain-text
//! body.
//!
//! The bundled templates use [askama](https://docs.rs/askama) (compile-time checked
//! templates under `templates/`). Products add their own by implementing
//! [`EmailTemplate`] in their crates, with askama or anything that produces text.

use std::fmt::Display;

use platform_core::{Error, Result};

pub mod arbor;
pub mod kumori;
pub mod shared;

pub use arbor::{AgentComplete, QuotaWarning};
pub use kumori::{GenerationComplete, NewFollower};
pub use shared::{PasswordReset, Welcome};

/// A rendered message: subject, HTML and plain text. Its `Debug` form shows the
/// bodies' lengths only, as [`Email`](crate::Email)'s does.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RenderedEmail {
    /// The subject line.
    pub subject: String,
    /// The HTML body, user data escaped.
    pub html: String,
    /// The plain-text body.
    pub text: String,
}

impl std::fmt::Debug for RenderedEmail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderedEmail")
            .field("subject", &self.subject)
            .field("html", &crate::types::BodyLen(&self.html))
            .field("text", &crate::types::BodyLen(&self.text))
            .finish()
    }
}

impl RenderedEmail {
    /// A rendered message from its parts.
    pub fn new(subject: impl Into<String>, html: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            html: html.into(),
            text: text.into(),
        }
    }

    /// Renders `html` and `text` (anything `Display`, such as askama templates) into
    /// a message with `subject`.
    ///
    /// # Errors
    /// `Unexpected` if a template fails to render.
    pub fn render(subject: impl Into<String>, html: &impl Display, text: &impl Display) -> Result<Self> {
        use std::fmt::Write as _;
        let mut html_out = String::new();
        write!(html_out, "{html}").map_err(|e| Error::unexpected("HTML template failed").with_source(e))?;
        let mut text_out = String::new();
        write!(text_out, "{text}").map_err(|e| Error::unexpected("text template failed").with_source(e))?;
        Ok(Self::new(subject, html_out, text_out))
    }
}

/// A message template: a type whose fields are the data it needs.
///
/// Implement it in a product crate to add a template; send it with
/// [`Email::from_template`](crate::Email::from_template) or
/// [`MailerExt::send_template`](crate::MailerExt::send_template).
pub trait EmailTemplate: Send + Sync {
    /// A stable name (`welcome`, `agent_complete`), sent as the `template` tag.
    fn name(&self) -> &'static str;

    /// Renders subject, HTML and text.
    ///
    /// # Errors
    /// `InvalidInput` naming the field when the data is unusable (e.g. a link that is
    /// not `http(s)`), `Unexpected` if rendering itself fails.
    fn render(&self) -> Result<RenderedEmail>;
}

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and attribute values, with the
/// same numeric entities as the bundled askama templates (`&#60;` for `<`).
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&#38;"),
            '<' => out.push_str("&#60;"),
            '>' => out.push_str("&#62;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Checks that a link placed in a message is an absolute `http`/`https` URL, so user
/// data can never become a `javascript:` link.
///
/// # Errors
/// `InvalidInput` naming `field`.
pub fn check_link(field: &str, url: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::invalid_input(format!("{field}: not an absolute URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(Error::invalid_input(format!("{field}: must be an http(s) URL")));
    }
    Ok(())
}

/// Checks that a name shown in a subject or body is present.
pub(crate) fn check_text(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid_input(format!("{field}: must not be empty")));
    }
    Ok(())
}
