//! TLS to Postgres on rustls (ring provider), with libpq's `sslmode`s.
//!
//! | sslmode       | encrypted                   | certificate chain checked  | host name checked |
//! |---------------|-----------------------------|----------------------------|-------------------|
//! | `disable`     | no                          | –                          | –                 |
//! | `prefer`      | if the server offers TLS    | only with a root cert      | no                |
//! | `require`     | yes                         | only with a root cert      | no                |
//! | `verify-ca`   | yes                         | yes (root cert needed)     | no                |
//! | `verify-full` | yes                         | yes (root cert needed)     | yes               |
//!
//! Connections over Unix-domain sockets are never encrypted (as in libpq).
//!
//! As in libpq, a root certificate given with `require` or `prefer` makes the
//! chain checked too. Unlike libpq, `prefer` falls back to plain text only
//! when the server does not offer TLS: a TLS handshake that fails (a
//! certificate refused by the given root certificate) is an error, not a
//! reason to send the password unencrypted. There is no default root
//! certificate file (libpq reads `~/.postgresql/root.crt`) and no system trust
//! store: the verifying modes need a root certificate, named by `sslrootcert`
//! in the connection string or by [`TlsSettings::root_cert`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as PgSslMode;

/// libpq's `sslmode`: whether the connection is encrypted and what of the
/// server's certificate is checked (see the [table](crate#tls)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it, plain text otherwise (libpq's default).
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked unless a root
    /// certificate is given (then its chain is, as with `VerifyCa`).
    Require,
    /// TLS, and the server's certificate must chain to the root certificate.
    VerifyCa,
    /// `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The name in a connection string (`verify-full`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether this mode checks the server's certificate whatever else is given.
    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ConnectError;

    /// ```
    /// use keywheel_postgres::SslMode;
    /// assert_eq!("verify-full".parse::<SslMode>().unwrap(), SslMode::VerifyFull);
    /// assert!("verify_full".parse::<SslMode>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, ConnectError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq's `allow` (plain first, TLS if refused) is not offered.
            other => return Err(ConnectError::UnknownSslMode { value: other.to_owned() }),
        })
    }
}

/// TLS settings that take precedence over the connection string's
/// `sslmode` and `sslrootcert` (what the CLI's `--ca-file` sets). The default
/// takes everything from the connection string.
///
/// ```
/// use keywheel_postgres::{SslMode, TlsSettings};
/// let tls = TlsSettings::new().mode(SslMode::VerifyFull).root_cert("/etc/ssl/db-ca.pem");
/// # let _ = tls;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    mode: Option<SslMode>,
    root_cert: Option<PathBuf>,
}

impl TlsSettings {
    /// Settings that add nothing to the connection string.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use `mode` whatever the connection string's `sslmode` says.
    #[must_use]
    pub fn mode(mut self, mode: SslMode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Trust the CA certificates of this PEM file (instead of the connection
    /// string's `sslrootcert`).
    #[must_use]
    pub fn root_cert(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.root_cert = Some(pem_file.into());
        self
    }
}

/// Why a Postgres connection (or the pool that makes them) could not be had.
/// Never holds the password of the connection string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection string cannot be read.
    #[error("invalid Postgres connection string: {reason}")]
    InvalidConnectionString {
        /// What is wrong with it (never its values).
        reason: String,
    },
    /// `sslmode` is none of libpq's modes this crate offers.
    #[error("unknown sslmode {value:?}: expected disable, prefer, require, verify-ca or verify-full")]
    UnknownSslMode {
        /// The value given.
        value: String,
    },
    /// A mode that checks the server's certificate was asked for without a
    /// root certificate to check it against.
    #[error(
        "sslmode={mode} checks the server's certificate and needs the CA that signed it: \
         set sslrootcert=PATH in the connection string or give a root certificate file"
    )]
    RootCertRequired {
        /// The mode asked for.
        mode: SslMode,
    },
    /// The root certificate file cannot be read.
    #[error("cannot read the root certificate file {}: {reason}", path.display())]
    RootCertUnreadable {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// The root certificate file holds no usable PEM certificate.
    #[error("the root certificate file {} holds no usable certificate: {reason}", path.display())]
    RootCertInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The mode needs TLS and the server does not offer it.
    #[error("the server does not offer TLS, and sslmode={mode} requires it")]
    ServerWithoutTls {
        /// The mode asked for.
        mode: SslMode,
    },
    /// The server's certificate does not chain to the root certificate, or is
    /// expired, malformed or otherwise refused.
    #[error("the server's TLS certificate was refused: {reason}")]
    CertificateRejected {
        /// rustls' reason (e.g. "invalid peer certificate: UnknownIssuer").
        reason: String,
    },
    /// `verify-full`: the certificate chains to the root certificate but does
    /// not name the host connected to.
    #[error("the server's TLS certificate is not valid for host {host} (it names {presented})")]
    HostNameMismatch {
        /// The host name (or address) connected to.
        host: String,
        /// The names the certificate gives, comma-separated.
        presented: String,
    },
    /// Any other connection failure: server unreachable, authentication
    /// refused, no `pg_hba.conf` entry (e.g. the server accepts only TLS).
    #[error("cannot connect to Postgres: {message}")]
    Connection {
        /// The client's or the server's message.
        message: String,
        /// Whether trying again may succeed (network, server starting).
        retryable: bool,
    },
}

