//! Renders every email template and sends it: to a local outbox of `.eml` files by
//! default (offline, no keys), and also through Resend when `RESEND_API_KEY` is set.
//!
//! ```sh
//! cargo run --example email                                  # local outbox only
//! EMAIL_OUTBOX_DIR=./outbox cargo run --example email       # keep the .eml files
//! RESEND_API_KEY=re_... cargo run --example email            # also through Resend
//! ```
//!
//! Through Resend the messages go to `EMAIL_EXAMPLE_TO` (default Resend's test inbox
//! `delivered@resend.dev`) from the product senders configured with `EMAIL_DOMAIN` /
//! `EMAIL_FROM_<PRODUCT>` (a domain verified at Resend), or from Resend's shared
//! `onboarding@resend.dev` test sender when neither is set.
#![allow(clippy::print_stdout, reason = "an example talks to its reader")]

use platform::core::EnvMap;
use platform::email::templates::{
    AgentComplete, GenerationComplete, NewFollower, PasswordReset, QuotaWarning, Welcome,
};
use platform::email::{
    Batch, DynMailer, Email, EmailTemplate, Mailer, OutboxMailer, ResendMailerBuilder, Sender, Senders,
};
use platform::{Product, ProductCatalog};

fn templates() -> Vec<(Product, Box<dyn EmailTemplate>)> {
    vec![
        (
            Product::ARBOR,
            Box::new(Welcome::new(
                "Ada",
                "Arbor",
                "https://arbor.example.com/dashboard",
            )),
        ),
        (
            Product::KUMORI,
            Box::new(PasswordReset::new(
                "Ada",
                "https://kumori.example.com/reset?token=t0k3n",
                30,
            )),
        ),
        (
            Product::ARBOR,
            Box::new(AgentComplete::new(
                "Ada",
                "Researcher",
                "Found 3 sources on <cloud> forests.",
                "https://arbor.example.com/agents/researcher/runs/1",
            )),
        ),
        (
            Product::ARBOR,
            Box::new(QuotaWarning::new(
                "Ada",
                850,
                1000,
                "user",
                "https://arbor.example.com/billing",
            )),
        ),
        (
            Product::KUMORI,
            Box::new(GenerationComplete::new(
                "Ada",
                "a fox in the snow, ukiyo-e",
                "https://cdn.kumori.example.com/i/1.png",
                "https://kumori.example.com/g/1",
            )),
        ),
        (
            Product::KUMORI,
            Box::new(NewFollower::new("Ada", "Bob", "https://kumori.example.com/u/bob")),
        ),
    ]
}

/// Renders every template from `sender_for`'s senders to `to`.
fn emails(to: &str, sender_for: &dyn Fn(&Product) -> Sender) -> platform::Result<Vec<Email>> {
    templates()
        .into_iter()
        .map(|(product, template)| {
            Ok(
                Email::from_template(&sender_for(&product), to, template.as_ref())?
                    .with_entity_ref("user_ada")
                    .with_tag("product", product.as_str()),
            )
        })
        .collect()
}

async fn send_all(label: &str, mailer: &DynMailer, emails: &[Email]) -> platform::Result<()> {
    let (first, rest) = emails.split_at(1);
    let id = mailer.send(&first[0]).await?;
    println!("  [{label}] {:<38} -> {id}", first[0].subject);
    let report = mailer.send_batch(&Batch::new(rest.to_vec())).await?;
    for (email, outcome) in rest.iter().zip(report.outcomes()) {
        match outcome {
            Ok(id) => println!("  [{label}] {:<38} -> {id}", email.subject),
            Err(e) => println!("  [{label}] {:<38} FAILED: {e}", email.subject),
        }
    }
    report.into_result()?;
    Ok(())
}

#[tokio::main]
async fn main() -> platform::Result<()> {
    let env = EnvMap::from_env();
    let catalog = ProductCatalog::default();
    let senders = Senders::from_env_map(&env, &catalog)?;

    // 1. The local outbox: every message is an .eml file a mail client opens.
    let keep = env.optional("EMAIL_OUTBOX_DIR").map(std::path::PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("platform-email-example-{}", std::process::id()))
    });
    let outbox = OutboxMailer::new(&dir)?;
    let local: DynMailer = std::sync::Arc::new(outbox.clone());
    println!("local outbox {}", dir.display());
    send_all(
        "outbox",
        &local,
        &emails("Ada Lovelace <ada@example.com>", &|p| senders.for_product(p))?,
    )
    .await?;
    let files = outbox.files()?;
    println!("  {} .eml files written", files.len());
    assert_eq!(files.len(), 6, "one file per template");
    if keep.is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }

    // 2. Resend, when configured.
    if env.optional("RESEND_API_KEY").is_some() {
        let resend: DynMailer = std::sync::Arc::new(ResendMailerBuilder::from_env_map(&env).build()?);
        let to = env.optional("EMAIL_EXAMPLE_TO").unwrap_or("delivered@resend.dev");
        let configured = env.optional("EMAIL_DOMAIN").is_some() || env.has_prefix("EMAIL_FROM_");
        let sender_for = |p: &Product| {
            if configured {
                senders.for_product(p)
            } else {
                Sender::new("Platform example <onboarding@resend.dev>", None)
            }
        };
        println!("resend -> {to}");
        send_all("resend", &resend, &emails(to, &sender_for)?).await?;
    } else {
        println!("RESEND_API_KEY not set: skipped sending through Resend");
    }
    Ok(())
}
