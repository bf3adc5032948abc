//! Connection strings: taking out the TLS options tokio-postgres does not
//! know (`sslrootcert`, the `verify-*` sslmodes) and redacting passwords.
//!
//! Both of libpq's forms are read: the URL form
//! (`postgresql://user:pw@host:5432/db?sslmode=verify-full&sslrootcert=ca.pem`)
//! and the `key=value` form (`host=db user=app sslmode=require`).

use crate::tls::ConnectError;

/// The TLS options of a connection string, and the string without them.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    /// The connection string with `sslmode` and `sslrootcert` taken out.
    pub(crate) rest: String,
    /// The last `sslmode` given, as written.
    pub(crate) sslmode: Option<String>,
    /// The last `sslrootcert` given (decoded).
    pub(crate) sslrootcert: Option<String>,
}

/// Whether `s` is a URL-form connection string.
fn is_url(s: &str) -> bool {
    let lower = s.trim_start().to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

impl ConnInfo {
    /// Split the TLS options off `s`.
    pub(crate) fn parse(s: &str) -> Result<ConnInfo, ConnectError> {
        if is_url(s) { parse_url(s) } else { parse_key_values(s) }
    }
}

fn parse_url(s: &str) -> Result<ConnInfo, ConnectError> {
    let mut info = ConnInfo { rest: s.to_owned(), sslmode: None, sslrootcert: None };
    let Some((base, query)) = s.split_once('?') else { return Ok(info) };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => info.sslmode = Some(percent_decode(value)?),
            "sslrootcert" => info.sslrootcert = Some(percent_decode(value)?),
            _ => kept.push(pair),
        }
    }
    info.rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok(info)
}

fn percent_decode(s: &str) -> Result<String, ConnectError> {
    let invalid = || ConnectError::InvalidConnectionString { reason: "invalid percent-encoding in a parameter".into() };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(invalid)?;
            let hex = std::str::from_utf8(hex).map_err(|_| invalid())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| invalid())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid())
}

/// One `key=value` of the key-value form: where it lies in the string, its key and decoded value.
struct Pair {
    span: std::ops::Range<usize>,
    key: String,
    value: String,
}

/// The pairs of a key-value connection string, following libpq's rules:
/// whitespace around `=` allowed, values in single quotes with `\'` and `\\`.
fn key_value_pairs(s: &str) -> Result<Vec<Pair>, ConnectError> {
    let invalid = |reason: &str| ConnectError::InvalidConnectionString { reason: reason.into() };
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let offset = |i: usize| chars.get(i).map_or(s.len(), |&(o, _)| o);
    let mut pairs = Vec::new();
    let mut i = 0;
    loop {
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i).is_none() {
            return Ok(pairs);
        }
        let start = i;
        let mut key = String::new();
        while let Some(c) = at(i).filter(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
            i += 1;
        }
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i) != Some('=') {
            return Err(invalid("expected `key=value` pairs"));
        }
        i += 1;
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let mut value = String::new();
        if at(i) == Some('\'') {
            i += 1;
            loop {
                match at(i) {
                    None => return Err(invalid("unterminated quoted value")),
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        value.extend(at(i + 1));
                        i += 2;
                    }
                    Some(c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(c) = at(i).filter(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(at(i + 1));
                    i += 2;
                } else {
                    value.push(c);
                    i += 1;
                }
            }
        }
        pairs.push(Pair { span: offset(start)..offset(i), key, value });
    }
}

fn parse_key_values(s: &str) -> Result<ConnInfo, ConnectError> {
    let mut info = ConnInfo { rest: String::new(), sslmode: None, sslrootcert: None };
    let mut last = 0;
    for pair in key_value_pairs(s)? {
        let slot = match pair.key.as_str() {
            "sslmode" => &mut info.sslmode,
            "sslrootcert" => &mut info.sslrootcert,
            _ => continue,
        };
        *slot = Some(pair.value);
        info.rest.push_str(&s[last..pair.span.start]);
        last = pair.span.end;
    }
    info.rest.push_str(&s[last..]);
    Ok(info)
}

