//! File backend for keywheel (in progress: see issue "File backend").
#![forbid(unsafe_code)]
