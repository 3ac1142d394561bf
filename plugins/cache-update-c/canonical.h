// Strict JSON in, canonical JSON out, for handlers written in C: the rules of
// plugins/cache-update/SPEC.md, which the Rust, Python and JavaScript helpers
// implement too, so every language accepts the same payloads, refuses the
// rest with the same reason and writes the same bytes.
//
// Every handler instance serves one message, so nothing here is freed.
#ifndef SWITCHYARD_CANONICAL_H
#define SWITCHYARD_CANONICAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Arrays and objects open at once, the top-level value being the first.
#define JSON_MAX_DEPTH 64

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } json_kind_t;

typedef struct json json_t;

typedef struct {
  char *key;  // UTF-8, may hold U+0000, so always used with key_len
  size_t key_len;
  json_t *value;
} json_member_t;

struct json {
  json_kind_t kind;
  bool boolean;
  char *text;  // J_NUM: the canonical number text; J_STR: the UTF-8 string
  size_t len;
  json_t **items;  // J_ARR
  json_member_t *members;  // J_OBJ, in canonical order (keys by UTF-16 code units)
  size_t count;
};

// `bytes` read by SPEC.md section 1. On failure NULL, and *reason is the
// reason after "malformed <what>: ", e.g. "not JSON: unexpected end at byte 9".
json_t *json_parse(const uint8_t *bytes, size_t len, const char **reason);

// The member of `object` called `key` (a C string), or NULL.
json_member_t *json_member(json_t *object, const char *key);

// Removes a member (from json_member) from its object.
void json_remove(json_t *object, json_member_t *member);

// `value` in the canonical encoding of SPEC.md section 2 (RFC 8785), on the
// heap; *len is its length.
char *json_canonical(const json_t *value, size_t *len);

#endif
