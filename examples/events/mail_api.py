"""A stand-in for a mail API, so the events example runs with nothing but
NATS: `POST /mail` with JSON `{"to", "template", "name"}` and an
`Idempotency-Key` header "sends" the mail (prints it) once per key. A
repeated key answers 200 with `"duplicate": true` and sends nothing, which
is what a real mail API does with idempotency keys, and what any receiver of
at-least-once calls should do.

    python3 examples/events/mail_api.py                 # on 127.0.0.1:8025
    python3 examples/events/mail_api.py --port 8025 --log requests.jsonl

`--log` appends every request as a JSON line: its key, the mail, and
whether it was sent or a duplicate. `--hold-while FILE` holds the answer to
each new mail while FILE exists, after sending it: the window in which a
crashed consumer has had its effect but not heard of it.
"""
import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--log", help="append every request to this file, a JSON line each")
    parser.add_argument("--hold-while", help="hold each new mail's answer while this file exists")
    args = parser.parse_args()
    sent: set[str] = set()
    lock = threading.Lock()

    class MailApi(BaseHTTPRequestHandler):
        def answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                # The caller crashed or gave up: what it asked for stands.
                print(f" [!] the caller left before the answer ({status})", flush=True)

        def do_POST(self) -> None:
            if self.path != "/mail":
                return self.answer(404, {"error": f"no such endpoint {self.path}"})
            key = self.headers.get("idempotency-key")
            try:
                mail = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
            except ValueError as e:
                return self.answer(400, {"error": f"the body is not JSON: {e}"})
            if not key:
                return self.answer(400, {"error": "an Idempotency-Key header is required"})
            if not isinstance(mail, dict) or not isinstance(mail.get("to"), str):
                return self.answer(422, {"error": "a mail needs a `to` address"})
            with lock:
                duplicate = key in sent
                sent.add(key)
                if args.log:
                    with open(args.log, "a") as log:
                        log.write(json.dumps({"key": key, "mail": mail, "duplicate": duplicate}) + "\n")
            if duplicate:
                return self.answer(200, {"id": key, "duplicate": True})
            print(f" [x] mail to {mail['to']} ({mail.get('template')}), key {key}", flush=True)
            while args.hold_while and os.path.exists(args.hold_while):
                time.sleep(0.02)
            self.answer(202, {"id": key})

        def log_message(self, format, *a) -> None:  # noqa: A002 - the base class's name
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), MailApi)
    print(f" [*] mail API on http://127.0.0.1:{args.port}/mail", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
