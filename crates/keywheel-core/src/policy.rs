//! Rotation policies (the [runbook](crate::manual#12-operator-runbook)): how often a keyring rotates and the safety
//! periods the rotation engine honours.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Purpose;

const HOUR: u64 = 60 * 60;
const DAY: u64 = 24 * HOUR;

/// What happens to values under an old version after a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterRotation {
    /// Re-encrypt every stored value under the new version (the default).
    Reencrypt,
    /// Leave old values alone; they expire with the grace period (sessions).
    Expire,
}

/// A daily maintenance window in UTC: `start` after midnight, lasting `duration`
/// (may cross midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    /// Offset of the window start from 00:00 UTC.
    #[serde(with = "duration_secs")]
    pub start: Duration,
    /// Length of the window.
    #[serde(with = "duration_secs")]
    pub duration: Duration,
}

impl MaintenanceWindow {
    /// Whether the time of day of `t` falls inside the window.
    pub fn contains(&self, t: crate::Timestamp) -> bool {
        let day_ms = (DAY * 1000) as i64;
        let tod = t.as_millis().rem_euclid(day_ms);
        let start = (self.start.as_millis() as i64).rem_euclid(day_ms);
        let len = (self.duration.as_millis() as i64).min(day_ms);
        (tod - start).rem_euclid(day_ms) < len
    }
}

/// Policy of one keyring. The engine reads `grace_period`, `rollback_window`,
/// `activation_delay` and `after_rotation`; the scheduler reads the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Time between rotations.
    #[serde(with = "duration_secs")]
    pub interval: Duration,
    /// How long a deprecated version stays before it may be retired.
    #[serde(with = "duration_secs")]
    pub grace_period: Duration,
    /// How long after an activation a rollback to the previous version is allowed.
    #[serde(with = "duration_secs")]
    pub rollback_window: Duration,
    /// Wait between storing the new version (Pending) and activating it, so every
    /// process loads it first. Zero for single-process use and emergencies.
    #[serde(with = "duration_secs")]
    pub activation_delay: Duration,
    /// Re-encrypt old values, or let them expire.
    pub after_rotation: AfterRotation,
    /// Rotate once a version has made this many encryptions.
    pub usage_limit: Option<u64>,
    /// Scheduled rotations only start inside this window (overdue ones anywhere).
    pub maintenance_window: Option<MaintenanceWindow>,
    /// Higher runs first when several rotations are due.
    pub priority: i32,
    /// How long a retired version stays Disabled (decryption refused, material
    /// kept wrapped, re-enabling possible) before its material is destroyed.
    /// Zero destroys at once. Policies stored before it existed load with the
    /// default, [`DEFAULT_QUARANTINE`].
    #[serde(with = "duration_secs", default = "default_quarantine")]
    pub quarantine: Duration,
}

/// Default quarantine of a retired version: 7 days, the middle of what cloud
/// KMSs give for scheduled key destruction (24 hours to 30 days).
pub const DEFAULT_QUARANTINE: Duration = Duration::from_secs(7 * DAY);

fn default_quarantine() -> Duration {
    DEFAULT_QUARANTINE
}

/// Default usage limit: 2^30 encryptions, a quarter of the 2^32 bound for
/// random 96-bit nonces, so the scheduler rotates well before the hard limit.
pub const DEFAULT_USAGE_LIMIT: u64 = 1 << 30;

impl Policy {
    /// The preset for a purpose (see [`Policy`]); custom purposes get the `database` preset.
    pub fn for_purpose(purpose: &Purpose) -> Self {
        let interval = purpose.default_interval().unwrap_or(Duration::from_secs(180 * DAY));
        let grace_period = purpose.default_grace_period().unwrap_or(Duration::from_secs(90 * DAY));
        Policy {
            interval,
            grace_period,
            rollback_window: Duration::from_secs(DAY),
            activation_delay: Duration::ZERO,
            after_rotation: if purpose.expires_instead_of_reencrypting() {
                AfterRotation::Expire
            } else {
                AfterRotation::Reencrypt
            },
            usage_limit: Some(DEFAULT_USAGE_LIMIT),
            maintenance_window: None,
            priority: 0,
            quarantine: DEFAULT_QUARANTINE,
        }
    }
}

pub(crate) mod duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;

    #[test]
    fn window_crossing_midnight() {
        let w = MaintenanceWindow { start: Duration::from_secs(23 * HOUR), duration: Duration::from_secs(2 * HOUR) };
        let at = |h: u64, m: u64| Timestamp::from_millis(((10 * DAY + h * HOUR + m * 60) * 1000) as i64);
        assert!(w.contains(at(23, 0)));
        assert!(w.contains(at(0, 59)));
        assert!(!w.contains(at(1, 0)));
        assert!(!w.contains(at(22, 59)));
    }

    #[test]
    fn policies_stored_without_a_quarantine_load_with_the_default() {
        let mut json = serde_json::to_value(Policy::for_purpose(&Purpose::Token)).expect("encode");
        assert_eq!(json["quarantine"], 7 * DAY);
        json.as_object_mut().expect("object").remove("quarantine");
        let old: Policy = serde_json::from_value(json).expect("decode");
        assert_eq!(old.quarantine, DEFAULT_QUARANTINE);
    }

    #[test]
    fn presets() {
        assert_eq!(Policy::for_purpose(&Purpose::Session).after_rotation, AfterRotation::Expire);
        assert_eq!(Policy::for_purpose(&Purpose::File).interval, Duration::from_secs(365 * DAY));
    }
}

pub(crate) mod duration_secs_f64 {
    use std::time::Duration;

    use serde::Serializer;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}
