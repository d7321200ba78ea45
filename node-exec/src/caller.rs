//! Who the caller is, to label helper pods (the API server's audit log stays authoritative).

use base64::Engine as _;
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// The name used when the kubeconfig does not say who the caller is.
pub const UNKNOWN_CALLER: &str = "unknown";

/// The user name the kubeconfig authenticates as: its client certificate's common name, or its
/// `username`; [`UNKNOWN_CALLER`] for tokens and exec plugins.
pub fn name_from_config(config: &kube::Config) -> String {
    let auth = &config.auth_info;
    let pem = if let Some(data) = &auth.client_certificate_data {
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .ok()
    } else {
        auth.client_certificate
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
    };
    pem.and_then(|pem| common_name_of_pem(&pem))
        .or_else(|| auth.username.clone())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| UNKNOWN_CALLER.to_owned())
}

fn common_name_of_pem(pem: &[u8]) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let (_, cert) = X509Certificate::from_der(&pem.contents).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_owned())
}

/// `text` made into a valid label value: at most 63 characters of `A-Z a-z 0-9 - _ .`, starting
/// and ending with a letter or digit (other characters become `_`, e.g. in
/// `system:serviceaccount:ns:name`).
pub fn label_value(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        UNKNOWN_CALLER.to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_always_valid() {
        assert_eq!(label_value("alice"), "alice");
        assert_eq!(
            label_value("system:serviceaccount:ops:bot"),
            "system_serviceaccount_ops_bot"
        );
        assert_eq!(label_value("bob@example.com"), "bob_example.com");
        assert_eq!(label_value(":::"), UNKNOWN_CALLER);
        assert_eq!(label_value(&"x".repeat(100)).len(), 63);
    }
}
