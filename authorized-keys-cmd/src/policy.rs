//! The login policy, apart from all IO: given what the cache holds, what the API said (or that
//! it failed) and the settings, which answer is trustworthy enough to give sshd.
//!
//! Every branch here is a unit test below; `answer::lookup` only gathers the facts (reads the
//! cache, asks the API) and carries the decision out.
//!
//! The rules, in order:
//! - While `nodegate-agent` watches the Node, the cached row is what the API holds: it is
//!   served, hit or miss, without asking the API, when the agent confirmed its watch live less
//!   than `freshness` ago on this boot's clock, with the credentials in use now. An agent that
//!   stops or hangs stops confirming, and within `freshness` the rules below apply as if it had
//!   never run.
//! - A cached answer is *fresh*, and the API is not asked, only when its age is measured on the
//!   boot clock of this boot (so no wall-clock step can make it younger), it was read with the
//!   very credentials in use now, and it is younger than `freshness` (a cached "no" only
//!   [`MISS_FRESHNESS`]).
//! - After the API failed to answer and the failure cost time (half the deadline or more: a
//!   blackholed or dripping server), it is not asked again for `api_backoff` while the cache
//!   can stand in: sshd runs the command several times per login, and every run would wait the
//!   whole deadline again. A failure that costs nothing (connection refused) is not remembered,
//!   so logins notice at once when the API is back; and when the cache cannot stand in, the API
//!   is always tried.
//! - Whatever the API answers wins, always: it replaces the cached row, whatever the clocks say.
//! - When the API cannot answer, the cached row is served while it is at most `max_stale` old;
//!   a row whose age cannot be told is not served.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::{BootInstant, Moment};

/// How long a cached answer without any key for the request is served without asking the API
/// (when shorter than the freshness window). Short, so that a login right after a grant works
/// (`keyctl grant` then `ssh`), yet a flood of unknown keys offered before authentication costs
/// at most ten API reads per second.
pub const MISS_FRESHNESS: Duration = Duration::from_millis(100);

/// How far in the future, by the wall clock, a row from an earlier boot may be dated and still
/// count as just read: clocks of a freshly booted machine are often off by a little.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The settings the policy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long a successful read answers without asking the API again.
    pub freshness: Duration,
    /// Longest age of a cached answer served while the API cannot answer.
    pub max_stale: Duration,
    /// How long the API is not asked again after it failed to answer.
    pub api_backoff: Duration,
}

/// When a cached row (or a recorded failure) was read from the API: the moment the request
/// was sent, on both clocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The wall clock then.
    pub wall: DateTime<Utc>,
    /// The boot clock then, if the boot could be identified.
    pub boot: Option<BootInstant>,
}

impl From<&Moment> for Stamp {
    fn from(m: &Moment) -> Self {
        Self {
            wall: m.wall,
            boot: m.boot.clone(),
        }
    }
}

/// How old a cached row is, and how that is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowAge {
    /// Measured on this boot's boot clock: exact, whatever the wall clock did.
    Measured(Duration),
    /// From an earlier boot (or without a boot clock): only the wall clock can tell.
    WallClock(Duration),
    /// Cannot be told: the row claims a time that has not come yet.
    Unknown(String),
}

impl RowAge {
    /// The age, where it can be told.
    pub fn known(&self) -> Option<Duration> {
        match self {
            Self::Measured(d) | Self::WallClock(d) => Some(*d),
            Self::Unknown(_) => None,
        }
    }
}

/// How old a row stamped `stamp` is at `now`.
pub fn row_age(stamp: &Stamp, now: &Moment) -> RowAge {
    if let (Some(then), Some(current)) = (&stamp.boot, &now.boot)
        && then.boot_id == current.boot_id
    {
        return match current.since(then) {
            Some(age) => RowAge::Measured(age),
            None => RowAge::Unknown(
                "it is dated later than now on this boot's clock, which no read could have done"
                    .into(),
            ),
        };
    }
    match (now.wall - stamp.wall).to_std() {
        Ok(age) => RowAge::WallClock(age),
        Err(_) => {
            let ahead = (stamp.wall - now.wall).to_std().unwrap_or_default();
            if ahead <= MAX_CLOCK_SKEW {
                RowAge::WallClock(Duration::ZERO)
            } else {
                RowAge::Unknown(format!(
                    "it is dated {} in the future by the wall clock (was the clock set back?)",
                    humantime::format_duration(Duration::from_secs(ahead.as_secs()))
                ))
            }
        }
    }
}

