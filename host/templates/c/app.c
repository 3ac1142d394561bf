// {{name}}: a Switchyard handler.
//
// Stores each payload in the cache under {{name}}:<message id>, and rejects
// an empty one.
//
// Build:  ./build.sh
// Try:    switchyard invoke {{crate}}.wasm --payload '{"id": "1"}'

#include <stdio.h>
#include <string.h>

#include "handler.h"

// Strings handed back to the host are freed by the bindings, so they must be
// on the heap: handler_string_dup copies.
static bool reject(handler_handler_error_t *err, const char *reason) {
  err->tag = SWITCHYARD_HANDLER_TYPES_HANDLER_ERROR_REJECT;
  handler_string_dup(&err->val.reject, reason);
  return false;
}

bool exports_handler_handle(handler_message_t *msg, handler_handler_error_t *err) {
  if (msg->payload.len == 0) return reject(err, "malformed event: empty payload");

  char key[512];
  snprintf(key, sizeof key, "{{name}}:%.*s", (int)msg->id.len, (const char *)msg->id.ptr);
  handler_string_t line;
  handler_string_set(&line, "{{name}} got an event");
  switchyard_handler_log_log(SWITCHYARD_HANDLER_LOG_LEVEL_INFO, &line);

  handler_string_t cache_key;
  handler_string_set(&cache_key, key);
  switchyard_handler_cache_capability_error_t e;
  if (!switchyard_handler_cache_set(&cache_key, &msg->payload, NULL, &e)) {
    // An unavailable cache is worth a retry; anything else would fail again.
    if (e.tag == SWITCHYARD_HANDLER_TYPES_CAPABILITY_ERROR_UNAVAILABLE) {
      err->tag = SWITCHYARD_HANDLER_TYPES_HANDLER_ERROR_RETRY;
      err->val.retry.delay_ms = 1000;
      err->val.retry.reason = e.val.unavailable;
      return false;
    }
    return reject(err, "the cache refused the write");
  }
  return true;
}
