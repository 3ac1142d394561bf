"""Small helpers for Switchyard handlers written in Python.

componentize-py maps WIT errors to exceptions carrying variant classes; these
helpers give the common cases short names: read the payload as strict JSON
and write it canonically (plugins/cache-update/SPEC.md), fail with
``reject``/``retry``, and call a capability whose failure becomes the
usual handler failure (unavailable: retry in a second; anything else: reject).
"""
import json
import math
import re
from json.decoder import scanstring

from componentize_py_types import Err
from wit_world.imports import types
from wit_world.imports import cache as _cache


def reject(reason: str) -> Err:
    """A permanent failure: ``raise reject("why")`` dead-letters the message."""
    return Err(types.HandlerError_Reject(reason))


def retry(delay_ms: int, reason: str) -> Err:
    """A transient failure: ``raise retry(1000, "why")`` delivers it again later."""
    return Err(types.HandlerError_Retry(types.RetryRequest(delay_ms, reason)))


MAX_DEPTH = 64
"""Arrays and objects open at once, the top-level value being the first."""


class JsonError(ValueError):
    """Why a payload was refused or a value cannot be encoded: the reason after
    ``malformed <what>: `` (or ``cannot encode JSON: ``)."""


def _not_json(what: str, at: int) -> JsonError:
    return JsonError(f"not JSON: {what} at byte {at}")


# json.loads alone will not do: it reads 1e400 as inf and "\ud800" as a lone
# surrogate, lets the last duplicate key win and nests as deep as the stack.
# The reader below implements plugins/cache-update/SPEC.md, as the Rust,
# JavaScript and C helpers do, byte offset for byte offset; json.loads is
# used only where the checks around it vouch for it (_parse_quickly).
_WS = re.compile(rb"[ \t\n\r]*")
# A number, which must be the whole run of number bytes (SPEC.md 1.4); group
# 1 is there when it has a fraction or an exponent.
_NUMBER_TOKEN = re.compile(rb"-?(?:0|[1-9][0-9]*)(\.[0-9]+(?:[eE][+-]?[0-9]+)?|[eE][+-]?[0-9]+)?(?![0-9+\-.eE])")
_HEX = re.compile(rb"[0-9a-fA-F]")
# Array elements that are numbers exact at a glance (the mantissa at most 15
# characters, so at most 15 significant digits; the exponent at most 290
# either way: so between 1e-304 and 1e306, where _exact_by_digits holds), each
# with its comma and whitespace; what follows the last comma is read as usual.
_SIMPLE_NUMBERS = re.compile(
    rb"(?:(?=[-0-9.]{1,15}(?![-0-9.]))-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?"
    rb"(?:[eE][+-]?(?:[0-9]{1,2}|[01][0-9]{2}|2[0-8][0-9]|290))?[ \t\n\r]*,[ \t\n\r]*)+")
# In a string: a control character, a bad escape, a surrogate escape.
_DOUBTFUL = re.compile(rb'[\x00-\x1f]|\\(?:[^"\\/bfnrtu]|u(?![0-9a-fA-F]{4})|u[dD][89a-fA-F])')


def _decode(chunk: bytes) -> str:
    """A chunk of string with no control character and only JSON's escapes,
    none of a surrogate, decoded (the payload is UTF-8 already)."""
    text = chunk.decode("utf-8")
    return scanstring('"' + text + '"', 1)[0] if "\\" in text else text


_ESCAPES = {ord('"'): '"', ord("\\"): "\\", ord("/"): "/", ord("b"): "\b", ord("f"): "\f",
            ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}
_LITERALS = {ord("t"): (b"true", True), ord("f"): (b"false", False), ord("n"): (b"null", None)}


