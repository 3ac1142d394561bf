// The profile service of the events scenario: it answers requests on
// `profile.get` with the profile the mail service stored when the user
// registered. A request is JSON `{"user_id": 7}`; the reply, published to the
// request's reply subject, is the profile, or `{"error": "not found", ...}`.
//
// Build (from the repo root, with the toolchain `plugins/languages.sh` installs):
//   componentize-js examples/events/plugins/profile/app.js -w examples/events/plugins/profile/wit -n profile -d http fetch-event -o plugins/dist/profile.wasm
import * as cache from 'switchyard:handler/cache@0.1.0';
import { publish } from 'switchyard:handler/publish@0.1.0';

function reject(reason) {
  return { tag: 'reject', val: reason };
}

// A capability error is thrown with the WIT variant as its payload: an
// unavailable backend is retried, anything else rejects.
function capability(call) {
  try {
    return call();
  } catch (e) {
    const error = e && e.payload;
    if (!error) throw e;
    if (error.tag === 'unavailable') throw { tag: 'retry', val: { delayMs: 1000n, reason: error.val } };
    throw reject(`${error.tag}: ${error.val}`);
  }
}

const encoder = new TextEncoder();

export function handle(msg) {
  if (!msg.replyTo) throw reject('a profile request needs a reply subject');
  let request;
  try {
    request = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(msg.payload));
  } catch (e) {
    throw reject(`malformed profile request: not JSON: ${e.message}`);
  }
  const id = request && request.user_id;
  if ((typeof id !== 'number' || !Number.isInteger(id)) && (typeof id !== 'string' || id === '')) {
    throw reject('malformed profile request: user_id must be an integer or a non-empty string');
  }
  const stored = capability(() => cache.get(`profile:${id}`));
  const reply = stored ?? encoder.encode(JSON.stringify({ error: 'not found', user_id: id }));
  capability(() => publish({ destination: msg.replyTo, payload: reply, headers: [], key: undefined }));
}
