//! Product slugs and the product catalogue.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use platform_core::{ErrorKind, Product, ProductCatalog, Quota, TierChange};

#[test]
fn slug_validation() {
    for ok in ["arbor", "kumori", "a", "mori-2", "x1", &"a".repeat(32)] {
        assert_eq!(Product::new(ok).unwrap().as_str(), ok);
    }
    for bad in [
        "",
        "Arbor",
        "ar bor",
        "ar_bor",
        "-arbor",
        "arbor-",
        "1arbor",
        "arbør",
        &"a".repeat(33),
        "../x",
    ] {
        let err = Product::new(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        assert!(err.to_string().contains("slug"), "{err}");
    }
    assert_eq!(Product::ARBOR, Product::new("arbor").unwrap());
    assert_eq!("kumori".parse::<Product>().unwrap(), Product::KUMORI);
}

#[test]
fn products_serialise_as_validated_strings() {
    assert_eq!(serde_json::to_string(&Product::ARBOR).unwrap(), r#""arbor""#);
    assert_eq!(
        serde_json::from_str::<Product>(r#""mori""#).unwrap().as_str(),
        "mori"
    );
    assert!(serde_json::from_str::<Product>(r#""Bad Slug""#).is_err());
}

#[test]
fn seed_catalogue_tiers_in_order() {
    let catalog = ProductCatalog::default();
    let names = |p: &Product| -> Vec<String> {
        catalog
            .get(p)
            .unwrap()
            .tiers
            .iter()
            .map(|t| t.name.clone())
            .collect()
    };
    assert_eq!(names(&Product::ARBOR), ["user", "pro", "enterprise"]);
    assert_eq!(names(&Product::KUMORI), ["free", "premium", "creator"]);
    let arbor = catalog.get(&Product::ARBOR).unwrap();
    assert_eq!(arbor.default_tier().unwrap().name, "user");
    assert!(arbor.role_has_permission("admin", "billing:manage"));
    assert!(!arbor.role_has_permission("member", "billing:manage"));
    assert!(!arbor.role_has_permission("ghost", "agents:run"));
}

#[test]
fn tier_comparison_tells_upgrade_from_downgrade() {
    let catalog = ProductCatalog::default();
    let kumori = catalog.get(&Product::KUMORI).unwrap();
    assert_eq!(
        kumori.compare_tiers("free", "creator").unwrap(),
        TierChange::Upgrade
    );
    assert_eq!(
        kumori.compare_tiers("creator", "premium").unwrap(),
        TierChange::Downgrade
    );
    assert_eq!(
        kumori.compare_tiers("premium", "premium").unwrap(),
        TierChange::Unchanged
    );
    let err = kumori.compare_tiers("free", "pro").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("\"pro\""), "{err}");
}

#[test]
fn unknown_product_is_not_found() {
    let err = ProductCatalog::default()
        .get(&Product::new("mori").unwrap())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("mori"));
}

const THIRD_PRODUCT: &str = r#"
[products.arbor]
display_name = "Arbor"
tiers = [{ name = "user" }, { name = "pro" }]

[products.mori]
display_name = "Mori"
roles = [{ name = "member", permissions = ["notes:write"] }]

[[products.mori.tiers]]
name = "basic"
quotas = { notes_per_day = 10 }

[[products.mori.tiers]]
name = "plus"
quotas = { notes_per_day = "unlimited" }
"#;

#[test]
fn a_third_product_is_configuration_only() {
    let catalog = ProductCatalog::from_toml_str(THIRD_PRODUCT).unwrap();
    let mori = catalog.get(&Product::new("mori").unwrap()).unwrap();
    assert_eq!(mori.compare_tiers("basic", "plus").unwrap(), TierChange::Upgrade);
    assert_eq!(
        mori.tier("basic").unwrap().quota("notes_per_day"),
        Quota::Limited(10)
    );
    assert_eq!(
        mori.tier("plus").unwrap().quota("notes_per_day"),
        Quota::UNLIMITED
    );
    assert!(mori.role_has_permission("member", "notes:write"));
    // The same catalogue round-trips through JSON.
    let json = serde_json::to_string(&catalog).unwrap();
    assert_eq!(ProductCatalog::from_json_str(&json).unwrap(), catalog);
}

#[test]
fn invalid_catalogues_are_refused_with_the_reason() {
    let cases = [
        (
            r#"[products.Mori]
display_name = "M"
tiers = [{ name = "a" }]"#,
            "slug",
        ),
        (
            r#"[products.mori]
display_name = "M"
tiers = []"#,
            "no tiers",
        ),
        (
            r#"[products.mori]
display_name = "M"
tiers = [{ name = "a" }, { name = "a" }]"#,
            "twice",
        ),
        (
            r#"[products.mori]
display_name = "M"
tiers = [{ name = "Gold Tier" }]"#,
            "tier slug",
        ),
        // A misspelt key is refused, not ignored: a tier whose `quotas` are dropped
        // would be unlimited, a role without its `permissions` powerless.
        (
            r#"[products.mori]
display_name = "M"
[[products.mori.tiers]]
name = "basic"
quota = { notes_per_day = 10 }"#,
            "unknown field `quota`",
        ),
        (
            r#"[products.mori]
display_name = "M"
tiers = [{ name = "a" }]
roles = [{ name = "member", permission = ["notes:write"] }]"#,
            "unknown field `permission`",
        ),
        (
            r#"[products.mori]
display_name = "M"
tiers = [{ name = "a" }]
tier = [{ name = "b" }]"#,
            "unknown field `tier`",
        ),
        (
            r#"[products.mori]
display_name = "M"
tiers = [{ name = "a" }]
[product.kumo]
display_name = "K""#,
            "unknown field `product`",
        ),
    ];
    for (text, why) in cases {
        let err = ProductCatalog::from_toml_str(text).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains(why), "expected {why:?} in {err}");
    }
}

#[test]
fn quotas() {
    assert!(Quota::Limited(10).allows(9, 1));
    assert!(!Quota::Limited(10).allows(10, 1));
    assert!(!Quota::Limited(10).allows(u64::MAX, 1));
    assert!(Quota::UNLIMITED.allows(u64::MAX, u64::MAX));
    let catalog = ProductCatalog::default();
    let free = catalog.get(&Product::KUMORI).unwrap().tier("free").unwrap();
    assert_eq!(free.quota("images_per_month"), Quota::Limited(25));
    assert_eq!(free.quota("not_listed"), Quota::UNLIMITED);
}
