//! Capture benchmarks.
fn main() {}
