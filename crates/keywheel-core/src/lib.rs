//! # keywheel-core
//!
//! Versioned field-level encryption with key rotation: the wire format, the
//! keyring snapshot (hot path), the key lifecycle, the three backend traits
//! ([`KeyStore`], [`RecordSource`], [`AuditSink`]), the KEK abstraction and the
//! audit hash chain. No I/O happens here (the single exception is
//! [`LocalKek::from_file`], which reads its master key once); backends live in
//! sibling crates.
//!
//! Start with [`Keywheel`] for applications, [`Keyring`] for the synchronous
//! encrypt/decrypt path, [`parse`] to inspect stored values, and the
//! [`manual`] for the format, the security model and how to implement a backend.
//! Every rotation job, batch, lifecycle operation, reload and scheduler tick
//! is traced through `tracing` and measured through `metrics`, with no key
//! byte, plaintext or context value in either: the metric names are in
//! [`observability`], the reference in the
//! [manual](manual#15-observability-tracing-and-metrics).
#![forbid(unsafe_code)]

mod algorithm;
mod audit;
mod cipher;
mod context;
mod error;
mod id;
mod index;
mod integrity;
mod job;
mod kek;
mod keyring;
mod keywheel;
mod legacy;
pub mod manual;
mod material;
mod nonce;
pub mod observability;
mod policy;
mod retirement;
mod rotation;
mod scheduler;
mod seal;
mod source;
mod state;
mod store;
mod time;
mod usage;
mod wire;

pub use algorithm::Algorithm;
pub use audit::{
    AUDIT_MAC_LABEL, AuditChain, AuditEntry, AuditEvent, AuditKind, AuditSink, ChainHead, ChainVerifier,
    ChainViolation, ChainViolationKind, GENESIS_HASH, Outcome, entry_hash, entry_mac, verify_chain,
};
pub use cipher::KDF_SALT;
pub use context::Context;
pub use error::{Error, FormatError, Result};
pub use id::{KeyVersion, KeyringId, Purpose};
pub use index::{BlindIndex, IndexTerms, Normalization, NormalizeFn};
pub use integrity::IntegrityKey;
pub use job::{
    JobCounts, JobFailure, JobKind, JobPhase, MAX_STORED_FAILURES, RotationJob, RotationReport, SourceCheckpoint,
};
pub use kek::{KekRing, KeyEncryptionKey, LocalKek, MASTER_KEY_ENV, NEXT_MASTER_KEY_ENV, WrappedKey, wrap_aad};
pub use keyring::{Keyring, KeyringBuilder, VersionSummary};
pub use keywheel::{Keywheel, KeywheelBuilder, correlation_id};
pub use legacy::{
    AsyncLegacyDecrypt, BlockingLegacyDecrypt, FernetFormat, LegacyCensus, LegacyColumns, LegacyDecryptor,
    LegacyFormat, LegacyFormats, LegacyValue, LockboxFormat, PlaintextFormat, VaultDecryptFn, VaultTransitFormat,
    legacy_census_of, looks_like_keywheel,
};
pub use material::{KeyMaterial, Plaintext};
pub use nonce::random_nonce;
pub use policy::{AfterRotation, DEFAULT_QUARANTINE, DEFAULT_USAGE_LIMIT, MaintenanceWindow, Policy};
pub use rotation::{
    CancelToken, KekRotationReport, Progress, ProgressFn, RetireOptions, RollbackReport, RotateOptions, Rotator,
    VerifyReport,
};
pub use scheduler::{
    DisabledVersion, Due, DueReason, JobSummary, KeyringStatus, RetirementCandidate, Scheduler, SchedulerConfig,
    SchedulerTotals, StatusReport, TickReport, VersionsByState, Warning, destruction_candidates, evaluate,
    retirement_candidates, status_report,
};
pub use seal::{RecordSeal, SEAL_ENCODING_V1, SEAL_ENCODING_V2, SEAL_LABEL};
pub use source::{
    Census, Cursor, IndexReplacement, RecordSource, ReplaceOutcome, Replacement, ScanRequest, StoredIndex, StoredValue,
    ValueLocation, census_by_scan, census_of,
};
pub use state::KeyState;
pub use store::{KeyOrigin, KeyStore, KeyringChange, KeyringRecord, Lease, VersionRecord, check_fence, grant_lease};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
pub use wire::{FORMAT_V1, Form, HEADER_LEN, MAGIC, TEXT_PREFIX, ValueInfo, parse, version_of};

// Re-exported so that implementors of the async traits use the same macro version.
pub use async_trait::async_trait;
