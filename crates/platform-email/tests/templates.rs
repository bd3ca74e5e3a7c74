//! Every template renders; user data is escaped in HTML; links must be http(s);
//! products can add their own templates; per-product senders come from configuration.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use platform_core::{EnvMap, ErrorKind, Product, ProductCatalog, Result};
use platform_email::templates::{
    AgentComplete, GenerationComplete, NewFollower, PasswordReset, QuotaWarning, Welcome, check_link,
    escape_html,
};
use platform_email::{Email, EmailTemplate, RenderedEmail, Sender, Senders};

const EVIL: &str = "<script>alert('x')</script>\"&";

fn all_templates(name: &str) -> Vec<(Box<dyn EmailTemplate>, &'static str)> {
    vec![
        (
            Box::new(Welcome::new(name, "Arbor", "https://arbor.example.com/dashboard")),
            "Welcome to our platform!",
        ),
        (
            Box::new(PasswordReset::new(
                name,
                "https://arbor.example.com/reset?token=a&b=1",
                30,
            )),
            "Reset your password",
        ),
        (
            Box::new(AgentComplete::new(
                name,
                "Researcher",
                "Found 3 sources",
                "https://arbor.example.com/agents/1",
            )),
            "Your agent has finished processing",
        ),
        (
            Box::new(QuotaWarning::new(
                name,
                800,
                1000,
                "user",
                "https://arbor.example.com/billing",
            )),
            "API quota warning",
        ),
        (
            Box::new(GenerationComplete::new(
                name,
                "a cat on the moon",
                "https://cdn.kumori.example.com/i/1.png",
                "https://kumori.example.com/g/1",
            )),
            "Your image is ready!",
        ),
        (
            Box::new(NewFollower::new(name, "Bob", "https://kumori.example.com/u/bob")),
            "You have a new follower",
        ),
    ]
}

#[test]
fn every_template_renders_subject_html_and_text() {
    let mut names = Vec::new();
    for (template, subject) in all_templates("Ada") {
        let r = template.render().unwrap();
        assert_eq!(r.subject, subject, "{}", template.name());
        assert!(r.html.starts_with("<!DOCTYPE html>"), "{}", template.name());
        assert!(r.html.contains("Ada"), "{}: {}", template.name(), r.html);
        assert!(r.text.contains("Ada"), "{}: {}", template.name(), r.text);
        assert!(
            !r.text.contains('<'),
            "{}: text has no markup: {}",
            template.name(),
            r.text
        );
        names.push(template.name());
    }
    assert_eq!(
        names,
        [
            "welcome",
            "password_reset",
            "agent_complete",
            "quota_warning",
            "generation_complete",
            "new_follower"
        ]
    );
}

#[test]
fn template_specific_content() {
    let r = QuotaWarning::new("Ada", 850, 1000, "pro", "https://a.example.com/up")
        .render()
        .unwrap();
    assert!(
        r.text.contains("85%") && r.text.contains("850 of 1000"),
        "{}",
        r.text
    );
    assert!(r.html.contains("<strong>85%</strong>"), "{}", r.html);
    let r = PasswordReset::new("Ada", "https://a.example.com/r?t=1&u=2", 45)
        .render()
        .unwrap();
    assert!(r.text.contains("45 minutes"));
    assert!(
        r.text.contains("https://a.example.com/r?t=1&u=2"),
        "text keeps the raw link"
    );
    assert!(
        r.html.contains("href=\"https://a.example.com/r?t=1&#38;u=2\""),
        "HTML escapes & in attributes: {}",
        r.html
    );
    let r = AgentComplete::new("Ada", "Researcher", "", "https://a.example.com/x")
        .render()
        .unwrap();
    assert!(!r.text.contains("Summary:"), "an empty summary is left out");
}

