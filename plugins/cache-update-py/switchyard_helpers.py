"""Small helpers for Switchyard handlers written in Python.

componentize-py maps WIT errors to exceptions carrying variant classes; these
helpers give the common cases short names: read the payload as JSON, fail
with ``reject``/``retry``, and call a capability whose failure becomes the
usual handler failure (unavailable: retry in a second; anything else: reject).
"""
import json

from componentize_py_types import Err
from wit_world.imports import types
from wit_world.imports import cache as _cache


def reject(reason: str) -> Err:
    """A permanent failure: ``raise reject("why")`` dead-letters the message."""
    return Err(types.HandlerError_Reject(reason))


def retry(delay_ms: int, reason: str) -> Err:
    """A transient failure: ``raise retry(1000, "why")`` delivers it again later."""
    return Err(types.HandlerError_Retry(types.RetryRequest(delay_ms, reason)))


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def payload_json(msg: types.Message, what: str = "payload"):
    """The payload parsed as strict JSON (UTF-8, no NaN or Infinity), or a reject naming ``what``."""
    try:
        return json.loads(msg.payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise reject(f"malformed {what}: not JSON: {e}")


def canonical_json(value) -> bytes:
    """Compact JSON with object keys sorted, the form every Switchyard example writes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


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
