// Keeps the cache consistent with product-change events; the JavaScript twin
// of plugins/cache-update (same messages, same effects, same reasons). What a
// valid product change is and the bytes stored are defined in
// plugins/cache-update/SPEC.md; switchyard.js implements its reading and
// encoding.
//
// Build (from the repo root, with the toolchain `plugins/languages.sh` installs):
//   componentize-js plugins/cache-update-js/app.js -w wit -n handler -d http fetch-event -o plugins/dist/cache_update_js.wasm
import { cache, canonicalJson, payloadJson, reject } from './switchyard.js';

const WHAT = 'product change';

export function handle(msg) {
  const change = payloadJson(msg, WHAT);
  if (change === null || typeof change !== 'object' || Array.isArray(change)) {
    throw reject(`malformed ${WHAT}: not a JSON object`);
  }
  const id = change.id;
  if (typeof id !== 'string' || id === '') {
    throw reject(`malformed ${WHAT}: id must be a non-empty string`);
  }
  const deleted = 'deleted' in change ? change.deleted : false;
  delete change.deleted;
  if (typeof deleted !== 'boolean') {
    throw reject(`malformed ${WHAT}: deleted must be true or false`);
  }
  const key = `product:${id}`;
  if (deleted) {
    cache.delete(key);
  } else {
    cache.set(key, canonicalJson(change));
  }
}
