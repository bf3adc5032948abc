//! # keywheel-conformance
//!
//! One test suite that every keywheel backend runs, so that the memory, file
//! and Postgres backends (and yours) honour the same contracts of
//! [`KeyStore`](keywheel_core::KeyStore),
//! [`RecordSource`](keywheel_core::RecordSource) and
//! [`AuditSink`](keywheel_core::AuditSink) (the [manual](keywheel_core::manual#5-implementing-a-backend)).
//!
//! * The checks are public async functions in [`key_store`], [`record_source`]
//!   and [`audit_sink`]. Each takes a fresh backend (or a fixture around one)
//!   and panics with a message naming the broken rule.
//! * Where a check needs more than the trait, it goes through a fixture
//!   trait: [`RecordSourceFixture`] (insert values, write and delete as the
//!   application) and [`AuditFixture`] (tamper with stored entries).
//! * The macros [`key_store_tests!`], [`record_source_tests!`] and
//!   [`audit_sink_tests!`] turn every check into its own `#[test]` for a
//!   backend factory: an `async` expression evaluated afresh for each test.
//!   Each test runs on a new multi-threaded tokio runtime ([`block_on`]), so
//!   the concurrency checks really race.
//! * [`model`] is a model-based test of the safety invariants ([manual](keywheel_core::manual#8-lifecycle-invariants)):
//!   random op sequences against a backend's store, audit sink and two record
//!   sources, checked after every step and shrunk on failure
//!   ([`model::run_model`]); [`model::regressions`] holds the sequences of the
//!   bugs it found, for [`model::replay`].
//!
//! ```
//! use std::sync::Arc;
//! use keywheel_core::KeyStore;
//! use keywheel_memory::MemoryKeyStore;
//!
//! // In a backend's `tests/conformance.rs`: one #[test] per check, in a module
//! // `key_store_conformance` (or name the module: `key_store_tests!(mod name, …)`).
//! keywheel_conformance::key_store_tests!(async { Arc::new(MemoryKeyStore::new()) as Arc<dyn KeyStore> });
//!
//! // A single check can also be called directly.
//! # fn main() {
//! keywheel_conformance::block_on(keywheel_conformance::key_store::racing_activations_have_one_winner(
//!     Arc::new(MemoryKeyStore::new()),
//! ));
//! # }
//! ```
#![forbid(unsafe_code)]

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use keywheel_core::{Error, KeyVersion};

pub mod audit_sink;
pub mod blind_index;
mod guarded;
pub mod integrity;
pub mod kek;
pub mod key_store;
pub mod legacy_tools;
pub mod model;
pub mod record_source;
pub mod services;

pub use audit_sink::{AuditFixture, Tamper, test_key};
pub use blind_index::IndexedSourceFixture;
pub use guarded::with_guard;
pub use record_source::RecordSourceFixture;

/// Run a future to completion on a new multi-threaded tokio runtime (two
/// worker threads, I/O and time drivers enabled). The generated tests use it
/// for every check; call it to run a single check by hand.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime for a conformance check")
        .block_on(future)
}

/// Run `contender(0..n)` on `n` OS threads of the blocking pool, released
/// together by a barrier, each driving its future on the current runtime; the
/// results in contender order. Unlike tasks woken by an async barrier (which
/// tokio may run one after the other), this makes backends whose calls never
/// yield (memory, file) really race. A panic in a contender is re-raised.
pub(crate) async fn race<T, F, Fut>(n: usize, contender: F) -> Vec<T>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let contender = Arc::new(contender);
    let runtime = tokio::runtime::Handle::current();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, contender, runtime) = (Arc::clone(&barrier), Arc::clone(&contender), runtime.clone());
            tokio::task::spawn_blocking(move || {
                let future = contender(i);
                barrier.wait();
                runtime.block_on(future)
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for thread in threads {
        match thread.await {
            Ok(result) => results.push(result),
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => panic!("a racing contender was cancelled: {err}"),
        }
    }
    results
}

/// Await `future`, failing the check if it takes longer than a minute (a
/// source whose scan never advances would otherwise hang a census forever).
pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(std::time::Duration::from_secs(60), future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within 60 s"),
    }
}

/// Version `n` (≥ 1) of a keyring.
pub(crate) fn version(n: u32) -> KeyVersion {
    KeyVersion::new(n).expect("conformance versions start at 1")
}

