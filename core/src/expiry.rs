//! When a grant ends.

use std::fmt;

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};

/// When a grant stops working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expiry {
    /// The grant ends at this instant (whole seconds, UTC).
    At(DateTime<Utc>),
    /// The grant never ends; only asked for explicitly (`keyctl grant --permanent`).
    Permanent,
}

/// Why an expiry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpiryError {
    /// Neither a duration nor a time this tool understands.
    #[error(
        "cannot read {input:?} as an expiry; give a duration such as 30m, 2h or 1d 12h, or a time such as 2026-11-23T18:00:00Z or '2026-11-23 18:00' (local time)"
    )]
    Unreadable {
        /// The refused text.
        input: String,
    },
    /// A zero duration or a time that has already passed.
    #[error("the expiry {at} is not in the future")]
    InThePast {
        /// The refused instant, in UTC.
        at: DateTime<Utc>,
    },
    /// A duration so long that the end falls outside the calendar this tool handles.
    #[error("the duration {input:?} is too long")]
    TooLong {
        /// The refused text.
        input: String,
    },
    /// Not in OpenSSH's `YYYYMMDDHHMMSSZ` form.
    #[error("{input:?} is not a UTC time of the form YYYYMMDDHHMMSSZ")]
    BadOpensshTime {
        /// The refused text.
        input: String,
    },
}

/// The format of OpenSSH's `expiry-time` option, used for every time in a grant annotation.
const OPENSSH_TIME_FORMAT: &str = "%Y%m%d%H%M%SZ";

impl Expiry {
    /// Reads what a user typed for `--expires`: a duration from `now` (`2h`, `90m`, `1d 12h`,
    /// `1w`) or an absolute time (RFC 3339, or `YYYY-MM-DD HH:MM[:SS]` in local time).
    pub fn parse_user_input(input: &str, now: DateTime<Utc>) -> Result<Self, ExpiryError> {
        let trimmed = input.trim();
        let at = if let Ok(duration) = humantime::parse_duration(trimmed) {
            let duration =
                chrono::Duration::from_std(duration).map_err(|_| ExpiryError::TooLong {
                    input: input.into(),
                })?;
            now.checked_add_signed(duration)
                .ok_or_else(|| ExpiryError::TooLong {
                    input: input.into(),
                })?
        } else if let Ok(at) = DateTime::parse_from_rfc3339(trimmed) {
            at.with_timezone(&Utc)
        } else {
            parse_local(trimmed).ok_or_else(|| ExpiryError::Unreadable {
                input: input.into(),
            })?
        };
        let at = truncate_to_seconds(at);
        if at <= now {
            return Err(ExpiryError::InThePast { at });
        }
        Ok(Self::At(at))
    }

    /// Whether the grant has ended at `now`. A grant ending exactly at `now` has ended.
    pub fn has_passed(&self, now: DateTime<Utc>) -> bool {
        match self {
            Self::At(at) => *at <= now,
            Self::Permanent => false,
        }
    }

    /// The end instant, or `None` for a permanent grant.
    pub fn instant(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::At(at) => Some(*at),
            Self::Permanent => None,
        }
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::At(at) => write!(f, "{}", at.format("%Y-%m-%dT%H:%M:%SZ")),
            Self::Permanent => f.write_str("never"),
        }
    }
}

fn parse_local(input: &str) -> Option<DateTime<Utc>> {
    const FORMATS: [&str; 4] = [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ];
    let naive = FORMATS
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(input, format).ok())?;
    // An ambiguous local time (clocks going back) takes the earlier instant: the shorter grant.
    Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

fn truncate_to_seconds(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
}

/// Formats an instant as OpenSSH's `expiry-time` wants it: `YYYYMMDDHHMMSSZ`.
pub fn format_openssh_time(at: DateTime<Utc>) -> String {
    at.format(OPENSSH_TIME_FORMAT).to_string()
}

/// Reads a `YYYYMMDDHHMMSSZ` time, strictly: 14 digits and a `Z`, nothing else.
pub fn parse_openssh_time(input: &str) -> Result<DateTime<Utc>, ExpiryError> {
    let bad = || ExpiryError::BadOpensshTime {
        input: input.into(),
    };
    let digits = input.strip_suffix('Z').ok_or_else(bad)?;
    if digits.len() != 14 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    NaiveDateTime::parse_from_str(digits, "%Y%m%d%H%M%S")
        .map(|naive| naive.and_utc())
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T13:45:10.5Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn durations_count_from_now_in_whole_seconds() {
        let at = |s: &str| Expiry::parse_user_input(s, now()).unwrap().to_string();
        assert_eq!(at("2h"), "2026-11-22T15:45:10Z");
        assert_eq!(at("90m"), "2026-11-22T15:15:10Z");
        assert_eq!(at("1d 12h"), "2026-11-24T01:45:10Z");
        assert_eq!(at(" 1w "), "2026-11-29T13:45:10Z");
    }

    #[test]
    fn absolute_times() {
        let at = |s: &str| Expiry::parse_user_input(s, now()).unwrap().to_string();
        assert_eq!(at("2026-11-23T18:00:00Z"), "2026-11-23T18:00:00Z");
        assert_eq!(at("2026-11-23T19:00:00+01:00"), "2026-11-23T18:00:00Z");
        assert!(Expiry::parse_user_input("2026-11-23 18:00", now()).is_ok());
    }

    #[test]
    fn refuses_past_zero_and_garbage() {
        assert!(matches!(
            Expiry::parse_user_input("0s", now()),
            Err(ExpiryError::InThePast { .. })
        ));
        assert!(matches!(
            Expiry::parse_user_input("2020-01-01T00:00:00Z", now()),
            Err(ExpiryError::InThePast { .. })
        ));
        assert!(matches!(
            Expiry::parse_user_input("soon", now()),
            Err(ExpiryError::Unreadable { .. })
        ));
        assert!(matches!(
            Expiry::parse_user_input("100000000000y", now()),
            Err(ExpiryError::TooLong { .. }) | Err(ExpiryError::Unreadable { .. })
        ));
    }

    #[test]
    fn openssh_time_round_trip_and_strictness() {
        let t = parse_openssh_time("20261122154510Z").unwrap();
        assert_eq!(format_openssh_time(t), "20261122154510Z");
        for bad in [
            "20261122154510",
            "202611221545Z",
            "2026112215451OZ",
            "20261322154510Z",
            "+0261122154510Z",
            "20261122154510Z ",
        ] {
            assert!(parse_openssh_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn has_passed_is_inclusive() {
        let at = Expiry::At(truncate_to_seconds(now()));
        assert!(at.has_passed(truncate_to_seconds(now())));
        assert!(!Expiry::Permanent.has_passed(now()));
    }
}