#[test]
fn html_injection_in_user_data_is_escaped() {
    for (template, _) in all_templates(EVIL) {
        let r = template.render().unwrap();
        assert!(!r.html.contains("<script>"), "{}: {}", template.name(), r.html);
        assert!(
            r.html
                .contains("&#60;script&#62;alert(&#39;x&#39;)&#60;/script&#62;&#34;&#38;"),
            "{}: {}",
            template.name(),
            r.html
        );
        assert!(r.text.contains(EVIL), "plain text keeps the data as typed");
    }
    // Every field, not just the name.
    let r = AgentComplete::new(
        "a",
        "<b>agent</b>",
        "<img src=x onerror=alert(1)>",
        "https://a.example.com",
    )
    .render()
    .unwrap();
    assert!(
        !r.html.contains("<b>agent</b>") && !r.html.contains("<img src=x"),
        "{}",
        r.html
    );
    let r = GenerationComplete::new(
        "a",
        "\"><script>",
        "https://a.example.com/i.png",
        "https://a.example.com",
    )
    .render()
    .unwrap();
    assert!(
        !r.html.contains("\"><script>"),
        "attribute context escaped: {}",
        r.html
    );
    let r = NewFollower::new("a", "<i>Eve</i>", "https://a.example.com")
        .render()
        .unwrap();
    assert!(r.html.contains("&#60;i&#62;Eve&#60;/i&#62;"));
}

#[test]
fn links_must_be_http_and_fields_are_named() {
    let cases: Vec<(Box<dyn EmailTemplate>, &str)> = vec![
        (
            Box::new(Welcome::new("a", "Arbor", "javascript:alert(1)")),
            "dashboard_url",
        ),
        (Box::new(PasswordReset::new("a", "/relative", 5)), "reset_url"),
        (
            Box::new(AgentComplete::new("a", "n", "s", "data:text/html,x")),
            "result_url",
        ),
        (
            Box::new(QuotaWarning::new("a", 1, 2, "pro", "ftp://x.example.com")),
            "upgrade_url",
        ),
        (
            Box::new(GenerationComplete::new(
                "a",
                "p",
                "https://ok.example.com",
                "nope",
            )),
            "gallery_url",
        ),
        (
            Box::new(NewFollower::new("a", "b", "javascript://x")),
            "follower_url",
        ),
        (
            Box::new(Welcome::new(" ", "Arbor", "https://a.example.com")),
            "user_name",
        ),
        (
            Box::new(QuotaWarning::new("a", 1, 0, "pro", "https://a.example.com")),
            "limit",
        ),
    ];
    for (template, field) in cases {
        let err = template.render().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.message().starts_with(field), "{field}: {err}");
    }
    assert!(check_link("x", "https://a.example.com/p?q=1").is_ok());
}

/// A template a product crate would define: proves the trait is open.
struct TrialEnding {
    user_name: String,
    days_left: u32,
}

impl EmailTemplate for TrialEnding {
    fn name(&self) -> &'static str {
        "trial_ending"
    }

    fn render(&self) -> Result<RenderedEmail> {
        let name = escape_html(&self.user_name);
        Ok(RenderedEmail::new(
            "Your trial is ending",
            format!("<p>Hi {name}, {} days left.</p>", self.days_left),
            format!("Hi {}, {} days left.", self.user_name, self.days_left),
        ))
    }
}

#[test]
fn products_can_add_their_own_templates() {
    let sender = Senders::new().for_product(&Product::KUMORI);
    let t = TrialEnding {
        user_name: "<Ada>".into(),
        days_left: 3,
    };
    let email = Email::from_template(&sender, "ada@example.com", &t).unwrap();
    assert_eq!(email.subject, "Your trial is ending");
    assert_eq!(
        email.html.as_deref(),
        Some("<p>Hi &#60;Ada&#62;, 3 days left.</p>")
    );
    assert_eq!(email.tags[0].name, "template");
    assert_eq!(email.tags[0].value, "trial_ending");
    assert_eq!(email.from, "Kumori <noreply@kumori.example.com>");
    assert_eq!(email.reply_to, ["Kumori Support <support@kumori.example.com>"]);
    email.validate().unwrap();
}

