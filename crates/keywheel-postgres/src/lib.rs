//! Postgres backend for keywheel (in progress: see issue "Postgres backend").
#![forbid(unsafe_code)]
