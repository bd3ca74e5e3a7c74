//! The Postgres adapter (Neon in production, any Postgres 14+ locally), built on sqlx.
//!
//! [`Database`] owns the pools and runs migrations; [`PostgresRepositories`]
//! implements the repository traits with schema-qualified SQL.

mod builder;
mod client;
mod error;

pub use builder::{Database, DatabaseBuilder, PoolerMode};
pub use client::PostgresRepositories;
#[doc(hidden)]
pub use client::{GET_OR_CREATE_USER_SQL, RECORD_USAGE_SQL};
pub use error::map_sqlx_error;
