//! keyctl

fn main() {}
