"""Email addresses as we store them: trimmed, domain lower-cased, syntax-checked without DNS.

Every address enters through `normalize_email`, so the same person typed two ways is one row
and a suppression matches whatever later tries to mail them. Validation is email-validator's;
because a large import spends most of its time validating domains, a plain ASCII local part is
checked by a strict dot-atom pattern and the domain's verdict is cached (email-validator still
decides every domain, and anything unusual takes its full path).
"""

from __future__ import annotations

import re
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

# RFC 5322 dot-atom with the ASCII `atext` characters: a strict subset of what email-validator
# accepts for the part before the @-sign, which it returns unchanged.
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_MAX_LOCAL = 64
_MAX_ADDRESS = 254


class InvalidAddress(ValueError):
    """An address that cannot be mailed; the message says what is wrong with it."""


def normalize_email(raw: str) -> str:
    """The canonical form of `raw`, or InvalidAddress saying why it is not an address."""
    text = raw.strip()
    local, at, domain = text.rpartition("@")
    if at and len(local) <= _MAX_LOCAL and _PLAIN_LOCAL.fullmatch(local):
        try:
            address = f"{local}@{_normalize_domain(domain)}"
        except InvalidAddress:
            pass  # let the full check below word the error
        else:
            if len(address) <= _MAX_ADDRESS:
                return address
    return _validate(text)


def _validate(text: str) -> str:
    if not text:
        raise InvalidAddress("empty address")
    try:
        return validate_email(text, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from exc


@lru_cache(maxsize=8192)
def _normalize_domain(domain: str) -> str:
    try:
        return validate_email(f"a@{domain}", check_deliverability=False).domain
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from exc


def mask_email(email: str) -> str:
    """'ayse.yilmaz@example.com' → 'ay…@example.com': enough to recognise, not to harvest."""
    local, at, domain = email.rpartition("@")
    if not at:
        return "…"
    return f"{local[:2]}…@{domain}"
