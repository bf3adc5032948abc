//! # The keywheel manual
//!
//! This module holds no code; it is the reference an operator, a security
//! reviewer, or an implementer of a custom backend reads.
//!
//! ## 1. Concepts
//!
//! * A **keyring** ([`KeyringId`](crate::KeyringId) = tenant + purpose) is the
//!   unit of rotation and isolation. Its canonical id `tenant/purpose` is bound
//!   into every value, so one tenant's key never decrypts another tenant's data.
//! * A **key version** ([`KeyVersion`](crate::KeyVersion)) is a `u32` starting
//!   at 1, +1 per new version, never reused.
//! * **States** ([`KeyState`](crate::KeyState)): `Pending → Active → Deprecated
//!   → Retired`, plus the rollback `Deprecated → Active`. Exactly one version is
//!   Active once the keyring has been activated. Pending versions already
//!   decrypt, so a process that has not yet refreshed can read values written
//!   by another process that activated the version. Retired versions have their
//!   material destroyed; their metadata stays for the audit trail.
//! * A [`Keyring`](crate::Keyring) is an immutable snapshot of one keyring with
//!   ready ciphers. [`Keywheel`](crate::Keywheel) caches snapshots, refreshes
//!   them periodically (`refresh_interval`, default 60 s), and reloads once —
//!   rate-limited by `reload_cooldown` — when a decrypt meets a version the
//!   snapshot does not know.
//! * A [`Context`](crate::Context) says what a value is bound to, usually
//!   `Context::field(table, column, row_id)`. Moving a value to another row,
//!   column, keyring or tenant makes it fail to decrypt.
//!
//! ## 2. Wire format v1
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 2 | magic `6B 77` (`"kw"`) |
//! | 2 | 1 | format version `01` |
//! | 3 | 1 | algorithm: `01` AES-256-GCM, `02` ChaCha20-Poly1305, `03` XChaCha20-Poly1305, `04` AES-256-GCM-SIV, `10` HMAC-SHA256 |
//! | 4 | 4 | key version, u32 big-endian, ≥ 1 |
//! | 8 | 12 or 24 | nonce (24 for XChaCha20; none for HMAC) |
//! | … | … | ciphertext ‖ 16-byte tag (HMAC: the 32-byte tag) |
//!
//! * **Text form**: `kw:v{version}:{base64 standard alphabet, no padding, of the
//!   binary form}`. The text version must equal the header version; padding,
//!   leading zeros and non-canonical base64 are rejected.
//! * **Keyring id**: `tenant "/" purpose`, UTF-8, each part non-empty, ≤ 255
//!   bytes, no `/`, no control characters.
//! * **Context encoding**: pairs sorted by name bytewise, names unique;
//!   `u16-BE count`, then per pair `u16-BE len(name) ‖ name ‖ u32-BE len(value) ‖ value`.
//!   Empty context: `00 00`. `Context::field(t, c, r)` is the pairs
//!   `column = c`, `row = r`, `table = t`.
//! * **Associated data**: the 8 header bytes ‖ `u16-BE len(keyring id)` ‖
//!   keyring id ‖ context encoding. The header is authenticated: changing the
//!   algorithm or version byte fails.
//! * **Key derivation**: per-version keys are `HKDF-SHA256(salt = "keywheel/v1",
//!   ikm = the version's 32 random bytes, info = label ‖ algorithm id ‖
//!   u16-BE len(keyring id) ‖ keyring id ‖ u32-BE version)`, 32 bytes, label
//!   `"aead"` for AEADs and `"mac"` for HMAC. The raw material never keys a cipher.
//! * **Signatures** (HMAC-SHA256, purpose `api-signature`): the value is the
//!   8-byte header ‖ the 32-byte tag (exactly 40 bytes). The tag is HMAC over
//!   `header ‖ u16-BE len(keyring id) ‖ keyring id ‖ context encoding ‖ message`;
//!   the message is not stored in the signature. (DESIGN §3 leaves open what the
//!   "ciphertext" of an HMAC value is; keywheel stores none.)
//!
//! The key version is readable from a stored value without any key
//! ([`parse`](crate::parse), [`version_of`](crate::version_of)), so a store can
//! count values per version and filter the ones to rotate in SQL: in the binary
//! form the version is bytes 4..8; in the text form it is the number after `kw:v`.
//!
//! ## 3. Security model
//!
//! * **What keywheel protects**: confidentiality and integrity of each field
//!   against someone who can read or modify the database but does not hold the
//!   master key (KEK); binding of each value to its keyring and context against
//!   cut-and-paste between rows, columns and tenants.
//! * **What it does not**: a process holding a keyring snapshot can decrypt
//!   everything that keyring protects; a database writer can delete values or
//!   replay an older value of the same field (same row and column) — bind a
//!   per-write counter into the context if that matters to you.
//! * **Key material** is 32 bytes from the OS RNG (`getrandom`), held in
//!   zeroize-on-drop boxes ([`KeyMaterial`](crate::KeyMaterial)); the cipher
//!   key schedules are zeroized on drop (RustCrypto `zeroize` features). No key
//!   byte is printed by any `Debug` or `Display`, error, log or audit event.
//! * **At rest**, material is wrapped by a
//!   [`KeyEncryptionKey`](crate::KeyEncryptionKey) with the keyring id and
//!   version as associated data. Each wrapped key records the KEK id and a key
//!   check value (a one-way HKDF fingerprint of the master key), so a wrong
//!   master key is reported once as `WrongMasterKey { kek_id }` before any
//!   unwrap is attempted. Tags and key check values are compared in constant time.
//! * **Errors do not form an oracle**: every authentication failure is the same
//!   opaque [`Error::Decrypt`](crate::Error::Decrypt). Format errors only
//!   describe bytes the caller already holds.
//! * **Usage limits**: AES-256-GCM and ChaCha20-Poly1305 with random 96-bit
//!   nonces must not exceed 2^32 encryptions per key. Each snapshot counts
//!   encryptions per version (one relaxed atomic add), carries the count over
//!   reloads, and refuses with `UsageLimitReached` past 2^32 in one process;
//!   the scheduler's usage-limit policy (which persists counts) rotates long before.
//!
//! ## 4. Nonces
//!
//! Nonces come from the OS CSPRNG. A fresh system call per nonce costs ~0.37 µs
//! here, about twice the AES-GCM work on a 256 B field, so keywheel fetches OS
//! random bytes in 1 KiB blocks per thread and hands each byte out once:
//!
//! * **No userspace expansion**: every nonce byte is an OS random byte; no
//!   PRNG construction needs a security argument.
//! * **Uniqueness within a process**: a block is consumed front to back, each
//!   handed-out range is overwritten with zeros, and an exhausted block is
//!   refilled from the OS. Blocks are thread-local; no two threads share one.
//! * **fork**: a forked child inherits a copy of its parent's block. If both
//!   consumed it they would emit identical nonces (catastrophic for GCM). Each
//!   block records the process id it was filled in; when `std::process::id()`
//!   differs, the block is discarded and refilled from the OS before the child's
//!   first nonce. (The `getpid` per nonce is cheap next to the saved `getrandom`.)
//! * **Residual risk**: restoring the same VM memory snapshot twice replays at
//!   most one block (≤ 85 nonces per thread), as it would replay any in-memory
//!   RNG state. Prefer XChaCha20-Poly1305 or AES-256-GCM-SIV if you clone VMs
//!   from memory snapshots.
//!
//! ## 5. Implementing a backend
//!
//! Three traits, all `async`, `Send + Sync`, usable as `Arc<dyn …>`; use the
//! re-exported [`async_trait`](crate::async_trait) macro.
//!
//! * [`KeyStore`](crate::KeyStore): keep [`KeyringRecord`](crate::KeyringRecord)s
//!   and leases. `update_keyring` is one atomic compare-and-set on the
//!   generation; call [`KeyringRecord::apply`](crate::KeyringRecord::apply) to
//!   compute the new record (it is the single definition of what each
//!   [`KeyringChange`](crate::KeyringChange) means and of the invariants), then
//!   write it only if the stored generation is still the expected one, e.g.
//!   `UPDATE … SET … WHERE id = $1 AND generation = $2` in one transaction.
//!   Leases follow [`grant_lease`](crate::grant_lease).
//! * [`RecordSource`](crate::RecordSource): scan your encrypted values in a
//!   stable order after an opaque [`Cursor`](crate::Cursor), and replace a batch
//!   with compare-and-set on the old bytes (`UPDATE t SET col = new WHERE pk = $1
//!   AND col = old`). Override `census` with a `GROUP BY` on the version bytes if
//!   you can.
//! * [`AuditSink`](crate::AuditSink): store each event; durable sinks chain
//!   entries with [`AuditChain`](crate::AuditChain) and return them from
//!   `entries`, so [`verify_chain`](crate::verify_chain) can name the first
//!   altered, missing or reordered entry. A failing sink must return an error:
//!   keywheel then does not perform the operation (fail closed).
//!
//! Run the `keywheel-conformance` suite against your backend: its macros
//! instantiate every contract check as a test for your factory.
