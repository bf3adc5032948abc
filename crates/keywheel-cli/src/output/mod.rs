//! Tables and JSON on stdout, progress on stderr (a bar on a terminal, plain
//! lines otherwise). Everything on stdout goes through [`write_stdout`]
//! ([`outln!`] and [`out!`]): a reader that went away (`keywheel status |
//! head -1`) ends the output quietly, never the command with a panic.

mod json;

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub(crate) use json::{
    AuditEntryJson, PolicyJson, RollbackJson, RotationJson, StatusJson, TickJson, Time, audit_kind_json, time,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keywheel_core::{Progress, ProgressFn};
use serde::Serialize;

use crate::error::CliError;

/// A plain text table: a header row, then rows, columns padded to their widest cell.
#[derive(Debug, Default)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub(crate) fn new(header: &[&str]) -> Self {
        Table { header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    /// Add a row (as many cells as titles).
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether no row was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let line = |f: &mut std::fmt::Formatter<'_>, cells: &[String]| -> std::fmt::Result {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count());
                out.push_str(cell);
                out.extend(std::iter::repeat_n(' ', pad));
            }
            writeln!(f, "{}", out.trim_end())
        };
        line(f, &self.header)?;
        for row in &self.rows {
            line(f, row)?;
        }
        Ok(())
    }
}

/// Set once stdout cannot be written any more; later output is dropped.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Write to stdout. When the reader has gone away (a closed pipe) or stdout
/// fails otherwise, the output ends there and the command carries on to its
/// own exit code: what it did is not undone because nobody read about it.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("keywheel: warning: cannot write to stdout ({e}); the rest of the output is dropped");
        }
    }
}

/// `println!` on stdout through [`write_stdout`].
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` on stdout through [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

pub(crate) use {out, outln};

/// Print `value` as pretty JSON on stdout.
pub(crate) fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::error(format!("cannot encode JSON: {e}")))?;
    outln!("{text}");
    Ok(())
}

/// A thousands-separated count: `1,234,567`.
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration for people: `1.2 s`, `3m 20s`, `2d 4h`.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1} s", d.as_secs_f64()),
        60..3600 => two_units(s / 60, "m", s % 60, "s"),
        3600..86_400 => two_units(s / 3600, "h", s % 3600 / 60, "m"),
        _ => two_units(s / 86_400, "d", s % 86_400 / 3600, "h"),
    }
}

fn two_units(major: u64, major_unit: &str, minor: u64, minor_unit: &str) -> String {
    if minor == 0 { format!("{major}{major_unit}") } else { format!("{major}{major_unit} {minor}{minor_unit}") }
}

/// Progress of long work on stderr: an indicatif bar with rate and ETA when
/// stderr is a terminal, otherwise a plain line at most every two seconds.
#[derive(Clone)]
pub(crate) struct Reporter {
    label: String,
    bar: Option<ProgressBar>,
    last_line: Arc<Mutex<Instant>>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").field("label", &self.label).finish_non_exhaustive()
    }
}

/// Between two plain progress lines.
const LINE_INTERVAL: Duration = Duration::from_secs(2);

impl Reporter {
    /// A reporter for work called `label` (e.g. `rotate acme/token`).
    pub(crate) fn new(label: impl Into<String>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let style =
                ProgressStyle::with_template("{prefix} [{bar:32}] {human_pos}/{human_len} values  {msg}  ETA {eta}")
                    .map(|s| s.progress_chars("=> "))
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        let label = label.into();
        if let Some(b) = &bar {
            b.set_prefix(label.clone());
        }
        // The first plain line waits one interval too: the rate of the first
        // batch alone says little.
        Reporter { label, bar, last_line: Arc::new(Mutex::new(Instant::now())) }
    }

    /// The callback the rotation engine calls after every batch.
    pub(crate) fn callback(&self) -> ProgressFn {
        let me = self.clone();
        Arc::new(move |p: &Progress| me.update(p))
    }

    fn update(&self, p: &Progress) {
        if let Some(bar) = &self.bar {
            if let Some(total) = p.total {
                bar.set_length(total.max(p.processed));
            }
            bar.set_position(p.processed);
            bar.set_message(format!("{}/s", count(p.rate_per_sec as u64)));
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(PoisonError::into_inner);
        if last.elapsed() < LINE_INTERVAL {
            return;
        }
        *last = Instant::now();
        let total = p.total.map_or(String::new(), |t| format!("/{}", count(t)));
        let eta = p.eta.map_or(String::new(), |e| format!(", ETA {}", human_duration(e)));
        eprintln!(
            "{}: {}{total} values, {} values/s{eta}",
            self.label,
            count(p.processed),
            count(p.rate_per_sec as u64)
        );
    }

    /// Remove the bar (before the report is printed).
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_tables() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["xyz".into(), "1".into()]);
        assert_eq!(t.to_string(), "A    LONGER\nxyz  1\n");
        assert_eq!(human_duration(Duration::from_secs(3 * 86_400 + 7200)), "3d 2h");
        assert_eq!(human_duration(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5 s");
    }
}
