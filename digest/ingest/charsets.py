"""Character encodings of fetched documents: declared, undeclared, or declared wrongly.

Feeds lie about encodings in every direction: UTF-8 served as ISO-8859-1, Windows code pages
with no declaration at all. `detect_charset` decides once, from the bytes, what to read them as,
so feedparser and the JSON/CSV readers all see the same text; the caller gets a note when the
declaration was missing or wrong.
"""

from __future__ import annotations

import codecs
import re

_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32le"),
    (codecs.BOM_UTF32_BE, "utf-32be"),
    (codecs.BOM_UTF16_LE, "utf-16le"),
    (codecs.BOM_UTF16_BE, "utf-16be"),
)
# What browsers (WHATWG Encoding) read these labels as: supersets with printable 0x80-0x9F.
_SUPERSETS = {"ascii": "cp1252", "latin_1": "cp1252", "iso8859-1": "cp1252", "iso8859-9": "cp1254"}
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
_HTTP_CHARSET = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9._:-]+)""", re.I)


def _codecs_for(label: str) -> list[str]:
    """Python codec names to try for a declared label: its superset first, then itself."""
    try:
        name = codecs.lookup(label.strip()).name
    except LookupError:
        return []
    return [_SUPERSETS[name], name] if name in _SUPERSETS else [name]


def encoding_label(codec: str) -> str:
    """'cp1254' → 'windows-1254', for messages people read."""
    return re.sub(r"^cp(125\d)$", r"windows-\1", codec)


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return False
    return True


def detect_charset(data: bytes, content_type: str | None) -> tuple[str, str | None]:
    """(encoding to read `data` with, a note when the declaration was missing or wrong).

    Order: a byte-order mark; valid UTF-8 (a UTF-8 body declared as ISO-8859-1 is a common
    server mistake, and valid multi-byte UTF-8 is practically never meant as anything else);
    the HTTP charset, then the XML declaration, if they decode; finally detection.
    """
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name, None
    if data.isascii() or _decodes(data, "utf-8"):
        return "utf-8", None
    declared: list[str] = []
    http = _HTTP_CHARSET.search(content_type or "")
    if http:
        declared.append(http.group(1))
    xml = _XML_ENCODING.match(data[:512])
    if xml:
        declared.append(xml.group(1).decode("ascii"))
    for label in declared:
        for name in _codecs_for(label):
            if _decodes(data, name):
                return name, None
    guess = _guess(data)
    said = f"declared as {declared[0]!r}, which does not fit" if declared else "not declared"
    return guess, f"character encoding {said}; read as {encoding_label(guess)}"


# Single-byte encodings of Latin-script news, tried in this order when the bytes do not say.
_LATIN_CANDIDATES = ("cp1252", "cp1254", "cp1250")
_LATIN_FAMILY = frozenset(
    codecs.lookup(name).name
    for name in (
        "cp1250", "cp1252", "cp1254", "cp1257", "latin_1", "iso8859_2", "iso8859_3",
        "iso8859_4", "iso8859_9", "iso8859_10", "iso8859_13", "iso8859_14", "iso8859_15",
        "iso8859_16", "mac_roman", "mac_latin2", "cp437", "cp850", "cp858", "hp_roman8",
    )
)  # fmt: skip
# Letters common in European and Turkish text, and punctuation typographers use. A wrong
# Latin code page turns such letters into rarer ones ('ı' → 'ý', 'ş' → 'þ', 'ğ' → 'ð').
_COMMON_NON_ASCII = frozenset(
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüÿœßÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜŸŒıİşŞğĞąćęłńśźżĄĆĘŁŃŚŹŻ"
    "čďěňřšťůžČĎĚŇŘŠŤŮŽőűŐŰăĂșțȘȚţŢ’‘“”„–—…«»€°·"
)


def _latin_score(text: str) -> int:
    score = 0
    for char in text:
        if char < "\x80":
            continue
        if char in _COMMON_NON_ASCII:
            score += 1
        elif not char.isalpha():
            score -= 3  # a control character or a stray symbol in the middle of words
    return score


def _guess(data: bytes) -> str:
    """The most plausible encoding of undeclared, non-UTF-8 bytes.

    charset_normalizer tells scripts apart well (Cyrillic, Greek, …) but, on short feeds,
    not the Latin code pages: there, the letters each candidate yields decide.
    """
    from charset_normalizer import from_bytes

    best = from_bytes(data[:200_000]).best()
    detected = codecs.lookup(best.encoding).name if best is not None else None
    if detected and detected not in _LATIN_FAMILY and _decodes(data, detected):
        return detected
    scored = [
        (_latin_score(data.decode(name)), -order, name)
        for order, name in enumerate(_LATIN_CANDIDATES)
        if _decodes(data, name)
    ]
    return max(scored)[2] if scored else "latin_1"


def decode_text(data: bytes, content_type: str | None) -> tuple[str, str | None]:
    """Text of a non-XML document (JSON, CSV) and a note if its encoding had to be guessed."""
    encoding, note = detect_charset(data, content_type)
    text = data.decode(encoding, errors="replace")
    return text.removeprefix("\ufeff"), note
