//! Nonce source: OS randomness, fetched in blocks.
//!
//! Every nonce byte comes straight from the operating system's CSPRNG
//! (`getrandom`); there is no userspace expansion to argue about. To amortise
//! the system call (~0.37 µs here, twice the AES-GCM work on a 256 B field), each
//! thread keeps a block of OS random bytes and hands out fresh, never-reused
//! slices of it. Safety arguments, also in the manual:
//!
//! * **Uniqueness**: each byte of the block is handed out once, then the block
//!   is refilled from the OS. Two nonces never share bytes.
//! * **fork**: a child process inherits a copy of the parent's block; if both
//!   kept consuming it they would emit the same nonces. The block records the
//!   process id it was filled in and is discarded when `std::process::id()`
//!   differs, so after `fork` the child refills from the OS before its first
//!   nonce. The check is a plain `getpid` per nonce.
//! * **Threads**: blocks are thread-local, no sharing, no locks.
//! * **Left over**: a VM snapshot restored twice would replay the block, as it
//!   would replay any in-memory RNG state; the block holds at most
//!   [`BLOCK`] bytes, so at most `BLOCK / 12` nonces are exposed to that.

use std::cell::RefCell;

use crate::{Error, Result};

/// Size of the per-thread block of OS random bytes.
const BLOCK: usize = 1024;

struct Pool {
    bytes: [u8; BLOCK],
    used: usize,
    pid: u32,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; BLOCK], used: BLOCK, pid: 0 }) };
}

/// Fill `out` (at most [`BLOCK`] bytes, a nonce) with fresh OS random bytes.
pub(crate) fn fill_nonce(out: &mut [u8]) -> Result<()> {
    debug_assert!(out.len() <= BLOCK);
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let pid = std::process::id();
        if pool.pid != pid || pool.used + out.len() > BLOCK {
            getrandom::fill(&mut pool.bytes).map_err(|_| Error::Rng)?;
            pool.used = 0;
            pool.pid = pid;
        }
        let start = pool.used;
        out.copy_from_slice(&pool.bytes[start..start + out.len()]);
        // Overwrite what was handed out: a byte is never returned twice, and
        // later readers of this memory learn nothing about earlier nonces.
        pool.bytes[start..start + out.len()].fill(0);
        pool.used += out.len();
        Ok(())
    })
}

/// A fresh nonce of `N` bytes from the keywheel nonce source. Public so that
/// benchmarks can feed a raw cipher the very same nonce source.
pub fn random_nonce<const N: usize>() -> Result<[u8; N]> {
    let mut n = [0u8; N];
    fill_nonce(&mut n)?;
    Ok(n)
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
}
