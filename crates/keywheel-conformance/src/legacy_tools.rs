//! Values made by the real tools of legacy formats, for tests and benchmarks
//! of the [migration of legacy data](keywheel_core::manual#14-migrating-legacy-data):
//! Fernet tokens from Python's `cryptography` and Lockbox values from Ruby's
//! `lockbox` gem, each made by one process for a whole list of plaintexts.
//!
//! When a tool is missing, the functions print a loud SKIP and return
//! `None`, or panic if `CI=true` or `KEYWHEEL_REQUIRE_LEGACY_TOOLS` is set
//! ([`tools_required`]); `scripts/test.sh` installs the tools
//! (`pip install cryptography`, `apt-get install ruby ruby-lockbox`).
//!
//! ```no_run
//! let plaintexts = vec![b"alice@example.com".to_vec(), Vec::new()];
//! if let Some(made) = keywheel_conformance::legacy_tools::fernet_tokens("doc", &plaintexts) {
//!     assert_eq!(made.values.len(), 2);
//!     assert!(made.values[0].starts_with("gAAAAA"));
//! }
//! ```

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Values a tool made, one per plaintext, in order, and the key it made them with.
#[derive(Clone, PartialEq, Eq)]
pub struct Made {
    /// The key, as the tool prints it (Fernet: url-safe base64; Lockbox: 64 hex digits).
    pub key: String,
    /// One value per plaintext, as the tool stores it in a text column.
    pub values: Vec<String>,
}

impl std::fmt::Debug for Made {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Made").field("values", &self.values.len()).finish_non_exhaustive()
    }
}

/// Whether a missing tool must fail the test rather than skip it (`CI=true`
/// or `KEYWHEEL_REQUIRE_LEGACY_TOOLS` set).
pub fn tools_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var_os("KEYWHEEL_REQUIRE_LEGACY_TOOLS").is_some()
}

fn missing(test: &str, what: &str, detail: &str) -> Option<Made> {
    let message = format!(
        "{test}: {what} is not available ({detail}); scripts/test.sh installs it (pip install cryptography; apt-get install ruby ruby-lockbox)"
    );
    if tools_required() {
        panic!("{message} — required because CI=true or KEYWHEEL_REQUIRE_LEGACY_TOOLS is set");
    }
    eprintln!("\n!!!!!!!! SKIP !!!!!!!! {message}\n");
    None
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Run `program args…` with one hex plaintext per line on stdin; it prints
/// the key on the first line, then one value per line.
fn make(test: &str, what: &str, program: &str, args: &[&str], plaintexts: &[Vec<u8>]) -> Option<Made> {
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return missing(test, what, &e.to_string()),
    };
    let input: String = plaintexts.iter().map(|p| hex(p) + "\n").collect();
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for the tool");
    let _ = writer.join();
    if !out.status.success() {
        return missing(test, what, String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8(out.stdout).expect("the tool prints ASCII");
    let mut lines = text.lines();
    let key = lines.next().expect("the tool prints its key first").to_owned();
    let values: Vec<String> = lines.map(str::to_owned).collect();
    assert_eq!(values.len(), plaintexts.len(), "{what} made one value per plaintext");
    Some(Made { key, values })
}

const FERNET_PY: &str = r#"
import sys
from cryptography.fernet import Fernet
key = Fernet.generate_key()
f = Fernet(key)
out = [key.decode()]
for line in sys.stdin:
    out.append(f.encrypt(bytes.fromhex(line.strip())).decode())
sys.stdout.write("\n".join(out) + "\n")
"#;

/// Fernet tokens of `plaintexts` under a fresh key, made by Python's
/// `cryptography` (`Fernet(key).encrypt(p)`, what Django's Fernet fields store).
pub fn fernet_tokens(test: &str, plaintexts: &[Vec<u8>]) -> Option<Made> {
    make(test, "Python 3 with the `cryptography` package", "python3", &["-c", FERNET_PY], plaintexts)
}

const LOCKBOX_RB: &str = r#"
require "stringio"; require "openssl"; require "base64"; require "securerandom"; require "json"; require "lockbox"
key = Lockbox.generate_key
box = Lockbox.new(key: key, encode: true)
out = [key]
STDIN.each_line { |line| out << box.encrypt([line.strip].pack("H*")) }
STDOUT.write(out.join("\n") + "\n")
"#;

/// Lockbox values of `plaintexts` under a fresh key, made by Ruby's `lockbox`
/// gem (`Lockbox.new(key: key, encode: true).encrypt(p)`: strict base64).
pub fn lockbox_values(test: &str, plaintexts: &[Vec<u8>]) -> Option<Made> {
    make(test, "Ruby with the `lockbox` gem", "ruby", &["-e", LOCKBOX_RB], plaintexts)
}