def parse_json(data: bytes):
    """``data`` read by SPEC.md section 1, or :class:`JsonError`. Numbers
    without fraction or exponent are ints, the others floats; both are
    exactly what was sent."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_json("invalid UTF-8", e.start)
    value = _parse_quickly(text, data)
    if value is not _UNSURE:
        return value
    reader = _Reader(data)
    reader.ws()
    value = reader.value(0)
    reader.ws()
    if reader.at < len(data):
        raise _not_json("trailing characters", reader.at)
    return value


# Python in a component runs some twenty times slower than natively, too slow
# for the reader below on a payload near the 1 MiB limit. So json.loads, whose
# scanner is C, reads first, and its result is taken only where SPEC.md
# accepts: the hooks see every number's text and every object's members,
# surrogate escapes and deep nesting are left to the reader. Whatever it
# doubts, the reader below reads again, and gives the reason.
_UNSURE = object()
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_STRING_LITERAL = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


class _Unsure(ValueError):
    pass


def _number_hook(convert):
    def hook(text: str):
        # The C scanner takes ASCII digits only; its Python twin takes any
        # Unicode digit, so ASCII is checked rather than assumed.
        if not text.isascii():
            raise _Unsure
        sent = _decimal(text)
        if not _exact_by_digits(sent):
            double = float(text)
            if math.isinf(double) or sent != _decimal_of_double(double):
                raise _Unsure
        return convert(text)
    return hook


def _unique_members(pairs):
    members = dict(pairs)
    if len(members) != len(pairs):
        raise _Unsure
    return members


def _no_constant(name):
    raise _Unsure


def _deepest(data: bytes) -> int:
    """How many arrays and objects are open at once, at most, outside
    strings. Exact for JSON; on malformed input exact up to the first error,
    which is as far as json.loads goes."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING_LITERAL.sub(b"", data)):
        if m.group() in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _parse_quickly(text: str, data: bytes):
    if _SURROGATE_ESCAPE.search(data):
        return _UNSURE
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and _deepest(data) > MAX_DEPTH:
        return _UNSURE
    try:
        return json.loads(text, parse_int=_number_hook(int), parse_float=_number_hook(float),
                          parse_constant=_no_constant, object_pairs_hook=_unique_members)
    except (ValueError, RecursionError):
        return _UNSURE


