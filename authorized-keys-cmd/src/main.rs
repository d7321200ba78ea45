//! authorized-keys-cmd

fn main() {}
