//! # keywheel-file
//!
//! The embedded keywheel backend for a single host and for the CLI: keys and
//! audit trail on local disk, no server.
//!
//! * [`FileKeyStore`] — a [`KeyStore`](keywheel_core::KeyStore) in a
//!   directory: keyrings (material only KEK-wrapped), policies, rotation jobs
//!   and leases, one JSON document each. Every change is atomic (temporary
//!   file, fsync, rename, fsync of the directory) and made under an OS file
//!   lock, so several processes can share the directory. Files are 0600,
//!   directories 0700, and a store others can read is refused.
//! * [`FileAuditSink`] — an [`AuditSink`](keywheel_core::AuditSink) writing
//!   an append-only, keyed hash-chained JSON Lines file (each entry MACed under
//!   the KEK's integrity key) with an fsync per event; it repairs (and records)
//!   an incomplete last line left by a crash, and refuses to continue a log
//!   found shorter than, or different from, the head it has seen.
//! * [`verify_log`] — checks a log (structure, MACs with the keys, an expected
//!   head) and reports damage by line number.
//!
//! ## On-disk layout (format 1)
//!
//! ```text
//! <dir>/                      0700
//!   store.json                {"format":1,"kind":"keywheel-file-store"}: marks the store
//!   lock                      empty; locked (File::lock) for each read-modify-write
//!   keyrings/<name>.json      {"format":1,"keyring":{id, generation, algorithm, versions[…]}}
//!   policies/<name>.json      {"format":1,"keyring":"acme/token","policy":{…}}
//!   leases/<name>.json        {"format":1,"keyring":"acme/token","last_token":7,"current":{…}|null}
//!   jobs/<name>.json          {"format":1,"job":{id, keyring, phase, checkpoints, …}}
//! audit.jsonl (any path)      one {"format":1,"seq":…,"prev_hash":…,"hash":…,"key_id":…,"mac":…,"event":{…}} per line
//! ```
//!
//! `<name>` is a readable slug of the keyring id (or job id) followed by 128
//! bits of its SHA-256, e.g. `acme.token.3f5e….json`: any id maps to a safe,
//! short, distinct file name, and the id inside the document is checked
//! against the name. Wrapped keys carry their KEK id and key check value
//! (`WrappedKey`); nothing in the store decrypts without the KEK.
//!
//! The crate is Unix-only (file modes, fsync of directories).
#![forbid(unsafe_code)]

#[cfg(not(unix))]
compile_error!("keywheel-file supports Unix only: it relies on file modes and on fsync of directories");

mod audit;
mod fsio;
mod store;

pub use audit::{
    BadLine, ChainBreak, FileAuditOptions, FileAuditSink, LogHead, LogReport, RECOVERY_ACTOR, Recovery, TornLine,
    verify_log,
};
pub use fsio::access_beyond_owner;
pub use store::{DamagedFile, DocumentKind, FileKeyStore, FileStoreOptions, StoreSummary};
