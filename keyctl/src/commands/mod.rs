//! One module per subcommand.

pub mod grant;
pub mod janitor;
pub mod list;
pub mod remove;

use chrono::{DateTime, Utc};
use nodegate_core::Expiry;

/// "in 1h 59m", "expired 3m ago", "never": how far an expiry is from `now`, for people.
pub fn describe_expiry(expiry: &Expiry, now: DateTime<Utc>) -> String {
    match expiry.instant() {
        None => "never".to_owned(),
        Some(at) if at > now => format!("in {}", rough_duration(at - now)),
        Some(at) => format!("expired {} ago", rough_duration(now - at)),
    }
}

/// A duration rounded to what people care about: minutes, or seconds below a minute.
fn rough_duration(delta: chrono::TimeDelta) -> String {
    let seconds = delta.num_seconds().max(0) as u64;
    let rounded = if seconds >= 60 {
        seconds / 60 * 60
    } else {
        seconds
    };
    humantime::format_duration(std::time::Duration::from_secs(rounded)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_read_naturally() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .to_utc();
        let at = |s: &str| Expiry::At(DateTime::parse_from_rfc3339(s).unwrap().to_utc());
        assert_eq!(
            describe_expiry(&at("2026-11-23T11:59:30Z"), now),
            "in 1h 59m"
        );
        assert_eq!(
            describe_expiry(&at("2026-11-23T09:57:00Z"), now),
            "expired 3m ago"
        );
        assert_eq!(describe_expiry(&at("2026-11-23T10:00:20Z"), now), "in 20s");
        assert_eq!(describe_expiry(&Expiry::Permanent, now), "never");
    }
}
