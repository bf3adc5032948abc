//! The URL an operator passes as `--store` for a test database of the
//! keywheel-postgres harness (`common`, included by the test crate).
#![allow(dead_code, unreachable_pub)]

use crate::common::TestDb;

/// A `postgresql://` URL for the test database (what an operator passes as `--store`).
pub fn postgres_url(db: &TestDb) -> String {
    postgres_url_as(db, None)
}

/// [`postgres_url`], connecting as `user` instead of the harness's user (no password).
pub fn postgres_url_as(db: &TestDb, user: Option<&str>) -> String {
    use keywheel_postgres::tokio_postgres::config::Host;
    let encode = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let host = match db.config.get_hosts().first() {
        Some(Host::Tcp(h)) => encode(h),
        Some(Host::Unix(p)) => encode(&p.to_string_lossy()),
        None => "localhost".into(),
    };
    let port = db.config.get_ports().first().copied().unwrap_or(5432);
    let auth = match (user, db.config.get_password()) {
        (Some(user), _) => encode(user),
        (None, Some(pw)) => {
            format!("{}:{}", encode(db.config.get_user().unwrap_or("postgres")), encode(&String::from_utf8_lossy(pw)))
        }
        (None, None) => encode(db.config.get_user().unwrap_or("postgres")),
    };
    format!("postgresql://{auth}@{host}:{port}/{}", encode(&db.name))
}
