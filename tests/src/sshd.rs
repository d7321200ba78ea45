//! A real sshd on a loopback port and a real ssh client (owned by the authorized-keys-cmd work).
