//! Nonce source: OS randomness, fetched in blocks, released after a fork check.
//!
//! Every nonce byte comes straight from the operating system's CSPRNG
//! (`getrandom`); there is no userspace expansion to argue about. To amortise
//! the system call (~0.37 µs here, twice the AES-GCM work on a 256 B field), each
//! thread keeps a block of OS random bytes and hands out fresh, never-reused
//! slices of it. Safety arguments, also in the [manual](crate::manual#4-nonces):
//!
//! * **Uniqueness**: each byte of the block is handed out once (and zeroed),
//!   then the block is refilled from the OS. Two nonces never share bytes.
//! * **Threads**: blocks are thread-local, no sharing, no locks.
//! * **fork**: a child process inherits a copy of the calling thread's block;
//!   if parent and child both consumed it they would emit the same nonces.
//!   Every nonce is therefore drawn inside a *protected operation*
//!   ([`protected`]) that computes everything it will return (the ciphertexts)
//!   and only then checks the process: each refill records the process id
//!   *before* fetching the OS bytes, and the operation's result is released
//!   only if `std::process::id()`, read after the last nonce was used, equals
//!   the id recorded for every block the operation drew from. If a `fork`
//!   happened anywhere between a block's refill and that final check — before
//!   the operation, inside it (from a signal handler, an allocator, any code at
//!   all), or between two of its nonces — the child sees a different id, drops
//!   the whole result without it ever leaving the operation, discards its
//!   copy of the block and runs the operation again on fresh OS bytes. The
//!   parent's result is released as usual, so a nonce from a shared block
//!   reaches the outside in at most one of the two processes. (Reading the id
//!   before the refill matters: a `fork` between the `getrandom` and a later
//!   `getpid` would tag the same bytes with both processes' ids.)
//! * **Cost**: one `getpid` per protected operation (plus one per refill), not
//!   per nonce, so a batch ([`Keyring::reencrypt_many`](crate::Keyring::reencrypt_many))
//!   pays one for all its values. A single [`Keyring::encrypt`](crate::Keyring::encrypt)
//!   is one operation and still pays one: a later call may follow a `fork`, and
//!   without `unsafe` (`pthread_atfork`, `MADV_WIPEONFORK`) the process id is
//!   the only fork signal safe Rust can read. Checking after the encryption
//!   costs the same as checking before it, and also covers a `fork` in the
//!   middle of the call.
//! * **Block size**: a refill is one `getrandom` and one `getpid` per 85
//!   nonces. Most of its cost is the kernel's ChaCha20, which is per byte, so
//!   a larger block would save little (a 4 KiB block removes ~9,000 of the
//!   ~12,000 `getrandom` + `getpid` pairs of a 1M-value rotation: ~5 ms of
//!   ~1.5 s of CPU) and expose four times as many nonces to the VM-snapshot
//!   replay below.
//! * **Left over**: a VM snapshot restored twice would replay the block, as it
//!   would replay any in-memory RNG state; the block holds at most
//!   [`BLOCK`] bytes, so at most `BLOCK / 12` nonces are exposed to that.
//! * [`random_nonce`] returns its bytes to the caller, so its protection ends
//!   there: the caller must use the nonce before it could fork (no `fork` from
//!   a signal handler that returns into the interrupted code).

use std::cell::RefCell;

use crate::{Error, Result};

/// Size of the per-thread block of OS random bytes.
pub(crate) const BLOCK: usize = 1024;

/// Attempts of a protected operation before giving up: every retry means a
/// `fork` happened during the previous attempt.
const ATTEMPTS: usize = 4;

struct Pool {
    bytes: [u8; BLOCK],
    used: usize,
    /// The process id read just before `bytes` were fetched from the OS (0:
    /// never filled, or discarded).
    pid: u32,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; BLOCK], used: BLOCK, pid: 0 }) };
}

/// The nonce draws of one protected operation (see [`protected`]).
#[derive(Debug)]
pub(crate) struct Nonces {
    /// Process id recorded for the first block this operation drew from.
    filled_in: Option<u32>,
    /// Whether it drew from blocks recorded for different processes.
    mixed: bool,
}

impl Nonces {
    /// Fill `out` (at most [`BLOCK`] bytes, a nonce) with fresh OS random bytes.
    pub(crate) fn fill(&mut self, out: &mut [u8]) -> Result<()> {
        debug_assert!(out.len() <= BLOCK);
        let pid = POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.used + out.len() > BLOCK {
                // The id first, then the bytes (see "fork" in the module docs).
                let pid = std::process::id();
                getrandom::fill(&mut pool.bytes).map_err(|_| Error::Rng)?;
                pool.pid = pid;
                pool.used = 0;
            }
            let start = pool.used;
            out.copy_from_slice(&pool.bytes[start..start + out.len()]);
            // Overwrite what was handed out: a byte is never returned twice, and
            // later readers of this memory learn nothing about earlier nonces.
            pool.bytes[start..start + out.len()].fill(0);
            pool.used += out.len();
            Ok::<u32, Error>(pool.pid)
        })?;
        match self.filled_in {
            None => self.filled_in = Some(pid),
            Some(first) if first != pid => self.mixed = true,
            Some(_) => {}
        }
        Ok(())
    }
}

