// Keeps the cache consistent with product-change events; the C twin of
// plugins/cache-update (same messages, same effects, same reasons).
//
// Build (from the repo root, with the toolchain `plugins/languages.sh` installs;
// it runs exactly these lines):
//   wit-bindgen c wit --world handler --out-dir plugins/cache-update-c/gen
//   python -m ziglang cc -target wasm32-wasi -mexec-model=reactor -O2 -s -Iplugins/cache-update-c/gen \
//     plugins/cache-update-c/*.c plugins/cache-update-c/gen/handler.c \
//     plugins/cache-update-c/gen/handler_component_type.o -o core.wasm
//   wasm-tools component new core.wasm --adapt wasi_snapshot_preview1=<reactor adapter> \
//     -o plugins/dist/cache_update_c.wasm
//
// C has no JSON in its standard library, so canonical.c holds a reader and a
// canonical encoder implementing plugins/cache-update/SPEC.md, the one
// definition of a valid product change and of the bytes stored, which the
// Rust, Python and JavaScript twins implement too. Every instance serves one
// message, so nothing is freed.

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canonical.h"
#include "handler.h"

#define WHAT "product change"

// The handler's error strings are freed by the bindings after the call
// returns, so they must be on the heap.
static bool reject(handler_handler_error_t *err, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  int n = vsnprintf(NULL, 0, fmt, args);
  va_end(args);
  char *reason = malloc((size_t)n + 1);
  if (!reason) abort();
  va_start(args, fmt);
  vsnprintf(reason, (size_t)n + 1, fmt, args);
  va_end(args);
  err->tag = SWITCHYARD_HANDLER_TYPES_HANDLER_ERROR_REJECT;
  handler_string_dup(&err->val.reject, reason);
  return false;
}

// An unreachable cache is worth a retry; anything else would fail again.
static bool failure(handler_handler_error_t *err, switchyard_handler_cache_capability_error_t *e) {
  handler_string_t why = e->val.denied;  // every case carries one string
  switch (e->tag) {
    case SWITCHYARD_HANDLER_TYPES_CAPABILITY_ERROR_UNAVAILABLE:
      err->tag = SWITCHYARD_HANDLER_TYPES_HANDLER_ERROR_RETRY;
      err->val.retry.delay_ms = 1000;
      err->val.retry.reason = why;
      return false;
    case SWITCHYARD_HANDLER_TYPES_CAPABILITY_ERROR_DENIED:
      return reject(err, "denied: %.*s", (int)why.len, why.ptr);
    case SWITCHYARD_HANDLER_TYPES_CAPABILITY_ERROR_INVALID:
      return reject(err, "invalid: %.*s", (int)why.len, why.ptr);
    default:
      return reject(err, "too large: %.*s", (int)why.len, why.ptr);
  }
}

bool exports_handler_handle(handler_message_t *msg, handler_handler_error_t *err) {
  const char *why;
  json_t *change = json_parse(msg->payload.ptr, msg->payload.len, &why);
  if (!change) return reject(err, "malformed " WHAT ": %s", why);
  if (change->kind != J_OBJ) return reject(err, "malformed " WHAT ": not a JSON object");
  json_member_t *id = json_member(change, "id");
  if (!id || id->value->kind != J_STR || id->value->len == 0)
    return reject(err, "malformed " WHAT ": id must be a non-empty string");
  json_t *id_value = id->value;
  bool deleted = false;
  json_member_t *d = json_member(change, "deleted");
  if (d) {
    if (d->value->kind != J_BOOL) return reject(err, "malformed " WHAT ": deleted must be true or false");
    deleted = d->value->boolean;
    // The stored product never carries the flag.
    json_remove(change, d);
  }

  size_t key_len = 8 + id_value->len;
  char *key = malloc(key_len);
  if (!key) abort();
  memcpy(key, "product:", 8);
  memcpy(key + 8, id_value->text, id_value->len);
  handler_string_t cache_key = {(uint8_t *)key, key_len};
  switchyard_handler_cache_capability_error_t cerr;
  if (deleted) {
    bool existed;
    if (!switchyard_handler_cache_delete(&cache_key, &existed, &cerr)) return failure(err, &cerr);
  } else {
    size_t len;
    char *value = json_canonical(change, &len);
    handler_list_u8_t bytes = {(uint8_t *)value, len};
    if (!switchyard_handler_cache_set(&cache_key, &bytes, NULL, &cerr)) return failure(err, &cerr);
  }
  return true;
}
