"""{{name}}: a Switchyard handler.

Stores each event {"id": ...} in the cache under {{name}}:<id>, and rejects a
payload that is not such an event.

Build:  ./build.sh
Try:    switchyard invoke {{crate}}.wasm --payload '{"id": "1"}'
"""
import wit_world
from wit_world.imports import log
from switchyard_helpers import cache, payload_json, reject


class WitWorld(wit_world.WitWorld):
    def handle(self, msg) -> None:
        event = payload_json(msg, "event")
        id = event.get("id") if isinstance(event, dict) else None
        if not isinstance(id, str):
            raise reject("malformed event: id must be a string")
        log.log(log.Level.INFO, f"{{name}} got event {id} on {msg.topic}")
        # A capability error becomes the usual failure: retry when the cache
        # is unavailable, reject otherwise.
        cache.set(f"{{name}}:{id}", msg.payload)
