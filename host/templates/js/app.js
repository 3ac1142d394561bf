// {{name}}: a Switchyard handler.
//
// Stores each event {"id": ...} in the cache under {{name}}:<id>, and rejects
// a payload that is not such an event.
//
// Build:  ./build.sh
// Try:    switchyard invoke {{crate}}.wasm --payload '{"id": "1"}'
import { log } from 'switchyard:handler/log@0.1.0';
import { cache, payloadJson, reject } from './switchyard.js';

export function handle(msg) {
  const event = payloadJson(msg, 'event');
  const id = event !== null && typeof event === 'object' ? event.id : undefined;
  if (typeof id !== 'string') {
    throw reject('malformed event: id must be a string');
  }
  log('info', `{{name}} got event ${id} on ${msg.topic}`);
  // A capability error becomes the usual failure: retry when the cache is
  // unavailable, reject otherwise.
  cache.set(`{{name}}:${id}`, msg.payload);
}
