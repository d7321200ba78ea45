//! Printing errors for people: one line per error, each cause said once.
//!
//! keyctl's own errors carry their cause either in their message or as their source, never
//! both; errors from kube and other libraries often embed their source in their message *and*
//! return it as the source, so a plain chain (`{:#}`) would print it twice. [`render`] prints
//! a cause only when its text is not already there, and an API server's refusal as what the
//! server said, not as a debug dump.

use nodegate_core::client::describe_error_chain;

/// The error and its causes, as one line.
pub fn render(error: &anyhow::Error) -> String {
    describe_error_chain(error.as_ref(), &|cause| {
        cause.downcast_ref::<kube::Error>().map(describe_kube_error)
    })
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
        let text = render(&error);
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
        assert_eq!(render(&error), embedded);
    }
}
