//! TLS against a real server: a throwaway cluster with `ssl=on` that accepts
//! only TLS connections, its certificate (for `localhost` only) signed by a
//! CA made at test time. Every sslmode is tried, with the right and the wrong
//! CA, the right and the wrong host name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::tls_cluster::{CERT_HOST, OTHER_HOST, TlsCluster};
use keywheel_core::KeyStore;
use keywheel_postgres::{ConnectError, PgKeyStore, PgPool, PgSchema, SslMode, TlsSettings, migrate};

/// Whether the pool's connection is encrypted, as the server sees it.
async fn encrypted(pool: &PgPool) -> bool {
    let client = pool.get().await.expect("a connection");
    client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.expect("pg_stat_ssl").get(0)
}

async fn refused(url: &str, tls: &TlsSettings) -> ConnectError {
    match PgPool::connect(url, tls).await {
        Ok(_) => panic!("{url} ({tls:?}) connected"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_against_a_tls_only_server() {
    let Some(cluster) = TlsCluster::start() else { return };
    let ca = cluster.ca.display().to_string();
    let with_ca = TlsSettings::new().root_cert(&cluster.ca);

    // require: encrypted, certificate not checked (no root cert given).
    let pool =
        PgPool::connect(&cluster.url(OTHER_HOST, "sslmode=require"), &TlsSettings::new()).await.expect("require");
    assert!(encrypted(&pool).await);
    // prefer (the default): TLS because the server offers it.
    let pool =
        PgPool::connect(&cluster.url(OTHER_HOST, "connect_timeout=10"), &TlsSettings::new()).await.expect("prefer");
    assert!(encrypted(&pool).await);

    // verify-full with the right CA and the host the certificate names: keywheel works over it.
    let url = cluster.url(CERT_HOST, &format!("sslmode=verify-full&sslrootcert={ca}"));
    let pool = PgPool::connect(&url, &TlsSettings::new()).await.expect("verify-full, right host");
    assert!(encrypted(&pool).await);
    let schema = PgSchema::default();
    migrate(&pool, &schema).await.expect("migrate over TLS");
    assert!(PgKeyStore::new(pool.clone(), schema).list_keyrings().await.expect("list").is_empty());
    // The same with the root cert given as a setting (what --ca-file does).
    let url = cluster.url(CERT_HOST, "sslmode=verify-full");
    assert!(encrypted(&PgPool::connect(&url, &with_ca).await.expect("verify-full, CA as setting")).await);

    // verify-full with a host the certificate does not name: refused, typed, no password shown.
    let url = format!("postgresql://postgres:hunter2@{OTHER_HOST}:{}/postgres?sslmode=verify-full", cluster.port);
    let e = refused(&url, &with_ca).await;
    assert_eq!(e, ConnectError::HostNameMismatch { host: OTHER_HOST.into(), presented: CERT_HOST.into() });
    assert!(!e.to_string().contains("hunter2") && !format!("{e:?}").contains("hunter2"), "{e}");
    // A DNS name the certificate does not give (connecting to the same server).
    let e = refused(&cluster.url("db.wrong.example", "sslmode=verify-full"), &with_ca).await;
    assert_eq!(e, ConnectError::HostNameMismatch { host: "db.wrong.example".into(), presented: CERT_HOST.into() });
    // The same refusal through a lazily connecting pool, as every backend sees it.
    let lazy = PgPool::from_url(&url, &with_ca).expect("from_url checks no server");
    let e = lazy.get().await.expect_err("wrong host");
    assert!(e.to_string().contains("not valid for host 127.0.0.1"), "{e}");
    assert!(!e.is_retryable(), "a refused certificate does not get better by retrying");

    // verify-ca checks the chain, not the name: the same host is accepted.
    let url = cluster.url(OTHER_HOST, "sslmode=verify-ca");
    assert!(encrypted(&PgPool::connect(&url, &with_ca).await.expect("verify-ca, other host")).await);

    // The wrong CA is refused by verify-ca, verify-full, and by require given a root cert (as libpq).
    let wrong_ca = TlsSettings::new().root_cert(&cluster.other_ca);
    for mode in ["verify-ca", "verify-full", "require"] {
        let e = refused(&cluster.url(CERT_HOST, &format!("sslmode={mode}")), &wrong_ca).await;
        assert!(
            matches!(&e, ConnectError::CertificateRejected { reason } if reason.contains("UnknownIssuer")),
            "{mode}: {e:?}"
        );
    }
    // Settings take precedence over the URL: its root cert is the right one, the setting's is not.
    let url = cluster.url(CERT_HOST, &format!("sslmode=verify-full&sslrootcert={ca}"));
    assert!(matches!(refused(&url, &wrong_ca).await, ConnectError::CertificateRejected { .. }));

    // disable: the server accepts no plain-text connection (hostssl only).
    let e = refused(&cluster.url(CERT_HOST, "sslmode=disable"), &TlsSettings::new()).await;
    assert!(matches!(&e, ConnectError::Connection { message, .. } if message.contains("no encryption")), "{e:?}");
    let e = refused(&cluster.url(CERT_HOST, "connect_timeout=10"), &TlsSettings::new().mode(SslMode::Disable)).await;
    assert!(matches!(&e, ConnectError::Connection { .. }), "{e:?}");

    // Bad settings fail before any connection is tried.
    let e = refused(&cluster.url(CERT_HOST, "sslmode=verify"), &TlsSettings::new()).await;
    assert_eq!(e, ConnectError::UnknownSslMode { value: "verify".into() });
    let e = refused(&cluster.url(CERT_HOST, "sslmode=verify-full"), &TlsSettings::new()).await;
    assert_eq!(e, ConnectError::RootCertRequired { mode: SslMode::VerifyFull });
}

/// A server that answers every SSLRequest with `N` (no TLS), as one built
/// without TLS support does: the modes that need TLS refuse to go on.
#[tokio::test]
async fn a_server_without_tls_is_refused_by_the_modes_that_need_it() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 8];
            if socket.read_exact(&mut request).await.is_ok() {
                // Length 8, then the SSLRequest code 80877103.
                assert_eq!(request, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], "an SSLRequest");
                let _ = socket.write_all(b"N").await;
            }
        }
    });
    let url = format!("postgresql://postgres:hunter2@127.0.0.1:{port}/postgres");
    let e = refused(&url, &TlsSettings::new().mode(SslMode::Require)).await;
    assert_eq!(e, ConnectError::ServerWithoutTls { mode: SslMode::Require });
    // verify-full loads its root certificate (any will do) before it learns the server has no TLS.
    let ca = std::env::temp_dir().join(format!("keywheel-unused-ca-{}.pem", std::process::id()));
    let any = rcgen::generate_simple_self_signed(vec![CERT_HOST.to_owned()]).expect("a certificate");
    std::fs::write(&ca, any.cert.pem()).expect("write");
    let e = refused(&format!("{url}?sslmode=verify-full"), &TlsSettings::new().root_cert(&ca)).await;
    let _ = std::fs::remove_file(&ca);
    assert_eq!(e, ConnectError::ServerWithoutTls { mode: SslMode::VerifyFull });
    assert!(e.to_string().contains("sslmode=verify-full requires it") && !e.to_string().contains("hunter2"), "{e}");
}