impl ConnectError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectError::Connection { retryable: true, .. })
    }

    /// What a failed connection attempt of `config` (with `mode`, when known)
    /// says: a certificate or host name refusal when rustls says so,
    /// otherwise the message.
    pub(crate) fn from_connect(
        e: &tokio_postgres::Error,
        config: &tokio_postgres::Config,
        mode: Option<SslMode>,
    ) -> ConnectError {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = next {
            let rustls_error = err.downcast_ref::<rustls::Error>().or_else(|| {
                err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).and_then(|i| i.downcast_ref())
            });
            if let Some(rustls::Error::InvalidCertificate(cert)) = rustls_error {
                return match cert {
                    CertificateError::NotValidForNameContext { expected, presented } => {
                        ConnectError::HostNameMismatch {
                            host: server_name_text(expected),
                            presented: presented_names(presented),
                        }
                    }
                    CertificateError::NotValidForName => {
                        ConnectError::HostNameMismatch { host: first_host(config), presented: "other names".into() }
                    }
                    other => ConnectError::CertificateRejected { reason: format!("{other}") },
                };
            }
            if err.to_string() == "server does not support TLS" {
                return ConnectError::ServerWithoutTls { mode: mode.unwrap_or(SslMode::Require) };
            }
            next = err.source();
        }
        let message = match e.as_db_error() {
            // Only the primary message: DETAIL may echo values.
            Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
            None => format!("{e}"),
        };
        ConnectError::Connection { message, retryable: crate::error::is_retryable(e) }
    }
}

impl From<ConnectError> for keywheel_core::Error {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::InvalidConnectionString { .. } | ConnectError::UnknownSslMode { .. } => {
                keywheel_core::Error::InvalidArgument(e.to_string())
            }
            _ => keywheel_core::Error::backend(crate::error::POOL, e.to_string(), e.is_retryable()),
        }
    }
}

/// webpki's `DnsName("db")`, `IpAddress(10.0.0.1)` as `db, 10.0.0.1`.
fn presented_names(presented: &[String]) -> String {
    if presented.is_empty() {
        return "no host name".into();
    }
    let plain = |s: &String| {
        s.strip_prefix("DnsName(\"")
            .and_then(|r| r.strip_suffix("\")"))
            .or_else(|| s.strip_prefix("IpAddress(").and_then(|r| r.strip_suffix(')')))
            .unwrap_or(s)
            .to_owned()
    };
    presented.iter().map(plain).collect::<Vec<_>>().join(", ")
}

fn server_name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

fn first_host(config: &tokio_postgres::Config) -> String {
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    }
}

/// A connection string resolved: tokio-postgres' config and the rustls client config.
pub(crate) struct Resolved {
    pub(crate) mode: SslMode,
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: tokio_postgres_rustls::MakeRustlsConnect,
}

/// Read `url`'s TLS options, apply `settings` over them, load the root
/// certificate and build the rustls client for the mode.
pub(crate) fn resolve(url: &str, settings: &TlsSettings) -> Result<Resolved, ConnectError> {
    let info = crate::conninfo::ConnInfo::parse(url)?;
    let mode = match (settings.mode, info.sslmode.as_deref()) {
        (Some(mode), _) => mode,
        (None, Some(s)) => s.parse()?,
        (None, None) => SslMode::default(),
    };
    let root_cert = settings.root_cert.clone().or(info.sslrootcert.map(PathBuf::from));
    let mut config: tokio_postgres::Config = info
        .rest
        .parse()
        .map_err(|e: tokio_postgres::Error| ConnectError::InvalidConnectionString { reason: e.to_string() })?;
    // As in libpq, TLS is not used over Unix-domain sockets (the server would refuse it).
    let unix_only = config.get_hosts().iter().all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
    config.ssl_mode(match mode {
        _ if unix_only && !config.get_hosts().is_empty() => PgSslMode::Disable,
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    let roots = match root_cert {
        Some(path) => Some(load_roots(&path)?),
        None if mode.verifies() => return Err(ConnectError::RootCertRequired { mode }),
        None => None,
    };
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(mode, roots)?);
    Ok(Resolved { mode, config, tls })
}

/// The crypto provider: ring, passed explicitly (no process default needed).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_roots(path: &Path) -> Result<RootCertStore, ConnectError> {
    let pem = std::fs::read(path)
        .map_err(|e| ConnectError::RootCertUnreadable { path: path.to_owned(), reason: e.to_string() })?;
    let invalid = |reason: String| ConnectError::RootCertInvalid { path: path.to_owned(), reason };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| invalid(e.to_string()))?;
        roots.add(cert).map_err(|e| invalid(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid("no PEM `CERTIFICATE` block found".into()));
    }
    Ok(roots)
}

