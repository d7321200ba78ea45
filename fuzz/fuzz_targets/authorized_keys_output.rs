//! The output writer of authorized-keys-cmd: from any annotations, every printed line is one
//! `[expiry-time="YYYYMMDDHHMMSSZ" ]TYPE BASE64 g.USER.KEYID` line for the asked user.
//! The check is `nodegate_fuzz_targets::authorized_keys_output` (fuzz/targets/), which
//! `cargo test -p nodegate-fuzz-targets` also replays on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nodegate_fuzz_targets::authorized_keys_output(data);
});
