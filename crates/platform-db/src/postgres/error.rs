//! The one mapping from sqlx errors to platform error kinds.

use platform_core::{Error, ErrorKind};

pub(crate) const PROVIDER: &str = "postgres";

/// Maps a sqlx error to a platform [`Error`] (provider `postgres`, the sqlx error kept as `source`).
///
/// | sqlx error | kind |
/// |---|---|
/// | unique violation (23505) | `Conflict` |
/// | foreign-key (23503), check (23514), not-null (23502), exclusion (23P01), data exceptions (22xxx) | `InvalidInput` |
/// | connection exceptions (08xxx), admin shutdown / crash (57P01–57P03), insufficient resources (53xxx), serialization failure / deadlock (40001 / 40P01), I/O, TLS, protocol, closed pool, crashed worker | `Unavailable` (retryable) |
/// | pool acquire timeout, statement timeout / cancel (57014), lock not available (55P03: `lock_timeout`, `NOWAIT`) | `Timeout` (retryable) |
/// | read-only transaction (25006: connected to a standby, e.g. during a failover) | `Unavailable` (retryable) |
/// | authentication failed (28P01), invalid authorization, e.g. an unknown role (28000) | `Unauthenticated` |
/// | insufficient privilege (42501) | `PermissionDenied` |
/// | database does not exist (3D000) | `Config` |
/// | row not found | `NotFound` |
/// | configuration | `Config` |
/// | anything else (syntax, undefined table, decoding) | `Unexpected` |
///
/// Product code using the pools directly can use it too.
pub fn map_sqlx_error(error: sqlx::Error) -> Error {
    let (kind, message): (ErrorKind, String) = match &error {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let kind = match code.as_str() {
                "23505" => ErrorKind::Conflict,
                "23503" | "23514" | "23502" | "23P01" => ErrorKind::InvalidInput,
                c if c.starts_with("22") => ErrorKind::InvalidInput,
                c if c.starts_with("08") || c.starts_with("53") => ErrorKind::Unavailable,
                "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "25006" => ErrorKind::Unavailable,
                "57014" | "55P03" => ErrorKind::Timeout,
                "28P01" | "28000" => ErrorKind::Unauthenticated,
                "42501" => ErrorKind::PermissionDenied,
                "3D000" => ErrorKind::Config,
                _ => ErrorKind::Unexpected,
            };
            let what = match (db.constraint(), db.table()) {
                (Some(c), _) => format!("violates {c}"),
                (None, Some(t)) => format!("on table {t}"),
                (None, None) => String::new(),
            };
            (
                kind,
                format!("database error {code} {what}").trim_end().to_owned(),
            )
        }
        sqlx::Error::PoolTimedOut => (
            ErrorKind::Timeout,
            "timed out waiting for a database connection from the pool".to_owned(),
        ),
        sqlx::Error::PoolClosed => (ErrorKind::Unavailable, "the database pool is closed".to_owned()),
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => {
            (ErrorKind::Unavailable, "cannot reach the database".to_owned())
        }
        sqlx::Error::RowNotFound => (ErrorKind::NotFound, "no such row".to_owned()),
        sqlx::Error::Configuration(_) => (ErrorKind::Config, "invalid database configuration".to_owned()),
        _ => (ErrorKind::Unexpected, "unexpected database error".to_owned()),
    };
    Error::new(kind, message)
        .with_provider(PROVIDER)
        .with_source(error)
}

/// Maps a migration error: database errors as [`map_sqlx_error`], a changed or
/// missing migration as `Conflict` (the database is ahead of or differs from the code).
pub(crate) fn map_migrate_error(error: sqlx::migrate::MigrateError) -> Error {
    use sqlx::migrate::MigrateError as M;
    match error {
        M::Execute(e) => map_sqlx_error(e).with_operation("migrate"),
        M::ExecuteMigration(e, version) => {
            let mapped = map_sqlx_error(e);
            Error::new(
                mapped.kind(),
                format!("migration {version} failed: {}", mapped.message()),
            )
            .with_provider(PROVIDER)
            .with_operation("migrate")
            .with_source(mapped)
        }
        other @ (M::VersionMismatch(_) | M::VersionMissing(_) | M::VersionNotPresent(_)) => {
            Error::conflict("the applied migrations differ from the embedded ones")
                .with_provider(PROVIDER)
                .with_operation("migrate")
                .with_source(other)
        }
        other => Error::unexpected("migration failed")
            .with_provider(PROVIDER)
            .with_operation("migrate")
            .with_source(other),
    }
}