/// What the cache holds for this node, as far as the policy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFacts {
    /// The row's age.
    pub age: RowAge,
    /// Whether it holds a usable key for this request (after expiry is applied at now).
    pub serves_keys: bool,
    /// Whether it was read with the credentials in use now (same kubeconfig file, unchanged).
    pub same_credentials: bool,
    /// How long ago `nodegate-agent` last confirmed its watch live, on this boot's clock, with
    /// the credentials in use now; `None` when there is no such confirmation.
    pub watch_confirmed_ago: Option<Duration>,
}

/// A failure of the API recorded by an earlier invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentFailure {
    /// How long ago, on this boot's clock (`None`: another boot, or not measurable).
    pub ago: Option<Duration>,
    /// Whether it failed with the credentials in use now.
    pub same_credentials: bool,
    /// What failed.
    pub reason: String,
}

/// What to do before asking the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeforeApi {
    /// Serve the cached row: the agent's live watch keeps it current; the API is not asked.
    ServeWatched {
        /// How long ago the watch was confirmed live.
        confirmed_ago: Duration,
    },
    /// Serve the cached row; the API is not asked.
    ServeFresh {
        /// Its age, on the boot clock.
        age: Duration,
    },
    /// Do not ask the API: it failed a moment ago. Continue with [`when_api_fails`].
    SkipApi {
        /// How long ago it failed.
        failed_ago: Duration,
        /// What failed.
        reason: String,
    },
    /// Ask the API.
    AskApi,
}

/// Whether a failed API request is worth remembering for `api_backoff`: a failure of the API
/// itself (not an answer about the node or its credentials) that took half the deadline or more.
pub fn remember_failure(is_outage: bool, took: Duration, deadline: Duration) -> bool {
    is_outage && took >= deadline / 2
}

/// Decides whether the cached row answers, the API is to be asked, or skipped.
pub fn before_api(
    cached: Option<&CachedFacts>,
    failure: Option<&RecentFailure>,
    policy: &Policy,
) -> BeforeApi {
    let can_stand_in = cached.is_some_and(|row| {
        matches!(
            when_api_fails(&CacheOffer::Row(row.age.clone()), policy),
            WithoutApi::ServeStale { .. }
        )
    });
    if let Some(row) = cached
        && row.same_credentials
        && let Some(confirmed_ago) = row.watch_confirmed_ago
        && confirmed_ago < policy.freshness
    {
        return BeforeApi::ServeWatched { confirmed_ago };
    }
    if let Some(row) = cached
        && row.same_credentials
        && let RowAge::Measured(age) = row.age
    {
        let window = if row.serves_keys {
            policy.freshness
        } else {
            policy.freshness.min(MISS_FRESHNESS)
        };
        if age < window {
            return BeforeApi::ServeFresh { age };
        }
    }
    if let Some(failure) = failure
        && can_stand_in
        && failure.same_credentials
        && let Some(ago) = failure.ago
        && ago < policy.api_backoff
    {
        return BeforeApi::SkipApi {
            failed_ago: ago,
            reason: failure.reason.clone(),
        };
    }
    BeforeApi::AskApi
}

/// What the cache can offer when the API cannot answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOffer {
    /// A row of this age.
    Row(RowAge),
    /// No row for this node.
    NoRow,
    /// The cache could not be used this time.
    Unavailable(String),
}

/// The answer when the API could not give one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WithoutApi {
    /// Serve the cached row.
    ServeStale {
        /// Its age.
        age: Duration,
    },
    /// No trustworthy answer: print nothing, fail closed.
    FailClosed(Refusal),
}

/// Why the cache could not stand in for the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// There is no cached answer for the node.
    NoCachedAnswer(String),
    /// The cached answer is older than `max_stale`.
    TooStale {
        /// Its age.
        age: Duration,
    },
    /// The cached answer's age cannot be told.
    AgeUnknown(String),
}

