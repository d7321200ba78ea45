//! `nodegate-agent`: see `authorized_keys_cmd::agent` and `docs/agent.md`.

fn main() -> std::process::ExitCode {
    authorized_keys_cmd::agent::main()
}