/// A connection string fit to show: its password (in the URL's user info, a
/// `password` parameter or a `password=` pair) replaced by `***`.
///
/// ```
/// use keywheel_postgres::redact_url;
/// assert_eq!(redact_url("postgresql://app:s3cret@db/app"), "postgresql://app:***@db/app");
/// assert_eq!(redact_url("host=db user=app password='s3 cret'"), "host=db user=app password=***");
/// ```
pub fn redact_url(url: &str) -> String {
    if is_url(url) {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let (head, query) = match rest.split_once('?') {
            Some((head, query)) => (head, Some(query)),
            None => (rest, None),
        };
        // The user info ends at the last `@` before the path.
        let authority_end = head.find('/').unwrap_or(head.len());
        let head = match head[..authority_end].rsplit_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}{}", &head[authority_end..]),
                None => head.to_owned(),
            },
            None => head.to_owned(),
        };
        let query = query.map(|q| {
            q.split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => pair.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("&")
        });
        match query {
            Some(q) => format!("{scheme}://{head}?{q}"),
            None => format!("{scheme}://{head}"),
        }
    } else {
        match key_value_pairs(url) {
            Ok(pairs) => {
                let mut out = String::new();
                let mut last = 0;
                for pair in pairs.iter().filter(|p| p.key == "password") {
                    out.push_str(&url[last..pair.span.start]);
                    out.push_str("password=***");
                    last = pair.span.end;
                }
                out.push_str(&url[last..]);
                out
            }
            // Not parseable: it may still hold a password somewhere.
            Err(_) if url.contains("password") => "<connection string with a password>".to_owned(),
            Err(_) => url.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_form_loses_its_tls_options_and_keeps_the_rest() {
        let info =
            ConnInfo::parse("postgresql://u@h:5/db?connect_timeout=3&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem")
                .expect("parse");
        assert_eq!(info.rest, "postgresql://u@h:5/db?connect_timeout=3");
        assert_eq!(info.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(info.sslrootcert.as_deref(), Some("/tmp/ca.pem"));
        let info = ConnInfo::parse("postgres://u@h/db?sslmode=require").expect("parse");
        assert_eq!(info.rest, "postgres://u@h/db");
        assert_eq!(info.sslmode.as_deref(), Some("require"));
        assert!(ConnInfo::parse("postgres://u@h/db?sslrootcert=%zz").is_err());
    }

    #[test]
    fn key_value_form_loses_its_tls_options_and_keeps_the_rest() {
        let info =
            ConnInfo::parse("host=h sslmode = verify-ca user=u sslrootcert='/a b/c\\'s.pem' dbname=d").expect("parse");
        assert_eq!(info.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(info.sslrootcert.as_deref(), Some("/a b/c's.pem"));
        assert_eq!(info.rest.split_whitespace().collect::<Vec<_>>(), ["host=h", "user=u", "dbname=d"]);
        assert!(ConnInfo::parse("host=h sslrootcert='unterminated").is_err());
        assert!(ConnInfo::parse("host").is_err());
    }

    #[test]
    fn passwords_are_redacted_in_every_form() {
        for (url, redacted) in [
            ("postgresql://app:pw@db:5432/app?sslmode=require", "postgresql://app:***@db:5432/app?sslmode=require"),
            ("postgres://app@db/app", "postgres://app@db/app"),
            ("postgres://app:p%40ss@db/app", "postgres://app:***@db/app"),
            ("postgres://db/app?user=app&password=pw", "postgres://db/app?user=app&password=***"),
            ("host=db password=pw user=app", "host=db password=*** user=app"),
            ("host=db password='p w' user=app", "host=db password=*** user=app"),
            ("host=db password='unterminated", "<connection string with a password>"),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
    }
}
