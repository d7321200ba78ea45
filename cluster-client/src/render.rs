//! Printing errors for people: one line per error, each cause said once.
//!
//! The tools' own errors carry their cause either in their message or as their source, never
//! both; errors from kube and other libraries often embed their source in their message *and*
//! return it as the source, so a plain chain (`{:#}`) would print it twice. [`render`] prints
//! a cause only when its text is not already there, and an API server's refusal as what the
//! server said, not as a debug dump.

/// The error and its causes, as one line (what `keyctl` and `node-exec` print on failure).
pub fn render(error: &(dyn std::error::Error + 'static)) -> String {
    describe_error_chain(error, &|cause| {
        cause.downcast_ref::<kube::Error>().map(describe_kube_error)
    })
}

/// Renders an error and its sources as one line, every cause said once: a source whose text
/// is already part of what was written (many errors, kube's among them, embed their source in
/// their own message) is left out. `describe` may render a cause its own way; a cause it
/// describes is taken to cover everything below it.
pub fn describe_error_chain(
    error: &(dyn std::error::Error + 'static),
    describe: &dyn Fn(&(dyn std::error::Error + 'static)) -> Option<String>,
) -> String {
    let mut out = String::new();
    let mut cause = Some(error);
    while let Some(current) = cause {
        let (text, covers_rest) = match describe(current) {
            Some(text) => (text, true),
            None => (current.to_string(), false),
        };
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        if covers_rest {
            break;
        }
        cause = current.source();
    }
    out
}

/// A kube error for people: for an answer of the API server, its message and status code
/// (`admission webhook "x" denied the request: ... (403 Forbidden)`).
pub fn describe_kube_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let message = if status.message.is_empty() {
                "the API server refused the request"
            } else {
                status.message.as_str()
            };
            match (status.code, status.reason.as_str()) {
                (0, "") => message.to_owned(),
                (0, reason) => format!("{message} ({reason})"),
                (code, "") => format!("{message} ({code})"),
                (code, reason) => format!("{message} ({code} {reason})"),
            }
        }
        // kube's own words ("ServiceError: ...") say less than the causes under them.
        kube::Error::Service(_) | kube::Error::HyperError(_) => {
            let cause = std::error::Error::source(error)
                .map(|cause| describe_error_chain(cause, &|_| None))
                .unwrap_or_default();
            format!("the connection to the API server failed: {cause}")
        }
        other => describe_error_chain(other, &|_| None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Embeds(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("wrapper")]
    struct Wraps(#[source] Embeds);

    #[test]
    fn each_cause_is_said_once() {
        let error = Wraps(Embeds(std::io::Error::other("disk on fire")));
        let text = describe_error_chain(&error, &|_| None);
        assert_eq!(text, "wrapper: outer: disk on fire");
        let custom = describe_error_chain(&error, &|e| {
            e.downcast_ref::<Embeds>().map(|_| "described".to_owned())
        });
        assert_eq!(custom, "wrapper: described");
    }

    fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            message: message.into(),
            ..kube::core::Status::default()
        }))
    }

    #[test]
    fn an_api_refusal_reads_as_the_server_said_it_once() {
        let error = anyhow::Error::from(api_error(
            403,
            "Forbidden",
            "admission webhook \"guard\" denied the request: protected",
        ))
        .context("removing x");
        let text = render(error.as_ref());
        assert_eq!(
            text,
            "removing x: admission webhook \"guard\" denied the request: protected (403 Forbidden)"
        );
        assert!(!text.contains("Status {"), "{text}");
    }

    #[test]
    fn a_failed_connection_says_so_with_its_causes_once() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let text = describe_kube_error(&kube::Error::Service(Box::new(refused)));
        assert_eq!(
            text,
            format!(
                "the connection to the API server failed: {}",
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
            )
        );
    }

    #[test]
    fn a_cause_embedded_in_its_wrapper_is_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let embedded = format!("cannot read x: {io}");
        let error = Err::<(), _>(io).context(embedded.clone()).unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            format!(
                "{embedded}: {}",
                std::io::Error::from(std::io::ErrorKind::NotFound)
            )
        );
        assert_eq!(render(error.as_ref()), embedded);
    }
}
