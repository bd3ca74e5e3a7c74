//! The Redis queue: apalis 1.0 workers on apalis-redis 1.0, plus what apalis does not
//! provide (de-duplicated job ids, backoff re-queueing, dead letters, step results),
//! implemented with Lua scripts under a per-queue key namespace.

mod batch;
mod builder;
mod client;
mod idle_poll;
mod scripts;
mod worker;

pub use builder::RedisQueueBuilder;
pub use client::RedisQueue;
