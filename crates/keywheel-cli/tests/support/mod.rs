//! Running the real `keywheel` binary in a scratch directory.
#![allow(dead_code, unreachable_pub, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output as StdOutput};

use serde_json::Value;

/// The binary under test, built by cargo for this test target.
pub const BIN: &str = env!("CARGO_BIN_EXE_keywheel");

/// A scratch directory with a store location, a master key file and a config file.
#[derive(Debug)]
pub struct Cli {
    dir: tempfile::TempDir,
    store: String,
}

/// What one run printed and returned.
#[derive(Debug)]
pub struct Output {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Cli {
    /// A file store in the scratch directory, or the given Postgres URL.
    pub fn new(postgres: Option<String>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = postgres.unwrap_or_else(|| dir.path().join("keywheel").to_string_lossy().into_owned());
        Cli { dir, store }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> &str {
        &self.store
    }

    pub fn store_dir(&self) -> PathBuf {
        PathBuf::from(&self.store)
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("master.key")
    }

    /// Write `keywheel.toml` in the working directory of every run.
    pub fn write_config(&self, toml: &str) {
        std::fs::write(self.dir.path().join("keywheel.toml"), toml).expect("write keywheel.toml");
    }

    /// A command for the binary: run in the scratch directory, with no
    /// keywheel variables (nor `RUST_LOG`) inherited, the store given, and the master key file
    /// once it exists.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir.path());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KEYWHEEL_") || k == "RUST_LOG" {
                c.env_remove(k);
            }
        }
        c.env("USER", "operator").env("KEYWHEEL_STORE", &self.store);
        if self.key_file().exists() {
            c.env("KEYWHEEL_MASTER_KEY_FILE", self.key_file());
        }
        c.args(args);
        c
    }

    /// Run to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("run keywheel");
        Output::from(args, out)
    }

    /// Run with `--json`, expect `code`, parse stdout.
    pub fn json_code(&self, args: &[&str], code: i32) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all).assert_code(code);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{out:?}: stdout is not JSON: {e}"))
    }

    /// Run with `--json`, expect success, parse stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        self.json_code(args, 0)
    }
}

impl Output {
    /// The output of a command run by hand from [`Cli::command`].
    pub fn from_std(args: &[&str], out: StdOutput) -> Self {
        Self::from(args, out)
    }

    fn from(args: &[&str], out: StdOutput) -> Self {
        Output {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Expect exit code `code`; show everything otherwise.
    #[track_caller]
    pub fn assert_code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "keywheel {:?} exited {} (expected {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.args, self.code, self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn assert_stdout_contains(&self, text: &str) -> &Self {
        assert!(self.stdout.contains(text), "keywheel {:?}: stdout lacks {text:?}:\n{}", self.args, self.stdout);
        self
    }

    #[track_caller]
    pub fn assert_stderr_contains(&self, text: &str) -> &Self {
        assert!(self.stderr.contains(text), "keywheel {:?}: stderr lacks {text:?}:\n{}", self.args, self.stderr);
        self
    }
}

/// Write a key file as an operator would: readable by its owner only (keywheel
/// refuses key files the group or others can access).
pub fn write_secret(path: &Path, contents: impl AsRef<[u8]>) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("create key file");
    file.write_all(contents.as_ref()).expect("write key file");
}

/// Every file under `dir` with its bytes, to show that nothing was written.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).expect("read"));
            }
        }
    }
    files
}
