//! sqlx pools on the test databases of keywheel-postgres' test harness
//! (`common`, included from there): the shared suites run on [`SqlxPool`]
//! (here and in keywheel-postgres' `pg_rotation` benchmark).
#![allow(dead_code, unreachable_pub)]

use keywheel_postgres::tokio_postgres::config::Host;
use keywheel_sqlx::SqlxPool;
use keywheel_sqlx::sqlx;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::common::{TestDb, TestPool};

/// Connection options of the test database (host or socket, port, user, password).
pub fn options(db: &TestDb) -> PgConnectOptions {
    let c = &db.config;
    let mut options = PgConnectOptions::new_without_pgpass().database(&db.name);
    match c.get_hosts().first() {
        Some(Host::Tcp(h)) => options = options.host(h),
        Some(Host::Unix(p)) => options = options.socket(p),
        None => {}
    }
    if let Some(port) = c.get_ports().first() {
        options = options.port(*port);
    }
    if let Some(user) = c.get_user() {
        options = options.username(user);
    }
    if let Some(pw) = c.get_password() {
        options = options.password(&String::from_utf8_lossy(pw));
    }
    options
}

/// An sqlx pool of at most `max_size` connections on `db`, opened lazily.
pub fn sqlx_pool(db: &TestDb, max_size: usize) -> sqlx::PgPool {
    let max = u32::try_from(max_size).unwrap_or(u32::MAX);
    PgPoolOptions::new().max_connections(max).connect_lazy_with(options(db))
}

impl TestPool for SqlxPool {
    fn on(db: &TestDb, max_size: usize) -> Self {
        SqlxPool::from(sqlx_pool(db, max_size))
    }
}
