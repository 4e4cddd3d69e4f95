"""Statement fingerprints: the key that ties audit records of the same statement shape.

One function for every caller, so the same text always gets the same key: pglast's
fingerprint when the text parses, else :func:`text_fingerprint` of the exact text.
"""

from __future__ import annotations

import hashlib

from pglast import parser as pg_parser

#: Prefix of the fingerprint of a text that does not parse.
TEXT_PREFIX = "text:"


def text_fingerprint(sql: str) -> str:
    """``"text:"`` + a SHA-256 prefix of the exact text: the stable key of a statement the
    parser refuses.  Lone surrogates (which no client can send as UTF-8, but a Python caller
    can) are hashed as they are, never replaced, so two different texts never share a key."""
    return TEXT_PREFIX + hashlib.sha256(sql.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def fingerprint(sql: str) -> str:
    """pglast's query fingerprint (same shape, different literals → same value).

    Unparseable text gets :func:`text_fingerprint`, so every audited statement has a stable
    key.
    """
    try:
        return str(pg_parser.fingerprint(sql))
    except pg_parser.ParseError:
        return text_fingerprint(sql)


def normalize(sql: str) -> str | None:
    """The statement with literals replaced by ``$n`` (safe to log), or None if unparseable."""
    try:
        return str(pg_parser.normalize(sql))
    except pg_parser.ParseError:
        return None