/// The error of `result`, or a panic saying that `what` should have failed.
pub(crate) fn expect_err<T: Debug>(result: keywheel_core::Result<T>, what: &str) -> Error {
    match result {
        Ok(value) => panic!("{what} must fail, but it succeeded with {value:?}"),
        Err(err) => err,
    }
}

/// Expands to a module of `#[test]` functions, one per check, each running
/// `$group::$check(factory.await)` on a fresh runtime. Not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    (mod $module:ident, $factory:expr, $group:ident: [$($check:ident),+ $(,)?]) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $check() {
                    $crate::block_on(async {
                        let backend = $factory.await;
                        $crate::$group::$check(backend).await;
                    });
                }
            )+
        }
    };
}

/// Generates one `#[test]` per [`key_store`] check for a store factory.
///
/// The factory is an expression of type `impl Future<Output = Arc<dyn KeyStore>>`
/// (typically an `async { … }` block), evaluated afresh for every test. The
/// tests go into a module named `key_store_conformance`, or the name given
/// with `mod name,` first. Names from the calling module are in scope.
///
/// ```
/// use std::sync::Arc;
/// use keywheel_core::KeyStore;
/// use keywheel_memory::MemoryKeyStore;
///
/// keywheel_conformance::key_store_tests!(async { Arc::new(MemoryKeyStore::new()) as Arc<dyn KeyStore> });
/// keywheel_conformance::key_store_tests!(mod second_store, async {
///     Arc::new(MemoryKeyStore::default()) as Arc<dyn KeyStore>
/// });
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! key_store_tests {
    (mod $module:ident, $factory:expr $(,)?) => {
        $crate::__conformance_tests!(mod $module, $factory, key_store: [
            create_load_round_trip,
            create_twice_fails,
            list_keyrings_sorted,
            load_unknown_is_none,
            update_unknown_keyring_fails,
            update_with_wrong_generation_conflicts,
            duplicate_version_refused,
            illegal_transition_refused,
            update_is_all_or_nothing,
            update_increments_generation_and_persists,
            usage_updates_keep_the_generation,
            rewrap_and_compromise_persist,
            lifecycle_rules_hold_in_the_store,
            seal_round_trips_and_applies_atomically,
            retire_destroys_material_keeps_metadata,
            disable_enable_and_erase_persist,
            racing_activations_have_one_winner,
            concurrent_updates_lose_nothing,
            lease_is_exclusive,
            load_lease_only_reads,
            lease_is_reentrant,
            lease_expires_and_token_increases,
            renew_after_takeover_is_lost,
            release_is_idempotent,
            leases_are_per_keyring,
            racing_lease_acquisitions_have_one_winner,
            jobs_round_trip,
            save_job_is_fenced,
            policies_round_trip,
        ]);
    };
    ($factory:expr $(,)?) => {
        $crate::key_store_tests!(mod key_store_conformance, $factory);
    };
}

/// Generates one `#[test]` per [`record_source`] check for a fixture factory.
///
/// The factory is an expression of type `impl Future<Output = F>` where
/// `F: RecordSourceFixture` (an `Arc` or `Box` of a fixture works too),
/// evaluated afresh for every test; each fixture must wrap an **empty**
/// source. The tests go into a module named `record_source_conformance`, or
/// the name given with `mod name,` first.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use keywheel_conformance::RecordSourceFixture;
/// use keywheel_core::{async_trait, Context, Cursor, KeyringId, RecordSource};
/// use keywheel_memory::MemoryRecordSource;
///
/// struct Fixture(Arc<MemoryRecordSource>, AtomicU64);
///
/// #[async_trait]
/// impl RecordSourceFixture for Fixture {
///     fn source(&self) -> Arc<dyn RecordSource> {
///         self.0.clone()
///     }
///     async fn insert(&self, keyring: &KeyringId, context: &Context, value: Vec<u8>) -> Cursor {
///         let row = self.1.fetch_add(1, Ordering::SeqCst);
///         self.0.insert_row(row, keyring.clone(), context.clone(), value)
///     }
///     async fn app_write(&self, cursor: &Cursor, value: Vec<u8>) {
///         self.0.set(cursor, value).expect("row exists");
///     }
///     async fn app_delete(&self, cursor: &Cursor) {
///         self.0.remove(cursor);
///     }
///     async fn get(&self, cursor: &Cursor) -> Option<Vec<u8>> {
///         self.0.get(cursor)
///     }
/// }
///
/// keywheel_conformance::record_source_tests!(async {
///     Fixture(Arc::new(MemoryRecordSource::new("users.email")), AtomicU64::new(0))
/// });
///
/// # fn main() {
/// // Or run one check directly:
/// keywheel_conformance::block_on(keywheel_conformance::record_source::replace_batch_outcomes_in_order(
///     Fixture(Arc::new(MemoryRecordSource::new("users.email")), AtomicU64::new(0)),
/// ));
/// # }
/// ```
#[macro_export]
macro_rules! record_source_tests {
    (mod $module:ident, $factory:expr $(,)?) => {
        $crate::__conformance_tests!(mod $module, $factory, record_source: [
            empty_source_scans_empty,
            scan_order_is_stable,
            scan_resumes_after_cursor,
            scan_resumes_after_deleted_cursor,
            scan_filters_never_hide_values,
            replace_writes_unchanged_value,
            replace_never_overwrites_application_write,
            replace_reports_deleted_value_as_changed,
            replace_batch_outcomes_in_order,
            replace_again_is_harmless,
            census_counts_per_keyring_and_version,
        ]);
    };
    ($factory:expr $(,)?) => {
        $crate::record_source_tests!(mod record_source_conformance, $factory);
    };
}

