"""The mail service of the events scenario: when a user registers, store
their profile in the cache and send a welcome mail through the mail API.

Events arrive on `serviceB.event`. A registration is JSON:

    {"type": "user.registered", "user_id": 7, "name": "Ada", "email": "ada@example.com"}

Anything else on the subject, such as the integration guide's plain text
"New event occurred", is logged and acked, as the guide's consumer prints it.

The mail API is called with the message id as its `Idempotency-Key`: a
message delivered again after a crash sends the same key, and the mail API
sends one mail per key. The URL comes from the handler's `mail_api`
configuration variable; without one, the handler logs the mail it would send.

Build (from the repo root, with the toolchain `plugins/languages.sh` installs):
    componentize-py -d examples/events/plugins/welcome-email/wit -w welcome-email componentize -p examples/events/plugins/welcome-email app -o plugins/dist/welcome_email.wasm
"""
import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import cache, config, http, log, types


def reject(reason: str) -> Err:
    return Err(types.HandlerError_Reject(reason))


def retry(delay_ms: int, reason: str) -> Err:
    return Err(types.HandlerError_Retry(types.RetryRequest(delay_ms, reason)))


def capability(call, *args):
    """Call a capability; an unavailable backend retries, any other failure rejects."""
    try:
        return call(*args)
    except Err as e:
        error = e.value
        if isinstance(error, types.CapabilityError_Unavailable):
            raise retry(1000, error.value)
        raise reject(f"{type(error).__name__.removeprefix('CapabilityError_').lower()}: {error.value}")


def registration(payload: bytes):
    """The registration in `payload`, None if it is not one, or a reject."""
    try:
        event = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("type") != "user.registered":
        return None
    user_id, name, email = event.get("user_id"), event.get("name"), event.get("email")
    if isinstance(user_id, bool) or not isinstance(user_id, (int, str)) or str(user_id) == "":
        raise reject("malformed registration: user_id must be a number or a non-empty string")
    if not isinstance(name, str) or name == "":
        raise reject("malformed registration: name must be a non-empty string")
    if not isinstance(email, str) or "@" not in email:
        raise reject("malformed registration: email must be an address")
    return {"user_id": user_id, "name": name, "email": email}


class WitWorld(wit_world.WitWorld):
    def handle(self, msg: types.Message) -> None:
        user = registration(msg.payload)
        if user is None:
            text = msg.payload[:200].decode("utf-8", "replace")
            log.log(log.Level.INFO, f"event on {msg.topic}: {text}")
            return
        profile = json.dumps(user, separators=(",", ":"), sort_keys=True).encode()
        capability(cache.set, f"profile:{user['user_id']}", profile, None)

        mail = json.dumps({"to": user["email"], "template": "welcome", "name": user["name"]}).encode()
        url = config.get("mail_api")
        if url is None:
            log.log(log.Level.INFO, f"no mail_api configured: would send {mail.decode()}")
            return
        headers = [("content-type", "application/json"), ("idempotency-key", msg.id)]
        response = capability(http.send, http.Request("POST", url, headers, mail, None))
        if 200 <= response.status < 300:
            return
        body = response.body[:200].decode("utf-8", "replace")
        if response.status == 429 or response.status >= 500:
            after = next((v for n, v in response.headers if n.lower() == "retry-after"), "")
            raise retry(int(after) * 1000 if after.isdigit() else 2000, f"mail API: HTTP {response.status}: {body}")
        raise reject(f"mail API: HTTP {response.status}: {body}")
