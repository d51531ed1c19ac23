"""Email addresses as we store them: trimmed, lower-cased, syntax-checked without DNS.

One mailbox is one subscriber: every address enters through `normalize_email`, which returns it
lower-cased (the part before the @-sign and the domain, after IDNA), so `Carol@Example.com` and
`carol@example.com` are one row under the unique index and a suppression matches whatever later
tries to mail them. (RFC 5321 lets a server treat the local part case-sensitively; no mail
service in use does, and treating two spellings as two people mails one person twice.)

Addresses our transports cannot carry are refused at input: a non-ASCII part before the @-sign
needs SMTPUTF8, which neither the SMTP transport (no SMTPUTF8 parameter), SendGrid, nor the
message builder (a 7-bit `email.policy.SMTP`) supports. Lookups pass `smtputf8=True` so an
address stored before this rule can still be found, unsubscribed and suppressed.

Validation is email-validator's; because a large import spends most of its time validating
domains, a plain ASCII local part is checked by a strict dot-atom pattern and the domain's
verdict is cached (email-validator still decides every domain, and anything unusual takes its
full path).
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


def normalize_email(raw: str, *, smtputf8: bool = False) -> str:
    """The canonical (lower-cased) form of `raw`, or InvalidAddress saying why it is refused.

    `smtputf8=False` (input: forms, imports, the CLI) refuses a non-ASCII part before the
    @-sign, which no transport of ours can deliver; `True` accepts it (lookups).
    """
    text = raw.strip()
    local, at, domain = text.rpartition("@")
    if at and len(local) <= _MAX_LOCAL and _PLAIN_LOCAL.fullmatch(local):
        try:
            address = f"{local.lower()}@{_normalize_domain(domain)}"
        except InvalidAddress:
            pass  # let the full check below word the error
        else:
            if len(address) <= _MAX_ADDRESS:
                return address
    return _validate(text, smtputf8=smtputf8)


def _validate(text: str, *, smtputf8: bool) -> str:
    if not text:
        raise InvalidAddress("empty address")
    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from exc
    if not smtputf8 and not result.local_part.isascii():
        odd = "".join(dict.fromkeys(c for c in result.local_part if not c.isascii()))
        raise InvalidAddress(
            f"the part before the @-sign contains non-ASCII characters ({odd}), which our mail "
            "service cannot deliver to: use an address with only ASCII letters, digits and "
            "punctuation before the @"
        )
    return f"{result.local_part.lower()}@{result.domain.lower()}"


@lru_cache(maxsize=8192)
def _normalize_domain(domain: str) -> str:
    try:
        return validate_email(f"a@{domain}", check_deliverability=False).domain.lower()
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from exc


def ascii_form(address: str) -> str:
    """`address` as it goes on the wire: the domain in IDNA ASCII (`xn--…`).

    A stored address may have a Unicode domain (`ayse@exämple.com`); SMTP's RCPT TO and a 7-bit
    To header need `ayse@xn--exmple-cua.com`. InvalidAddress for a non-ASCII local part.
    """
    local, at, domain = address.rpartition("@")
    if at and local.isascii() and domain.isascii():
        return address
    try:
        ascii_email = validate_email(address, check_deliverability=False).ascii_email
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from exc
    if ascii_email is None:
        raise InvalidAddress("the part before the @-sign contains non-ASCII characters")
    return ascii_email


def mask_email(email: str) -> str:
    """'ayse.yilmaz@example.com' → 'ay…@example.com': enough to recognise, not to harvest."""
    local, at, domain = email.rpartition("@")
    if not at:
        return "…"
    return f"{local[:2]}…@{domain}"
