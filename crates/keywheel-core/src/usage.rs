//! Usage counting (invariant I5: usage counts are never under-counted).
//!
//! A [`Keywheel`](crate::Keywheel) keeps one [`UsageCell`] per (keyring,
//! version) for its whole life, outside its snapshot cache, and hands the
//! cells to every snapshot it builds; so invalidation and reloads never reset
//! a count. A cell holds two numbers:
//!
//! * `known` — the version's count in the store, as of this instance's last
//!   load or flush of the keyring (raised only, with `fetch_max`);
//! * `pending` — encryptions counted by this instance and not yet confirmed
//!   written to the store.
//!
//! The total this instance sees is `known + pending`. A flush moves an amount
//! `t` from `pending` to the store and then to `known`: it writes `t`
//! (additively), raises `known` to the stored count that came back, and only
//! then takes `t` off `pending`. Readers read `pending` first and `known`
//! second (all sequentially consistent), so whenever a reader misses `t` in
//! `pending` it finds it in `known`: the total is never too low, not even for
//! an instant. A failed flush changes nothing, so nothing has to be added
//! back; a flush that failed after the store committed makes the store count
//! `t` twice (too high, never too low).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::KeyVersion;

/// The usage counters of one key version in one `Keywheel` instance.
#[derive(Debug, Default)]
pub(crate) struct UsageCell {
    known: AtomicU64,
    pending: AtomicU64,
}

impl UsageCell {
    /// Raise the known stored count to `stored` (a load or flush saw it).
    pub(crate) fn seed(&self, stored: u64) {
        self.known.fetch_max(stored, Ordering::SeqCst);
    }

    /// Stored (as last seen) plus unflushed encryptions.
    pub(crate) fn total(&self) -> u64 {
        let pending = self.pending.load(Ordering::SeqCst);
        self.known.load(Ordering::SeqCst).saturating_add(pending)
    }

    /// Encryptions counted here and not yet confirmed in the store.
    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::SeqCst)
    }

    /// Count `n` encryptions about to be made; returns the total before them.
    /// One atomic add (and one load): the hot path.
    pub(crate) fn reserve(&self, n: u64) -> u64 {
        let pending = self.pending.fetch_add(n, Ordering::SeqCst);
        self.known.load(Ordering::SeqCst).saturating_add(pending)
    }

    /// Give back `n` reserved encryptions that were not made. If a flush has
    /// already written them to the store, the store keeps them (too high,
    /// never too low), so this never takes `pending` below zero.
    pub(crate) fn give_back(&self, n: u64) {
        self.sub_pending(n);
    }

    /// A flush wrote `flushed` of the pending encryptions, and the store then
    /// held `stored` for this version.
    pub(crate) fn flushed(&self, flushed: u64, stored: u64) {
        // `known` first, `pending` second: see the module documentation.
        self.seed(stored);
        self.sub_pending(flushed);
    }

    fn sub_pending(&self, n: u64) {
        // The closure always returns `Some`, so this cannot fail.
        let _ = self.pending.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| Some(p.saturating_sub(n)));
    }

    #[cfg(test)]
    pub(crate) fn set_pending(&self, n: u64) {
        self.pending.store(n, Ordering::SeqCst);
    }
}

/// The usage cells of one keyring in one `Keywheel` instance, by version.
#[derive(Debug, Default)]
pub(crate) struct KeyringUsage {
    /// Held for the whole of a flush of this keyring, so two flushes never
    /// write the same pending encryptions twice.
    pub(crate) flush_lock: tokio::sync::Mutex<()>,
    /// Indexed by `version - 1`.
    cells: std::sync::Mutex<Vec<Arc<UsageCell>>>,
}

impl KeyringUsage {
    /// The cell of `version`, created on first use.
    pub(crate) fn cell(&self, version: KeyVersion) -> Arc<UsageCell> {
        let mut cells = self.lock();
        let index = version.get() as usize - 1;
        if cells.len() <= index {
            cells.resize_with(index + 1, Default::default);
        }
        Arc::clone(&cells[index])
    }

    /// The cell of `version`, if it has one.
    pub(crate) fn existing(&self, version: KeyVersion) -> Option<Arc<UsageCell>> {
        self.lock().get(version.get() as usize - 1).cloned()
    }

    /// Every version with pending encryptions, and how many.
    pub(crate) fn pending(&self) -> Vec<(KeyVersion, u64)> {
        self.lock()
            .iter()
            .enumerate()
            .filter_map(|(index, cell)| {
                let pending = cell.pending();
                let version = KeyVersion::new(u32::try_from(index + 1).ok()?).ok()?;
                (pending > 0).then_some((version, pending))
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<UsageCell>>> {
        // Only counters behind it; a panic while holding it leaves them usable.
        self.cells.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_moves_counts_without_a_dip() {
        let cell = UsageCell::default();
        cell.seed(10);
        assert_eq!(cell.reserve(5), 10);
        assert_eq!(cell.total(), 15);
        // Another process flushed 100 meanwhile; our 5 make 115 in the store.
        cell.flushed(5, 115);
        assert_eq!((cell.total(), cell.pending()), (115, 0));
        // A reload that saw an older count never lowers it.
        cell.seed(12);
        assert_eq!(cell.total(), 115);
    }

    #[test]
    fn give_back_after_a_flush_never_goes_below_zero() {
        let cell = UsageCell::default();
        cell.reserve(10);
        cell.flushed(10, 10);
        cell.give_back(4);
        assert_eq!((cell.pending(), cell.total()), (0, 10));
    }

    #[test]
    fn cells_are_created_per_version_and_listed_when_pending() {
        let usage = KeyringUsage::default();
        let v2 = KeyVersion::new(2).expect("2");
        assert!(usage.existing(v2).is_none());
        usage.cell(v2).reserve(3);
        assert_eq!(usage.pending(), vec![(v2, 3)]);
        assert!(Arc::ptr_eq(&usage.cell(v2), &usage.existing(v2).expect("created")));
    }
}
