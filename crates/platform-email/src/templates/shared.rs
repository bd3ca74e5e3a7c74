//! Templates every product uses: `welcome` and `password_reset`.

use askama::Template;
use platform_core::Result;

use super::{EmailTemplate, RenderedEmail, check_link, check_text};

/// "Welcome to our platform!" — sent after sign-up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Welcome {
    /// The user's name as they gave it.
    pub user_name: String,
    /// The product's display name (`Arbor`).
    pub product_name: String,
    /// Where the user starts (an http(s) link).
    pub dashboard_url: String,
}

impl Welcome {
    /// The welcome message for `user_name` of `product_name`, linking to `dashboard_url`.
    pub fn new(
        user_name: impl Into<String>,
        product_name: impl Into<String>,
        dashboard_url: impl Into<String>,
    ) -> Self {
        Self {
            user_name: user_name.into(),
            product_name: product_name.into(),
            dashboard_url: dashboard_url.into(),
        }
    }
}

#[derive(Template)]
#[template(path = "welcome.html")]
struct WelcomeHtml<'a> {
    t: &'a Welcome,
}

#[derive(Template)]
#[template(path = "welcome.txt")]
struct WelcomeText<'a> {
    t: &'a Welcome,
}

impl EmailTemplate for Welcome {
    fn name(&self) -> &'static str {
        "welcome"
    }

    fn render(&self) -> Result<RenderedEmail> {
        check_text("user_name", &self.user_name)?;
        check_text("product_name", &self.product_name)?;
        check_link("dashboard_url", &self.dashboard_url)?;
        RenderedEmail::render(
            "Welcome to our platform!",
            &WelcomeHtml { t: self },
            &WelcomeText { t: self },
        )
    }
}

/// "Reset your password" — a one-time link that expires. Its `Debug` form hides the
/// link: it grants the account to whoever holds it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PasswordReset {
    /// The user's name.
    pub user_name: String,
    /// The one-time reset link (http(s)).
    pub reset_url: String,
    /// Minutes until the link expires.
    pub expires_in_minutes: u32,
}

impl std::fmt::Debug for PasswordReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordReset")
            .field("user_name", &self.user_name)
            .field("reset_url", &"[redacted]")
            .field("expires_in_minutes", &self.expires_in_minutes)
            .finish()
    }
}

impl PasswordReset {
    /// A reset message for `user_name` with `reset_url`, valid `expires_in_minutes`.
    pub fn new(user_name: impl Into<String>, reset_url: impl Into<String>, expires_in_minutes: u32) -> Self {
        Self {
            user_name: user_name.into(),
            reset_url: reset_url.into(),
            expires_in_minutes,
        }
    }
}

#[derive(Template)]
#[template(path = "password_reset.html")]
struct PasswordResetHtml<'a> {
    t: &'a PasswordReset,
}

#[derive(Template)]
#[template(path = "password_reset.txt")]
struct PasswordResetText<'a> {
    t: &'a PasswordReset,
}

impl EmailTemplate for PasswordReset {
    fn name(&self) -> &'static str {
        "password_reset"
    }

    fn render(&self) -> Result<RenderedEmail> {
        check_text("user_name", &self.user_name)?;
        check_link("reset_url", &self.reset_url)?;
        RenderedEmail::render(
            "Reset your password",
            &PasswordResetHtml { t: self },
            &PasswordResetText { t: self },
        )
    }
}
