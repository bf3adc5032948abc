//! Manual (filled below).
