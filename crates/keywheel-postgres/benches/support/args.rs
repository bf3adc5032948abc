//! The options both Postgres benchmarks take: `--rows N` (default
//! 1,000,000, or `KEYWHEEL_BENCH_ROWS`), `--batch ROWS` (default 2000),
//! `--parallel N` (default 3), `--min-ratio R`.
#![allow(unreachable_pub)]

/// The parsed options.
pub struct Args {
    pub rows: i64,
    pub batch: usize,
    pub parallel: usize,
    pub min_ratio: Option<f64>,
}

/// The options of this process (`cargo bench` also passes `--bench`, ignored).
pub fn args() -> Args {
    let mut a = Args {
        rows: std::env::var("KEYWHEEL_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000),
        batch: 2000,
        parallel: 3,
        min_ratio: None,
    };
    let argv: Vec<String> = std::env::args().collect();
    let value = |i: usize| argv.get(i + 1).cloned().unwrap_or_default();
    for (i, arg) in argv.iter().enumerate() {
        match arg.as_str() {
            "--rows" => a.rows = value(i).parse().expect("--rows N"),
            "--batch" => a.batch = value(i).parse().expect("--batch ROWS"),
            "--parallel" => a.parallel = value(i).parse().expect("--parallel N"),
            "--min-ratio" => a.min_ratio = Some(value(i).parse().expect("--min-ratio R")),
            _ => {} // `cargo bench` passes `--bench`
        }
    }
    a
}
