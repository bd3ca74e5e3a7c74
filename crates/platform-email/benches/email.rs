//! Bench (being written).
fn main() {}
