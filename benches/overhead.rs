//! Placeholder replaced by the overhead benchmarks.
fn main() {}
