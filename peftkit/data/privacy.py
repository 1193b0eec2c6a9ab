"""Masking personal data in texts: phone numbers, e-mail addresses, ID-card and bank-card numbers.

Training (`peftkit.data.files.build_texts`) and scoring (`peftkit.data.files.texts_or_errors`, which predict,
banks and serve use) call the same `mask_text`, so an adapter sees at scoring exactly what it saw in training.
``data.mask_pii`` (default true) switches it; the adapter's saved config says whether its scoring masks, so an adapter
trained before the switch existed (no key: false) keeps scoring raw texts, as it was trained.

Each match is replaced by a placeholder (``[PHONE]``, ``[EMAIL]``, ``[ID]``, ``[CARD]``) that no pattern matches
again, so masking twice changes nothing. What is masked:

- ``email``: ``name@domain.tld``.
- ``id_card``: a Chinese resident ID (18 characters: region, a real birth date, sequence, and the ISO 7064 MOD 11-2
  check character), a Hong Kong ID (``A123456(7)``, with its check digit), a Taiwan ID (``A123456789``, with its
  checksum), a US social security number written ``123-45-6789`` (valid area, group and serial).
- ``bank_card``: 13-19 digits, plain or in groups split by spaces or dashes, starting as card numbers do (2-6) and
  passing the Luhn check.
- ``phone``: Chinese mobiles (``1[3-9]`` + 9 digits, with ``+86``/``86`` and separators), Chinese landlines with an
  area code (``010-12345678``, ``0755 1234 5678``), international numbers written with ``+`` and a country code
  (8-15 digits), and North American ``(415) 555-2671`` / ``415-555-2671``.

The checksums are what keep order ids, tracking numbers and amounts unmasked: a random 18-digit order id passes the ID
checksum 1 time in 11, a random 16-digit number the Luhn check and the prefix rule about 1 in 20. Numbers glued to
letters or more digits (``SKU13800138000X``) are not matched.

No library does this here: Microsoft Presidio needs a downloaded spaCy model and has no Chinese ID or landline
recognisers; Google's ``phonenumbers`` finds phones only. Both would be new dependencies for a few patterns.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import date

KINDS = ("email", "id_card", "bank_card", "phone")
PLACEHOLDERS = {"email": "[EMAIL]", "id_card": "[ID]", "bank_card": "[CARD]", "phone": "[PHONE]"}

# A match may not continue a longer run of letters or digits (an order id, a SKU, a URL path).
_L = r"(?<![0-9A-Za-z])"
_R = r"(?![0-9A-Za-z])"

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)
_CN_ID = re.compile(
    _L + r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx]" + _R
)
_HK_ID = re.compile(r"(?<![0-9A-Za-z])[A-Z]{1,2}\d{6}\(([0-9A])\)")
_TW_ID = re.compile(_L + r"[A-Z][12]\d{8}" + _R)
_US_SSN = re.compile(_L + r"(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}" + _R)
_CARD = re.compile(_L + r"[2-6]\d{3}(?:[ -]?\d){9,15}" + _R)
_PHONES = (
    re.compile(r"(?<![0-9A-Za-z+])(?:(?:\+|00)?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}" + _R),  # CN mobile
    re.compile(r"(?<![0-9A-Za-z])(?:\(0\d{2,3}\) ?|0\d{2,3}[ -])[2-9]\d{2,3}[ -]?\d{4}" + _R),  # CN landline
    re.compile(r"(?<![0-9A-Za-z+])\+[1-9]\d{0,2}(?:[ -]?\(?\d{1,4}\)?){2,5}" + _R),  # international, +CC
    re.compile(r"(?<![0-9A-Za-z])(?:\(\d{3}\) ?|\d{3}[-.])\d{3}[-.]\d{4}" + _R),  # North American
)

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_TW_LETTERS = "ABCDEFGHJKLMNPQRSTUVXYWZIO"  # A=10 ... in the order the checksum numbers them


def cn_id_valid(number: str) -> bool:
    """A Chinese resident ID number: a real birth date and the ISO 7064 MOD 11-2 check character."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    try:
        date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return "10X98765432"[total % 11] == number[17].upper()


def hk_id_valid(letters: str, digits: str, check: str) -> bool:
    """A Hong Kong identity card number (``A123456(7)``): weighted sum mod 11."""
    values = ([36] if len(letters) == 1 else []) + [ord(c) - 55 for c in letters] + [int(d) for d in digits]
    total = sum(v * w for v, w in zip(values, range(9, 1, -1)))
    expected = (11 - total % 11) % 11
    return check == ("A" if expected == 10 else str(expected))


def tw_id_valid(number: str) -> bool:
    """A Taiwan national ID (``A123456789``): letter code and weighted digits, sum mod 10 is 0."""
    code = _TW_LETTERS.index(number[0]) + 10
    digits = [code // 10, code % 10] + [int(d) for d in number[1:]]
    weights = (1, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1)
    return sum(d * w for d, w in zip(digits, weights)) % 10 == 0


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check that payment card numbers carry."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _card(match: re.Match) -> bool:
    digits = re.sub(r"[ -]", "", match.group())
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _hk(match: re.Match) -> bool:
    head = match.group()[: match.group().index("(")]
    letters = head.rstrip("0123456789")
    return hk_id_valid(letters, head[len(letters) :], match.group(1))


def _phone(match: re.Match) -> bool:
    return 8 <= sum(ch.isdigit() for ch in match.group()) <= 15


# (kind, pattern, check on the match), applied in this order: an e-mail first (its digits are not a phone), then the
# checksummed numbers, phones last.
_RULES = (
    ("email", _EMAIL, None),
    ("id_card", _CN_ID, lambda m: cn_id_valid(m.group())),
    ("id_card", _HK_ID, _hk),
    ("id_card", _TW_ID, lambda m: tw_id_valid(m.group())),
    ("id_card", _US_SSN, None),
    ("bank_card", _CARD, _card),
    *(("phone", pattern, _phone) for pattern in _PHONES),
)


def mask_text(text: str, counts: Counter | None = None) -> str:
    """`text` with every phone number, e-mail address, ID-card and bank-card number replaced by its placeholder;
    each replacement counted by kind into `counts` when given."""
    for kind, pattern, check in _RULES:

        def replace(match: re.Match, kind: str = kind, check=check) -> str:
            if check is not None and not check(match):
                return match.group()
            if counts is not None:
                counts[kind] += 1
            return PLACEHOLDERS[kind]

        text = pattern.sub(replace, text)
    return text


def mask_texts(texts: list[str], counts: Counter | None = None) -> list[str]:
    """`mask_text` over a list: what a scoring path that receives texts (not rows) calls for an adapter whose saved
    config has ``data.mask_pii`` true."""
    return [mask_text(text, counts) for text in texts]


def adapter_masks(config: dict) -> bool:
    """Whether scoring must mask for an adapter, from its manifest's stored ``config`` (a dict): what it was trained
    with. An adapter trained before ``data.mask_pii`` existed has no key and was trained on raw texts: False."""
    return bool((config or {}).get("data", {}).get("mask_pii", False))


def empty_counts() -> dict[str, int]:
    """``{kind: 0}`` for every kind, the shape the manifest stores."""
    return dict.fromkeys(KINDS, 0)
