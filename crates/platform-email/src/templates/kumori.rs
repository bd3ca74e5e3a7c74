//! Kumori's templates: `generation_complete` and `new_follower`.

use askama::Template;
use platform_core::Result;

use super::{EmailTemplate, RenderedEmail, check_link, check_text};

/// "Your image is ready!" — an image generation finished.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GenerationComplete {
    /// The user's name.
    pub user_name: String,
    /// The prompt the user wrote (escaped like all data).
    pub prompt: String,
    /// The generated image (http(s)).
    pub image_url: String,
    /// The image's page in the gallery (http(s)).
    pub gallery_url: String,
}

impl GenerationComplete {
    /// The message for the image generated from `prompt`.
    pub fn new(
        user_name: impl Into<String>,
        prompt: impl Into<String>,
        image_url: impl Into<String>,
        gallery_url: impl Into<String>,
    ) -> Self {
        Self {
            user_name: user_name.into(),
            prompt: prompt.into(),
            image_url: image_url.into(),
            gallery_url: gallery_url.into(),
        }
    }
}

#[derive(Template)]
#[template(path = "generation_complete.html")]
struct GenerationCompleteHtml<'a> {
    t: &'a GenerationComplete,
}

#[derive(Template)]
#[template(path = "generation_complete.txt")]
struct GenerationCompleteText<'a> {
    t: &'a GenerationComplete,
}

impl EmailTemplate for GenerationComplete {
    fn name(&self) -> &'static str {
        "generation_complete"
    }

    fn render(&self) -> Result<RenderedEmail> {
        check_text("user_name", &self.user_name)?;
        check_link("image_url", &self.image_url)?;
        check_link("gallery_url", &self.gallery_url)?;
        RenderedEmail::render(
            "Your image is ready!",
            &GenerationCompleteHtml { t: self },
            &GenerationCompleteText { t: self },
        )
    }
}

/// "You have a new follower" — someone followed the user.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewFollower {
    /// The user's name.
    pub user_name: String,
    /// The follower's display name.
    pub follower_name: String,
    /// The follower's profile (http(s)).
    pub follower_url: String,
}

impl NewFollower {
    /// The message that `follower_name` now follows `user_name`.
    pub fn new(
        user_name: impl Into<String>,
        follower_name: impl Into<String>,
        follower_url: impl Into<String>,
    ) -> Self {
        Self {
            user_name: user_name.into(),
            follower_name: follower_name.into(),
            follower_url: follower_url.into(),
        }
    }
}

#[derive(Template)]
#[template(path = "new_follower.html")]
struct NewFollowerHtml<'a> {
    t: &'a NewFollower,
}

#[derive(Template)]
#[template(path = "new_follower.txt")]
struct NewFollowerText<'a> {
    t: &'a NewFollower,
}

impl EmailTemplate for NewFollower {
    fn name(&self) -> &'static str {
        "new_follower"
    }

    fn render(&self) -> Result<RenderedEmail> {
        check_text("user_name", &self.user_name)?;
        check_text("follower_name", &self.follower_name)?;
        check_link("follower_url", &self.follower_url)?;
        RenderedEmail::render(
            "You have a new follower",
            &NewFollowerHtml { t: self },
            &NewFollowerText { t: self },
        )
    }
}
