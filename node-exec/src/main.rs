//! node-exec

fn main() {}
