//! Arbor's templates: `agent_complete` and `quota_warning`.

use askama::Template;
use platform_core::{Error, Result};

use super::{EmailTemplate, RenderedEmail, check_link, check_text};

/// "Your agent has finished processing" — an agent run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentComplete {
    /// The user's name.
    pub user_name: String,
    /// The agent's name as the user named it.
    pub agent_name: String,
    /// A short summary of the result (may come from the model: escaped like all data).
    pub summary: String,
    /// Where to see the result (http(s)).
    pub result_url: String,
}

impl AgentComplete {
    /// The message for `agent_name`'s finished run.
    pub fn new(
        user_name: impl Into<String>,
        agent_name: impl Into<String>,
        summary: impl Into<String>,
        result_url: impl Into<String>,
    ) -> Self {
        Self {
            user_name: user_name.into(),
            agent_name: agent_name.into(),
            summary: summary.into(),
            result_url: result_url.into(),
        }
    }
}

#[derive(Template)]
#[template(path = "agent_complete.html")]
struct AgentCompleteHtml<'a> {
    t: &'a AgentComplete,
}

#[derive(Template)]
#[template(path = "agent_complete.txt")]
struct AgentCompleteText<'a> {
    t: &'a AgentComplete,
}

impl EmailTemplate for AgentComplete {
    fn name(&self) -> &'static str {
        "agent_complete"
    }

    fn render(&self) -> Result<RenderedEmail> {
        check_text("user_name", &self.user_name)?;
        check_text("agent_name", &self.agent_name)?;
        check_link("result_url", &self.result_url)?;
        RenderedEmail::render(
            "Your agent has finished processing",
            &AgentCompleteHtml { t: self },
            &AgentCompleteText { t: self },
        )
    }
}

/// "API quota warning" — usage crossed a threshold of the plan's quota.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaWarning {
    /// The user's name.
    pub user_name: String,
    /// API calls used this period.
    pub used: u64,
    /// The plan's quota for the period (at least 1).
    pub limit: u64,
    /// The user's plan (tier) name.
    pub plan: String,
    /// Where to upgrade (http(s)).
    pub upgrade_url: String,
}

impl QuotaWarning {
    /// A warning that `used` of `limit` calls on `plan` are spent.
    pub fn new(
        user_name: impl Into<String>,
        used: u64,
        limit: u64,
        plan: impl Into<String>,
        upgrade_url: impl Into<String>,
    ) -> Self {
        Self {
            user_name: user_name.into(),
            used,
            limit,
            plan: plan.into(),
            upgrade_url: upgrade_url.into(),
        }
    }

    /// The share of the quota used, in whole percent (rounded down).
    pub fn percent_used(&self) -> u64 {
        self.used.saturating_mul(100) / self.limit.max(1)
    }
}

#[derive(Template)]
#[template(path = "quota_warning.html")]
struct QuotaWarningHtml<'a> {
    t: &'a QuotaWarning,
    percent: u64,
}

#[derive(Template)]
#[template(path = "quota_warning.txt")]
struct QuotaWarningText<'a> {
    t: &'a QuotaWarning,
    percent: u64,
}

impl EmailTemplate for QuotaWarning {
    fn name(&self) -> &'static str {
        "quota_warning"
    }

    fn render(&self) -> Result<RenderedEmail> {
        check_text("user_name", &self.user_name)?;
        check_text("plan", &self.plan)?;
        check_link("upgrade_url", &self.upgrade_url)?;
        if self.limit == 0 {
            return Err(Error::invalid_input("limit: must be at least 1"));
        }
        let percent = self.percent_used();
        RenderedEmail::render(
            "API quota warning",
            &QuotaWarningHtml { t: self, percent },
            &QuotaWarningText { t: self, percent },
        )
    }
}
