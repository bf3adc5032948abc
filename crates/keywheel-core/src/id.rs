//! Keyring identity: tenant, purpose, key version.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const DAY: u64 = 24 * 60 * 60;

/// What a keyring's keys protect. The five presets carry a rotation interval
/// and grace period (see the manual's lifecycle section); any other purpose is
/// [`Purpose::Custom`].
///
/// Equality, hashing and ordering follow the canonical name ([`as_str`](Self::as_str)),
/// because that name is what stores and associated data see:
/// `Purpose::Custom("token".into())` *is* [`Purpose::Token`], with the token
/// preset's policy, and [`KeyringId::new`] stores it as `Token`.
///
/// ```
/// use keywheel_core::Purpose;
/// assert_eq!(Purpose::Custom("token".into()), Purpose::Token);
/// assert_eq!(Purpose::Custom("session".into()).default_interval(), Purpose::Session.default_interval());
/// ```
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum Purpose {
    /// OAuth and API tokens: rotate every 90 days, 30 days of grace.
    Token,
    /// Database fields: 180 days, 90 days of grace.
    Database,
    /// Files and blobs: 365 days, 180 days of grace.
    File,
    /// Session data: 30 days, 7 days of grace; old values expire instead of
    /// being re-encrypted.
    Session,
    /// API request signatures (HMAC): 90 days, 30 days of grace.
    ApiSignature,
    /// Any other purpose name (canonical form rules apply).
    Custom(String),
}

impl PartialEq for Purpose {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Purpose {}

impl std::hash::Hash for Purpose {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Ord for Purpose {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().as_bytes().cmp(other.as_str().as_bytes())
    }
}

impl PartialOrd for Purpose {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Purpose {
    /// The preset this purpose names: a `Custom` purpose spelled like a preset
    /// is that preset (one canonical name, one meaning).
    fn normalized(&self) -> Purpose {
        match self {
            Purpose::Custom(name) => Purpose::preset_or_custom(name),
            other => other.clone(),
        }
    }

    fn preset_or_custom(name: &str) -> Purpose {
        match name {
            "token" => Purpose::Token,
            "database" => Purpose::Database,
            "file" => Purpose::File,
            "session" => Purpose::Session,
            "api-signature" => Purpose::ApiSignature,
            other => Purpose::Custom(other.to_owned()),
        }
    }

    /// The canonical name used in the keyring id.
    pub fn as_str(&self) -> &str {
        match self {
            Purpose::Token => "token",
            Purpose::Database => "database",
            Purpose::File => "file",
            Purpose::Session => "session",
            Purpose::ApiSignature => "api-signature",
            Purpose::Custom(name) => name,
        }
    }

    /// Preset rotation interval, or `None` for custom purposes.
    pub fn default_interval(&self) -> Option<Duration> {
        let days = match self.normalized() {
            Purpose::Token | Purpose::ApiSignature => 90,
            Purpose::Database => 180,
            Purpose::File => 365,
            Purpose::Session => 30,
            Purpose::Custom(_) => return None,
        };
        Some(Duration::from_secs(days * DAY))
    }

    /// Preset grace period before an old version may be retired, or `None` for custom purposes.
    pub fn default_grace_period(&self) -> Option<Duration> {
        let days = match self.normalized() {
            Purpose::Token | Purpose::ApiSignature => 30,
            Purpose::Database => 90,
            Purpose::File => 180,
            Purpose::Session => 7,
            Purpose::Custom(_) => return None,
        };
        Some(Duration::from_secs(days * DAY))
    }

    /// Whether old values of this purpose expire rather than being re-encrypted.
    pub fn expires_instead_of_reencrypting(&self) -> bool {
        matches!(self.normalized(), Purpose::Session)
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Purpose {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        validate_part(s)?;
        Ok(Purpose::preset_or_custom(s))
    }
}

fn validate_part(part: &str) -> Result<()> {
    if part.is_empty() {
        return Err(Error::InvalidKeyringId("tenant and purpose must not be empty"));
    }
    if part.len() > 255 {
        return Err(Error::InvalidKeyringId("tenant and purpose are at most 255 bytes"));
    }
    if part.contains('/') {
        return Err(Error::InvalidKeyringId("tenant and purpose must not contain '/'"));
    }
    if part.chars().any(char::is_control) {
        return Err(Error::InvalidKeyringId("tenant and purpose must not contain control characters"));
    }
    Ok(())
}

/// A keyring's identity: `(tenant, purpose)`, canonically `tenant/purpose`.
/// Equality, hashing and ordering follow that canonical form.
///
/// The keyring id is bound into every value's associated data, so a value
/// encrypted for one tenant never decrypts under another tenant's keyring.
///
/// ```
/// use keywheel_core::{KeyringId, Purpose};
/// let id = KeyringId::new("acme", Purpose::Token)?;
/// assert_eq!(id.to_string(), "acme/token");
/// assert_eq!("acme/token".parse::<KeyringId>()?, id);
/// # Ok::<(), keywheel_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyringId {
    tenant: String,
    purpose: Purpose,
}

impl KeyringId {
    /// A keyring id, validated against the canonical-form rules of the [wire format](crate::manual#2-wire-format-v1).
    pub fn new(tenant: impl Into<String>, purpose: Purpose) -> Result<Self> {
        let tenant = tenant.into();
        validate_part(&tenant)?;
        validate_part(purpose.as_str())?;
        Ok(KeyringId { tenant, purpose: purpose.normalized() })
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The purpose.
    pub fn purpose(&self) -> &Purpose {
        &self.purpose
    }

    /// The canonical form `tenant/purpose` as it enters associated data.
    pub fn canonical(&self) -> String {
        format!("{}/{}", self.tenant, self.purpose.as_str())
    }
}

/// Ordered by the canonical form `tenant/purpose`, bytewise, so that every
/// store (memory, file, SQL `ORDER BY` on the text id) lists keyrings alike.
impl Ord for KeyringId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let canonical = |k: &KeyringId| {
            k.tenant.as_bytes().iter().chain(b"/").chain(k.purpose.as_str().as_bytes()).copied().collect::<Vec<u8>>()
        };
        if self == other { std::cmp::Ordering::Equal } else { canonical(self).cmp(&canonical(other)) }
    }
}

impl PartialOrd for KeyringId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for KeyringId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.purpose.as_str())
    }
}