/// Forget this thread's block (after a detected `fork`): the next draw refills
/// it from the OS in the current process.
fn discard_block() {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        pool.bytes.fill(0);
        pool.used = BLOCK;
        pool.pid = 0;
    });
}

/// Run `op`, which draws every nonce it uses from the given [`Nonces`], and
/// release its result only if no `fork` separated any of those nonces' blocks
/// from the end of `op` (module docs). Otherwise the result is dropped and
/// `op` runs again on fresh OS bytes, so `op` must have no effect besides its
/// result. Fails with [`Error::Rng`] only if `fork` keeps interrupting it.
///
/// `op` must not call `protected` itself: an inner operation's result would
/// leave its own check and then sit in the outer result, which the outer check
/// does not cover (debug builds assert this).
pub(crate) fn protected<T>(mut op: impl FnMut(&mut Nonces) -> T) -> Result<T> {
    #[cfg(debug_assertions)]
    let _outermost = nesting::Outermost::enter();
    for _ in 0..ATTEMPTS {
        let mut nonces = Nonces { filled_in: None, mixed: false };
        let result = op(&mut nonces);
        match nonces.filled_in {
            // No nonce drawn: nothing to protect.
            None => return Ok(result),
            Some(pid) if !nonces.mixed && pid == std::process::id() => return Ok(result),
            // A forked child holding (part of) its parent's block: the result
            // never leaves this function.
            Some(_) => {
                drop(result);
                discard_block();
            }
        }
    }
    Err(Error::Rng)
}

#[cfg(debug_assertions)]
mod nesting {
    use std::cell::Cell;

    thread_local! {
        static INSIDE: Cell<bool> = const { Cell::new(false) };
    }

    /// Marks this thread as inside a protected operation while alive.
    pub(super) struct Outermost;

    impl Outermost {
        pub(super) fn enter() -> Self {
            assert!(!INSIDE.replace(true), "a protected nonce operation must not nest another");
            Outermost
        }
    }

    impl Drop for Outermost {
        fn drop(&mut self) {
            INSIDE.set(false);
        }
    }
}

/// A fresh nonce of `N` bytes from the keywheel nonce source (at most 1 KiB).
/// Public so that benchmarks can feed a raw cipher the very same nonce source.
///
/// The bytes are checked against `fork` before they are returned; use them
/// right away (see the [manual](crate::manual#4-nonces)).
pub fn random_nonce<const N: usize>() -> Result<[u8; N]> {
    protected(|nonces| {
        let mut n = [0u8; N];
        nonces.fill(&mut n).map(|()| n)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn nonces_are_distinct_across_block_refills() {
        let mut seen = HashSet::new();
        for _ in 0..(3 * BLOCK / 12 + 7) {
            assert!(seen.insert(random_nonce::<12>().expect("rng")));
        }
        for _ in 0..200 {
            assert!(seen.insert({
                let n = random_nonce::<24>().expect("rng");
                let mut k = [0u8; 12];
                k.copy_from_slice(&n[..12]);
                k
            }));
        }
    }

    /// Make this thread's block look as if it had been filled in another
    /// process (what a forked child sees), keeping its bytes.
    fn pretend_inherited() -> [u8; 12] {
        random_nonce::<12>().expect("fill the block");
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            pool.pid = std::process::id().wrapping_add(1);
            let mut next = [0u8; 12];
            next.copy_from_slice(&pool.bytes[pool.used..pool.used + 12]);
            next
        })
    }

    #[test]
    fn an_inherited_block_never_reaches_the_caller() {
        let inherited = pretend_inherited();
        let mut attempts = 0;
        let nonce = protected(|nonces| {
            attempts += 1;
            let mut n = [0u8; 12];
            nonces.fill(&mut n).map(|()| n)
        })
        .expect("retry succeeds")
        .expect("rng");
        assert_eq!(attempts, 2, "the first attempt drew from the inherited block and was dropped");
        assert_ne!(nonce, inherited);
        // The block was replaced by one recorded for this process.
        POOL.with(|pool| assert_eq!(pool.borrow().pid, std::process::id()));
    }

    #[test]
    fn a_batch_spanning_an_inherited_block_is_redone_whole() {
        let inherited = pretend_inherited();
        let mut attempts = 0;
        let batch = protected(|nonces| {
            attempts += 1;
            // Enough nonces to cross into a refill recorded for this process.
            (0..2 * BLOCK / 12)
                .map(|_| {
                    let mut n = [0u8; 12];
                    nonces.fill(&mut n).map(|()| n)
                })
                .collect::<Result<Vec<_>>>()
        })
        .expect("retry succeeds")
        .expect("rng");
        assert_eq!(attempts, 2);
        assert!(!batch.contains(&inherited));
        assert_eq!(batch.iter().collect::<HashSet<_>>().len(), batch.len());
    }

    #[test]
    fn an_operation_drawing_nothing_is_released_without_a_check() {
        pretend_inherited();
        let mut attempts = 0;
        protected(|_| attempts += 1).expect("no nonce, no retry");
        assert_eq!(attempts, 1);
        discard_block();
    }
}