class _Reader:
    def __init__(self, data: bytes):
        self.b = data
        self.at = 0

    def peek(self):
        return self.b[self.at] if self.at < len(self.b) else None

    def ws(self):
        self.at = _WS.match(self.b, self.at).end()

    def end(self) -> JsonError:
        return _not_json("unexpected end", len(self.b))

    def value(self, open_: int):
        c = self.peek()
        if c is None:
            raise self.end()
        if c in b"{[" and open_ == MAX_DEPTH:
            raise JsonError(f"nested deeper than {MAX_DEPTH} levels at byte {self.at}")
        if c == ord("{"):
            return self.object(open_ + 1)
        if c == ord("["):
            return self.array(open_ + 1)
        if c == ord('"'):
            return self.string()
        if c == ord("-") or ord("0") <= c <= ord("9"):
            return self.number()
        if c in _LITERALS:
            word, value = _LITERALS[c]
            if self.b.startswith(word, self.at):
                self.at += len(word)
                return value
        raise _not_json("expected a value", self.at)

    def object(self, open_: int) -> dict:
        members = {}
        self.at += 1
        self.ws()
        if self.peek() == ord("}"):
            self.at += 1
            return members
        while True:
            key_at = self.at
            c = self.peek()
            if c is None:
                raise self.end()
            if c != ord('"'):
                raise _not_json("expected a string key", self.at)
            key = self.string()
            if key in members:
                raise JsonError(f"duplicate key {_shown_key(key)} at byte {key_at}")
            self.ws()
            c = self.peek()
            if c is None:
                raise self.end()
            if c != ord(":"):
                raise _not_json("expected ':'", self.at)
            self.at += 1
            self.ws()
            members[key] = self.value(open_)
            self.ws()
            c = self.peek()
            if c is None:
                raise self.end()
            if c == ord(","):
                self.at += 1
                self.ws()
            elif c == ord("}"):
                self.at += 1
                return members
            else:
                raise _not_json("expected ',' or '}'", self.at)

    def array(self, open_: int) -> list:
        items = []
        self.at += 1
        self.ws()
        if self.peek() == ord("]"):
            self.at += 1
            return items
        while True:
            c = self.peek()
            if c is not None and (c == 0x2D or 0x30 <= c <= 0x39):
                # Numbers exact at a glance, each followed by a comma, in one go.
                m = _SIMPLE_NUMBERS.match(self.b, self.at)
                if m:
                    # The run ends with a comma, so its last part is empty.
                    items.extend(int(t) if t.strip().isdigit() or t.strip()[1:].isdigit() else float(t)
                                 for t in m.group().split(b",")[:-1])
                    self.at = m.end()
            items.append(self.value(open_))
            self.ws()
            c = self.peek()
            if c is None:
                raise self.end()
            if c == ord(","):
                self.at += 1
                self.ws()
            elif c == ord("]"):
                self.at += 1
                return items
            else:
                raise _not_json("expected ',' or ']'", self.at)

    def string(self) -> str:
        """The string whose opening quote is at the current byte, decoded
        natively (json's scanstring) in chunks between the places where a
        rule may be broken (a control character, an escape that is not JSON's,
        a surrogate escape), each of which is read by escape, so the first
        broken rule is the one reported."""
        b = self.b
        start = self.at + 1
        # Its closing quote: the first not escaped, or the end of the input.
        end = b.find(b'"', start)
        while end >= 0:
            k = end
            while b[k - 1] == 0x5C:
                k -= 1
            if (end - k) % 2 == 0:
                break
            end = b.find(b'"', end + 1)
        terminated = end >= 0
        if not terminated:
            end = len(b)
        parts = []
        chunk = search = start
        while True:
            m = _DOUBTFUL.search(b, search, end)
            if m is None:
                if not terminated:
                    raise self.end()
                parts.append(_decode(b[chunk:end]))
                self.at = end + 1
                return "".join(parts)
            at = m.start()
            # A backslash that is itself escaped starts nothing.
            k = at
            while k > chunk and b[k - 1] == 0x5C:
                k -= 1
            if (at - k) % 2 == 1:
                search = at + 1
                continue
            parts.append(_decode(b[chunk:at]))
            self.at = at
            if b[at] != 0x5C:
                raise _not_json("control character in string", at)
            parts.append(self.escape())
            chunk = search = self.at

    def escape(self) -> str:
        at = self.at
        self.at += 1
        c = self.peek()
        if c is None:
            raise self.end()
        if c in _ESCAPES:
            self.at += 1
            return _ESCAPES[c]
        if c != ord("u"):
            raise _not_json("invalid escape", at)
        self.at += 1
        unit = self.hex4(at)
        if 0xDC00 <= unit <= 0xDFFF:
            raise _not_json("lone surrogate", at)
        if 0xD800 <= unit <= 0xDBFF:
            for want in b"\\u":
                c = self.peek()
                if c is None:
                    raise self.end()
                if c != want:
                    raise _not_json("lone surrogate", at)
                self.at += 1
            low = self.hex4(self.at - 2)
            if not 0xDC00 <= low <= 0xDFFF:
                raise _not_json("lone surrogate", at)
            unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
        return chr(unit)

    def hex4(self, escape: int) -> int:
        for i in range(4):
            if self.at + i >= len(self.b):
                raise self.end()
            if not _HEX.match(self.b, self.at + i):
                raise _not_json("invalid escape", escape)
        unit = int(self.b[self.at:self.at + 4], 16)
        self.at += 4
        return unit

    def number(self):
        start = self.at
        m = _NUMBER_TOKEN.match(self.b, start)
        if m is None:
            raise _not_json("invalid number", start)
        self.at = m.end()
        token = m.group()
        text = token.decode("ascii")
        if _exact_at_a_glance(token):
            return int(text) if m.group(1) is None else float(text)
        # Python's float() is correctly rounded, like JavaScript's Number().
        double = float(text)
        if math.isinf(double):
            raise JsonError(f"number at byte {start} is beyond the range of a double")
        sent = _decimal(text)
        if _exact_by_digits(sent):
            return int(text) if token.isdigit() or token[1:].isdigit() else double
        canonical = _decimal_of_double(double)
        if sent != canonical:
            raise JsonError(f"number at byte {start} cannot be stored exactly "
                            f"(the nearest double is {_es_text(canonical)})")
        # An integer token is at most 309 digits here, far below int()'s limit.
        return int(text) if m.group(1) is None else double


