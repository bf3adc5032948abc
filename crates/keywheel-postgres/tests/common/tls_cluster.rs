//! A throwaway cluster that accepts only TLS connections, with a certificate
//! made at test time: a self-signed CA signs a server certificate that names
//! `localhost` only (no IP address), so connecting to `127.0.0.1` is the
//! wrong-host case. A second, unrelated CA is the wrong-CA case.
//!
//! pg_hba.conf has `hostssl … trust` lines and no `host` line: a plain-text
//! connection is refused by the server. The cluster is stopped and removed
//! when the [`TlsCluster`] is dropped (a panicking test too) and, should the
//! test process be killed, by the watchdog of [`ClusterDir`].

use std::path::{Path, PathBuf};

use super::{ClusterDir, free_port, no_server};

/// The running TLS-only cluster.
#[derive(Debug)]
pub struct TlsCluster {
    cluster: ClusterDir,
    pub port: u16,
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// Another CA, which signed nothing the server uses (PEM).
    pub other_ca: PathBuf,
}

/// The host name the server's certificate names.
pub const CERT_HOST: &str = "localhost";
/// A name of the same server its certificate does not give.
pub const OTHER_HOST: &str = "127.0.0.1";

fn ca(name: &str) -> (rcgen::CertificateParams, rcgen::KeyPair) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    (params, rcgen::KeyPair::generate().expect("CA key"))
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("write {}: {e}", path.display()))
}

impl TlsCluster {
    /// Start one, or `None` after [`no_server`] (which fails the test when
    /// `KEYWHEEL_REQUIRE_POSTGRES` is set).
    pub fn start() -> Option<TlsCluster> {
        match Self::try_start() {
            Ok(cluster) => Some(cluster),
            Err(why) => {
                no_server(&format!("cannot start a TLS cluster: {why}"));
                None
            }
        }
    }

    fn try_start() -> Result<TlsCluster, String> {
        let cluster = ClusterDir::init()?;
        // From here on the guard removes the cluster whatever happens.
        let mut guard =
            TlsCluster { port: 0, ca: cluster.dir.join("ca.pem"), other_ca: cluster.dir.join("other-ca.pem"), cluster };
        let dir = guard.cluster.dir.clone();

        let (ca_params, ca_key) = ca("keywheel test CA");
        let ca_cert = ca_params.self_signed(&ca_key).map_err(|e| format!("CA: {e}"))?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let mut server = rcgen::CertificateParams::new(vec![CERT_HOST.to_owned()]).map_err(|e| e.to_string())?;
        server.distinguished_name.push(rcgen::DnType::CommonName, CERT_HOST);
        let server_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let server_cert = server.signed_by(&server_key, &issuer).map_err(|e| format!("server cert: {e}"))?;
        let (other_params, other_key) = ca("keywheel unrelated CA");
        let other_cert = other_params.self_signed(&other_key).map_err(|e| format!("other CA: {e}"))?;

        write(&guard.ca, &ca_cert.pem())?;
        write(&guard.other_ca, &other_cert.pem())?;
        let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
        write(&cert_file, &server_cert.pem())?;
        write(&key_file, &server_key.serialize_pem())?;
        // The server refuses a key file others can read, or one it does not own.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
        guard.cluster.give_to_server(&key_file)?;

        write(
            &guard.cluster.data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )?;
        guard.port = free_port().ok_or("no free port")?;
        let settings =
            format!("-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", cert_file.display(), key_file.display());
        guard.cluster.start(guard.port, &settings)?;
        guard.cluster.watchdog()?;
        Ok(guard)
    }

    /// `postgresql://postgres@HOST:PORT/postgres?hostaddr=127.0.0.1&QUERY`:
    /// the certificate is checked against HOST, the connection goes to
    /// 127.0.0.1 whatever HOST resolves to (`localhost` may resolve to `::1`
    /// too, and a failed attempt there would hide the refusal under test).
    pub fn url(&self, host: &str, query: &str) -> String {
        format!("postgresql://postgres@{host}:{}/postgres?hostaddr=127.0.0.1&{query}", self.port)
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        self.cluster.stop_and_remove();
    }
}
