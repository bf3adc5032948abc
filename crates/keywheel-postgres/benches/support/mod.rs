//! What the Postgres benchmarks share: their command line and runtime.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::str::FromStr;

/// The benchmark's command line: `--flag value` pairs (`cargo bench` adds a
/// `--bench` of its own, which is ignored).
pub struct Argv(Vec<String>);

impl Argv {
    pub fn new() -> Self {
        Argv(std::env::args().collect())
    }

    /// The value after `flag`, if given; exits with a message if it does not parse.
    pub fn get<T: FromStr>(&self, flag: &str, what: &str) -> Option<T> {
        let at = self.0.iter().position(|a| a == flag)?;
        let value = self.0.get(at + 1).and_then(|v| v.parse().ok());
        if value.is_none() {
            eprintln!("{flag} {what}: expected a value");
            std::process::exit(2);
        }
        value
    }

    /// `--rows N`, else `KEYWHEEL_BENCH_ROWS`, else 1,000,000.
    pub fn rows(&self) -> i64 {
        self.get("--rows", "N")
            .or_else(|| std::env::var("KEYWHEEL_BENCH_ROWS").ok().and_then(|v| v.parse().ok()))
            .unwrap_or(1_000_000)
    }
}

/// Run a benchmark on a runtime of two worker threads.
pub fn block_on(bench: impl Future<Output = ()>) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(bench);
}

/// The options of the rotation benchmarks (`pg_rotation`, `pg_legacy_migration`):
/// `--rows N` (default 1,000,000, or `KEYWHEEL_BENCH_ROWS`), `--batch ROWS`
/// (default 2000), `--parallel N` (default 3), `--min-ratio R`.
pub struct Args {
    pub rows: i64,
    pub batch: usize,
    pub parallel: usize,
    pub min_ratio: Option<f64>,
}

/// The rotation benchmarks' options of this process.
pub fn args() -> Args {
    let argv = Argv::new();
    Args {
        rows: argv.rows(),
        batch: argv.get("--batch", "ROWS").unwrap_or(2000),
        parallel: argv.get("--parallel", "N").unwrap_or(3),
        min_ratio: argv.get("--min-ratio", "R"),
    }
}
