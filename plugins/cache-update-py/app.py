"""Keeps the cache consistent with product-change events; the Python twin of
plugins/cache-update (same messages, same effects, same reasons). What a
valid product change is and the bytes stored are defined in
plugins/cache-update/SPEC.md; switchyard_helpers.py implements its reading
and encoding.

Build (from the repo root, with the toolchain `plugins/languages.sh` installs):
    componentize-py -d wit -w handler componentize -p plugins/cache-update-py app -o plugins/dist/cache_update_py.wasm
"""
import wit_world
from switchyard_helpers import cache, canonical_json, payload_json, reject

WHAT = "product change"


class WitWorld(wit_world.WitWorld):
    def handle(self, msg) -> None:
        change = payload_json(msg, WHAT)
        if not isinstance(change, dict):
            raise reject(f"malformed {WHAT}: not a JSON object")
        id = change.get("id")
        if not isinstance(id, str) or id == "":
            raise reject(f"malformed {WHAT}: id must be a non-empty string")
        deleted = change.pop("deleted", False)
        if not isinstance(deleted, bool):
            raise reject(f"malformed {WHAT}: deleted must be true or false")
        key = f"product:{id}"
        if deleted:
            cache.delete(key)
        else:
            cache.set(key, canonical_json(change), None)
