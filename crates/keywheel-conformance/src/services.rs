//! The services the KEK providers' tests run against: a local AWS-compatible
//! KMS server (`moto` in server mode) and a SoftHSM2 token. A test asks for
//! one; when it cannot be had, the test is skipped *loudly* (a message on
//! stderr), or fails when `CI=true` or `KEYWHEEL_REQUIRE_KMS` /
//! `KEYWHEEL_REQUIRE_PKCS11` is set (`scripts/test.sh` installs and starts
//! both).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Whether a missing service must fail the test rather than skip it.
fn required(var: &str) -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var_os(var).is_some_and(|v| !v.is_empty())
}

/// Skip loudly, or panic when the service is required.
fn unavailable<T>(var: &str, what: &str, why: &str) -> Option<T> {
    assert!(!required(var), "{what} is required here (CI=true or {var} set) but unavailable: {why}");
    eprintln!("SKIPPED: {what} unavailable ({why}); set {var}=1 to make this a failure");
    None
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port on 127.0.0.1")
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// The environment variable naming a running KMS server for the tests.
pub const KMS_ENDPOINT_ENV: &str = "KEYWHEEL_TEST_KMS_ENDPOINT";
/// The variable that makes a missing KMS server a test failure.
pub const REQUIRE_KMS_ENV: &str = "KEYWHEEL_REQUIRE_KMS";
/// The variable that makes a missing PKCS#11 token a test failure.
pub const REQUIRE_PKCS11_ENV: &str = "KEYWHEEL_REQUIRE_PKCS11";

/// A `moto` KMS server this process started on 127.0.0.1 (killed on drop).
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    port: u16,
}

/// The command that runs moto's server: `moto_server`, or `python3 -m moto.server`.
fn moto_command() -> Option<Command> {
    let on_path = |name: &str| {
        std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
    };
    if on_path("moto_server") {
        return Some(Command::new("moto_server"));
    }
    let python = Command::new("python3")
        .args(["-c", "import moto.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    python.then(|| {
        let mut c = Command::new("python3");
        c.args(["-m", "moto.server"]);
        c
    })
}

impl MotoServer {
    /// Start a new moto server on a free port of 127.0.0.1, or skip (see
    /// the [module](self)). Its own process: a test may stop it.
    pub fn start() -> Option<MotoServer> {
        let Some(mut command) = moto_command() else {
            return unavailable(
                REQUIRE_KMS_ENV,
                "the moto KMS server",
                "neither moto_server nor python3 -m moto.server",
            );
        };
        let port = free_port();
        let child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => return unavailable(REQUIRE_KMS_ENV, "the moto KMS server", &format!("cannot start it: {e}")),
        };
        // A server held for the life of the process (a `static`) is never
        // dropped: a watchdog kills it once this process has exited.
        let (parent, moto) = (std::process::id(), child.id());
        let _watchdog = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "while kill -0 {parent} 2>/dev/null && kill -0 {moto} 2>/dev/null; do sleep 1; done; \
                     if ! kill -0 {parent} 2>/dev/null; then kill -CONT {moto}; kill -9 {moto}; fi 2>/dev/null"
                ),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut server = MotoServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers(port) {
            if Instant::now() > deadline || server.child.try_wait().ok().flatten().is_some() {
                return unavailable(REQUIRE_KMS_ENV, "the moto KMS server", "it did not answer within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    /// The server's endpoint URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal} of the moto server failed");
    }

    /// Stop the server (`SIGSTOP`): it keeps its state (moto holds its keys
    /// in memory only) but answers nothing, as an unreachable KMS.
    pub fn stop(&self) {
        self.signal("-STOP");
    }

    /// Restart a [stopped](Self::stop) server (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kill the server for good: connections are refused from now on.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // A stopped process must be continued to die promptly.
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
        self.kill();
    }
}

/// A KMS endpoint for the tests: `KEYWHEEL_TEST_KMS_ENDPOINT` when set (a
/// server `scripts/test.sh` started), else a server of this process's own
/// (kept for the life of the process), else `None` (skipped loudly).
pub fn kms_endpoint() -> Option<String> {
    if let Ok(endpoint) = std::env::var(KMS_ENDPOINT_ENV)
        && !endpoint.is_empty()
    {
        return Some(endpoint);
    }
    static SHARED: OnceLock<Option<MotoServer>> = OnceLock::new();
    SHARED.get_or_init(MotoServer::start).as_ref().map(MotoServer::endpoint)
}

/// A SoftHSM2 token for the tests: its module, label and user PIN.
#[derive(Debug, Clone)]
pub struct SoftHsmToken {
    /// Path of `libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label.
    pub label: String,
    /// The user PIN (a test PIN, not a secret).
    pub pin: String,
}

/// The test token's user PIN when this process initialises its own.
const TEST_PIN: &str = "87654321";

fn softhsm_module() -> Option<PathBuf> {
    if let Ok(module) = std::env::var("KEYWHEEL_TEST_PKCS11_MODULE")
        && !module.is_empty()
    {
        return Some(PathBuf::from(module));
    }
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// Remove tokens left by earlier test processes that have exited.
fn remove_stale_tokens() {
    let Ok(out) = Command::new("softhsm2-util").arg("--show-slots").output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(label) = line.trim().strip_prefix("Label:").map(str::trim) else { continue };
        let Some(pid) = label.strip_prefix("keywheel-test-").and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("softhsm2-util")
                .args(["--delete-token", "--token", label])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A SoftHSM2 token for the tests: the one `scripts/test.sh` initialised
/// (`KEYWHEEL_TEST_PKCS11_MODULE`, `KEYWHEEL_TEST_PKCS11_TOKEN`,
/// `KEYWHEEL_TEST_PKCS11_PIN`, with `SOFTHSM2_CONF` pointing at its
/// directory), else one this process initialises with `softhsm2-util`
/// under SoftHSM2's configuration (labelled `keywheel-test-<pid>`), else
/// `None` (skipped loudly). Tests give their keys labels of their own.
pub fn softhsm_token() -> Option<SoftHsmToken> {
    static SHARED: OnceLock<Option<SoftHsmToken>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let Some(module) = softhsm_module() else {
                return unavailable(
                    REQUIRE_PKCS11_ENV,
                    "SoftHSM2",
                    "libsofthsm2.so not found (apt-get install softhsm2)",
                );
            };
            if let (Ok(label), Ok(pin)) =
                (std::env::var("KEYWHEEL_TEST_PKCS11_TOKEN"), std::env::var("KEYWHEEL_TEST_PKCS11_PIN"))
            {
                return Some(SoftHsmToken { module, label, pin });
            }
            remove_stale_tokens();
            let label = format!("keywheel-test-{}", std::process::id());
            let status = Command::new("softhsm2-util")
                .args(["--init-token", "--free", "--label", &label, "--pin", TEST_PIN, "--so-pin", "12345678"])
                .stdout(Stdio::null())
                .status();
            match status {
                Ok(s) if s.success() => Some(SoftHsmToken { module, label, pin: TEST_PIN.to_owned() }),
                Ok(s) => unavailable(REQUIRE_PKCS11_ENV, "SoftHSM2", &format!("softhsm2-util --init-token: {s}")),
                Err(e) => unavailable(REQUIRE_PKCS11_ENV, "SoftHSM2", &format!("cannot run softhsm2-util: {e}")),
            }
        })
        .clone()
}

/// A label no other test uses, in this process or another: `prefix-<pid>-<n>`.
pub fn unique_label(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
}
