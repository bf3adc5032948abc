#!/usr/bin/env python3
"""An independent implementation of keywheel's blind index tags (manual,
sections 2 and 13), with Python's standard library only: hmac, hashlib and
unicodedata. Reads a JSON list of cases on stdin and prints one JSON list of
hex tags (binary form, header included) on stdout.

A case: {"material": hex, "keyring": str, "version": int, "table": str,
"column": str, "normalize": str, "len": int, "plaintext": hex}.
"""
import hashlib
import hmac
import json
import sys
import unicodedata

SALT = b"keywheel/v1"
BLIND_INDEX = 0x11


def hkdf_sha256(ikm, info, length=32):
    prk = hmac.new(SALT, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def id_part(keyring):
    raw = keyring.encode()
    return len(raw).to_bytes(2, "big") + raw


def context(pairs):
    """Canonical context: pairs sorted by name, u16 count, u16 name len, name, u32 value len, value."""
    out = len(pairs).to_bytes(2, "big")
    for name, value in sorted(pairs, key=lambda p: p[0].encode()):
        out += len(name.encode()).to_bytes(2, "big") + name.encode()
        out += len(value).to_bytes(4, "big") + value
    return out


NAMES = {"none": "none", "trim-lowercase": "trim-lowercase/1", "nfkc-casefold": "nfkc-casefold/1", "digits": "digits/1"}


def normalize(kind, plaintext):
    if kind == "none":
        return plaintext
    text = plaintext.decode("utf-8")
    if kind == "trim-lowercase":
        return text.strip().lower().encode()
    if kind == "nfkc-casefold":
        once = unicodedata.normalize("NFKC", text.strip())
        return unicodedata.normalize("NFKC", once.casefold()).encode()
    if kind == "digits":
        return "".join(c for c in unicodedata.normalize("NFKC", text) if c in "0123456789").encode()
    raise ValueError(kind)


def tag(case):
    material = bytes.fromhex(case["material"])
    keyring, version = case["keyring"], case["version"]
    info = b"index" + bytes([BLIND_INDEX]) + id_part(keyring) + version.to_bytes(4, "big")
    key = hkdf_sha256(material, info)
    header = b"kw\x01" + bytes([BLIND_INDEX]) + version.to_bytes(4, "big")
    ctx = context([
        ("column", case["column"].encode()),
        ("normalize", NAMES[case["normalize"]].encode()),
        ("table", case["table"].encode()),
    ])
    message = header + id_part(keyring) + ctx + normalize(case["normalize"], bytes.fromhex(case["plaintext"]))
    return header + hmac.new(key, message, hashlib.sha256).digest()[: case["len"]]


if __name__ == "__main__":
    print(json.dumps([tag(case).hex() for case in json.load(sys.stdin)]))
