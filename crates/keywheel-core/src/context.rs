//! Context: what a value is bound to (the AEAD associated data beyond the header).

use std::fmt;

use crate::{Error, Result};

/// What a value is bound to: a set of `(name, value)` pairs such as table,
/// column and row id. A ciphertext moved to another row, column, keyring or
/// tenant fails to decrypt because its context (or keyring id) differs.
///
/// The canonical encoding (the [wire format](crate::manual#2-wire-format-v1)) sorts pairs by name bytewise:
/// `u16-BE count`, then per pair `u16-BE len(name) ‖ name ‖ u32-BE len(value) ‖ value`.
/// The empty context encodes as `00 00`. A `Context` stores only that encoding,
/// computed once at construction, so the hot path just borrows it.
///
/// ```
/// use keywheel_core::Context;
/// let ctx = Context::field("users", "email", "42");
/// let same = Context::empty().with("table", "users")?.with("row", "42")?.with("column", "email")?;
/// assert_eq!(ctx, same);
/// assert_eq!(Context::empty().encoded()?, &[0, 0]);
/// # Ok::<(), keywheel_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Context {
    encoded: Vec<u8>,
    /// Set when a pair could not be encoded; reported by [`Context::encoded`].
    invalid: Option<&'static str>,
}

impl Context {
    /// The empty context (no pairs).
    pub fn empty() -> Self {
        Context { encoded: vec![0, 0], invalid: None }
    }

    /// The usual binding of a database field: pairs `column`, `row`, `table`.
    ///
    /// Infallible for convenience; a value longer than 4 GiB makes the context
    /// invalid, reported as [`Error::InvalidContext`] when it is used.
    pub fn field(table: &str, column: &str, row_id: &str) -> Self {
        // Names are already in bytewise order: column < row < table.
        Context::sorted(&[("column", column.as_bytes()), ("row", row_id.as_bytes()), ("table", table.as_bytes())])
    }

    /// A context from pairs already sorted by name, with unique names;
    /// infallible like [`field`](Self::field): a pair too long to encode makes
    /// the context invalid, reported when it is used.
    pub(crate) fn sorted(pairs: &[(&str, &[u8])]) -> Self {
        debug_assert!(pairs.windows(2).all(|w| w[0].0.as_bytes() < w[1].0.as_bytes()), "sorted, unique names");
        match encode_sorted(pairs) {
            Ok(encoded) => Context { encoded, invalid: None },
            Err(reason) => Context { encoded: Vec::new(), invalid: Some(reason) },
        }
    }

    /// A context from arbitrary pairs; names must be unique.
    pub fn from_pairs<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Result<Self>
    where
        N: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let pairs: Vec<(N, V)> = pairs.into_iter().collect();
        let mut refs: Vec<(&str, &[u8])> = pairs.iter().map(|(n, v)| (n.as_ref(), v.as_ref())).collect();
        refs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        if refs.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(Error::InvalidContext("context names must be unique"));
        }
        let encoded = encode_sorted(&refs).map_err(Error::InvalidContext)?;
        Ok(Context { encoded, invalid: None })
    }

    /// This context with one more pair; the name must not be present yet.
    pub fn with(self, name: &str, value: impl AsRef<[u8]>) -> Result<Self> {
        let mut pairs = self.pairs()?;
        pairs.push((name.to_owned(), value.as_ref().to_vec()));
        Context::from_pairs(pairs)
    }

    /// The canonical encoding, or [`Error::InvalidContext`] if a pair was not encodable.
    pub fn encoded(&self) -> Result<&[u8]> {
        match self.invalid {
            Some(reason) => Err(Error::InvalidContext(reason)),
            None => Ok(&self.encoded),
        }
    }

    /// The pairs, sorted by name.
    pub fn pairs(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut rest = self.encoded()?;
        let mut take = |n: usize| -> &[u8] {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head
        };
        // The encoding was produced by `encode_sorted`, so lengths are consistent.
        let count = u16::from_be_bytes([take(1)[0], take(1)[0]]);
        let mut out = Vec::with_capacity(count.into());
        for _ in 0..count {
            let n = take(2);
            let name = take(usize::from(u16::from_be_bytes([n[0], n[1]]))).to_vec();
            let v = take(4);
            let value = take(u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize).to_vec();
            // Names entered as &str, so they are UTF-8.
            out.push((String::from_utf8_lossy(&name).into_owned(), value));
        }
        Ok(out)
    }
}

impl Default for Context {
    fn default() -> Self {
        Context::empty()
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Context values are not secret (they are stored beside the value), but
        // keep Debug compact: names and values as lossy text.
        match self.pairs() {
            Ok(pairs) => f.debug_map().entries(pairs.iter().map(|(n, v)| (n, String::from_utf8_lossy(v)))).finish(),
            Err(_) => f.write_str("Context(<invalid>)"),
        }
    }
}

fn encode_sorted(pairs: &[(&str, &[u8])]) -> std::result::Result<Vec<u8>, &'static str> {
    let count = u16::try_from(pairs.len()).map_err(|_| "at most 65535 pairs")?;
    let len = 2 + pairs.iter().map(|(n, v)| 6 + n.len() + v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&count.to_be_bytes());
    for (name, value) in pairs {
        let n = u16::try_from(name.len()).map_err(|_| "a context name is at most 65535 bytes")?;
        let v = u32::try_from(value.len()).map_err(|_| "a context value is at most 4 GiB")?;
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&v.to_be_bytes());
        out.extend_from_slice(value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_encoding_is_byte_exact() {
        let ctx = Context::field("t", "c", "7");
        let expected: Vec<u8> = [
            &[0, 3][..],
            &[0, 6],
            b"column",
            &[0, 0, 0, 1],
            b"c",
            &[0, 3],
            b"row",
            &[0, 0, 0, 1],
            b"7",
            &[0, 5],
            b"table",
            &[0, 0, 0, 1],
            b"t",
        ]
        .concat();
        assert_eq!(ctx.encoded().expect("valid"), expected.as_slice());
        assert_eq!(ctx.pairs().expect("valid").len(), 3);
    }

    #[test]
    fn order_independent_and_unique_names() {
        let a = Context::from_pairs([("b", "2"), ("a", "1")]).expect("valid");
        let b = Context::from_pairs([("a", "1"), ("b", "2")]).expect("valid");
        assert_eq!(a, b);
        assert!(Context::from_pairs([("a", "1"), ("a", "2")]).is_err());
        assert!(a.with("a", "x").is_err());
    }
}
