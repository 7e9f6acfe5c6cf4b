"""The one rule for secrets: which values are secret, and masking them in every form.

Task code imports this (standalone runs mask their printed lines), so it uses only the
standard library. duftd masks events, run reasons, connection-test messages and executed
notebooks with the same :class:`Redactor`.

A secret is the value of a ``password``-type connection parameter, or of any connection
value whose key looks secret (:func:`is_secret_key`). A program leaks it in more shapes
than its raw text, so each secret is masked in:

- its raw form;
- JSON-escaped, with and without ASCII escaping (``json.dumps`` and nbformat's files);
- Python ``repr`` and ``ascii`` of the string, and ``repr`` of its UTF-8 bytes;
- URL-encoded, as in a DSN ``user:pa%24s@host`` (``quote``, with and without ``/`` safe,
  and ``quote_plus``);
- base64, standard and URL-safe, whole and at each of the three byte offsets it can take
  inside a longer encoded text (so ``base64("user:" + secret)``, as in HTTP Basic, is
  caught whoever the user is), where at least 8 characters long (a shorter piece turns up
  by chance in base64 data such as a notebook's images);
- and each of those once more JSON-escaped, because duftd masks event data as JSON text.

A secret that is a common word or a key name (``password``, ``admin``, ``message``...)
is masked only where it stands as a value (``key=password``, ``"key": "password"``,
``user:password@host``), never where it is a key or a word of a sentence. A value shorter
than :data:`MIN_SECRET_LENGTH` is not treated as a secret at all: masking every ``a`` in a
log would destroy it while protecting nothing (the config loader warns about such values).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "********"
MIN_SECRET_LENGTH = 4
MIN_BASE64_LENGTH = 8
# Connection value keys treated as secret even when not declared as ``password`` params.
_SECRET_KEY = re.compile(r"password|passwd|pwd|secret|token|api[_-]?key", re.IGNORECASE)
# Words that appear in ordinary text and structure (key names of connections and events,
# default passwords): as a secret, one of these is masked only where it is a value.
COMMON_WORDS = frozenset(
    # SIM905 ignored: a list of words reads best as words.
    """password passwd pwd secret token apikey api_key key user username uid login
    server host hostname port database db type sqlite3file testquery driver schema
    message level text state reason done total kind data info warning error debug
    admin administrator root guest test demo default changeme postgres mysql mariadb
    sqlite mssql duft true false none null yes no""".split()  # noqa: SIM905
)


def is_secret_key(key: str) -> bool:
    """Whether a connection value's key looks secret (``password``, ``api_key``...)."""
    return _SECRET_KEY.search(key) is not None


def _secret_items(
    values: Mapping[str, Any], password_fields: Iterable[str]
) -> Iterator[tuple[str, str]]:
    """(key, value as text) of each non-empty secret among one connection's values: its
    password fields and secret-looking keys; a number counts, as its text."""
    fields = set(password_fields)
    for key, value in values.items():
        if key not in fields and not is_secret_key(key):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value:
            yield key, value


def secret_values(values: Mapping[str, Any], password_fields: Iterable[str] = ()) -> set[str]:
    """The secrets among one connection's values, leaving out those too short to mask."""
    return {
        value
        for _, value in _secret_items(values, password_fields)
        if len(value) >= MIN_SECRET_LENGTH
    }


def short_secrets(values: Mapping[str, Any], password_fields: Iterable[str] = ()) -> list[str]:
    """Keys of secret values too short to be masked (the config loader warns about them)."""
    return [
        key
        for key, value in _secret_items(values, password_fields)
        if len(value) < MIN_SECRET_LENGTH
    ]


def is_common_word(secret: str) -> bool:
    """Whether a secret is a word that also appears in ordinary text or as a key name."""
    return secret.lower() in COMMON_WORDS


def _base64_forms(raw: bytes) -> set[str]:
    """``raw`` base64-encoded whole, and the characters that encode only ``raw`` when it
    sits at byte offset 1 or 2 of a longer encoded text (offset 0 is the whole form's
    prefix), each in the standard and URL-safe alphabets."""
    forms = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode()
        forms |= {whole, whole.rstrip("=")}
        for offset, start in ((0, 0), (1, 2), (2, 3)):
            shifted = encode(b"\0" * offset + raw).decode()
            end = (offset + len(raw)) * 8 // 6  # characters made only of these bytes
            forms.add(shifted[start:end])
    return {form for form in forms if len(form) >= MIN_BASE64_LENGTH}


def _forms(secret: str) -> set[str]:
    """Every shape of ``secret`` to mask (see the module's doc)."""
    raw = secret.encode("utf-8", "surrogatepass")
    base = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
        repr(raw)[2:-1],
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
    }
    base |= _base64_forms(raw)
    escaped = {
        json.dumps(form, ensure_ascii=ascii_only)[1:-1]
        for form in base
        for ascii_only in (True, False)
    }
    return {form for form in base | escaped if len(form) >= MIN_SECRET_LENGTH}


def _as_value(word: str) -> re.Pattern[str]:
    """``word`` where it stands as a value: after ``=`` or ``:`` (and an optional quote,
    escaped or not), whole, and not itself followed by ``=`` or ``:`` (a key)."""
    quote_mark = r"""(?:\\*["'])?"""
    return re.compile(rf"([=:]\s*{quote_mark}){re.escape(word)}(?![\w])(?!{quote_mark}\s*[=:])")


class Redactor:
    """Masks a fixed set of secrets in text; build one per run (or per test) and reuse it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        usable = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LENGTH}
        words = {s for s in usable if is_common_word(s)}
        forms: set[str] = set()
        for secret in usable:
            forms |= _forms(secret)
        # A common word's plain form is masked only as a value; its encoded ones anywhere.
        forms -= words
        # Longest first, so no secret is left half-masked by a shorter form inside it.
        self._forms = tuple(sorted(forms, key=lambda f: (-len(f), f)))
        self._words = tuple(
            (word, _as_value(word)) for word in sorted(words, key=len, reverse=True)
        )

    def __bool__(self) -> bool:
        return bool(self._forms or self._words)

    def mask(self, text: str) -> str:
        """``text`` with every form of every secret replaced by ``********``."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        for word, pattern in self._words:
            if word in text:
                text = pattern.sub(rf"\g<1>{MASK}", text)
        return text