/// Decides whether the cache may stand in for an API that could not answer.
pub fn when_api_fails(offer: &CacheOffer, policy: &Policy) -> WithoutApi {
    match offer {
        CacheOffer::Row(age) => match age.known() {
            Some(age) if age <= policy.max_stale => WithoutApi::ServeStale { age },
            Some(age) => WithoutApi::FailClosed(Refusal::TooStale { age }),
            None => WithoutApi::FailClosed(Refusal::AgeUnknown(match age {
                RowAge::Unknown(why) => why.clone(),
                _ => String::new(),
            })),
        },
        CacheOffer::NoRow => {
            WithoutApi::FailClosed(Refusal::NoCachedAnswer("none for this Node".into()))
        }
        CacheOffer::Unavailable(why) => {
            WithoutApi::FailClosed(Refusal::NoCachedAnswer(why.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        freshness: Duration::from_secs(5),
        max_stale: Duration::from_secs(24 * 3600),
        api_backoff: Duration::from_secs(10),
    };

    fn wall(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn boot(id: &str, ms: u64) -> Option<BootInstant> {
        Some(BootInstant {
            boot_id: id.into(),
            since_boot_ms: ms,
        })
    }

    fn now() -> Moment {
        Moment {
            wall: wall("2026-12-01T12:00:00Z"),
            boot: boot("this-boot", 100_000),
        }
    }

    fn facts(age: RowAge, serves_keys: bool) -> CachedFacts {
        CachedFacts {
            age,
            serves_keys,
            same_credentials: true,
            watch_confirmed_ago: None,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_live_watch_serves_hits_and_misses_of_any_age_without_the_api() {
        for serves_keys in [true, false] {
            let watched = CachedFacts {
                watch_confirmed_ago: Some(ms(900)),
                // A row that has not changed for a day is still what the API holds.
                ..facts(RowAge::Measured(Duration::from_secs(86_400)), serves_keys)
            };
            assert_eq!(
                before_api(Some(&watched), None, &POLICY),
                BeforeApi::ServeWatched {
                    confirmed_ago: ms(900)
                }
            );
        }
    }

    #[test]
    fn a_watch_confirmed_too_long_ago_or_with_other_credentials_does_not_count() {
        let lapsed = CachedFacts {
            watch_confirmed_ago: Some(POLICY.freshness),
            ..facts(RowAge::Measured(Duration::from_secs(60)), true)
        };
        assert_eq!(before_api(Some(&lapsed), None, &POLICY), BeforeApi::AskApi);
        let other_credentials = CachedFacts {
            watch_confirmed_ago: Some(ms(10)),
            same_credentials: false,
            ..facts(RowAge::Measured(Duration::from_secs(60)), true)
        };
        assert_eq!(
            before_api(Some(&other_credentials), None, &POLICY),
            BeforeApi::AskApi
        );
        // Lapsed, but the row itself is fresh: the ordinary window still applies.
        let fresh = CachedFacts {
            watch_confirmed_ago: Some(Duration::from_secs(60)),
            ..facts(RowAge::Measured(ms(200)), true)
        };
        assert_eq!(
            before_api(Some(&fresh), None, &POLICY),
            BeforeApi::ServeFresh { age: ms(200) }
        );
    }

    #[test]
    fn age_is_measured_on_the_boot_clock_whatever_the_wall_clock_says() {
        // Stamped 2 s ago on this boot, but the wall clock was set back a day since.
        let stamp = Stamp {
            wall: wall("2026-12-02T12:00:00Z"),
            boot: boot("this-boot", 98_000),
        };
        assert_eq!(row_age(&stamp, &now()), RowAge::Measured(ms(2000)));
        // Dated later than now on this boot's clock: no read can do that.
        let forged = Stamp {
            wall: wall("2026-12-01T12:00:00Z"),
            boot: boot("this-boot", 100_001),
        };
        assert!(matches!(row_age(&forged, &now()), RowAge::Unknown(_)));
    }

    #[test]
    fn rows_of_another_boot_are_aged_by_the_wall_clock() {
        let older = Stamp {
            wall: wall("2026-12-01T11:00:00Z"),
            boot: boot("earlier-boot", 5_000_000),
        };
        assert_eq!(
            row_age(&older, &now()),
            RowAge::WallClock(Duration::from_secs(3600))
        );
        let slightly_ahead = Stamp {
            wall: wall("2026-12-01T12:04:00Z"),
            boot: None,
        };
        assert_eq!(
            row_age(&slightly_ahead, &now()),
            RowAge::WallClock(Duration::ZERO)
        );
        let far_ahead = Stamp {
            wall: wall("2026-12-01T13:00:00Z"),
            boot: boot("earlier-boot", 1),
        };
        let RowAge::Unknown(why) = row_age(&far_ahead, &now()) else {
            panic!("a row an hour in the future has no age")
        };
        assert!(why.contains("1h"), "{why}");
    }

    #[test]
    fn a_fresh_hit_is_served_for_the_whole_window() {
        let decide = |age| before_api(Some(&facts(RowAge::Measured(age), true)), None, &POLICY);
        assert_eq!(decide(ms(0)), BeforeApi::ServeFresh { age: ms(0) });
        assert_eq!(decide(ms(4999)), BeforeApi::ServeFresh { age: ms(4999) });
        assert_eq!(decide(ms(5000)), BeforeApi::AskApi);
    }

    #[test]
    fn a_cached_miss_is_served_only_inside_the_miss_window() {
        let decide = |age| before_api(Some(&facts(RowAge::Measured(age), false)), None, &POLICY);
        assert_eq!(decide(ms(99)), BeforeApi::ServeFresh { age: ms(99) });
        assert_eq!(decide(ms(100)), BeforeApi::AskApi);
        assert_eq!(decide(ms(3000)), BeforeApi::AskApi);
        // A freshness window shorter than the miss window bounds misses too.
        let short = Policy {
            freshness: ms(50),
            ..POLICY
        };
        let miss = facts(RowAge::Measured(ms(60)), false);
        assert_eq!(before_api(Some(&miss), None, &short), BeforeApi::AskApi);
    }

    #[test]
    fn only_boot_clock_ages_and_the_same_credentials_are_ever_fresh() {
        let by_wall = facts(RowAge::WallClock(ms(0)), true);
        assert_eq!(before_api(Some(&by_wall), None, &POLICY), BeforeApi::AskApi);
        let unknown = facts(RowAge::Unknown("future".into()), true);
        assert_eq!(before_api(Some(&unknown), None, &POLICY), BeforeApi::AskApi);
        let other_credentials = CachedFacts {
            same_credentials: false,
            ..facts(RowAge::Measured(ms(0)), true)
        };
        assert_eq!(
            before_api(Some(&other_credentials), None, &POLICY),
            BeforeApi::AskApi
        );
        assert_eq!(before_api(None, None, &POLICY), BeforeApi::AskApi);
    }

    #[test]
    fn a_recent_failure_skips_the_api_for_the_backoff() {
        let failure = |ago: Option<Duration>, same_credentials| RecentFailure {
            ago,
            same_credentials,
            reason: "timeout".into(),
        };
        let stale = facts(RowAge::Measured(Duration::from_secs(60)), true);
        assert_eq!(
            before_api(Some(&stale), Some(&failure(Some(ms(200)), true)), &POLICY),
            BeforeApi::SkipApi {
                failed_ago: ms(200),
                reason: "timeout".into()
            }
        );
        for (ago, same) in [
            (Some(Duration::from_secs(10)), true),
            (None, true),
            (Some(ms(200)), false),
        ] {
            assert_eq!(
                before_api(Some(&stale), Some(&failure(ago, same)), &POLICY),
                BeforeApi::AskApi,
                "{ago:?} {same}"
            );
        }
        // A fresh answer still wins over a failure.
        let fresh = facts(RowAge::Measured(ms(10)), true);
        assert_eq!(
            before_api(Some(&fresh), Some(&failure(Some(ms(5)), true)), &POLICY),
            BeforeApi::ServeFresh { age: ms(10) }
        );
        // Without a row that can stand in, the API is tried whatever failed before.
        let too_old = facts(RowAge::Measured(Duration::from_secs(2 * 24 * 3600)), true);
        for cached in [None, Some(&too_old)] {
            assert_eq!(
                before_api(cached, Some(&failure(Some(ms(200)), true)), &POLICY),
                BeforeApi::AskApi
            );
        }
        let disabled = Policy {
            api_backoff: Duration::ZERO,
            ..POLICY
        };
        assert_eq!(
            before_api(Some(&stale), Some(&failure(Some(ms(0)), true)), &disabled),
            BeforeApi::AskApi
        );
    }

    #[test]
    fn only_failures_that_cost_time_are_remembered() {
        let deadline = Duration::from_millis(1500);
        assert!(remember_failure(true, deadline, deadline));
        assert!(remember_failure(true, ms(750), deadline));
        assert!(
            !remember_failure(true, ms(3), deadline),
            "connection refused"
        );
        assert!(
            !remember_failure(false, deadline, deadline),
            "an answer, e.g. 401"
        );
    }

    #[test]
    fn stale_rows_stand_in_up_to_max_stale() {
        let day = Duration::from_secs(24 * 3600);
        for age in [RowAge::Measured(day), RowAge::WallClock(day)] {
            assert_eq!(
                when_api_fails(&CacheOffer::Row(age), &POLICY),
                WithoutApi::ServeStale { age: day }
            );
        }
        let older = day + ms(1);
        assert_eq!(
            when_api_fails(&CacheOffer::Row(RowAge::WallClock(older)), &POLICY),
            WithoutApi::FailClosed(Refusal::TooStale { age: older })
        );
    }

    #[test]
    fn no_row_an_unusable_cache_or_an_unknown_age_fail_closed() {
        assert!(matches!(
            when_api_fails(&CacheOffer::NoRow, &POLICY),
            WithoutApi::FailClosed(Refusal::NoCachedAnswer(_))
        ));
        assert_eq!(
            when_api_fails(&CacheOffer::Unavailable("locked".into()), &POLICY),
            WithoutApi::FailClosed(Refusal::NoCachedAnswer("locked".into()))
        );
        assert_eq!(
            when_api_fails(&CacheOffer::Row(RowAge::Unknown("future".into())), &POLICY),
            WithoutApi::FailClosed(Refusal::AgeUnknown("future".into()))
        );
    }
}