#[test]
fn senders_default_per_product_and_read_configuration() {
    let senders = Senders::new();
    let arbor = senders.for_product(&Product::ARBOR);
    assert_eq!(arbor.from, "Arbor <noreply@arbor.example.com>");
    assert_eq!(
        arbor.reply_to.as_deref(),
        Some("Arbor Support <support@arbor.example.com>")
    );

    let catalog = ProductCatalog::default();
    let env = EnvMap::from_iter([
        ("EMAIL_DOMAIN", "mail.example.org"),
        ("EMAIL_FROM_KUMORI", "Kumori Studio <hello@kumori.example.net>"),
    ]);
    let senders = Senders::from_env_map(&env, &catalog).unwrap();
    assert_eq!(
        senders.for_product(&Product::ARBOR).from,
        "Arbor <noreply@arbor.mail.example.org>"
    );
    let kumori = senders.for_product(&Product::KUMORI);
    assert_eq!(kumori.from, "Kumori Studio <hello@kumori.example.net>");
    assert_eq!(
        kumori.reply_to.as_deref(),
        Some("Kumori Support <support@kumori.mail.example.org>"),
        "reply-to keeps its default"
    );
    // A product added by configuration gets senders without code.
    let third = Product::new("hana-labs").unwrap();
    assert_eq!(
        senders.for_product(&third).from,
        "Hana-labs <noreply@hana-labs.mail.example.org>"
    );

    // Only the placeholder domain is flagged: here no product is under it.
    assert!(senders.placeholder_products(&catalog).is_empty());
    let one = EnvMap::from_iter([("EMAIL_FROM_ARBOR", "Arbor <hi@arbor.ai>")]);
    let one = Senders::from_env_map(&one, &catalog).unwrap();
    assert_eq!(one.placeholder_products(&catalog), [&Product::KUMORI]);
    assert_eq!(Senders::new().placeholder_products(&catalog).len(), 2);

    let bad = EnvMap::from_iter([("EMAIL_REPLY_TO_ARBOR", "support at arbor")]);
    let err = Senders::from_env_map(&bad, &catalog).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("EMAIL_REPLY_TO_ARBOR"), "{err}");
    let bad = EnvMap::from_iter([("EMAIL_DOMAIN", "not a domain")]);
    let err = Senders::from_env_map(&bad, &catalog).unwrap_err();
    assert!(err.message().contains("EMAIL_DOMAIN"), "{err}");

    let err = Senders::new()
        .with_sender(&Product::ARBOR, Sender::new("nope", None))
        .unwrap_err();
    assert!(err.message().starts_with("from:"), "{err}");
}

/// A reset link is a credential: neither the template's `Debug` form nor those of the
/// message rendered from it and of the email made of it (nor of the email job carrying
/// it, which shows the email) show any part of its token, nor does a header's value.
#[test]
fn debug_output_hides_a_reset_link() {
    let token = "tok3n-5ecret";
    let reset = PasswordReset::new("Ada", format!("https://a.example.com/reset?t={token}"), 45);
    let sender = Sender::new("Arbor <no-reply@arbor.example.com>", None);
    let rendered = reset.render().unwrap();
    let email = Email::from_template(&sender, "ada@example.com", &reset)
        .unwrap()
        .with_header("List-Unsubscribe", format!("<https://a.example.com/u?t={token}>"));
    assert!(email.text.as_deref().is_some_and(|t| t.contains(token)));
    for shown in [
        format!("{reset:?}"),
        format!("{rendered:?}"),
        format!("{email:?}"),
    ] {
        assert!(!shown.contains(token), "{shown}");
    }
    // The rest is still shown.
    assert!(format!("{reset:?}").contains("Ada"));
    assert!(format!("{rendered:?}").contains("Reset your password"));
    assert!(format!("{email:?}").contains("ada@example.com"));
    assert!(format!("{email:?}").contains("bytes>"), "bodies shown as lengths");
    assert!(
        format!("{email:?}").contains("List-Unsubscribe"),
        "header names shown"
    );
}
