//! Safe quoting of SQL identifiers.

use keywheel_core::{Error, Result};

/// The longest identifier Postgres keeps (`NAMEDATALEN - 1` bytes). Longer
/// names are silently truncated by the server, which could name another
/// object, so they are refused instead.
pub const MAX_IDENTIFIER_LEN: usize = 63;

/// Quote `name` as a Postgres identifier: always wrapped in double quotes,
/// embedded double quotes doubled, so any name (reserved words, mixed case,
/// spaces, quotes, semicolons) is one identifier and never SQL.
///
/// Refused with [`Error::InvalidArgument`]: the empty name, a name containing
/// a NUL character (Postgres cannot store it), and names longer than
/// [`MAX_IDENTIFIER_LEN`] bytes.
///
/// ```
/// use keywheel_pg_sql::quote_ident;
/// assert_eq!(quote_ident("users")?, r#""users""#);
/// assert_eq!(quote_ident(r#"we"ird; DROP TABLE x; --"#)?, r#""we""ird; DROP TABLE x; --""#);
/// assert!(quote_ident("").is_err());
/// # Ok::<(), keywheel_core::Error>(())
/// ```
pub fn quote_ident(name: &str) -> Result<String> {
    if name.is_empty() {
        return Err(Error::InvalidArgument("an SQL identifier must not be empty".into()));
    }
    if name.contains('\0') {
        return Err(Error::InvalidArgument(format!("SQL identifier {name:?} contains a NUL character")));
    }
    if name.len() > MAX_IDENTIFIER_LEN {
        return Err(Error::InvalidArgument(format!(
            "SQL identifier {name:?} is longer than {MAX_IDENTIFIER_LEN} bytes (Postgres would truncate it)"
        )));
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

/// A quoted, schema-qualified name: `"schema"."name"`.
pub(crate) fn qualified(schema: &str, name: &str) -> Result<String> {
    Ok(format!("{}.{}", quote_ident(schema)?, quote_ident(name)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a").expect("ok"), "\"a\"");
        assert_eq!(quote_ident("\"").expect("ok"), "\"\"\"\"");
        assert_eq!(quote_ident("Mixed Case").expect("ok"), "\"Mixed Case\"");
        assert!(quote_ident("a\0b").is_err());
        assert!(quote_ident(&"x".repeat(64)).is_err());
        assert!(quote_ident(&"x".repeat(63)).is_ok());
        // 21 three-byte characters are 63 bytes; 22 are 66.
        assert!(quote_ident(&"€".repeat(21)).is_ok());
        assert!(quote_ident(&"€".repeat(22)).is_err());
        assert_eq!(qualified("s", "t\"").expect("ok"), "\"s\".\"t\"\"\"");
    }
}
