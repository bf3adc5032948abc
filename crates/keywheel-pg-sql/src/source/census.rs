//! The census: one `GROUP BY` over the header bytes in SQL.

use keywheel_core::{Algorithm, Census, Form, KeyVersion, KeyringId, Result};

use super::{Pk, SqlRecordSource};
use crate::driver::{Driver, Param};
use crate::header::text_header;

/// Binary values of this length or longer parse alike (see the census).
const CENSUS_LEN_CAP: i64 = 64;

/// Census grouping keys per stored column (`Stored::census`).
const CENSUS_KEYS: usize = 3;

/// The algorithm and version the core parser reads from a binary value with
/// this header (its first bytes) and length, or `None` if it rejects it.
fn binary_census_header(header: &[u8], len: i64) -> Option<(Algorithm, KeyVersion)> {
    let len = usize::try_from(len).ok()?.max(header.len());
    let mut value = header.to_vec();
    value.resize(len, 0);
    keywheel_core::parse(&value).ok().map(|info| (info.algorithm, info.version))
}

/// The algorithm and version of the 8-byte binary header of a text form the
/// SQL check accepted ([`text_header`]).
fn text_census_header(header: &[u8]) -> Option<(Algorithm, KeyVersion)> {
    let [_, _, _, algorithm, v0, v1, v2, v3] = *header else { return None };
    Some((Algorithm::from_id(algorithm).ok()?, KeyVersion::new(u32::from_be_bytes([v0, v1, v2, v3])).ok()?))
}

impl<D: Driver> SqlRecordSource<D> {
    /// [`RecordSource::census`](keywheel_core::RecordSource::census): one pass over the table.
    pub(super) async fn census_sql(&self, keyring: Option<&KeyringId>) -> Result<Census> {
        let mut census = Census::default();
        let Some(tenant) = self.tenant_filter(keyring) else {
            return Ok(census);
        };
        let b = &self.built;
        let mut params: Vec<Param<'_>> = Vec::new();
        let mut filter = String::new();
        if let (Some(t), Some(col)) = (tenant, &b.tenant) {
            params.push(t.into());
            filter = format!(" AND t.{col} = $1");
        }
        let tenant_select = b.tenant.as_ref().map_or_else(|| "NULL::text".to_owned(), |t| format!("t.{t}::text"));
        // One pass over the table, grouped by every column's header key at once
        // (few groups: versions × algorithms × short lengths). Per-column
        // aggregates glued with UNION ALL would read the table once per column;
        // a LATERAL VALUES over the columns makes the planner memoize on every
        // column reference, ten times slower.
        // A NULL value has a NULL header (every value's header is not NULL, if
        // empty), and the constant tenant of a fixed keyring is no grouping key.
        // Index columns come after the value columns; as in a scan, the tag of
        // a NULL value is not counted (no rotation would ever rewrite it).
        let stored: Vec<_> = b.stored().collect();
        let keys: Vec<&str> = stored.iter().map(|c| c.census.as_str()).collect();
        let any_present: Vec<String> = b.columns.iter().map(|c| format!("t.{} IS NOT NULL", c.stored.quoted)).collect();
        let first_key = if b.tenant.is_some() { 1 } else { 2 };
        let group: Vec<String> = (first_key..=1 + CENSUS_KEYS * stored.len()).map(|i| i.to_string()).collect();
        let sql = format!(
            "SELECT {tenant_select}, {keys}, count(*)::bigint FROM {table} AS t WHERE ({any}){filter} GROUP BY {group}",
            keys = keys.join(", "),
            table = b.table,
            any = any_present.join(" OR "),
            group = group.join(", "),
        );
        // Serial: the planner cannot estimate the few groups, and its parallel
        // plan sorts every row (twice as slow as one hash aggregate).
        let rows = self.query("census", &sql, &params).await?;
        let count_at = 1 + CENSUS_KEYS * stored.len();
        // Per stored column, the value column whose tags it holds (if an index column).
        let value_of: Vec<Option<usize>> = (0..b.columns.len())
            .map(|_| None)
            .chain(b.columns.iter().enumerate().filter(|(_, c)| c.index.is_some()).map(|(i, _)| Some(i)))
            .collect();
        for row in rows {
            let tenant = row.opt_text(0)?.map(str::to_owned);
            let count = u64::try_from(row.int(count_at)?).unwrap_or(0);
            let header_at = |i: usize| row.opt_bytes(1 + CENSUS_KEYS * i);
            for (i, value) in value_of.iter().enumerate() {
                let Some(header) = header_at(i)? else {
                    continue; // NULL
                };
                if let Some(value) = value
                    && header_at(*value)?.is_none()
                {
                    continue; // the tag of a NULL value
                }
                let at = 1 + CENSUS_KEYS * i;
                let len = row.int(at + 1)?;
                let parsed = match (stored[i].form, header.starts_with(b"kw:")) {
                    (Form::Text, true) => {
                        let value = text_census_value(header, len, row.bool(at + 2)?);
                        keywheel_core::parse(&value).ok().map(|info| (info.algorithm, info.version))
                    }
                    (Form::Binary, true) => row.opt_bytes(at + 2)?.and_then(text_census_header),
                    (_, false) => binary_census_header(header, len),
                };
                // Tags are told from values by their algorithm, as `Census::count_stored` does.
                match parsed {
                    Some((algorithm, v)) => {
                        let keyring = self.keyring_of(tenant.clone(), &Pk::Text("(census)".into()))?;
                        if algorithm == Algorithm::BlindIndex {
                            census.add_index_tags(&keyring, v, count);
                        } else {
                            census.add(&keyring, v, count);
                        }
                    }
                    None => census.unparseable += count,
                }
            }
        }
        Ok(census)
    }
}