# Exponents beyond this are clamped: payloads are far shorter than it, so a
# clamped exponent still tells a number apart from every canonical text.
_EXPONENT_CLAMP = 1_000_000_000


def _decimal(text: str):
    """The value of a JSON number text (or of ``repr``/``%e`` output) as
    ``(negative, digits, point)``: ``±0.digits × 10^point``, digits without
    leading or trailing zeros (``(False, "", 0)`` for zero). Two numbers are
    equal exactly when these are."""
    negative = text.startswith("-")
    rest = text[1:] if negative else text
    mantissa, _, exponent = rest.replace("E", "e").partition("e")
    integer, _, fraction = mantissa.partition(".")
    exponent = exponent or "0"
    exp_negative = exponent.startswith("-")
    exp_digits = exponent.lstrip("+-").lstrip("0")
    exp = int(exp_digits) if 0 < len(exp_digits) <= 10 else (_EXPONENT_CLAMP if exp_digits else 0)
    exp = min(exp, _EXPONENT_CLAMP)
    if exp_negative:
        exp = -exp
    all_digits = (integer + fraction).lstrip("0")
    digits = all_digits.rstrip("0")
    if not digits:
        return (False, "", 0)
    return (negative, digits, len(all_digits) + exp - len(fraction))


def _exact_at_a_glance(token: bytes) -> bool:
    """_exact_by_digits for the common short numbers, without _decimal: a
    mantissa of at most 15 characters has at most 15 significant digits, and
    with an exponent of at most 290 either way the number lies between
    1e-304 and 1e306 (or is zero)."""
    e = max(token.find(b"e"), token.find(b"E"))
    if e < 0:
        return len(token) <= 15
    return e <= 15 and len(token) - e <= 5 and -290 <= int(token[e + 1:]) <= 290


def _exact_by_digits(decimal) -> bool:
    """True when a decimal of at most 15 significant digits lies in the
    normal range of doubles (1e-307 <= |x| < 1e308), or is zero: then its
    nearest double's canonical digits are its own (15-digit steps there are
    wider than a double's spacing, so no other 15-digit decimal, shorter or
    not, reads back as that double). The slow path gives the same answer; this
    one only saves the formatting."""
    _, digits, point = decimal
    return not digits or (len(digits) <= 15 and -306 <= point <= 308)


def _decimal_of_double(double: float):
    """The shortest digits that read back as ``double`` (finite), and of those
    the nearest, the even one on a tie, as ECMAScript requires: repr gives the
    shortest length; ``%e`` at that length rounds the exact value half to
    even, and is used when it reads back."""
    magnitude = abs(double)
    negative, digits, point = _decimal(repr(magnitude))
    if _exact_by_digits((negative, digits, point)):
        # Too few digits for a tie (see _exact_by_digits).
        return (double < 0 and bool(digits), digits, point)
    if digits:
        nearest = "%.*e" % (len(digits) - 1, magnitude)
        if float(nearest) == magnitude:
            negative, digits, point = _decimal(nearest)
        negative = double < 0
    return (negative, digits, point)


