//! The facade: local and configured construction, product scoping.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use platform::{ErrorKind, Mode, Platform, Product};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn local_platform_serves_the_seed_products() {
    let platform = Platform::local().unwrap();
    assert_eq!(platform.settings().mode, Mode::Local);
    let arbor = platform.product(&Product::ARBOR).unwrap();
    assert_eq!(arbor.product(), &Product::ARBOR);
    assert_eq!(arbor.config().display_name, "Arbor");
    let err = platform.product(&Product::new("mori").unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn from_iter_reads_mode_environment_and_version() {
    let platform = Platform::from_iter(env(&[
        ("PLATFORM_MODE", "local"),
        ("PLATFORM_ENV", "staging"),
        ("PLATFORM_APP_VERSION", "9.9.9"),
    ]))
    .unwrap();
    assert_eq!(platform.settings().mode, Mode::Local);
    assert_eq!(platform.settings().environment, "staging");
    assert_eq!(platform.settings().app_version, "9.9.9");
    assert_eq!(
        Platform::from_iter(env(&[])).unwrap().settings().mode,
        Mode::Configured
    );
}

#[test]
fn invalid_variables_are_named() {
    let err = Platform::from_iter(env(&[("PLATFORM_MODE", "cloudy")])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("PLATFORM_MODE"), "{err}");
    let err = Platform::from_iter(env(&[("PLATFORM_CATALOG", "/nonexistent/catalog.toml")])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("/nonexistent/catalog.toml"), "{err}");
}

#[test]
fn a_third_product_is_added_by_configuration() {
    let dir = std::env::temp_dir().join(format!("platform-catalog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("catalog.toml");
    std::fs::write(
        &path,
        r#"
[products.mori]
display_name = "Mori"
tiers = [{ name = "basic" }, { name = "plus" }]
"#,
    )
    .unwrap();
    let platform = Platform::from_iter(env(&[("PLATFORM_CATALOG", path.to_str().unwrap())])).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mori = platform.product(&Product::new("mori").unwrap()).unwrap();
    assert_eq!(mori.config().tiers.len(), 2);
    assert_eq!(
        platform.product(&Product::ARBOR).unwrap_err().kind(),
        ErrorKind::NotFound,
        "the configured catalogue replaces the seed's"
    );
}