impl FromStr for KeyringId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (tenant, purpose) = s.split_once('/').ok_or(Error::InvalidKeyringId("expected the form tenant/purpose"))?;
        KeyringId::new(tenant, purpose.parse()?)
    }
}

impl Serialize for KeyringId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyringId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A key version within a keyring: starts at 1, +1 per new version, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct KeyVersion(u32);

impl KeyVersion {
    /// The first version of every keyring.
    pub const FIRST: KeyVersion = KeyVersion(1);

    /// A version number; zero is rejected.
    pub fn new(version: u32) -> Result<Self> {
        if version == 0 {
            return Err(crate::FormatError::ZeroVersion.into());
        }
        Ok(KeyVersion(version))
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The version after this one, or `None` at `u32::MAX`.
    pub fn next(self) -> Option<KeyVersion> {
        self.0.checked_add(1).map(KeyVersion)
    }
}

impl TryFrom<u32> for KeyVersion {
    type Error = Error;
    fn try_from(v: u32) -> Result<Self> {
        KeyVersion::new(v)
    }
}

impl From<KeyVersion> for u32 {
    fn from(v: KeyVersion) -> u32 {
        v.0
    }
}

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_rules() {
        assert!(KeyringId::new("", Purpose::Token).is_err());
        assert!(KeyringId::new("a/b", Purpose::Token).is_err());
        assert!(KeyringId::new("a\nb", Purpose::Token).is_err());
        assert!(KeyringId::new("x".repeat(256), Purpose::Token).is_err());
        assert!(KeyringId::new("x".repeat(255), Purpose::Token).is_ok());
        assert!(KeyringId::new("t", Purpose::Custom(String::new())).is_err());
        let id: KeyringId = "acme/api-signature".parse().expect("valid");
        assert_eq!(id.purpose(), &Purpose::ApiSignature);
        assert!("acme".parse::<KeyringId>().is_err());
        assert!("acme/a/b".parse::<KeyringId>().is_err());
    }

    #[test]
    fn presets_match_design() {
        let d = |n: u64| Some(Duration::from_secs(n * DAY));
        assert_eq!(Purpose::Token.default_interval(), d(90));
        assert_eq!(Purpose::Token.default_grace_period(), d(30));
        assert_eq!(Purpose::Database.default_interval(), d(180));
        assert_eq!(Purpose::Database.default_grace_period(), d(90));
        assert_eq!(Purpose::File.default_interval(), d(365));
        assert_eq!(Purpose::File.default_grace_period(), d(180));
        assert_eq!(Purpose::Session.default_interval(), d(30));
        assert_eq!(Purpose::Session.default_grace_period(), d(7));
        assert_eq!(Purpose::ApiSignature.default_interval(), d(90));
        assert_eq!(Purpose::ApiSignature.default_grace_period(), d(30));
        assert!(Purpose::Session.expires_instead_of_reencrypting());
        assert!(!Purpose::Token.expires_instead_of_reencrypting());
    }

    #[test]
    fn keyring_ids_sort_by_canonical_form() {
        let ids: Vec<KeyringId> =
            ["b/token", "a/token", "a-b/file", "a/database"].iter().map(|s| s.parse().expect("valid")).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        let text: Vec<String> = sorted.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["a-b/file", "a/database", "a/token", "b/token"]);
    }

    #[test]
    fn version_zero_rejected() {
        assert!(KeyVersion::new(0).is_err());
        assert_eq!(KeyVersion::new(7).expect("valid").get(), 7);
        assert!(serde_json::from_str::<KeyVersion>("0").is_err());
    }
}
