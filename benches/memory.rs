//! Placeholder until the memory benchmark lands.
fn main() {}