def _es_text(decimal) -> str:
    """ECMAScript's Number::toString layout of a decimal (SPEC.md 2.3)."""
    negative, s, n = decimal
    if not s:
        return "0"
    k = len(s)
    if k <= n <= 21:
        body = s + "0" * (n - k)
    elif 0 < n <= 21:
        body = s[:n] + "." + s[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * -n + s
    else:
        e = n - 1
        body = s[0] + ("." + s[1:] if k > 1 else "") + "e" + ("-" if e < 0 else "+") + str(abs(e))
    return "-" + body if negative else body


_STRING_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def _escape(m) -> str:
    c = m.group()
    return _STRING_ESCAPES.get(c) or "\\u%04x" % ord(c)


def _string(s: str) -> str:
    return '"' + _NEEDS_ESCAPE.sub(_escape, s) + '"'


def _shown_key(key: str) -> str:
    """How a key is shown in a reason: its canonical string, cut after 64
    characters with ``...`` after the closing quote."""
    return _string(key[:64]) + "..." if len(key) > 64 else _string(key)


_SUPPLEMENTARY = re.compile("[\U00010000-\U0010ffff]")


def _surrogates(m) -> str:
    c = ord(m.group()) - 0x10000
    return chr(0xD800 + (c >> 10)) + chr(0xDC00 + (c & 0x3FF))


def _utf16(key: str) -> str:
    """A sort key that orders as UTF-16 code units do: each character above
    U+FFFF becomes its surrogate pair (a str may hold them), so plain code
    point comparison is code unit comparison. Not key.encode("utf-16-be"):
    that imports a codec module at run time, which traps in a component."""
    return _SUPPLEMENTARY.sub(_surrogates, key)


_TWO_53 = 2**53


def _encode(value, out: list) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int):
        if -_TWO_53 <= value <= _TWO_53:
            # Every such int is a double, and written as its own digits.
            out.append(str(value))
            return
        # An int is written only if its text denotes exactly it, the rule
        # parse_json applies to what it reads.
        try:
            canonical = _decimal_of_double(float(value))
        except OverflowError:
            raise JsonError(f"{value} is beyond the range of a double")
        if _decimal(str(value)) != canonical:
            raise JsonError(f"{value} has no exact double text (the nearest is {_es_text(canonical)})")
        out.append(_es_text(canonical))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise JsonError(f"{value!r} is not a finite number")
        r = repr(value)
        if "e" not in r and len(r) <= (17 if r[0] == "-" else 16):
            # From 1e-4 to 1e16 repr writes the digits in place, at most 15
            # of them here, so too few for a tie: ECMAScript writes the same,
            # less a trailing ".0" (and -0 as 0).
            out.append("0" if r in ("0.0", "-0.0") else r[:-2] if r.endswith(".0") else r)
        else:
            out.append(_es_text(_decimal_of_double(value)))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise JsonError(f"object key {key!r} is not a string")
        out.append("{")
        for i, key in enumerate(sorted(value, key=_utf16)):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    else:
        raise JsonError(f"{type(value).__name__} is not JSON")


def to_canonical_json(value) -> bytes:
    """``value`` in the canonical encoding of SPEC.md section 2 (RFC 8785), or
    :class:`JsonError` for what has none (NaN, infinities, an int no double
    holds, a lone surrogate, a non-string key)."""
    out = []
    _encode(value, out)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as e:
        raise JsonError(f"string with a lone surrogate at character {e.start}")


def payload_json(msg: types.Message, what: str = "payload"):
    """The payload read by :func:`parse_json`, or a reject naming ``what``."""
    try:
        return parse_json(msg.payload)
    except JsonError as e:
        raise reject(f"malformed {what}: {e}")


def canonical_json(value) -> bytes:
    """``value`` in the canonical encoding, the form the cache-update handlers
    store in every language, or a reject saying why it has none."""
    try:
        return to_canonical_json(value)
    except JsonError as e:
        raise reject(f"cannot encode JSON: {e}")


def failure(error) -> Err:
    """The handler failure for a capability error: retry when the backend is unavailable, reject otherwise."""
    if isinstance(error, types.CapabilityError_Unavailable):
        return retry(1000, error.value)
    if isinstance(error, types.CapabilityError_Denied):
        return reject(f"denied: {error.value}")
    if isinstance(error, types.CapabilityError_Invalid):
        return reject(f"invalid: {error.value}")
    return reject(f"too large: {error.value}")


class cache:
    """The cache capability, failing with :func:`failure` instead of a capability error."""

    @staticmethod
    def get(key: str):
        try:
            return _cache.get(key)
        except Err as e:
            raise failure(e.value)

    @staticmethod
    def set(key: str, value: bytes, ttl_ms=None):
        try:
            _cache.set(key, value, ttl_ms)
        except Err as e:
            raise failure(e.value)

    @staticmethod
    def delete(key: str) -> bool:
        try:
            return _cache.delete(key)
        except Err as e:
            raise failure(e.value)
