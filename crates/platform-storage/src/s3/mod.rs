//! The S3 adapter, set up for Cloudflare R2 (region `auto`, path-style addressing,
//! checksums only when required, equal-size multipart parts, batch deletes of at most
//! 700 keys). Works with any S3-compatible server.

mod builder;
mod client;
mod error;

pub use builder::{MAX_SINGLE_PUT, MIN_PART_SIZE, S3ObjectStoreBuilder};
pub use client::{MIN_UPLOAD_RATE, S3ObjectStore};
pub use error::map_response_error;
