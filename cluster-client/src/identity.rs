//! Who the caller is, for `granted-by`, helper pod labels and messages about missing
//! permissions: one answer for every tool.
//!
//! The API server knows best: `SelfSubjectReview` (Kubernetes 1.28+) answers for every kind of
//! credential. Older servers do not have it, so the name is then read from the kubeconfig's
//! client certificate (its common name is the user name), or its `username`, or the subject of
//! its ServiceAccount token.

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::PostParams;
use kube::{Api, Client};
use secrecy::ExposeSecret as _;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The name used when no source tells who the caller is.
pub const UNKNOWN_CALLER: &str = "unknown";

/// The caller's user name as the API server sees it, or the best guess from the configuration.
pub async fn caller_name(client: &Client, config: &kube::Config) -> String {
    if let Some(name) = ask_api_server(client).await {
        return name;
    }
    name_from_config(config).unwrap_or_else(|| UNKNOWN_CALLER.to_owned())
}

async fn ask_api_server(client: &Client) -> Option<String> {
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = reviews
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| tracing::debug!("SelfSubjectReview unavailable: {e}"))
        .ok()?;
    review.status?.user_info?.username.filter(|n| !n.is_empty())
}

/// The user name a kubeconfig authenticates as, where the file says it.
pub fn name_from_config(config: &kube::Config) -> Option<String> {
    let auth = &config.auth_info;
    let pem = if let Some(data) = &auth.client_certificate_data {
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .ok()?
    } else if let Some(path) = &auth.client_certificate {
        std::fs::read(path).ok()?
    } else if let Some(name) = auth.username.clone().filter(|n| !n.is_empty()) {
        return Some(name);
    } else {
        // A ServiceAccount in the cluster: the token's subject is the user name.
        let token = match (&auth.token, &auth.token_file) {
            (Some(token), _) => token.expose_secret().to_owned(),
            (None, Some(file)) => std::fs::read_to_string(file).ok()?,
            (None, None) => return None,
        };
        return subject_of_jwt(&token);
    };
    common_name_of_pem(&pem)
}

/// The `sub` claim of a JWT (a ServiceAccount token), read without verifying it: it only names
/// the caller in messages, events and labels; the API server decides what the token may do.
fn subject_of_jwt(token: &str) -> Option<String> {
    let payload = token.trim().split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    claims["sub"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The subject common name of the first certificate in a PEM bundle.
fn common_name_of_pem(pem: &[u8]) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let (_, cert) = X509Certificate::from_der(&pem.contents).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_account_token_names_its_subject() {
        let claims = br#"{"iss":"kubernetes/serviceaccount","sub":"system:serviceaccount:nodegate-system:nodegate-janitor"}"#;
        let token = format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2lnbmF0dXJl",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims)
        );
        assert_eq!(
            subject_of_jwt(&format!("{token}\n")).as_deref(),
            Some("system:serviceaccount:nodegate-system:nodegate-janitor")
        );
        assert_eq!(subject_of_jwt("not-a-token"), None);
        assert_eq!(subject_of_jwt("a.!!!.c"), None);
    }
}
