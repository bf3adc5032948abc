//! Exit codes and the one-sentence errors the CLI prints, with the fix where known.

use keywheel_core::Error;

/// Success.
pub(crate) const OK: u8 = 0;
/// Store, database, master key or configuration error.
pub(crate) const ERROR: u8 = 1;
/// Bad or missing argument, unknown command (clap's own code too).
pub(crate) const USAGE: u8 = 2;
/// A safety rule refused the operation.
pub(crate) const REFUSED: u8 = 3;
/// The command ran and found problems (failed values, values left behind, a damaged log).
pub(crate) const PROBLEMS: u8 = 4;
/// Interrupted by SIGINT/SIGTERM (128 + SIGINT, as shells report it).
pub(crate) const INTERRUPTED: u8 = 130;

/// The worse of two exit codes, for commands that do several things and go
/// on after a failure: interrupted, then error, then refused, then problems
/// found, then success.
pub(crate) fn worst(a: u8, b: u8) -> u8 {
    let rank = |code: u8| match code {
        OK => 0,
        PROBLEMS => 1,
        REFUSED => 2,
        USAGE => 3,
        INTERRUPTED => 5,
        _ => 4,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// An error as the operator sees it: one sentence, an optional fix, an exit code.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) code: u8,
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

impl CliError {
    /// An error with exit code 1.
    pub(crate) fn error(message: impl Into<String>) -> Self {
        CliError { code: ERROR, message: message.into(), hint: None }
    }

    /// A usage error (exit code 2).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        CliError { code: USAGE, message: message.into(), hint: None }
    }

    /// A refusal by a safety rule (exit code 3).
    pub(crate) fn refused(message: impl Into<String>) -> Self {
        CliError { code: REFUSED, message: message.into(), hint: None }
    }

    /// Add how to fix it.
    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Add how to fix it, unless a more precise hint is there already.
    pub(crate) fn or_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint.get_or_insert_with(|| hint.into());
        self
    }

    /// The JSON printed on stdout with `--json`.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "message": self.message, "hint": self.hint, "exit_code": self.code } })
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match &e {
            Error::WrongMasterKey { expected_key_check, .. } => CliError::error(message).with_hint(format!(
                "give the master key whose key check value is {expected_key_check} (printed by `keywheel init` and \
                 `keywheel kek rotate`/`kek generate`) with --master-key-file or KEYWHEEL_MASTER_KEY; during a KEK \
                 rotation, stage the other key with --next-master-key-file or KEYWHEEL_MASTER_KEY_NEXT"
            )),
            Error::KekMismatch { .. } => CliError::error(message).with_hint(
                "the store's keys are wrapped under another key-encryption key; use the matching master key",
            ),
            Error::InvalidKeyMaterial(_) => CliError::error(message)
                .with_hint("the master key is 32 bytes, base64-encoded (as `keywheel init` prints it)"),
            Error::KeyringNotFound(id) => {
                CliError::error(message).with_hint(format!("create it with `keywheel keyring create {id}`"))
            }
            Error::KeyringExists(_) => CliError::refused(message).with_hint("see it with `keywheel keyring list`"),
            Error::InvalidKeyringId(_) => {
                CliError::usage(message).with_hint("a keyring id is tenant/purpose, e.g. acme/token")
            }
            Error::InvalidArgument(_) | Error::ReasonRequired(_) => CliError::usage(message),
            Error::RetirementRefused { .. } => CliError::refused(message).with_hint(
                "re-encrypt them with `keywheel rotate` or `keywheel resume` and check `keywheel census`; \
                 --force --reason destroys the key anyway and leaves those values unreadable",
            ),
            Error::GracePeriodNotOver { .. } => CliError::refused(message)
                .with_hint("wait until then, or pass --force --reason if the version must go now"),
            Error::RollbackWindowClosed { .. } => {
                CliError::refused(message).with_hint("roll forward instead: `keywheel rotate` creates a new version")
            }
            Error::NothingToRollBack { .. } => CliError::refused(message),
            Error::RotationInProgress { keyring, running: true, .. } => CliError::refused(message).with_hint(format!(
                "another process is working on {keyring}; wait for it to finish (`keywheel status {keyring}` shows the job)"
            )),
            Error::RotationInProgress { keyring, running: false, .. } => {
                CliError::refused(message).with_hint(format!("continue it with `keywheel resume {keyring}`"))
            }
            Error::RetirementUnproven { .. } => CliError::refused(message).with_hint(
                "add the [[sources]] that hold this keyring's values to keywheel.toml, or pass --force --reason \
                 if you know no value uses the version",
            ),
            Error::QuarantineOver { .. } => CliError::refused(message)
                .with_hint("its key material is destroyed or due for destruction; it cannot be brought back"),
            Error::NotDisabled { keyring, .. } => CliError::refused(message)
                .with_hint(format!("`keywheel keyring list` shows the state of every version of {keyring}")),
            Error::KeyringErased { .. } => CliError::refused(message)
                .with_hint("an erased keyring is never used again; create a new keyring for new data"),
            Error::KeyDisabled { .. } => CliError::refused(message).with_hint(
                "re-enable the version inside its quarantine with `keywheel keyring enable KEYRING --version N`",
            ),
            Error::CompromisedVersion { .. } => CliError::refused(message)
                .with_hint("a compromised version never comes back; roll forward with `keywheel rotate`"),
            Error::RollbackRefused { .. } => CliError::refused(message)
                .with_hint("roll forward instead: `keywheel rotate` creates a new version"),
            Error::AlreadyRotated { .. } | Error::LeaseHeld { .. } | Error::IllegalTransition { .. } => {
                CliError::refused(message)
            }
            Error::NoActiveVersion { .. } => CliError::error(message),
            Error::RecordTampered { keyring, .. } => CliError::error(message).with_hint(format!(
                "nothing was changed; if this store was written by a keywheel from before record \
                 authentication, review the keyring and seal it with `keywheel keyring seal {keyring} --reason \
                 TEXT`; otherwise its lifecycle record was edited outside keywheel: compare it with \
                 `keywheel audit tail` and restore it from a backup"
            )),
            Error::Audit(_) => CliError::error(message)
                .with_hint("the step was not taken (keywheel fails closed); fix the audit trail's storage and retry"),
            _ if message.contains("not a keywheel store") => CliError::error(message)
                .with_hint("create one with `keywheel init`, or point --store at an existing store"),
            _ => CliError::error(message),
        }
    }
}