/// Generates one `#[test]` per [`blind_index`] check for a fixture factory:
/// for sources that pair a blind index column with their values.
///
/// The factory is an expression of type `impl Future<Output = F>` where
/// `F: IndexedSourceFixture`, evaluated afresh for every test; each fixture
/// must wrap an **empty** source. The tests go into a module named
/// `indexed_source_conformance`, or the name given with `mod name,` first.
/// `keywheel-memory`'s `tests/conformance.rs` shows a fixture.
#[macro_export]
macro_rules! indexed_source_tests {
    (mod $module:ident, $factory:expr $(,)?) => {
        $crate::__conformance_tests!(mod $module, $factory, blind_index: [
            scan_yields_stored_tags,
            replace_writes_value_and_tag_together,
            skip_version_yields_stale_tags,
            census_counts_index_tags,
        ]);
    };
    ($factory:expr $(,)?) => {
        $crate::indexed_source_tests!(mod indexed_source_conformance, $factory);
    };
}

/// Generates one `#[test]` per [`audit_sink`] check for a fixture factory.
///
/// The factory is an expression of type `impl Future<Output = F>` where
/// `F: AuditFixture`, evaluated afresh for every test; each fixture must wrap
/// an **empty**, chaining sink. The tests go into a module named
/// `audit_sink_conformance`, or the name given with `mod name,` first.
///
/// ```
/// use std::sync::Arc;
/// use keywheel_conformance::{AuditFixture, Tamper};
/// use keywheel_core::{async_trait, AuditSink};
/// use keywheel_memory::MemoryAuditSink;
///
/// struct Fixture(Arc<MemoryAuditSink>);
///
/// #[async_trait]
/// impl AuditFixture for Fixture {
///     fn sink(&self) -> Arc<dyn AuditSink> {
///         self.0.clone()
///     }
///     async fn tamper(&self, tamper: Tamper) {
///         self.0.tamper(|entries| match tamper {
///             Tamper::Edit(i) => entries[i].event.actor.push_str(" (edited)"),
///             Tamper::Delete(i) => drop(entries.remove(i)),
///             Tamper::Swap(i, j) => entries.swap(i, j),
///         });
///     }
/// }
///
/// keywheel_conformance::audit_sink_tests!(async { Fixture(Arc::new(MemoryAuditSink::new())) });
///
/// # fn main() {
/// keywheel_conformance::block_on(keywheel_conformance::audit_sink::detects_swapped_entries(
///     Fixture(Arc::new(MemoryAuditSink::new())),
/// ));
/// # }
/// ```
#[macro_export]
macro_rules! audit_sink_tests {
    (mod $module:ident, $factory:expr $(,)?) => {
        $crate::__conformance_tests!(mod $module, $factory, audit_sink: [
            records_chained_entries,
            detects_edited_entry,
            detects_deleted_entry,
            detects_swapped_entries,
            concurrent_records_form_one_chain,
            chain_is_keyed,
        ]);
    };
    ($factory:expr $(,)?) => {
        $crate::audit_sink_tests!(mod audit_sink_conformance, $factory);
    };
}
