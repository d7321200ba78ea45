//! The ExposeAuthInfo file and /proc parsers of nodegate-agent: accepted keys re-parse from their own text, stat's comm runs to the last ')', what is accepted is read back the same.
//! The check is `nodegate_fuzz_targets::ssh_auth_info` (fuzz/targets/), which
//! `cargo test -p nodegate-fuzz-targets` also replays on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nodegate_fuzz_targets::ssh_auth_info(data);
});