/// The census grouping keys ([`CENSUS_KEYS`]) of a column held in SQL expression `expr`.
pub(super) fn census_keys(expr: &str, form: Form) -> String {
    // Whether a binary form parses depends only on its first 8 bytes and its
    // length (any length from 64 on behaves alike), so the census groups
    // values by those and lets the core parser decide per group. Text forms in
    // a bytea column (recognised by their first bytes, `kw:`, as a range of
    // bytea values, which needs no substring) are rare and checked per row.
    match form {
        Form::Binary => format!(
            "substring({expr} FROM 1 FOR 8), least(octet_length({expr}), {CENSUS_LEN_CAP}), \
             CASE WHEN {expr} >= '\\x6b773a'::bytea AND {expr} < '\\x6b773b'::bytea THEN {text} END",
            text = text_header(&format!("encode({expr}, 'escape')")),
        ),
        Form::Text => text_census_keys(&format!("{expr}::text")),
    }
}

/// Text forms longer than this many characters parse alike, given the
/// remainder of their length modulo 4 (see [`text_census_keys`]).
const TEXT_CENSUS_LEN_CAP: usize = 96;

/// The census keys of a text column (text expression `t`). A `kw:` value
/// whose syntax the cheap per-row test accepts (prefix, base64 alphabet,
/// shortest length) is grouped by what the rest of the parser's verdict
/// depends on: its prefix with the first 11 payload characters (which hold the
/// 8-byte binary header and 2 bits of what follows), its length (capped,
/// keeping the remainder modulo 4) and whether the unused bits of its last character are clear. The core parser
/// then decides once per group, on a stand-in value with those traits
/// ([`text_census_value`]): the full check per row in SQL took 2.3 times as
/// long on 100k values (and a regex `substring` costs more than the whole
/// census: the prefix is cut at its colon).
/// Other values are grouped like binary forms (first 8 bytes, capped length).
fn text_census_keys(t: &str) -> String {
    let syntax = crate::header::text_syntax(t);
    let payload_len = crate::header::text_payload_len(t);
    let last = format!("(strpos('{alphabet}', right({t}, 1)) - 1)", alphabet = crate::header::BASE64_ALPHABET);
    format!(
        "CASE WHEN starts_with({t}, 'kw:') THEN convert_to(CASE WHEN {syntax} \
         THEN left({t}, 14 + {colon}) ELSE 'kw:' END, 'UTF8') \
         ELSE substring(convert_to(left({t}, 8), 'UTF8') FROM 1 FOR 8) END, \
         CASE WHEN starts_with({t}, 'kw:') THEN \
         CASE WHEN octet_length({t}) < {cap} THEN octet_length({t}) ELSE {cap} + octet_length({t}) % 4 END \
         ELSE least(octet_length(convert_to(left({t}, {CENSUS_LEN_CAP}), 'UTF8')), {CENSUS_LEN_CAP}) END, \
         CASE WHEN starts_with({t}, 'kw:') THEN \
         CASE {payload_len} % 4 WHEN 2 THEN {last} % 16 = 0 WHEN 3 THEN {last} % 4 = 0 ELSE true END END",
        cap = TEXT_CENSUS_LEN_CAP,
        colon = crate::header::text_version_colon(t),
    )
}

/// A text value that the core parser treats like every value of a census
/// group of a text column (see [`text_census_keys`]): `head` (prefix and 11
/// payload characters, or just `kw:` when the syntax check failed), then
/// filler up to `len` characters, ending in a character with clear (or, if
/// `!clear_bits`, set) unused bits.
fn text_census_value(head: &[u8], len: i64, clear_bits: bool) -> Vec<u8> {
    let len = usize::try_from(len).unwrap_or(0);
    let mut value = head.to_vec();
    if head.len() > 3 && len > head.len() {
        value.resize(len - 1, b'A');
        value.push(if clear_bits { b'A' } else { b'B' });
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_census_groups_parse_like_values() {
        let version = |h: &[u8], len| binary_census_header(h, len).map(|(_, v)| v);
        let header = [b'k', b'w', 1, 1, 0, 0, 0, 7];
        assert_eq!(version(&header, 36), KeyVersion::new(7).ok());
        assert_eq!(version(&header, 64), KeyVersion::new(7).ok());
        assert_eq!(version(&header, 35), None, "truncated");
        assert_eq!(version(&header[..5], 5), None, "shorter than a header");
        let hmac = [b'k', b'w', 1, 0x10, 0, 0, 0, 2];
        assert_eq!(binary_census_header(&hmac, 40), Some((Algorithm::HmacSha256, KeyVersion::new(2).expect("2"))));
        assert_eq!(version(&hmac, CENSUS_LEN_CAP), None, "signatures have an exact length");
        assert_eq!(version(&[b'k', b'w', 1, 1, 0, 0, 0, 0], 40), None, "version 0");
        let tag = [b'k', b'w', 1, 0x11, 0, 0, 0, 3];
        for len in [16, 24, 40] {
            assert_eq!(binary_census_header(&tag, len), Some((Algorithm::BlindIndex, KeyVersion::new(3).expect("3"))));
        }
        assert_eq!(version(&tag, 15), None, "a tag of 7 bytes");
        assert_eq!(version(&tag, 41), None, "a tag of 33 bytes");
        assert_eq!(version(&tag, CENSUS_LEN_CAP), None, "longer than any tag");
    }

    #[test]
    fn text_census_headers_name_algorithm_and_version() {
        let tag = [b'k', b'w', 1, 0x11, 0, 0, 1, 0];
        assert_eq!(text_census_header(&tag), Some((Algorithm::BlindIndex, KeyVersion::new(256).expect("256"))));
        assert_eq!(text_census_header(&tag[..7]), None);
    }
}
