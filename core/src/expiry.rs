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
    /// An end further away than [`MAX_EXPIRY_DAYS`]: a grant that long is a permanent grant
    /// in all but name, and must be asked for as one.
    #[error(
        "--expires {input:?} is too far away: --expires may be at most {MAX_EXPIRY_DAYS}d; for a grant without end use --permanent"
    )]
    TooFar {
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

/// The furthest `--expires` may reach, in days from now. Anything longer must be `--permanent`,
/// said explicitly, so that no grant without a real end passes for a temporary one.
pub const MAX_EXPIRY_DAYS: i64 = 365;

/// The format of OpenSSH's `expiry-time` option, used for every time in a grant annotation.
const OPENSSH_TIME_FORMAT: &str = "%Y%m%d%H%M%SZ";

impl Expiry {
    /// Reads what a user typed for `--expires`: a duration from `now` (`2h`, `90m`, `1d 12h`,
    /// `1w`) or an absolute time (RFC 3339, or `YYYY-MM-DD HH:MM[:SS]` in local time).
    pub fn parse_user_input(input: &str, now: DateTime<Utc>) -> Result<Self, ExpiryError> {
        let trimmed = input.trim();
        let too_far = || ExpiryError::TooFar {
            input: input.into(),
        };
        let latest = now + chrono::Duration::days(MAX_EXPIRY_DAYS);
        let at = match humantime::parse_duration(trimmed) {
            Ok(duration) => {
                // Longer than the cap: refused before any arithmetic that could overflow.
                let duration = chrono::Duration::from_std(duration).map_err(|_| too_far())?;
                now.checked_add_signed(duration).ok_or_else(too_far)?
            }
            // A number of units too large to count is a duration, just a far too long one.
            Err(humantime::DurationError::NumberOverflow) => return Err(too_far()),
            Err(_) => match DateTime::parse_from_rfc3339(trimmed) {
                Ok(at) => at.with_timezone(&Utc),
                Err(_) => parse_local(trimmed).ok_or_else(|| ExpiryError::Unreadable {
                    input: input.into(),
                })?,
            },
        };
        let at = truncate_to_seconds(at);
        if at <= now {
            return Err(ExpiryError::InThePast { at });
        }
        if at > latest {
            return Err(too_far());
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
    // chrono reads second 60 as a leap second; UTC times in grants have seconds 00-59 only, so
    // that every accepted time formats back to the same text.
    if &digits[12..] > "59" {
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
    }

    #[test]
    fn expiries_are_capped_at_a_year_with_one_clear_error() {
        let max = Expiry::parse_user_input("365d", now()).unwrap();
        assert_eq!(max.to_string(), "2027-11-22T13:45:10Z");
        assert!(Expiry::parse_user_input("2027-11-22T13:45:10Z", now()).is_ok());
        for far in [
            "365d 1s",
            "1000y",
            "8000y",
            "100000000000y",
            "99999999999999999999999s",
            "2027-11-22T13:45:11Z",
            "9999-12-31T23:59:59Z",
            "3000-01-01 00:00",
        ] {
            let error = Expiry::parse_user_input(far, now()).unwrap_err();
            assert_eq!(error, ExpiryError::TooFar { input: far.into() }, "{far}");
            let text = error.to_string();
            assert!(
                text.contains(
                    "--expires may be at most 365d; for a grant without end use --permanent"
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn openssh_time_round_trip_and_strictness() {
        for text in [
            "20261122154510Z",
            "20261231235959Z",
            "00010101000000Z",
            "99991231235959Z",
        ] {
            assert_eq!(format_openssh_time(parse_openssh_time(text).unwrap()), text);
        }
        for bad in [
            "20261122154510",
            "202611221545Z",
            "2026112215451OZ",
            "20261322154510Z",
            "+0261122154510Z",
            "20261122154510Z ",
            "20261231235960Z",
            "20261122154560Z",
            "20261122154599Z",
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
