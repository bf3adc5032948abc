//! Key version lifecycle states and the legal transitions between them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, KeyVersion, Result};

/// Lifecycle state of a key version (the [manual](crate::manual#1-concepts); retirement: [section 11](crate::manual#11-retirement-quarantine-and-tenant-erasure)).
///
/// Legal transitions: `Pending → Active → Deprecated → Disabled → Retired`,
/// plus the rollback `Deprecated → Active` and the re-enabling
/// `Disabled → Deprecated` (inside the quarantine, never for a compromised
/// version: [`KeyringRecord::apply`](crate::KeyringRecord::apply) checks both).
/// Everything else is an [`Error::IllegalTransition`] naming both states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Stored and loadable (decrypts), not yet used to encrypt.
    Pending,
    /// The one version that encrypts new values.
    Active,
    /// Decrypts old values; no longer encrypts.
    Deprecated,
    /// Retired reversibly: decryption under it is refused
    /// ([`Error::KeyDisabled`]) but its wrapped material stays in the store
    /// until its quarantine ends; it can be re-enabled until then.
    Disabled,
    /// Material destroyed; only metadata remains.
    Retired,
}

impl KeyState {
    /// Whether `self → to` is a legal transition.
    pub fn can_transition_to(self, to: KeyState) -> bool {
        use KeyState::*;
        matches!(
            (self, to),
            (Pending, Active)
                | (Active, Deprecated)
                | (Deprecated, Disabled)
                | (Disabled, Retired)
                | (Deprecated, Active)
                | (Disabled, Deprecated)
        )
    }

    /// `Ok(())` if `self → to` is legal, else the typed error naming both states.
    pub fn check_transition(self, version: KeyVersion, to: KeyState) -> Result<()> {
        if self.can_transition_to(to) { Ok(()) } else { Err(Error::IllegalTransition { version, from: self, to }) }
    }

    /// Whether a version in this state can decrypt (Pending, Active, Deprecated).
    pub fn can_decrypt(self) -> bool {
        !matches!(self, KeyState::Disabled | KeyState::Retired)
    }

    /// Whether the store still holds the version's wrapped material (every
    /// state but Retired).
    pub fn keeps_material(self) -> bool {
        self != KeyState::Retired
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Deprecated => "deprecated",
            KeyState::Disabled => "disabled",
            KeyState::Retired => "retired",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::KeyState::*;
    use super::*;

    #[test]
    fn only_design_transitions_are_legal() {
        let all = [Pending, Active, Deprecated, Disabled, Retired];
        let legal = [
            (Pending, Active),
            (Active, Deprecated),
            (Deprecated, Disabled),
            (Disabled, Retired),
            (Deprecated, Active),
            (Disabled, Deprecated),
        ];
        for from in all {
            for to in all {
                assert_eq!(from.can_transition_to(to), legal.contains(&(from, to)), "{from} -> {to}");
            }
        }
        let err = Retired.check_transition(KeyVersion::FIRST, Active).expect_err("illegal");
        let text = err.to_string();
        assert!(text.contains("retired") && text.contains("active"), "{text}");
        // Destruction always passes through the reversible Disabled step.
        assert!(!Deprecated.can_transition_to(Retired));
        assert!(!Disabled.can_decrypt() && Disabled.keeps_material());
        assert!(!Retired.keeps_material() && Deprecated.can_decrypt());
    }
}
