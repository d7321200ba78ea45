//! What an API server's refusal means, with kube-core's [`Status`] helpers.
//!
//! kube-core 5.0's `Status::is_not_found()` and friends compare the status' `reason` only (they
//! fall back to the code only when their *own* reason constant is unknown, which it never is).
//! The Go client falls back to the code when the *status'* reason is not a known one, e.g. the
//! 404 page of a proxy, which kube-client turns into a status with the reason
//! "Failed to parse error data". The helpers here ask kube-core first and then do what the Go
//! client does, so that such answers are read as before.

use kube::core::Status;
use kube::core::response::reason;

/// The API server's status, when the error is an answer of the API server.
pub fn api_status(error: &kube::Error) -> Option<&Status> {
    match error {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

fn by_code(status: &Status, code: u16) -> bool {
    !reason::is_known(&status.reason) && status.code == code
}

/// 404: the object (or its namespace) does not exist.
pub fn is_not_found(error: &kube::Error) -> bool {
    api_status(error).is_some_and(|s| s.is_not_found() || by_code(s, 404))
}

/// 403: the caller may not do this.
pub fn is_forbidden(error: &kube::Error) -> bool {
    api_status(error).is_some_and(|s| s.is_forbidden() || by_code(s, 403))
}

/// 409: the object changed since it was read (or already exists).
pub fn is_conflict(error: &kube::Error) -> bool {
    api_status(error).is_some_and(|s| s.is_conflict() || s.is_already_exists() || by_code(s, 409))
}

/// 422: the request was refused as invalid (a failed JSON patch test is one).
pub fn is_invalid(error: &kube::Error) -> bool {
    api_status(error).is_some_and(|s| s.is_invalid() || by_code(s, 422))
}

/// A 4xx other than a timeout or throttling: the server refused this request (policy,
/// validation, size), so another request may still pass.
pub fn is_refusal_of_the_request(error: &kube::Error) -> bool {
    api_status(error)
        .is_some_and(|s| (400..500).contains(&s.code) && s.code != 408 && s.code != 429)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status {
            code,
            reason: reason.into(),
            ..Status::default()
        }))
    }

    #[test]
    fn statuses_are_read_by_reason_then_by_code() {
        assert!(is_not_found(&api(404, "NotFound")));
        assert!(is_not_found(&api(404, "")));
        assert!(is_not_found(&api(404, "Failed to parse error data")));
        assert!(!is_not_found(&api(403, "Forbidden")));
        // A known reason decides, whatever the code.
        assert!(!is_not_found(&api(404, "Forbidden")));
        assert!(is_forbidden(&api(403, "Forbidden")));
        assert!(is_forbidden(&api(403, "")));
        assert!(is_conflict(&api(409, "Conflict")));
        assert!(is_conflict(&api(409, "AlreadyExists")));
        assert!(is_invalid(&api(422, "Invalid")));
        assert!(is_invalid(&api(422, "")));
        assert!(!is_not_found(&kube::Error::LinesCodecMaxLineLengthExceeded));
    }

    #[test]
    fn timeouts_and_throttling_are_not_refusals_of_the_request() {
        assert!(is_refusal_of_the_request(&api(400, "BadRequest")));
        assert!(is_refusal_of_the_request(&api(
            413,
            "RequestEntityTooLarge"
        )));
        assert!(!is_refusal_of_the_request(&api(408, "Timeout")));
        assert!(!is_refusal_of_the_request(&api(429, "TooManyRequests")));
        assert!(!is_refusal_of_the_request(&api(500, "InternalError")));
    }
}
