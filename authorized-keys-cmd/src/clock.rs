//! Two clocks: the wall clock, which can be stepped (NTP, an operator, a wrong RTC after a
//! reboot), and the boot clock (`CLOCK_BOOTTIME`), which only moves forward while the machine
//! runs, suspend included.
//!
//! Freshness decides whether the API is asked at all, so it is measured on the boot clock only:
//! no step of the wall clock can make a cached answer look younger than it is. A cache row
//! records the boot it was written in (`/proc/sys/kernel/random/boot_id`), so a row from an
//! earlier boot, or from another machine, is never fresh. The wall clock is used only where
//! nothing else can tell: the age of a row from an earlier boot, during an outage.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Where the kernel names the current boot: a random UUID, new at every boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// A point on the boot clock of one particular boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInstant {
    /// The boot (the kernel's `boot_id`, a UUID).
    pub boot_id: String,
    /// Milliseconds since that boot (`CLOCK_BOOTTIME`).
    pub since_boot_ms: u64,
}

impl BootInstant {
    /// How long after `earlier` this instant is, when both are of the same boot and `earlier`
    /// really is earlier; `None` otherwise (another boot, or a value no boot clock produced).
    pub fn since(&self, earlier: &BootInstant) -> Option<Duration> {
        if self.boot_id != earlier.boot_id {
            return None;
        }
        self.since_boot_ms
            .checked_sub(earlier.since_boot_ms)
            .map(Duration::from_millis)
    }
}

/// "Now" on both clocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moment {
    /// The wall clock.
    pub wall: DateTime<Utc>,
    /// The boot clock, `None` where the boot cannot be identified (no `/proc`): then nothing is
    /// ever fresh and the API is always asked.
    pub boot: Option<BootInstant>,
}

impl Moment {
    /// Reads both clocks.
    pub fn now() -> Self {
        Self {
            wall: Utc::now(),
            boot: boot_now(),
        }
    }
}

fn boot_now() -> Option<BootInstant> {
    let text = std::fs::read_to_string(BOOT_ID_PATH).ok()?;
    let boot_id = text.trim();
    // A UUID: 36 characters of hex digits and dashes. Anything else is not the kernel's.
    if boot_id.len() != 36 || !boot_id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return None;
    }
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let since_boot_ms = u64::try_from(t.tv_sec)
        .ok()?
        .checked_mul(1000)?
        .checked_add(u64::try_from(t.tv_nsec / 1_000_000).ok()?)?;
    Some(BootInstant {
        boot_id: boot_id.to_owned(),
        since_boot_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(boot: &str, ms: u64) -> BootInstant {
        BootInstant {
            boot_id: boot.into(),
            since_boot_ms: ms,
        }
    }

    #[test]
    fn durations_only_within_one_boot_and_forward() {
        assert_eq!(
            at("a", 1500).since(&at("a", 1000)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(at("a", 1000).since(&at("a", 1500)), None, "from the future");
        assert_eq!(at("b", 1500).since(&at("a", 1000)), None, "another boot");
    }

    #[test]
    fn reads_this_machines_boot_clock() {
        let first = Moment::now().boot.expect("Linux with /proc has a boot id");
        let second = Moment::now().boot.unwrap();
        assert!(second.since(&first).is_some(), "{first:?} then {second:?}");
    }
}