fn client_config(mode: SslMode, roots: Option<RootCertStore>) -> Result<ClientConfig, ConnectError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Connection { message: format!("TLS setup: {e}"), retryable: false })?;
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        Some(roots) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| ConnectError::Connection { message: format!("TLS setup: {e}"), retryable: false })?;
            if mode == SslMode::VerifyFull { webpki } else { Arc::new(ChainOnly(webpki)) }
        }
        None => Arc::new(Unverified(provider.signature_verification_algorithms)),
    };
    Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
}

/// `verify-ca`: the chain is checked, the host name is not (a certificate
/// valid for another name is accepted once its chain is).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first and the name last: a name error means the chain passed.
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require`/`prefer` without a root certificate: encrypted, the certificate
/// not checked (libpq's behaviour); the handshake's signatures still are.
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_names_are_shown_plain() {
        let names =
            ["DnsName(\"db.example\")".to_owned(), "IpAddress(10.0.0.1)".to_owned(), "Unsupported(0x80)".into()];
        assert_eq!(presented_names(&names), "db.example, 10.0.0.1, Unsupported(0x80)");
        assert_eq!(presented_names(&[]), "no host name");
    }

    #[test]
    fn modes_parse_as_libpq_spells_them() {
        for mode in [SslMode::Disable, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(mode.as_str().parse::<SslMode>(), Ok(mode));
        }
        assert_eq!("allow".parse::<SslMode>(), Err(ConnectError::UnknownSslMode { value: "allow".into() }));
    }

    fn err(url: &str, settings: &TlsSettings) -> ConnectError {
        match resolve(url, settings) {
            Ok(_) => panic!("{url} resolved"),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_settings_are_typed_errors_without_the_password() {
        let e = err("postgresql://app:hunter2@db/app?sslmode=verify_full", &TlsSettings::new());
        assert_eq!(e, ConnectError::UnknownSslMode { value: "verify_full".into() });
        let e = err("postgresql://app:hunter2@db/app?sslmode=verify-full", &TlsSettings::new());
        assert_eq!(e, ConnectError::RootCertRequired { mode: SslMode::VerifyFull });
        let e = err("host=db password=hunter2 sslmode=verify-ca", &TlsSettings::new());
        assert_eq!(e, ConnectError::RootCertRequired { mode: SslMode::VerifyCa });
        let missing = std::env::temp_dir().join("keywheel-no-such-ca.pem");
        let e = err("postgresql://app:hunter2@db/app?sslmode=require", &TlsSettings::new().root_cert(&missing));
        assert!(matches!(&e, ConnectError::RootCertUnreadable { path, .. } if *path == missing), "{e:?}");
        let e = err("postgresql://app:hunter2@db/app?bogus=1", &TlsSettings::new());
        assert!(matches!(e, ConnectError::InvalidConnectionString { .. }), "{e:?}");
        for e in [e, err("postgresql://app:hunter2@db/app?sslmode=x", &TlsSettings::new())] {
            assert!(!e.to_string().contains("hunter2"), "{e}");
            assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
        }
    }

    #[test]
    fn a_root_cert_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("keywheel-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").expect("write");
        let e = err("host=db", &TlsSettings::new().mode(SslMode::VerifyFull).root_cert(&path));
        let _ = std::fs::remove_file(&path);
        assert!(matches!(e, ConnectError::RootCertInvalid { .. }), "{e:?}");
    }

    #[test]
    fn settings_override_the_connection_string() {
        // The string asks for verify-full without a root cert; the settings say disable.
        let r = resolve("host=db sslmode=verify-full", &TlsSettings::new().mode(SslMode::Disable)).expect("resolve");
        assert_eq!(r.config.get_ssl_mode(), PgSslMode::Disable);
        let r = resolve("postgresql://db/app", &TlsSettings::new()).expect("resolve");
        assert_eq!(r.config.get_ssl_mode(), PgSslMode::Prefer);
        let r = resolve("host=db sslmode=verify-ca sslrootcert=x", &TlsSettings::new().mode(SslMode::Require));
        assert!(matches!(r, Err(ConnectError::RootCertUnreadable { .. })), "the root cert is still read");
    }

    #[test]
    fn unix_sockets_are_not_encrypted_as_in_libpq() {
        let r = resolve("host=/var/run/postgresql sslmode=require", &TlsSettings::new()).expect("resolve");
        assert_eq!(r.config.get_ssl_mode(), PgSslMode::Disable);
        let r = resolve("host=/var/run/postgresql,db sslmode=require", &TlsSettings::new()).expect("resolve");
        assert_eq!(r.config.get_ssl_mode(), PgSslMode::Require, "TCP hosts among them keep TLS");
    }
}
