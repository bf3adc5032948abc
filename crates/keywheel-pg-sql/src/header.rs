//! SQL expressions that read the key version of a stored value from its header
//! bytes, without any key ([wire format](keywheel_core::manual#2-wire-format-v1)), for filtering and census in SQL.
//!
//! Each expression is `NULL` for a value that the core parser
//! ([`keywheel_core::parse`]) rejects, and the version (as `bigint`) otherwise.
//! It checks what the parser checks: magic, format version, known algorithm,
//! non-zero version, the minimum (or exact, for signatures) length of the
//! algorithm; for the text form also the `kw:v{N}:` syntax, the base64
//! alphabet, length and unused bits of the payload, and that the text version
//! equals the binary one.

use keywheel_core::{Algorithm, FORMAT_V1, HEADER_LEN, MAGIC};

/// The base64 alphabet, in index order.
pub(crate) const BASE64_ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `(algorithm byte, length condition on `len`)` for every algorithm, from
/// [`Algorithm::binary_len_range`]: at least the minimum (AEAD values), exactly
/// it (signatures), or within the range (blind index tags).
fn length_checks(alg_byte: &str, len: &str) -> String {
    Algorithm::ALL
        .iter()
        .map(|a| {
            let condition = match a.binary_len_range() {
                (min, None) => format!("{len} >= {min}"),
                (min, Some(max)) if min == max => format!("{len} = {min}"),
                (min, Some(max)) => format!("{len} BETWEEN {min} AND {max}"),
            };
            format!("({alg_byte} = {} AND {condition})", a.id())
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// The smallest binary form of any algorithm.
fn min_binary_len() -> usize {
    Algorithm::ALL.iter().map(|a| a.binary_len_range().0).min().unwrap_or(HEADER_LEN)
}

/// The fewest base64 characters after `kw:v{N}:` of any text form.
fn min_text_payload_chars() -> usize {
    (min_binary_len() * 4).div_ceil(3)
}

/// Where the colon after the version of text expression `t` is, counted from
/// its `v` (3 to 12 in a text form; 0 if not within those 12 characters).
pub(crate) fn text_version_colon(t: &str) -> String {
    format!("strpos(substr({t}, 4, 12), ':')")
}

/// The number of bytes after the `kw:v{N}:` prefix of text expression `t`
/// (characters, for a value with the syntax of a text form, which is ASCII).
pub(crate) fn text_payload_len(t: &str) -> String {
    format!("(octet_length({t}) - 3 - {colon})", colon = text_version_colon(t))
}

/// Whether text expression `t` has the syntax of a text form: `kw:v`, 1 to 10
/// digits without a leading zero, `:`, and at least the shortest payload of
/// base64 characters. (An unbounded regex plus arithmetic: a bounded
/// repetition like `{22,}` makes Postgres' regex engine four times slower.)
pub(crate) fn text_syntax(t: &str) -> String {
    format!(
        "({t} ~ '^kw:v[1-9][0-9]*:[A-Za-z0-9+/]*$' AND {colon} >= 3 AND {len} >= {min})",
        colon = text_version_colon(t),
        len = text_payload_len(t),
        min = min_text_payload_chars(),
    )
}

fn prefix_bytea() -> String {
    format!("'\\x{:02x}{:02x}{:02x}'::bytea", MAGIC[0], MAGIC[1], FORMAT_V1)
}

/// u32 big-endian at byte offset `at` of bytea expression `b`, as bigint.
fn u32_at(b: &str, at: usize) -> String {
    format!(
        "((get_byte({b}, {})::bigint << 24) + (get_byte({b}, {}) << 16) + (get_byte({b}, {}) << 8) + get_byte({b}, {}))",
        at,
        at + 1,
        at + 2,
        at + 3
    )
}

/// Version of a binary-form value held in bytea expression `c`.
pub(crate) fn binary_version(c: &str) -> String {
    format!(
        "CASE WHEN octet_length({c}) >= {HEADER_LEN} AND substring({c} FROM 1 FOR 3) = {prefix} THEN \
         CASE WHEN {lengths} THEN NULLIF({version}, 0) END END",
        prefix = prefix_bytea(),
        lengths = length_checks(&format!("get_byte({c}, 3)"), &format!("octet_length({c})")),
        version = u32_at(c, 4),
    )
}

/// Version of a text-form value held in text expression `t`.
pub(crate) fn text_version(t: &str) -> String {
    text_checked(t, |_head, text_v| format!("NULLIF({text_v}, 0)"))
}

/// The 8-byte binary header (bytea) of a text-form value held in text
/// expression `t`, `NULL` where [`text_version`] is: its algorithm byte tells
/// blind index tags from encrypted values.
pub(crate) fn text_header(t: &str) -> String {
    text_checked(t, |head, _text_v| format!("substring({head} FROM 1 FOR 8)"))
}

/// `then(head, text version)` for a text-form value in text expression `t`
/// that the parser accepts, `NULL` otherwise (`head`: the first 9 bytes of
/// the binary form, header included).
fn text_checked(t: &str, then: impl FnOnce(&str, &str) -> String) -> String {
    // The payload (base64 of the whole binary form) and its length.
    let payload = format!("split_part({t}, ':', 3)");
    let len = format!("length({payload})");
    let text_v = format!("substr(split_part({t}, ':', 2), 2)::bigint");
    // The first 12 base64 characters decode to the first 9 bytes, header included.
    let head = format!("decode(left({payload}, 12), 'base64')");
    let last_index = format!("(strpos('{BASE64_ALPHABET}', right({payload}, 1)) - 1)");
    let binary_len = format!("(({len} * 3) / 4)");
    format!(
        "CASE WHEN {syntax} \
         AND {len} % 4 <> 1 \
         AND (CASE {len} % 4 WHEN 2 THEN {last_index} % 16 = 0 WHEN 3 THEN {last_index} % 4 = 0 ELSE true END) THEN \
         CASE WHEN substring({head} FROM 1 FOR 3) = {prefix} AND {hv} = {text_v} AND ({lengths}) \
         THEN {then} END END",
        syntax = text_syntax(t),
        prefix = prefix_bytea(),
        hv = u32_at(&head, 4),
        lengths = length_checks(&format!("get_byte({head}, 3)"), &binary_len),
        then = then(&head, &text_v),
    )
}

/// Version of a value of either form held in bytea expression `c`.
pub(crate) fn any_version(c: &str) -> String {
    format!(
        "CASE WHEN substring({c} FROM 1 FOR 3) = '\\x6b773a'::bytea THEN {text} ELSE {binary} END",
        text = text_version(&format!("encode({c}, 'escape')")),
        binary = binary_version(c),
    )
}

/// Version of a value held in text expression `t`: normally the text form;
/// a binary form that happens to be valid UTF-8 is read as the parser reads it.
pub(crate) fn text_column_version(t: &str) -> String {
    format!(
        "CASE WHEN left({t}, 3) = 'kw:' THEN {text} ELSE {binary} END",
        text = text_version(t),
        binary = binary_version(&format!("convert_to({t}, 'UTF8')")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_are_built_from_the_algorithm_table() {
        let b = binary_version("t.c");
        for a in Algorithm::ALL {
            assert!(b.contains(&format!("get_byte(t.c, 3) = {}", a.id())), "{b}");
        }
        assert!(b.contains("'\\x6b7701'::bytea"), "{b}");
        assert!(b.contains(&format!("get_byte(t.c, 3) = {} AND octet_length(t.c) BETWEEN 16 AND 40", 0x11)), "{b}");
        assert!(b.contains("get_byte(t.c, 3) = 16 AND octet_length(t.c) = 40"), "signatures have one length: {b}");
        assert!(
            text_version("x").contains(">= 22)"),
            "the shortest binary form is a 16-byte tag, 22 base64 characters"
        );
        assert!(
            text_header("x")
                .ends_with("THEN substring(decode(left(split_part(x, ':', 3), 12), 'base64') FROM 1 FOR 8) END END")
        );
        assert!(any_version("t.c").starts_with("CASE WHEN substring(t.c FROM 1 FOR 3) = '\\x6b773a'::bytea"));
    }
}
