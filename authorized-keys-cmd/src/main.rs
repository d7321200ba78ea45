//! `authorized-keys-cmd`: see the library crate and `docs/authorized-keys-cmd.md`.

fn main() -> std::process::ExitCode {
    authorized_keys_cmd::cli::main()
}
