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
//!   → Disabled → Retired`, plus the rollback `Deprecated → Active` and the
//!   re-enabling `Disabled → Deprecated`. Exactly one version is Active once
//!   the keyring has been activated (none once it is erased). Pending versions
//!   already decrypt, so a process that has not yet refreshed can read values
//!   written by another process that activated the version. Disabled versions
//!   refuse decryption but keep their wrapped material; Retired versions have
//!   their material destroyed; their metadata stays for the audit trail.
//!   Section 11 describes retirement, the quarantine and erasure.
//! * A [`Keyring`](crate::Keyring) is an immutable snapshot of one keyring with
//!   ready ciphers. [`Keywheel`](crate::Keywheel) caches snapshots, refreshes
//!   them periodically (`refresh_interval`, default 60 s), and reloads once —
//!   rate-limited by `reload_cooldown` (default 1 s) — when a decrypt meets a
//!   version the snapshot does not know, or when another process announced a
//!   change ([`Keywheel::mark_stale`](crate::Keywheel::mark_stale), e.g. from
//!   a Postgres `NOTIFY`): any number of announcements within one cooldown
//!   cause one reload. So after another process activates a version, this one
//!   encrypts under it within the reload cooldown of the announcement, or
//!   within the refresh interval without announcements.
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
//! | 3 | 1 | algorithm: `01` AES-256-GCM, `02` ChaCha20-Poly1305, `03` XChaCha20-Poly1305, `04` AES-256-GCM-SIV, `10` HMAC-SHA256 (signatures), `11` blind index (HMAC-SHA256, truncated) |
//! | 4 | 4 | key version, u32 big-endian, ≥ 1 |
//! | 8 | 12 or 24 | nonce (24 for XChaCha20; none for HMAC and blind index) |
//! | … | … | ciphertext ‖ 16-byte tag (HMAC: the 32-byte tag; blind index: 8 to 32 bytes of tag) |
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
//!   An AEAD version also has an **index key**: the same derivation with label
//!   `"index"` and algorithm id `11`, used only for blind index tags.
//! * **Signatures** (HMAC-SHA256, purpose `api-signature`): the value is the
//!   8-byte header ‖ the 32-byte tag (exactly 40 bytes). The tag is HMAC over
//!   `header ‖ u16-BE len(keyring id) ‖ keyring id ‖ context encoding ‖ message`;
//!   the message is not stored in the signature. (An HMAC value has no ciphertext:
//!   keywheel stores only the tag.)
//! * **Blind index tags** (algorithm `11`, [section 13](#13-searchable-fields-blind-indexes)):
//!   the 8-byte header ‖ the first `L` bytes of HMAC-SHA256 under the
//!   version's index key over `header ‖ u16-BE len(keyring id) ‖ keyring id ‖
//!   context encoding ‖ normalised plaintext`, with `8 ≤ L ≤ 32` (default 16),
//!   so 16 to 40 bytes in all. The context is the pairs `column` (the indexed
//!   column), `normalize` (the normalisation's versioned name, e.g.
//!   `trim-lowercase/1`) and `table` — never the row.
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
//!   per-write counter into the context if that matters to you. Lifecycle
//!   records are sealed under the master key (section 7), so a store writer
//!   cannot re-activate a deprecated or compromised version; they can replay a
//!   whole older, validly sealed record of the same keyring.
//! * **Key material** is 32 bytes from the OS RNG (`getrandom`), held in
//!   zeroize-on-drop boxes ([`KeyMaterial`](crate::KeyMaterial)); the cipher
//!   key schedules are zeroized on drop (RustCrypto `zeroize` features). No key
//!   byte is printed by any `Debug` or `Display`, error, log or audit event.
//! * **At rest**, material is wrapped by a
//!   [`KeyEncryptionKey`](crate::KeyEncryptionKey) with the keyring id and
//!   version as associated data. Each wrapped key records the KEK id and a key
//!   check value (a one-way HKDF fingerprint of the master key), so a wrong
//!   master key is reported once as `WrongMasterKey`, naming the key check
//!   value the store needs and the one given, before any unwrap is attempted
//!   (section 10). Tags and key check values are compared in constant time.
//! * **Errors do not form an oracle**: every authentication failure is the same
//!   opaque [`Error::Decrypt`](crate::Error::Decrypt). Format errors only
//!   describe bytes the caller already holds.
//! * **Usage limits**: AES-256-GCM, ChaCha20-Poly1305 (and, by the same
//!   conservative bound, AES-256-GCM-SIV) with random 96-bit nonces must not
//!   exceed 2^32 encryptions per key version. keywheel counts them, and the
//!   counts are never under-counted (invariant I5): no count is subtracted
//!   or forgotten by a live process, each encryption reaches the stored count
//!   with its process's next successful flush, and an instance's own view
//!   never dips below the stored count plus its unflushed encryptions, not
//!   even in the middle of a flush. The one exception is the crash window
//!   below.
//!   - *What is counted*: every encryption under a version that produced a
//!     value — [`encrypt`](crate::Keyring::encrypt),
//!     [`encrypt_text`](crate::Keyring::encrypt_text),
//!     [`reencrypt`](crate::Keyring::reencrypt), each value of
//!     [`reencrypt_many`](crate::Keyring::reencrypt_many) and so of every
//!     rotation batch. A call reserves its numbers with one atomic add and
//!     gives back what it did not use (refused or failed encryptions); a
//!     call retried after a `fork` counts once. HMAC signatures use no nonce
//!     and are not counted.
//!   - *Where*: each [`Keywheel`](crate::Keywheel) instance keeps one counter
//!     per keyring and version for its whole life, outside its snapshot
//!     cache, and shares it with every snapshot it builds: reloads,
//!     [`invalidate`](crate::Keywheel::invalidate) and announced changes never
//!     reset it. A snapshot's count
//!     ([`Keyring::encryptions`](crate::Keyring::encryptions)) is the stored
//!     count ([`VersionRecord::encryptions`](crate::VersionRecord::encryptions),
//!     the sum of every process's flushes) as of the instance's last load or
//!     flush, plus what the instance counted since and has not flushed
//!     ([`unflushed_usage`](crate::Keywheel::unflushed_usage)). A new instance
//!     — a restarted process — starts from the stored count.
//!   - *When it is flushed*: a flush adds the unflushed counts to the store
//!     with the additive [`KeyringChange::RecordUsage`](crate::KeyringChange::RecordUsage)
//!     (one compare-and-set, retried on a generation conflict; nothing is
//!     ever subtracted). A usage-only update keeps the keyring's generation,
//!     so flushes never make a concurrent lifecycle step (a rotation's
//!     activation, a retirement) fail with a generation conflict. Every
//!     instance flushes before each reload of a snapshot — at the first
//!     access once the refresh interval has passed since the last scheduled
//!     reload (announced changes do not postpone it), on
//!     [`Keywheel::refresh`](crate::Keywheel::refresh), after a change — and
//!     on [`flush_usage`](crate::Keywheel::flush_usage) /
//!     [`flush_all_usage`](crate::Keywheel::flush_all_usage), which the
//!     [`Scheduler`](crate::Scheduler) calls every tick, every tick interval
//!     while a tick runs a rotation, and when its `run` ends (the CLI's
//!     `rotate`, `resume` and `rollback` call it before exiting). **Call
//!     `flush_all_usage` when your process shuts down**, and periodically if
//!     you keep a [`Keyring`](crate::Keyring) snapshot yourself instead of
//!     asking [`Keywheel::keyring`](crate::Keywheel::keyring) (or drive a
//!     [`Rotator`](crate::Rotator) without the scheduler): only that call
//!     reloads, and so flushes, on schedule. A failed flush leaves the counts
//!     pending for the next (it never fails the reload); a failure that hid
//!     a committed write makes the store count them twice (too high, never
//!     too low).
//!   - *Where it is enforced*: a snapshot refuses with
//!     [`Error::UsageLimitReached`](crate::Error::UsageLimitReached) once its
//!     count (stored + unflushed) reaches the algorithm's limit, 2^32; the
//!     scheduler's usage-limit rule rotates once the Active version reaches
//!     the policy's `usage_limit` (default
//!     [`DEFAULT_USAGE_LIMIT`](crate::DEFAULT_USAGE_LIMIT) = 2^30), judged on
//!     the stored count plus the scheduler instance's own unflushed counts.
//!   - *The crash window*: a process that dies without shutting down (kill -9,
//!     out of memory, power loss) loses the encryptions it counted since its
//!     last successful flush. Because a scheduled reload flushes before the
//!     first encryption that comes a refresh interval or more after the
//!     previous one, those are at most the encryptions the process made in one
//!     refresh interval (default 60 s); for a scheduler process running a
//!     rotation, the re-encryptions of one tick interval (default 60 s) —
//!     plus, if flushes were failing, all since the first failure. At 10,000 encryptions a second that is at most
//!     600,000 per crash. Counts other live processes have not flushed yet
//!     (at most one refresh interval of theirs each) are likewise invisible
//!     to a decision until they flush.
//!   - *The margin*: the default usage limit, 2^30, rotates a version three
//!     times 2^30 (about 3.2 billion) encryptions before the 2^32 bound. That
//!     gap absorbs the crash window (over 5,000 kill -9s of a process doing
//!     10,000 encryptions a second, per version), other processes' unflushed
//!     counts, and the encryptions made while the rotation runs until every
//!     process encrypts under the new version (its activation delay plus one
//!     reload cooldown, or one refresh interval without announcements).
//!     Raise `usage_limit` only together with a shorter refresh interval, and
//!     prefer XChaCha20-Poly1305 (192-bit nonces, no such bound) for very
//!     high encryption rates.
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
//! * **fork**: a forked child inherits a copy of the forking thread's block.
//!   If parent and child both consumed it they would emit identical nonces
//!   (catastrophic for GCM). keywheel therefore never lets a nonce out before
//!   checking the process it was drawn in:
//!   1. when a block is refilled, the process id is read *first* and the OS
//!      bytes fetched *after*, and the block records that id. (The other order
//!      would be unsound: a `fork` between the two calls would leave parent and
//!      child with the same bytes, each tagged with its own id.)
//!   2. every encryption draws its nonces inside one *protected operation*
//!      that computes its whole result — the ciphertexts — in memory and only
//!      then reads `std::process::id()`. The result is returned only if that id
//!      equals the id recorded for every block the operation drew from.
//!   3. in a forked child the id differs for any block filled before the `fork`,
//!      so the child drops the result (it never left the operation: no caller,
//!      log or store saw it), discards its copy of the block and runs the
//!      operation again on fresh OS bytes. The parent's result goes out as usual.
//!
//!   So a nonce from a block that both processes hold reaches the outside in
//!   at most one of them, wherever the `fork` happened: before the call, in the
//!   middle of it (a signal handler, an allocator — any code) or between two
//!   nonces of a batch. A protected operation never does anything besides
//!   computing its result, so running it again is harmless; the usage counter
//!   counts the retried encryptions once.
//! * **Cost**: one `getpid` (~0.15–0.3 µs in a VM) per protected operation and
//!   one per block refill, not one per nonce. [`Keyring::encrypt`](crate::Keyring::encrypt),
//!   [`Keyring::reencrypt`](crate::Keyring::reencrypt) and
//!   [`random_nonce`](crate::random_nonce) are one operation each, so a single
//!   value still pays one `getpid`: the next call may come after a `fork`, and
//!   the process id is the only fork signal safe Rust can read (`pthread_atfork`
//!   and `MADV_WIPEONFORK` need `unsafe` FFI, and glibc no longer caches the
//!   id). [`Keyring::reencrypt_many`](crate::Keyring::reencrypt_many) and the
//!   rotation engine, which re-encrypts each batch through it, pay one for the
//!   whole batch.
//! * **[`random_nonce`](crate::random_nonce)** returns its bytes, so its check
//!   ends there: use the nonce at once, not across code that might `fork`
//!   (keywheel's own callers — the local KEK, correlation ids — do).
//! * **Residual risk — cloned memory**: restoring the same VM memory
//!   snapshot twice (or a CRIU checkpoint, or any copy of a running process's
//!   memory) replays at most one block (≤ 85 nonces per thread), as it would
//!   replay any in-memory RNG state, and the fork check cannot see it: both
//!   copies have the same process id. **Only AES-256-GCM-SIV resists the
//!   resulting nonce reuse** (it leaks only whether two plaintexts were equal).
//!   XChaCha20-Poly1305's longer nonces do not help here: they come from the
//!   same block, so the copies emit the *same* 24-byte nonces, with the same
//!   catastrophic result as GCM. Choose AES-256-GCM-SIV for keyrings used by
//!   processes that may be cloned from memory snapshots.
//! * **Limit — PID namespaces**: the fork check compares process ids. A child
//!   created in a *new* PID namespace can have the number its parent had in
//!   the parent's own namespace (both PID 1, e.g. a container's init forking
//!   into a nested namespace); the check then does not see the fork. Do not
//!   fork into a new PID namespace from a process that has encrypted, or use
//!   AES-256-GCM-SIV there.
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
//!   Apply the changes to the record as the store holds it inside that
//!   transaction (lock the row, read, apply, write): an update made only of
//!   `RecordUsage` changes keeps the generation, so a record computed from an
//!   earlier read would overwrite usage counts added meanwhile.
//!   Leases follow [`grant_lease`](crate::grant_lease). Keep
//!   [`KeyringRecord::seal`](crate::KeyringRecord::seal) exactly as given (it
//!   changes through [`KeyringChange::Seal`](crate::KeyringChange::Seal) only);
//!   never compute or check it.
//! * [`RecordSource`](crate::RecordSource): scan your encrypted values in a
//!   stable order after an opaque [`Cursor`](crate::Cursor), and replace a batch
//!   with compare-and-set on the old bytes (`UPDATE t SET col = new WHERE pk = $1
//!   AND col = old`). Override `census` with a `GROUP BY` on the version bytes if
//!   you can.
//! * [`AuditSink`](crate::AuditSink): store each event; durable sinks chain
//!   entries with [`AuditChain`](crate::AuditChain), authenticated under the
//!   [`IntegrityKey`](crate::IntegrityKey) that `record` receives, and return
//!   them from `entries`, so [`verify_chain`](crate::verify_chain) can name the
//!   first altered, missing, reordered or unauthenticated entry. Never store
//!   the key. A failing sink must return an error: keywheel then does not
//!   perform the operation (fail closed). See section 6 for what a durable
//!   sink must refuse.
//!
//! Run the `keywheel-conformance` suite against your backend: its macros
//! instantiate every contract check as a test for your factory.
//!
//! ## 6. The audit trail
//!
//! Every lifecycle step is recorded as a typed [`AuditEvent`](crate::AuditEvent)
//! *before* the change it describes; a sink that fails stops the operation.
//! Durable sinks (`keywheel_file::FileAuditSink`, `keywheel_postgres::PgAuditSink`)
//! keep a chain of [`AuditEntry`](crate::AuditEntry)s:
//!
//! * **Hash chain** (checkable by anyone, no key needed):
//!   `hash = SHA-256("keywheel/audit/v1" ‖ u64-BE seq ‖ prev_hash ‖ JSON(event))`
//!   ([`entry_hash`](crate::entry_hash)), `prev_hash` of the first entry all
//!   zeros. It shows edits, deletions and reordering — but whoever can write
//!   the log can also recompute every hash.
//! * **Keyed**: each entry also carries `key_id` and
//!   `mac = HMAC-SHA256(integrity key, u16-BE 11 ‖ "audit-entry" ‖ hash)`
//!   ([`entry_mac`](crate::entry_mac)), hex. The integrity key is derived from
//!   the KEK ([`KeyEncryptionKey::integrity_key`](crate::KeyEncryptionKey::integrity_key):
//!   HKDF-SHA256 with salt `"keywheel/integrity/v1"`); it is never stored, and
//!   `key_id` is a check value that reveals nothing of it.
//!   [`Keywheel`](crate::Keywheel) fetches it once from its KEK and passes it
//!   to every `record`. Because each hash covers the previous one, the MAC of
//!   an entry authenticates that entry *and everything before it*: rewriting
//!   any part of the log needs the master key.
//! * **Verification** ([`ChainVerifier`](crate::ChainVerifier)): structure
//!   always; MACs when given keys (a [`KekRing`](crate::KekRing)'s
//!   `integrity_keys()` returns every KEK's); expected heads. A MAC that fails
//!   under the key the entry names is `BadMac`. Entries under a key the
//!   verifier does not hold — written before a KEK rotation, whose old master
//!   key may be destroyed — are accepted only when a later entry carries a
//!   valid MAC under a known key (that MAC covers them); trailing entries under
//!   an unknown key are `UnknownKey` (a log forged under another key, or cut
//!   back to before the rotation). So after a KEK rotation the log verifies
//!   with the new master key alone, as long as an entry was written since —
//!   `kek rotate` records its `KekRotated` event under the new key.
//! * **Truncation**: the entries alone cannot show a deleted tail. A **head**
//!   ([`ChainHead`](crate::ChainHead): the last entry's `seq` and `hash`,
//!   written `SEQ:HASH`) must be kept elsewhere: `keywheel audit verify` prints
//!   it, and `--expect-head SEQ:HASH` (or
//!   [`ChainVerifier::expect_head`](crate::ChainVerifier::expect_head)) turns a
//!   log that no longer contains it into a `Truncated` or `HeadMismatch`
//!   violation. Sinks also remember the newest head they have seen: the file
//!   sink refuses to append to a log found shorter, wiped or replaced under it
//!   (also one moved away by log rotation: rotating a live log is not
//!   supported), and `FileAuditOptions::expect_head` hands a new process an
//!   anchored head; the Postgres sink checks the last row against its head row
//!   and the head it has seen. These are errors ([`Error::Audit`](crate::Error::Audit)),
//!   never a new chain starting at seq 0. Neither sink extends a log whose last
//!   entry fails its MAC under the key it was given.
//! * **Exact content**: events and entries refuse unknown fields, and the file
//!   sink refuses any line that is not byte for byte the encoding keywheel
//!   writes, so a field injected into a stored entry or event (which the hash,
//!   computed over the parsed event, would not cover) fails verification,
//!   naming the line.
//! * **Postgres roles**: triggers make `audit_log` append-only, but its owner
//!   can disable them. Run `keywheel_postgres::migrate_with` as a separate
//!   owner role with `MigrateOptions::app_role`: the application role may then
//!   only `INSERT` and `SELECT` audit rows, and cannot update, delete,
//!   truncate, disable the triggers or drop the table.
//! * **What it does not protect against**: a holder of the master key can
//!   rewrite the log consistently; anyone who can write the log can delete its
//!   tail or all of it, which only an anchored head (or a live sink) detects.
//!   Auditors without the master key can check the structure and the head,
//!   not who wrote the entries.
//!
//! ## 7. Record authentication
//!
//! A keyring's lifecycle record — which version is Active, which are
//! Deprecated, Retired or flagged compromised, with which algorithm — decides
//! what keywheel encrypts and decrypts with. Whoever can write the store (a
//! database user, anyone who can edit the file store's JSON) could otherwise
//! re-activate a deprecated or compromised version, clear the compromised
//! flag or change an algorithm, and keywheel would use the result with no
//! audit entry. So every record carries a **seal**
//! ([`RecordSeal`](crate::RecordSeal), [`KeyringRecord::seal`](crate::KeyringRecord::seal)):
//! an HMAC-SHA256 under the KEK's [`IntegrityKey`](crate::IntegrityKey)
//! (derived from the master key, never stored), with the label
//! [`SEAL_LABEL`](crate::SEAL_LABEL) `"keyring-seal"`, over this encoding
//! (v1, [`KeyringRecord::seal_message`](crate::KeyringRecord::seal_message);
//! "str" is `u32-BE length ‖ UTF-8 bytes`, "time" is `00` for none or `01 ‖
//! i64-BE milliseconds since the epoch`; the first byte is the encoding
//! version, see below for v2):
//!
//! ```text
//! 01                                  encoding version
//! str(keyring id, canonical)  u8 algorithm id  i64-BE created_at
//! u32-BE number of versions, then per version in order:
//!   u32-BE version  u8 algorithm id  str(state: "pending", "active", …)
//!   str(origin: "generated" | "imported")
//!   00 (no material) | 01 ‖ str(kek id) ‖ str(key check) ‖ str(wrapped ciphertext)
//!   time(created_at) time(activated_at) time(deprecated_at) time(retired_at)
//!   u8 compromised (00 | 01)
//!   00 (no predecessor) | 01 ‖ u32-BE the version it replaced (what a rollback returns to)
//! ```
//!
//! The seal leaves out the generation and the usage counts (`encryptions`):
//! every process flushes its counts with a plain additive
//! [`RecordUsage`](crate::KeyringChange::RecordUsage) update, which keeps the
//! seal valid and needs no key. A field added to
//! [`VersionRecord`](crate::VersionRecord) that matters to the lifecycle needs
//! a new encoding version.
//!
//! **Encoding v2** ([`SEAL_ENCODING_V2`](crate::SEAL_ENCODING_V2)) covers the
//! fields of reversible retirement and erasure. A record whose keyring has an
//! erasure time ([`KeyringRecord::erased_at`](crate::KeyringRecord::erased_at))
//! or any of whose versions has a disable time or quarantine end
//! ([`VersionRecord::disabled_at`](crate::VersionRecord::disabled_at),
//! [`VersionRecord::destroy_after`](crate::VersionRecord::destroy_after)) is
//! encoded `02`, then everything v1 encodes after its first byte, then
//! `time(erased_at)` and per version in order `time(disabled_at)
//! time(destroy_after)`. Every other record is encoded v1 exactly as before,
//! so seals made before these fields existed still verify; since the first
//! byte differs, stripping the fields (to move a quarantine's end, say) breaks
//! the seal as surely as changing them.
//!
//! * **Writes**: [`Keywheel`](crate::Keywheel) applies the changes to its copy
//!   of the record, seals the result and appends it as a last
//!   [`KeyringChange::Seal`](crate::KeyringChange::Seal) to the same update, so
//!   record and seal are written in one compare-and-set by stores that never
//!   see the key. [`Keywheel::store`](crate::Keywheel::store) returns the store
//!   behind this sealing layer: any write through it is sealed (changes that
//!   only record usage pass straight through).
//! * **Reads**: every load — [`Keywheel::record`](crate::Keywheel::record), the
//!   snapshots behind `encrypt`/`decrypt`, rotation, retirement, the
//!   scheduler and status — checks the seal against every key of
//!   [`KeyEncryptionKey::integrity_keys`](crate::KeyEncryptionKey::integrity_keys)
//!   (during a KEK rotation a [`KekRing`](crate::KekRing) holds the old and the
//!   new one; the rotation reseals each record under the new key). A missing
//!   or bad seal is [`Error::RecordTampered`](crate::Error::RecordTampered)
//!   naming the keyring, before anything is written or audited; a record
//!   sealed under another master key whose keys are wrapped under it too is
//!   reported as [`Error::WrongMasterKey`](crate::Error::WrongMasterKey).
//! * **Stores written before record authentication** hold records without a
//!   seal. They are refused like any other — accepting an unsealed record would
//!   let an attacker simply strip the seal — until an operator has reviewed
//!   each one (its states against the audit trail) and seals it as it stands
//!   with [`Keywheel::seal_unsealed`](crate::Keywheel::seal_unsealed) (CLI:
//!   `keywheel keyring seal KEYRING|--all --reason TEXT`), audited as
//!   `KeyringSealed` with the reason. A record whose seal is present but wrong is
//!   never resealed: restore it from a backup. On Postgres, schema migration 3
//!   adds the seal columns (`migrate`, or `keywheel init`); Postgres loads take
//!   a version's state, algorithm, origin and compromised flag from their typed
//!   columns, so an `UPDATE` of those columns is what the seal check sees.
//! * **Limit — replay**: the seal authenticates a record's content, not its
//!   freshness. A store writer can replace a keyring's record with an *older,
//!   validly sealed record of the same keyring* (from a backup, or one they
//!   saved earlier), e.g. from before a rotation or an emergency flag, and it
//!   verifies. The audit trail records every lifecycle step, so compare the
//!   states in the store (`keywheel keyring list`) with it (`keywheel audit
//!   tail`) when that matters; binding the seal to the audit chain's head
//!   would close the gap.
//!   A writer can also delete a keyring or withhold updates; the seal does not
//!   protect availability.
//!
//! ## 8. Lifecycle invariants
//!
//! These rules hold whichever public call is made, because each is enforced
//! at the lowest layer that can enforce it; the CLI only explains refusals. A
//! model-based test (`keywheel_conformance::model`) runs random sequences of
//! application writes and reads, rotations, emergencies, rollbacks, forced
//! and normal retirements, crashes, resumes, scheduler ticks, KEK rotations and
//! several instances against the memory, file and Postgres backends, and
//! checks every rule after every step.
//!
//! * **I1 — no material destroyed while in use.** A version is retired
//!   (disabled, then destroyed after its quarantine; section 11) only
//!   when a registered [`RecordSource`](crate::RecordSource) *covers* the
//!   keyring ([`RecordSource::covers`](crate::RecordSource::covers); the
//!   default is `false`, so an unknown source never vouches) and the census
//!   of all sources finds no value on it ([`Rotator::retire`](crate::Rotator::retire),
//!   refused with [`Error::RetirementUnproven`](crate::Error::RetirementUnproven)
//!   or [`Error::RetirementRefused`](crate::Error::RetirementRefused), audited
//!   as `RetirementRefused`). The only ways around it are a forced retirement
//!   with a reason, audited as forced ([`Rotator::retire`](crate::Rotator::retire)
//!   with `force`, [`Keywheel::retire_forced`](crate::Keywheel::retire_forced)),
//!   and keyrings whose policy lets old values expire (sessions). The
//!   scheduler never forces: it audits a refusal once per version and shows
//!   `NoSourceCovers` / `GraceExpired` in the status. The checks are made
//!   when the version is *disabled*: a Disabled version decrypts nothing
//!   ([`Error::KeyDisabled`](crate::Error::KeyDisabled)) and nothing encrypts
//!   under it, so its destruction at the end of the quarantine needs no new
//!   census. Erasing a keyring (section 11) is a forced retirement of every
//!   version, audited with its reason.
//! * **I2 — a compromised version never becomes Active again.**
//!   [`KeyringRecord::validate`](crate::KeyringRecord::validate) refuses any
//!   record with an Active version flagged compromised, so every store's
//!   compare-and-set refuses it ([`Error::CompromisedVersion`](crate::Error::CompromisedVersion));
//!   an emergency flags the old version in the same update that activates its
//!   successor. A compromised version that is Disabled is never re-enabled
//!   either ([`KeyringRecord::apply`](crate::KeyringRecord::apply) refuses it).
//! * **I3 — the emergency bound.** After an emergency activation, an instance
//!   may still encrypt under the compromised version until its cached
//!   snapshot expires: at most its refresh interval
//!   ([`KeywheelBuilder::refresh_interval`](crate::KeywheelBuilder::refresh_interval),
//!   default 60 s) after the activation, plus its KEK outage grace (a
//!   snapshot whose reload fails because the KMS or HSM is unreachable keeps
//!   serving that long, [`KeywheelBuilder::kek_outage_grace`](crate::KeywheelBuilder::kek_outage_grace),
//!   default 60 s), plus one reload cooldown for
//!   snapshots marked stale by an announcement, plus the time its write takes.
//!   The engine waits out [`RotateOptions::emergency_settle`](crate::RotateOptions::emergency_settle)
//!   (default: its own refresh interval + outage grace + 5 s,
//!   [`Keywheel::stale_snapshot_bound`](crate::Keywheel::stale_snapshot_bound);
//!   the CLI's `--settle`, default 125 s) on its clock, sweeps again, and only
//!   then takes the final census. Set it to cover the largest refresh interval
//!   of any instance. A [`Keyring`](crate::Keyring) snapshot that an
//!   application holds beyond one operation is outside the bound: ask
//!   [`Keywheel::keyring`](crate::Keywheel::keyring) per operation. The
//!   compromised version is then retired as soon as no *decryptable* value
//!   uses it: values that fail to decrypt (forgeries under the leaked key,
//!   damage) are listed in the job's failures and never hold it back. If
//!   decryptable values remain, or no source covers the keyring, it is kept
//!   and the scheduler retries every tick (status: `CompromisedNotRetired`).
//! * **I4 — one live rotator per keyring.** Every lease is granted to a
//!   holder unique to that acquisition (`{name}#{random}`, the name being the
//!   actor or [`Rotator::holder`](crate::Rotator::holder)), so processes and
//!   calls that share a name never share a lease. A live lease is never taken
//!   over; a refused `rotate`/`resume` writes nothing (no lease taken, no
//!   expiry moved) and says whether the job is running (`running: true`: wait)
//!   or waiting for a resume. A failed run releases its lease, so the job is
//!   resumable at once; a killed one's lease expires after its time-to-live
//!   ([`RotateOptions::lease_ttl`](crate::RotateOptions::lease_ttl), CLI
//!   `--lease-ttl` or `lease_ttl` in keywheel.toml), and the status warns
//!   `StalledJob` meanwhile. Leases are renewed at every checkpoint and
//!   during every wait.
//! * **I5 — usage counts never under-counted**: section 3.
//! * **I6 — keyring ids compare by canonical form**: `Purpose::Custom("token")`
//!   is [`Purpose::Token`](crate::Purpose::Token) (equality, hashing, ordering
//!   and presets).
//! * **I7 — rollback undoes the latest rotation only, once.** Each activation
//!   records the version it replaced ([`VersionRecord::replaced`](crate::VersionRecord::replaced),
//!   sealed); a re-activation must return to exactly that version and is
//!   refused once a newer version than the Active one was ever activated
//!   ([`KeyringRecord::rollback_target`](crate::KeyringRecord::rollback_target),
//!   enforced in `apply`). The window counts from that rotation's activation
//!   ([`Rotator::rollback`](crate::Rotator::rollback));
//!   [`Keywheel::activate`](crate::Keywheel::activate) never re-activates.
//! * **I8 — the audit chain is keyed** (section 6); each lifecycle event is
//!   recorded once: a job is saved as finished with its completion event
//!   pending, the event recorded, and a resume after a crash in between looks
//!   it up in the trail before recording it.
//! * **I9 — lifecycle records are authenticated** (section 7).
//! * **Reversible retirement** (section 11): a Disabled version never
//!   decrypts; it is re-enabled only inside its quarantine
//!   ([`Error::QuarantineOver`](crate::Error::QuarantineOver) after it, checked in
//!   `apply` against the quarantine end stored in the sealed record); an
//!   erased keyring never gets an Active or a new version again
//!   ([`Error::KeyringErased`](crate::Error::KeyringErased), in `apply`). The
//!   model test disables, re-enables and erases too, and checks these after
//!   every step.
//!
//! ## 9. Threat model
//!
//! | attacker | can | keywheel guarantees |
//! |---|---|---|
//! | **Database reader** (SQL injection, a read replica, a leaked dump without the master key) | read every stored value, keyring record, wrapped key and audit entry | no plaintext and no key: values are AEAD ciphertexts, key material is wrapped by the KEK; the version of each value and the lifecycle metadata are visible by design |
//! | **Database writer** (the application's own role, a compromised admin account) | change, delete or replay stored values; edit keyring records, jobs, leases and policies; append to (or, as table owner, rewrite) the audit log | a changed or moved value fails to decrypt (it is bound to keyring and context); an edited keyring record is refused before use (I9); re-activating a compromised or deprecated version is refused (I2, I7, I9); a rewritten audit log fails verification without the master key (I8) and the application role can be limited to `INSERT`/`SELECT` on it. **Not** guaranteed: replay of an older value of the same field, or of an older, validly sealed keyring record; deletion (availability) |
//! | **Application host** (code execution in a process that holds a snapshot) | decrypt and encrypt everything the loaded keyrings protect, read the master key or use the KMS as that process can | nothing beyond what the host can do is protected; after an emergency rotation the compromised version stops encrypting within the bound of I3, and its material is destroyed in the store as soon as no decryptable value uses it |
//! | **Backup thief** (a database backup, a WAL archive, a disk image) | everything a database reader can, for as long as the backup exists | without the master key: nothing. **Retirement destroys material in the store, not in backups or WAL**: a retired version's wrapped key stays in every backup taken before, readable with the master key of that time. It is gone only once the KEK has been rotated (`kek rotate`, then destroy the old master key) *and* the backups and WAL from before have expired |
//! | **Operator** (holds the master key, runs the CLI) | every lifecycle operation, forced ones included; rewrite the audit log consistently (they hold the key that authenticates it) | every step, forced or refused, is audited with actor and reason before it takes effect (fail closed); anchor the audit head elsewhere (`keywheel audit verify` prints it) so a rewritten log is detectable by someone who does not trust the operator |
//!
//! ## 10. Master-key (KEK) rotation
//!
//! Stored key material is wrapped under the master key (the KEK); values in
//! the application's tables are not. Replacing the master key therefore
//! rewraps the few stored key versions and touches no value
//! ([`Rotator::rotate_kek`](crate::Rotator::rotate_kek), `keywheel kek
//! rotate`). Each wrapped key records the KEK id and the **key check value**
//! (KCV: a one-way fingerprint, safe to print and record) of the master key
//! that wrapped it; a process given another master key gets
//! [`Error::WrongMasterKey`](crate::Error::WrongMasterKey) naming the KCV the
//! store needs and the KCV(s) it was given. `keywheel init`, `kek generate`
//! and `kek rotate` print the KCV of the key they make.
//!
//! **Master-key files.** `keywheel init` and `kek rotate`/`kek generate`
//! write a generated key only to a new file of mode 0600 (`init` defaults to
//! `./master.key`; an existing file is never overwritten), and print it only
//! with `--print-master-key`. The CLI refuses a key file (`--master-key-file`,
//! `--next-master-key-file`, `--new-master-key-file`) or a file-store audit
//! log that its group or other users can read or write, naming the `chmod
//! 600 PATH` that fixes it.
//!
//! **Without downtime.** A process whose master key no longer opens the store
//! fails every reload, so the next key is given to every process *before* the
//! rewrap. A process holding the current and the next key (a
//! [`KekRing`](crate::KekRing), built by
//! [`KekRing::from_env`](crate::KekRing::from_env) from
//! `KEYWHEEL_MASTER_KEY` and `KEYWHEEL_MASTER_KEY_NEXT`) wraps new key
//! versions and seals records under the current key, and unwraps and
//! verifies under both; audit entries and record seals made under either key
//! keep verifying. The CLI takes the next key as `--next-master-key-file PATH`
//! or `KEYWHEEL_MASTER_KEY_NEXT` in every command. The runbook:
//!
//! 1. **Stage the next key everywhere.** `keywheel kek generate --out
//!    next-master.key` (prints its KCV); put it in the secret manager and set
//!    `KEYWHEEL_MASTER_KEY_NEXT` (base64, the file's content) in every
//!    application process — a rolling restart — and for the CLI
//!    (`--next-master-key-file next-master.key`). Nothing is rewrapped yet:
//!    processes not yet restarted keep working.
//! 2. **Rewrap: `keywheel kek rotate`** (with the next key staged; it rewraps
//!    to the staged key). Every live key version is rewrapped under the next
//!    key and every record resealed under its integrity key, one atomic update
//!    per keyring, audited as `KekRotated` under the next key. Staged
//!    processes read the rewrapped records on their next reload. Running it
//!    again is safe: rewrapped keys are skipped, and anything a process still
//!    wrote under the old key since (a new version from an in-application
//!    rotation, a resealed record) is rewrapped or resealed.
//! 3. **Promote the next key to current everywhere.** Set
//!    `KEYWHEEL_MASTER_KEY` to the next key and remove
//!    `KEYWHEEL_MASTER_KEY_NEXT` (CLI: `--master-key-file next-master.key`), a
//!    rolling restart again: processes not yet promoted still hold the next
//!    key, promoted ones need only it. Avoid lifecycle operations in
//!    not-yet-promoted processes during this step (they would wrap under the
//!    old key); if one ran, repeat step 2 before step 4.
//! 4. **Drop the old key.** Check that the new key alone opens everything:
//!    `keywheel --master-key-file next-master.key keyring list` unwraps every
//!    key and checks every seal (a `WrongMasterKey` naming the old KCV means
//!    step 2 must run again), and `keywheel audit verify` authenticates the
//!    trail with it. Then remove the old key from every deployment. Keep it
//!    in the secret manager until every backup of the store taken before
//!    step 2 has expired: those backups are still wrapped under it (see the
//!    threat model, section 9).
//!
//! Library users follow the same steps with
//! `KekRing::from_env(MASTER_KEY_ENV, NEXT_MASTER_KEY_ENV)` in the
//! application and `Rotator::rotate_kek(next)` (from an engine holding both
//! keys) as step 2: `rotate_kek` seals and audits under the new key whichever
//! key the engine wraps with.
//!
//! ### KMS and HSM master keys
//!
//! The master key need not exist outside a KMS or an HSM. Two providers
//! implement [`KeyEncryptionKey`](crate::KeyEncryptionKey) in their own
//! crates (features `aws-kms` and `pkcs11` of the `keywheel` facade); core
//! stays free of I/O.
//!
//! * **AWS KMS** (`keywheel_kms_aws::AwsKmsKek`): wrap is KMS `Encrypt` of the
//!   32-byte material under a symmetric KMS key, unwrap is `Decrypt` with the
//!   key id pinned; both carry the encryption context
//!   `{"keywheel:keyring": <id>, "keywheel:version": <n>}`, so a wrapped key
//!   moved to another keyring or version is refused by KMS. Region, endpoint
//!   and credentials come from the standard AWS configuration chain (the URI
//!   may override region and endpoint). KEK id `aws-kms`; the key check value
//!   is a fingerprint of the key's ARN (resolved once with `DescribeKey`, so
//!   an alias and its ARN agree).
//! * **PKCS#11** (`keywheel_pkcs11::Pkcs11Kek`): an AES-256 key inside the
//!   token (sensitive, not extractable; `Pkcs11Kek::generate_key` makes one)
//!   wraps with `CKM_AES_GCM` computed by the token, a random 96-bit IV and
//!   the keyring id and version as additional data. KEK id `pkcs11`; the key
//!   check value is a hash of the token's AES-CMAC of a fixed label, so
//!   another key under the same label is a
//!   [`WrongMasterKey`](crate::Error::WrongMasterKey), not a decrypt failure.
//!
//! **The integrity key** (which seals keyring records and authenticates the
//! audit trail, section 7) must be deterministic and must need the master
//! key. KMS `Encrypt` is randomised, so an AWS KMS KEK takes a second KMS
//! key, an `HMAC_256` key (`mac-key=` in the URI), and derives the integrity
//! key from `GenerateMac` of a fixed label, once per process, kept in memory
//! only. The alternative, a random seed wrapped by KMS and stored in the
//! store, was rejected: whoever can write the store and call `kms:Encrypt`
//! (commonly granted widely) could replace the seed with one they know and
//! forge seals; `GenerateMac` needs its own permission on its own key. A
//! PKCS#11 KEK derives it from the token's AES-CMAC of another fixed label
//! with the same AES key (the key needs `CKA_SIGN`); the CMAC output never
//! leaves the process.
//!
//! **KEK URIs** (the CLI's `--kek`, `KEYWHEEL_KEK`, `kek = "…"` in
//! keywheel.toml; `AwsKmsConfig::from_uri`, `Pkcs11Config::from_uri`):
//!
//! ```text
//! local:                                   the master key (KEYWHEEL_MASTER_KEY / --master-key-file); the default
//! aws-kms://<key id, alias or ARN>?mac-key=<HMAC key id, alias or ARN>[&region=<r>][&endpoint=<url>]
//! pkcs11:token=<label>;object=<label>[;slot-id=<n>]?module-path=<library>&pin-source=env:<VAR>|file:<path>
//! ```
//!
//! The PKCS#11 form follows RFC 7512 (values percent-decoded). The PIN comes
//! from `pin-source`, else `KEYWHEEL_PKCS11_PIN`; `pin-value=` works but puts
//! the PIN in configuration files and process lists. The module defaults to
//! `KEYWHEEL_PKCS11_MODULE`. PINs are held in `secrecy` types and never
//! printed.
//!
//! **Cost per load.** Loading a keyring snapshot unwraps each live version
//! once (Disabled and Retired versions are not unwrapped): one KMS `Decrypt`
//! or one token `C_Decrypt` per version, bounded and tested with a counting
//! KEK (`keywheel_conformance::kek::unwraps_once_per_version_per_load`). The
//! material lives in the snapshot (memory, zeroized on drop) and is never
//! written anywhere; cached accesses cost no call; each refresh (every
//! refresh interval, default 60 s) unwraps again. That keeps the kill switch:
//! a KMS key disabled or a grant revoked stops every process at its next
//! refresh. Measured load times are in the README.
//!
//! **Faults.** An unreachable, throttled or failing KMS or token is
//! [`Error::KekUnavailable`](crate::Error::KekUnavailable), retryable. A
//! snapshot already loaded keeps serving reads and writes while its reload
//! fails with a retryable error, for up to
//! [`KeywheelBuilder::kek_outage_grace`](crate::KeywheelBuilder::kek_outage_grace)
//! (default 60 s) past its refresh interval; reloads are retried with
//! exponential backoff (1 s, 2 s, 4 s … 30 s), not on every access, and
//! [`Keywheel::outage_serves`](crate::Keywheel::outage_serves) counts the
//! accesses served that way (export it as a health signal). An explicit
//! [`Keywheel::refresh`](crate::Keywheel::refresh) reports the typed error
//! and leaves the snapshot in place. Refusals are not retried and never fall
//! back: [`Error::KekAccessDenied`](crate::Error::KekAccessDenied) (missing
//! permission, wrong or locked PIN) and
//! [`Error::KekDisabled`](crate::Error::KekDisabled) (key disabled or
//! pending deletion) carry a hint; a key wrapped under another key is
//! [`Error::WrongMasterKey`](crate::Error::WrongMasterKey) before any call.
//! The grace counts in [`Keywheel::stale_snapshot_bound`](crate::Keywheel::stale_snapshot_bound)
//! and so in an emergency rotation's settle time (I3, section 8). Each AWS
//! KMS call has its own timeouts and the SDK's retries
//! (`AwsKmsConfig::timeouts`, `max_attempts`); a PKCS#11 session lost to a
//! device error is reopened on the next call.
//!
//! **Rotating between kinds: local → AWS KMS → PKCS#11.** The runbook above
//! applies unchanged, with KEK URIs instead of key files:
//!
//! 1. Stage the new KEK in every application: a
//!    [`KekRing`](crate::KekRing) of the current KEK and the new one
//!    (`KekRing::new(current, vec![new])`), a rolling restart; the CLI takes
//!    it as `--next-kek URI` (`KEYWHEEL_KEK_NEXT`).
//! 2. Rewrap: `keywheel --kek local: kek rotate --new-kek aws-kms://…`
//!    (the master key given as usual). Every live version is rewrapped under
//!    KMS and every record resealed under the KMS integrity key, audited.
//! 3. Promote: restart the applications with the KMS KEK as current (and, for
//!    the next step, the HSM KEK staged: `KekRing::new(kms, vec![hsm])`); the
//!    CLI uses `--kek aws-kms://…` (or `kek = "…"` in keywheel.toml).
//! 4. `keywheel --kek aws-kms://… kek rotate --new-kek pkcs11:…`, then promote
//!    the HSM KEK alone and drop the others: `keywheel --kek pkcs11:… keyring
//!    list` and `audit verify` must pass with it alone. Keep the old keys
//!    (the master key, the KMS keys: schedule their deletion, don't delete)
//!    until every backup taken before the rewrap has expired.
//!
//! The same procedure runs end to end, under live applications on Postgres
//! with 0 errors, in the CLI's `tests/kek_providers.rs`.
//!
//! ## 11. Retirement, quarantine and tenant erasure
//!
//! A census sees the values of the registered record sources, not those in
//! caches, exports, backups or other services. So retiring a version is
//! reversible for a while, as with Vault's `min_decryption_version`, tinkey's
//! `disable-key` or a cloud KMS's scheduled destruction:
//!
//! 1. **Retire disables.** [`Rotator::retire`](crate::Rotator::retire) (CLI
//!    `keywheel retire`), the scheduler's automatic retirement and
//!    [`Keywheel::retire_forced`](crate::Keywheel::retire_forced) make a
//!    Deprecated version **Disabled**, after every guard rail of retirement
//!    (grace period, a covering source, a zero census; or force with an
//!    audited reason). Decryption under it is refused with
//!    [`Error::KeyDisabled`](crate::Error::KeyDisabled) — which names the
//!    version and nothing else — but its wrapped material stays in the store.
//!    Audited as `KeyDisabled`, with the end of its quarantine.
//! 2. **Quarantine.** The policy's [`quarantine`](crate::Policy::quarantine)
//!    (default 7 days, [`DEFAULT_QUARANTINE`](crate::DEFAULT_QUARANTINE);
//!    `quarantine = "…"` in keywheel.toml) fixes, at the moment of disabling,
//!    when the material may be destroyed ([`VersionRecord::destroy_after`](crate::VersionRecord::destroy_after));
//!    a later policy change does not move it. A zero quarantine destroys at
//!    once, as retirement did before. Until it ends,
//!    [`Keywheel::enable`](crate::Keywheel::enable) (CLI `keywheel keyring
//!    enable KEYRING --version N [--reason TEXT]`) makes the version
//!    Deprecated again — it decrypts, never encrypts — audited as
//!    `KeyEnabled`; it is refused after the quarantine
//!    ([`Error::QuarantineOver`](crate::Error::QuarantineOver)), for a
//!    compromised version and for a version that is not Disabled
//!    ([`Error::NotDisabled`](crate::Error::NotDisabled)). Its grace period
//!    still counts from when it stopped encrypting.
//! 3. **Destruction.** The scheduler destroys every Disabled version whose
//!    quarantine has ended on its next tick
//!    ([`Keywheel::destroy_quarantined`](crate::Keywheel::destroy_quarantined)),
//!    audited as `KeyRetired` (not forced: the checks were made at step 1);
//!    status lists Disabled versions with that time
//!    ([`KeyringStatus::disabled`](crate::KeyringStatus::disabled),
//!    [`destruction_candidates`](crate::destruction_candidates)). An operator
//!    destroys earlier with [`RetireOptions::now`](crate::RetireOptions::now)
//!    (CLI `retire --now`) or [`Keywheel::retire_forced_now`](crate::Keywheel::retire_forced_now).
//!
//! **Emergencies skip the quarantine.** The compromised version of an
//! emergency rotation is destroyed at once (disabled and retired in one
//! update) as soon as no decryptable value uses it: a leaked key kept
//! re-enable-able for days would keep the leak open, and the census already
//! proved it unused. A compromised version disabled by hand is never
//! re-enabled.
//!
//! **Tenant erasure** (crypto-shredding, the usual answer to an erasure
//! request): [`Keywheel::destroy_keyring`](crate::Keywheel::destroy_keyring)
//! and [`Keywheel::destroy_tenant`](crate::Keywheel::destroy_tenant) (CLI
//! `keywheel keyring destroy TENANT[/PURPOSE] --reason TEXT [--now]`) disable
//! every version of the keyring at once, the Active one included, in one
//! atomic update under the keyring's lease, audited as `KeyringErased` with
//! the reason. From then on nothing encrypts under the keyring
//! ([`Error::KeyringErased`](crate::Error::KeyringErased); processes holding a
//! snapshot stop at their next refresh, within
//! [`Keywheel::stale_snapshot_bound`](crate::Keywheel::stale_snapshot_bound)),
//! nothing rotates it and the scheduler leaves it alone. The quarantine
//! applies as above — a version can be re-enabled to read values back (never
//! to write) until it ends — unless `now` destroys everything in the same
//! update. Status shows erased keyrings
//! ([`KeyringStatus::erased_at`](crate::KeyringStatus::erased_at)). As with
//! any retirement, the material stays in backups taken before (section 9).
//!
//! Stores keep the new fields like the others: the file store's documents
//! gain them only when used (older documents load unchanged, a policy
//! without a quarantine gets the default); Postgres schema migration 4 adds
//! the `disabled` state to the state check and the keyring's `erased_at_ms`
//! column, the quarantine times living in the version's `meta` JSON.
//!
//! ## 12. Operator runbook
//!
//! What to do in each situation, with the library call and the `keywheel`
//! command that does it. Every step is audited before it takes effect; every
//! refusal changes nothing and says why. The CLI's exit codes: `0` done, `1`
//! error (store, database, master key, configuration), `2` usage error, `3`
//! refused by a safety rule, `4` problems found, `130` interrupted (resume it).
//!
//! **Policies.** Each keyring has a stored [`Policy`](crate::Policy) (presets
//! per purpose: token 90 d interval / 30 d grace, database 180 d / 90 d, file
//! 365 d / 180 d, session 30 d / 7 d with old values expiring, api-signature
//! 90 d / 30 d), set with [`Keywheel::set_policy`](crate::Keywheel::set_policy)
//! or `keywheel keyring apply` from `keywheel.toml`. The
//! [`Scheduler`](crate::Scheduler) rotates what is due ([`evaluate`](crate::evaluate)
//! says why) and retires what is safe to retire; run it in every instance
//! (`keywheel scheduler run`): leases make each step run once.
//!
//! **Scheduled rotation** (what the scheduler does, or by hand):
//!
//! 1. Preview: [`Rotator::dry_run`](crate::Rotator::dry_run), `keywheel rotate
//!    KEYRING --dry-run`. It reads, decrypts and re-encrypts in memory, and
//!    writes nothing.
//! 2. Rotate: [`Rotator::rotate`](crate::Rotator::rotate), `keywheel rotate
//!    KEYRING`. The rotation is a persisted job: take the lease, store the
//!    next version Pending, wait the activation delay (every instance loads
//!    it), activate it (the old one becomes Deprecated), re-encrypt every
//!    covered source in checkpointed batches (a concurrent application write
//!    always wins), verify by census, complete.
//! 3. Check: [`Rotator::verify`](crate::Rotator::verify), `keywheel verify
//!    KEYRING`: every value on the Active version, none unreadable. Values
//!    that did not decrypt are listed by `keywheel failures KEYRING` (table,
//!    column, primary key); they hold their version back from retirement.
//!
//! **Interrupted** (crash, `kill`, Ctrl-C, exit `130`):
//! [`Rotator::resume`](crate::Rotator::resume), `keywheel resume KEYRING`
//! continues from the last checkpoint. A lease left by a killed process
//! expires after its time-to-live; the status warns `StalledJob` meanwhile.
//!
//! **Something broke after a rotation**: [`Rotator::rollback`](crate::Rotator::rollback),
//! `keywheel rollback KEYRING --reason …` makes the replaced version Active
//! again, inside the policy's rollback window, once, never to a compromised
//! version (section 8, I2 and I7). Nothing becomes unreadable; with
//! re-encryption the values move back too.
//!
//! **Retiring an old version** is two steps, so a mistake can be undone
//! (section 11):
//!
//! 1. Disable: [`Rotator::retire`](crate::Rotator::retire), `keywheel retire
//!    KEYRING`. Refused unless a source covers the keyring and no value (or
//!    unresolved failure) uses the version, and its grace period is over
//!    (section 8, I1); `--force --reason …` overrides, audited as forced. A
//!    disabled version keeps its wrapped material but decrypts nothing
//!    ([`Error::KeyDisabled`](crate::Error::KeyDisabled)): whatever still
//!    needed it — a cache, an export, another service — now fails loudly
//!    instead of losing data for good.
//! 2. During the quarantine ([`Policy::quarantine`](crate::Policy::quarantine),
//!    default 7 days) `keywheel keyring enable KEYRING --version N` makes it
//!    Deprecated again, audited. After the quarantine the scheduler destroys
//!    the material (Retired); `keywheel retire KEYRING --now` destroys it at
//!    once.
//!
//! **Key leaked**: [`Rotator::emergency`](crate::Rotator::emergency),
//! `keywheel rotate KEYRING --emergency --reason …`: no activation delay, the
//! old version is flagged compromised (never Active again), every value is
//! re-encrypted, and after the settle time (section 8, I3) the compromised
//! version is destroyed as soon as no decryptable value uses it.
//!
//! **Erasure request** (crypto-shredding a tenant): `keywheel keyring destroy
//! TENANT[/PURPOSE] --reason …` ([`Keywheel::destroy_tenant`](crate::Keywheel::destroy_tenant))
//! disables every version of the tenant's keyrings at once, the Active one
//! included (forced, audited with the reason); nothing encrypts under them
//! again. After the quarantine, or at once with `--now`, every value
//! encrypted under them is unreadable for good; `keywheel status` shows the
//! keyrings as erased. Backups keep the wrapped keys until the master key is
//! rotated and the old one destroyed (section 9, backup thief).
//!
//! **New master key** without downtime (section 10): stage the next key in
//! every process (`KEYWHEEL_MASTER_KEY_NEXT`), `keywheel kek rotate`, promote
//! it to `KEYWHEEL_MASTER_KEY` everywhere, drop the old one.
//!
//! **Damage**: `keywheel status` lists a damaged keyring file or a keyring
//! record that fails its seal (exit 4) and keeps showing the others; the
//! damaged file is never overwritten. Restore it from a backup:
//! `keywheel keyring seal` seals only records from before record
//! authentication, never an edited one (section 7).
//!
//! **Audit**: `keywheel audit verify` checks the whole trail (MACs too, with
//! the master key) and prints its head; keep the head elsewhere and pass it
//! back with `--expect-head` to detect a log cut back since. `keywheel audit
//! tail` shows the latest events. Neither needs the master key to read; nor
//! do `status`, `census` and `verify`.
//!
//! ## 13. Searchable fields (blind indexes)
//!
//! A random nonce makes every encryption of `ann@example.org` different, so
//! `WHERE email = …` cannot work on encrypted columns. A **blind index**
//! stores, beside the encrypted value, a deterministic tag of the normalised
//! plaintext: equal plaintexts of one column get equal tags, and a lookup
//! computes the tag of what it looks for and searches the tag column with an
//! ordinary btree index ([`BlindIndex`](crate::BlindIndex)).
//!
//! ```
//! use keywheel_core::{Algorithm, BlindIndex, Context, KeyMaterial, KeyState, Keyring, KeyringId, Normalization, Purpose};
//! let ring = Keyring::builder(KeyringId::new("acme", Purpose::Database)?)
//!     .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::generate()?)
//!     .build()?;
//! let email = BlindIndex::new("users", "email").normalization(Normalization::TrimLowercase);
//! // Writing row 42: the encrypted value and its tag, in the same statement.
//! let ctx = Context::field("users", "email", "42");
//! let (value, tag) = (ring.encrypt(b"Ann@Example.org", &ctx)?, ring.blind_index(b"Ann@Example.org", &email)?);
//! // Looking up: `SELECT … WHERE email_bidx = ANY($1)` with these terms.
//! let terms = ring.index_terms(b"ann@example.org", &email)?;
//! assert!(terms.contains(&tag));
//! # let _ = value;
//! # Ok::<(), keywheel_core::Error>(())
//! ```
//!
//! **Format.** A tag is a value of algorithm `11` ([section 2](#2-wire-format-v1)):
//! header ‖ truncated HMAC-SHA256 under the version's *index key*. Its key
//! version is readable without a key, so census, verification and SQL
//! filtering treat tags like encrypted values, in binary or `kw:v{N}:` text form.
//!
//! **Normalisation** ([`Normalization`](crate::Normalization)) makes the
//! writer's tag and the lookup's tag agree: `none`, `trim-lowercase/1`
//! (alias `email`), `nfkc-casefold/1` (trim, NFKC, full case folding, NFKC)
//! and `digits/1` (alias `phone`: NFKC, then the ASCII digits), or an
//! application's own function under a name of its choosing. The name is
//! bound into every tag, so tags made under one normalisation never match a
//! lookup under another; a built-in that ever has to change does so under a
//! new name. Text normalisations refuse bytes that are not UTF-8 with
//! [`Error::NotIndexable`](crate::Error::NotIndexable).
//!
//! **Lookups during a rotation.** [`Keyring::index_terms`](crate::Keyring::index_terms)
//! returns the tag under every version that can still hold values (Pending,
//! Active, Deprecated): during a rotation a row's tag is on the old version
//! until the engine reaches it, then on the new one, and `= ANY(terms)`
//! matches either. Outside a rotation there is one term (or two while the
//! old version is deprecated): lookups cost one index probe per term. As
//! for decryption, a process finds the rows moved to the new version once
//! its snapshot knows that version: the activation delay, longer than the
//! refresh interval, makes sure every process has loaded it (Pending) before
//! the first value or tag moves.
//!
//! **Rotation.** A source declares an index column paired with its encrypted
//! column (`TableSpec::index` for Postgres, `MemoryRecordSource::with_index`,
//! `index = "email_bidx"` in `keywheel.toml`). The engine computes the new
//! tag from the plaintext it decrypts anyway and writes value and tag in one
//! compare-and-set, which also requires the stored tag to be unchanged: an
//! application write of either wins. A row whose value is already on the new
//! version but whose tag is not, or whose tag is empty (rows written before
//! the index existed), gets its tag alone — so declaring an index and
//! running a rotation also fills it. The census counts tags per version
//! beside the values ([`Census::index_tags`](crate::Census::index_tags)) and
//! verification and retirement wait for both: a version is not destroyed
//! while a tag still needs it, or lookups would stop finding those rows.
//!
//! **A stand-alone index column** (tags with no encrypted value beside them,
//! e.g. a "have we seen this SSN" table) is counted by the census and holds
//! retirement back like any value, but a rotation cannot rewrite it: the
//! plaintext is not there. Its tags are listed as failures of the rotation
//! ("a blind index tag … cannot be decrypted"); re-index them from the
//! application, or store the encrypted value beside them.
//!
//! **What an index leaks.** Anyone who can read the tag column learns which
//! rows of that column hold equal (normalised) plaintexts, and so the
//! frequency of each: the most common tag of an `email` column is probably a
//! shared mailbox, the most common tag of a `country` column is probably the
//! home country. Index only columns whose values are mostly distinct (emails,
//! phone numbers, national ids); never low-cardinality ones. Tags are bound
//! to table and column, so equal emails in two tables or two columns do not
//! link. What an index does **not** leak without the index key: the
//! plaintext, even for guessable values (a dictionary attack needs the key),
//! and any link across keyrings (tenants).
//!
//! **Why truncation helps.** A shorter tag makes unrelated plaintexts share
//! a tag now and then, so an equal tag is not proof of an equal value: 16
//! bytes (the default) is collision-free in practice; 8 bytes (the minimum)
//! gives occasional false positives in columns of billions of rows, which
//! the application removes by decrypting the rows found, and blurs what an
//! attacker with a candidate list can confirm. Longer than 16 bytes buys
//! nothing for lookups.
//!
//! **Why a separate index key.** The tag is a deterministic MAC of the
//! plaintext; the encryption key is never used for it. The index key is
//! derived from the version's material with its own HKDF label (`"index"`),
//! so a tag says nothing about the encryption key, a flaw in one use cannot
//! become a flaw in the other, and the index rotates with the keyring.
//!
//! **What rotation does to the leakage.** Tags under the new version share
//! nothing with tags under the old one: once a rotation has rewritten the
//! column, an old copy of the tag column (a backup, a leaked dump) can no
//! longer be joined with the current one, and after retirement the old
//! index key is destroyed with the version. During the rotation both sets
//! exist; equality within the column stays visible throughout — rotation
//! limits leakage over time, it does not hide equality.
//!
//! ## 14. Migrating legacy data
//!
//! A team arrives with a plaintext column, or with values encrypted by the
//! tool it is leaving. keywheel reads them through **legacy formats**
//! ([`LegacyFormat`](crate::LegacyFormat)): each one recognises its values
//! from their bytes alone — cheaply, without a key or any I/O — and decrypts
//! them, so that they can be rewritten under the keyring's Active version.
//! The caller opts into the formats of a column with a
//! [`LegacyFormats`](crate::LegacyFormats) list; the empty list, the default,
//! recognises nothing.
//!
//! **Built-in formats.**
//!
//! | Name | Tool | Value | Keys |
//! |---|---|---|---|
//! | `fernet` | Python `cryptography` `Fernet`/`MultiFernet` (Django encrypted fields) | urlsafe base64 token starting `gAAAAA` | the key list of the Django setting, tried in order ([`FernetFormat::new`](crate::FernetFormat::new)); or the secrets of django-fernet-fields, through its HKDF ([`FernetFormat::from_django_fernet_fields`](crate::FernetFormat::from_django_fernet_fields)) |
//! | `lockbox` | Ruby Lockbox, AES-256-GCM | base64 of nonce ‖ ciphertext ‖ tag (or the raw bytes) | 64 hex digits, or `LOCKBOX_MASTER_KEY` with table and encrypted column ([`LockboxFormat::from_master_key`](crate::LockboxFormat::from_master_key)); older keys after it |
//! | `vault` | HashiCorp Vault transit | `vault:v<N>:<base64>` | none: the application's Vault client decrypts, through a batch function ([`VaultTransitFormat::new`](crate::VaultTransitFormat::new)) |
//! | `plaintext` | none | anything else | none; accepted only until an end date |
//!
//! Fernet's timestamp (its optional TTL) is ignored: stored data is read
//! whatever its age. Lockbox's associated data, when a column used it, is
//! taken from a pair of the value's [`Context`](crate::Context); its padding
//! option is supported; it leaves the empty string unencrypted, so the
//! empty value reads as empty.
//!
//! **Recognition order.** A value that parses as keywheel, or merely looks
//! like it (the text prefix `kw:v`, or the magic `kw` followed by a format
//! byte: [`looks_like_keywheel`](crate::looks_like_keywheel)), is never
//! legacy: a damaged keywheel value stays a failure. Then the formats are
//! tried in the order they were added, first match wins, and plaintext comes
//! last, whatever the order of the calls. Recognition is final: a recognised
//! value that fails to decrypt is a failure, never handed to the next
//! format, so a tampered or truncated ciphertext is never taken for
//! plaintext. For the same reason formats recognise loosely by their
//! signature (a truncated Fernet token is still `fernet`, and fails with a
//! typed [`Error::MalformedLegacy`](crate::Error::MalformedLegacy)), and the
//! plaintext format refuses values with the signature of Fernet or Vault even
//! when those formats are not configured. Lockbox values have no signature
//! (any base64 of 28 bytes or more), so configure Lockbox before accepting
//! plaintext in a Lockbox column.
//!
//! **Failures.** A wrong key, a tampered value or wrong associated data are
//! the opaque [`Error::Decrypt`](crate::Error::Decrypt), as for keywheel
//! values; a value with the format's signature but not its structure is
//! [`Error::MalformedLegacy`](crate::Error::MalformedLegacy); a Vault client's
//! failure comes back as the client reported it (for a whole batch: to every
//! value of the batch). No key appears in `Debug`, errors or reports; keys
//! live in zeroize-on-drop memory.
//!
//! **Plaintext has an end date.** Plaintext is accepted only through
//! [`LegacyFormats::accept_plaintext_until`](crate::LegacyFormats::accept_plaintext_until)
//! or [`PlaintextFormat::until`](crate::PlaintextFormat::until): there is no
//! way to accept it without an end date. Before the date a plaintext value
//! reads as itself; from the date on it is
//! [`Error::PlaintextNotAccepted`](crate::Error::PlaintextNotAccepted), a
//! failure again, so a configuration left behind after the migration cannot
//! quietly let plaintext in (the trap of encrypted-field libraries that
//! return whatever does not decrypt).
//!
//! **Sync and async formats.** Fernet, Lockbox and plaintext are CPU-bound:
//! their [`decryptor`](crate::LegacyFormat::decryptor) is
//! [`Blocking`](crate::LegacyDecryptor::Blocking), one value at a time, to
//! run on a blocking thread. Vault is
//! [`Async`](crate::LegacyDecryptor::Async): a batch per awaited call, the
//! shape of transit's `batch_input`.
//! [`LegacyFormat::decrypt_batch`](crate::LegacyFormat::decrypt_batch) serves
//! both for callers that do not care.
//!
//! **Reading during the migration.**
//! [`LegacyFormats::decrypt_or_legacy`](crate::LegacyFormats::decrypt_or_legacy)
//! (and `decrypt_or_legacy_blocking` without a runtime) reads a keywheel
//! value through a [`Keyring`](crate::Keyring) snapshot, or a recognised
//! legacy value through its format, so the application can read a column
//! while part of it is still legacy. It needs the same explicit opt-in: with
//! the empty list it is exactly `Keyring::decrypt`, and plaintext is read
//! only with its end date. [`LegacyCensus`](crate::LegacyCensus) counts a
//! column's values per kind: keywheel, each legacy format, unrecognised.
//!
//! **Where a column's formats are declared.** A
//! [`RecordSource`](crate::RecordSource) answers
//! [`legacy_formats`](crate::RecordSource::legacy_formats) for the value at
//! a cursor (`None` by default: no legacy format). No source needs to
//! implement it: wrap any source in a
//! [`LegacyColumns`](crate::LegacyColumns) and declare the formats per
//! column name (`.column("email", formats)`, answered through the source's
//! [`locate`](crate::RecordSource::locate), as the Postgres source locates
//! its values) or for every value of a one-column source
//! (`.every_column(formats)`). The list also says the column's form
//! ([`LegacyFormats::stored_as`](crate::LegacyFormats::stored_as): text by
//! default, binary for `bytea`), in which migrated values are written.
//!
//! ```
//! use std::sync::Arc;
//! use keywheel_core::{FernetFormat, LegacyColumns, LegacyFormats, RecordSource, Rotator, Timestamp};
//! # fn demo(kw: keywheel_core::Keywheel, users: Arc<dyn RecordSource>) -> keywheel_core::Result<Rotator> {
//! let key = "EEf2e03guMl1yOsGqJgpSlalH9xPW9tk9XjYXgpFtSE="; // the Django setting's FERNET_KEYS
//! let email = LegacyFormats::new()
//!     .with(FernetFormat::new([key])?)
//!     .accept_plaintext_until(Timestamp::from_millis(1_800_000_000_000));
//! let users = LegacyColumns::new(users).column("email", email);
//! Ok(Rotator::new(kw)?.source(Arc::new(users)))
//! # }
//! ```
//!
//! **Migration by rotation.** A rotation scans as usual; a value of the
//! keyring that is not keywheel and that a format of its column recognises
//! is decrypted by that format and encrypted under the Active version with
//! the value's context, in the column's form, with its blind index tag when
//! the column has one; it is written by the same compare-and-set (an
//! application write wins), checkpointed with its batch, and a resumed job
//! skips it (it is on the target version). Blocking formats decrypt on the
//! crypto threads with the re-encryption; a batch holding values of an async
//! format first awaits one batch call per format on a task of its own, then
//! re-encrypts on a blocking thread. Values that fail (wrong key, damaged,
//! plaintext after its end date) are the job's failures, with the format
//! named in the reason and nothing written. The job and its report count the
//! migrated values per format ([`RotationReport::legacy`](crate::RotationReport::legacy),
//! included in `rewritten`); every checkpointed batch that migrated any
//! records one [`AuditKind::LegacyMigrated`](crate::AuditKind::LegacyMigrated)
//! event with its counts per format, plaintext acceptances included. A dry
//! run counts them the same way and writes nothing.
//!
//! **Census and verify.** Legacy values are not keywheel values: the census
//! of versions counts them as unparseable.
//! [`Rotator::legacy_census`](crate::Rotator::legacy_census) (or
//! [`legacy_census_of`](crate::legacy_census_of) without a master key)
//! counts them per format of their column, and
//! [`Rotator::verify`](crate::Rotator::verify) reports them in
//! [`VerifyReport::legacy`](crate::VerifyReport::legacy); a keyring with
//! legacy values left is not verified. Once the census finds no legacy value
//! in a column, its legacy declaration and the legacy key material can go:
//! nothing reads it any more.
//!
//! **In the CLI.** A `[[sources]]` column takes a `legacy` table:
//! `format` (`"fernet"`, `"lockbox"`, `"plaintext"` or a list, at most one
//! keyed format), the keys from `keys_env` (comma-separated), `keys_file`
//! (refused if its group or others can read it) or, for Lockbox,
//! `lockbox_master_key_env`, and `accept_plaintext_until`
//! (`YYYY-MM-DDTHH:MM:SSZ`, required with plaintext). `census` and `verify`
//! count legacy values, `rotate` migrates them, and the census names the
//! columns whose legacy key material can be forgotten.
//!
//! ## 15. Observability: tracing and metrics
//!
//! keywheel reports what it does through two facades, [`tracing`] for spans
//! and events and [`metrics`] for counters, gauges and histograms. Neither
//! does any I/O: without a subscriber or a recorder installed, a span, an
//! event or a counter costs a branch. The application chooses the output
//! (a `tracing-subscriber` formatter or OpenTelemetry layer; a Prometheus or
//! StatsD recorder such as `metrics-exporter-prometheus`). The names below
//! are stable: renaming one, changing its kind or unit, or changing its
//! label keys is a breaking change. The metric names are constants of
//! [`observability`](crate::observability), listed with their kinds, units
//! and labels in [`observability::METRICS`](crate::observability::METRICS);
//! [`observability::describe_metrics`](crate::observability::describe_metrics)
//! hands their units and help texts to the installed recorder.
//!
//! **What is never recorded.** No key byte, plaintext, ciphertext, context
//! value (a row id is one) or error message appears in a span, an event or a
//! label. Fields and labels hold keyring ids (`tenant/purpose`), version
//! numbers, states, counts, durations, job ids (random correlation ids),
//! source names, and error *kinds*: [`Error::kind`](crate::Error::kind), a
//! stable snake_case name per variant (`decrypt`, `unknown_key_version`,
//! `retirement_refused` …), never the message, which may quote a backend's
//! own message. The emergency reason and operator reasons go to the audit
//! trail only. A test runs a rotation with seeded plaintexts, row ids and
//! key material under a capturing subscriber and searches everything
//! captured for them.
//!
//! **Spans.** All at INFO level, so a subscriber that keeps INFO sees the
//! structure; fields marked *after* are recorded when the span ends.
//!
//! | Span | Fields | Around |
//! |---|---|---|
//! | `keywheel.lifecycle` | `operation`, `keyring`, `version` (when the operation names one); after: `outcome` (`ok`, `refused`, `failed`), `error_kind` | every lifecycle operation (operations below) |
//! | `keywheel.rotation.job` | `keyring`, `job_id`, `kind` (`rotation`, `emergency`, `rollback_reencrypt`), `from`, `to`, `resumed`; after: `phase`, `processed`, `rewritten`, `skipped`, `failed`, `outcome`, `error_kind` | one run of a rotation job, from its stored phase to its end (a resume is a new run) |
//! | `keywheel.rotation.batch` | `keyring`, `source`, `to`, `job_id`, `rows` (scanned); after: `processed`, `rewritten`, `skipped`, `failed`, `duration_ms`, `error_kind` | the re-encryption and write of one batch (a child of its job's span) |
//! | `keywheel.scheduler.tick` | after: `paused`, `due`, `rotations`, `skipped`, `failed`, `retired`, `destroyed`, `outcome`, `error_kind` | one scheduler tick (the rotations it runs are inside it) |
//!
//! Lifecycle operations (the `operation` field and label): `create_keyring`,
//! `add_version`, `import_version`, `activate`, `deprecate`, `set_policy`,
//! `seal_record`, `retire` (the guarded retirement of a
//! [`Rotator`](crate::Rotator), the scheduler's included), `retire_forced`,
//! `enable`, `destroy_keyring`, `destroy_tenant`, `destroy_quarantined`,
//! `rotate`, `emergency_rotate`, `resume`, `rollback`, `rotate_kek`.
//! `destroy_tenant` and `rotate_kek` act on several keyrings: their
//! `keyring` is empty.
//!
//! **Events.** Nothing is logged per value: at most one event per batch.
//!
//! | Level | Message | Fields |
//! |---|---|---|
//! | INFO | `lifecycle operation refused` | `operation`, `error_kind`: a rule said no (lease held, job unfinished, grace period, window, values still in use, illegal transition …) |
//! | WARN | `lifecycle operation failed` | `operation`, `error_kind`: anything else (store, KEK, audit sink …) |
//! | DEBUG | `lifecycle operation done` | `operation` |
//! | INFO | `rotation job run ended` | `outcome`, `processed`, `failed` |
//! | WARN | `rotation job failed (resumable)` | `error_kind` (`lease_lost` when another process took the lease over) |
//! | WARN | `rotation batch failed` | `error_kind` |
//! | DEBUG | `keyring snapshot loaded` | `keyring`, `reason`, `generation`, `versions`, `active` |
//! | WARN | `keyring reload failed` | `keyring`, `reason`, `error_kind`, `retryable` |
//! | WARN | `serving the cached snapshot during a KEK or store outage` | `keyring`, `failed_reloads` |
//! | DEBUG | `census taken` | `keyring` (absent for all), `keyrings`, `unparseable` |
//! | DEBUG | `scheduler decision` | `keyring`, `reason`, `decision` |
//! | WARN | `scheduler tick failed` | `error_kind` |
//!
//! Each event is inside its operation's span, so a formatter shows the
//! keyring and job with it. The `keywheel` CLI writes them to stderr at the
//! level of `--log-level` or `RUST_LOG` (default `warn`).
//!
//! **Metrics.** Label values are keyring ids, version numbers (`"3"`),
//! source names and the fixed words listed. One series exists per keyring
//! (and version): with many tenants, aggregate or drop the `keyring` label
//! in the exporter.
//!
//! | Metric | Kind, unit | Labels | Counts |
//! |---|---|---|---|
//! | `keywheel_encryptions_total` | counter | `keyring`, `version` | values encrypted, the rotation engine's re-encryptions included (blind index tags and signatures are not encryptions) |
//! | `keywheel_decryptions_total` | counter | `keyring`, `version` | values decrypted ([`Keyring::decrypt`](crate::Keyring::decrypt), re-encryptions, the rotation engine's) |
//! | `keywheel_decrypt_failures_total` | counter | `keyring`, `reason` | failed [`Keyring::decrypt`](crate::Keyring::decrypt), [`reencrypt`](crate::Keyring::reencrypt) and [`reencrypt_many`](crate::Keyring::reencrypt_many) calls; `reason`: `decrypt` (authentication failed), `format`, `unknown_key_version`, `key_disabled`, `key_retired`, `algorithm_mismatch`, `wrong_value_kind`, `invalid_context`, `other` |
//! | `keywheel_rotation_values_rewritten_total` | counter | `keyring`, `source` | values a rotation job rewrote (legacy values migrated included) |
//! | `keywheel_rotation_values_skipped_total` | counter | `keyring`, `source` | values a job left to a concurrent application write |
//! | `keywheel_rotation_values_failed_total` | counter | `keyring`, `source` | values a job could not move (its failures; a verification sweep meets them again and counts them again) |
//! | `keywheel_rotation_batch_duration_seconds` | histogram, seconds | `keyring`, `source` | one observation per written batch: scan, re-encryption and write |
//! | `keywheel_rotation_jobs_total` | counter | `keyring`, `kind`, `outcome` | runs of rotation jobs that ended; `outcome`: `completed`, `completed_with_failures`, `cancelled`, `failed` |
//! | `keywheel_census_values` | gauge | `keyring`, `version` | values per version in the last census this process took (a rotation's, the scheduler's, `census`, `verify`); a version no longer found is set to 0 |
//! | `keywheel_active_version` | gauge | `keyring` | the Active version of the last snapshot this process loaded (0: none) |
//! | `keywheel_lifecycle_operations_total` | counter | `keyring`, `operation`, `outcome` | lifecycle operations; `outcome`: `ok`, `refused`, `failed` |
//! | `keywheel_scheduler_decisions_total` | counter | `keyring`, `reason`, `decision` | per due rotation, `reason` the due reason (`scheduled`, `resume`, `overdue`, `usage_limit`, `no_active_key`, `emergency`) and `decision` `rotated`, `skipped` (another instance has it), `failed`, `deferred` (over `max_concurrent`) or `paused`; per retirement candidate, `reason` `grace_period_over` and `decision` `retired`, `refused`, `in_use` or `skipped`; per quarantined version, `reason` `quarantine_over` and `decision` `destroyed` or `skipped` |
//! | `keywheel_scheduler_ticks_total` | counter | `outcome` | scheduler ticks, `ok` or `failed` |
//! | `keywheel_keyring_reloads_total` | counter | `keyring`, `reason`, `outcome` | snapshot loads from the store by a [`Keywheel`](crate::Keywheel); `reason`: `first_load`, `refresh_interval`, `invalidated` (this process changed the keyring), `announced` ([`mark_stale`](crate::Keywheel::mark_stale)), `outage_retry`, `unknown_version` (a decrypt met a newer version), `explicit` ([`refresh`](crate::Keywheel::refresh)); `outcome` `ok` or `failed` |
//! | `keywheel_keyring_outage_serves_total` | counter | `keyring` | accesses served by a snapshot whose reload failed with a retryable error (see [`Keywheel::outage_serves`](crate::Keywheel::outage_serves)) |
//!
//! **The hot path.** A [`Keyring`](crate::Keyring) snapshot registers its
//! counters when it is built (a load or reload by its
//! [`Keywheel`](crate::Keywheel), or [`KeyringBuilder::build`](crate::KeyringBuilder::build))
//! and keeps the handles: an encryption or decryption increments a stored
//! handle, one atomic add with a recorder installed and a branch without,
//! never a lookup by name and labels; a batch re-encryption adds its
//! encryptions once. So **install the recorder before the first snapshot is
//! loaded**: a snapshot built earlier counts nothing until its next reload
//! (at most a refresh interval later). A failed decryption of
//! [`Keywheel::decrypt`](crate::Keywheel::decrypt) on an unknown version is
//! counted (`unknown_key_version`) even when the reload that follows finds
//! the version and the retry succeeds. A dry run's throwaway keyring counts
//! nothing.
//!
//! **Why not behind a feature.** Both facades are small, do no I/O and cost
//! nothing measurable without a subscriber or recorder (the `field_crypto`
//! benchmark moves by less than its noise), and a feature would let a build
//! silently lose the metrics an operator relies on. To compile the tracing
//! out of a binary, use `tracing`'s own `max_level_*` features.
