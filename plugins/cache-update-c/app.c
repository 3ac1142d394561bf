// Keeps the cache consistent with product-change events; the C twin of
// plugins/cache-update (same messages, same effects, same reasons).
//
// Build (from the repo root, with the toolchain `plugins/languages.sh` installs;
// it runs exactly these lines):
//   wit-bindgen c wit --world handler --out-dir plugins/cache-update-c/gen
//   python -m ziglang cc -target wasm32-wasi -mexec-model=reactor -O2 -s -Iplugins/cache-update-c/gen \
//     plugins/cache-update-c/app.c plugins/cache-update-c/gen/handler.c \
//     plugins/cache-update-c/gen/handler_component_type.o -o core.wasm
//   wasm-tools component new core.wasm --adapt wasi_snapshot_preview1=<reactor adapter> \
//     -o plugins/dist/cache_update_c.wasm
//
// C has no JSON in its standard library, so a small strict parser (RFC 8259,
// UTF-8, nesting up to 128 like serde_json) and a printer of the canonical form
// (compact, object keys sorted bytewise, the last of duplicate keys wins) live
// here. Every instance serves one message, so nothing is freed.

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handler.h"

#define WHAT "product change"
#define MAX_DEPTH 128

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } kind_t;

typedef struct json json_t;
typedef struct {
  char *key;
  size_t key_len;
  json_t *value;
  size_t order;  // position in the input, so the last duplicate wins
} member_t;

struct json {
  kind_t kind;
  bool boolean;
  char *text;  // J_NUM: canonical number text; J_STR: decoded UTF-8
  size_t len;
  json_t **items;  // J_ARR
  member_t *members;  // J_OBJ, sorted by key after parsing
  size_t count;
};

typedef struct {
  const uint8_t *p, *start, *end;
  char error[160];
} parser_t;

// A growable byte buffer.
typedef struct {
  char *ptr;
  size_t len, cap;
} buf_t;

static void put(buf_t *b, const void *data, size_t n) {
  if (b->len + n > b->cap) {
    b->cap = (b->len + n) * 2 + 64;
    b->ptr = realloc(b->ptr, b->cap);
    if (!b->ptr) abort();
  }
  memcpy(b->ptr + b->len, data, n);
  b->len += n;
}

static void putc_(buf_t *b, char c) { put(b, &c, 1); }

static bool fail(parser_t *ps, const char *what) {
  if (!ps->error[0]) snprintf(ps->error, sizeof ps->error, "%s at byte %zu", what, (size_t)(ps->p - ps->start));
  return false;
}

static void skip_ws(parser_t *ps) {
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static json_t *node(kind_t kind) {
  json_t *j = calloc(1, sizeof *j);
  if (!j) abort();
  j->kind = kind;
  return j;
}

static bool hex4(parser_t *ps, unsigned *out) {
  if (ps->end - ps->p < 4) return fail(ps, "truncated \\u escape");
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    uint8_t c = *ps->p++;
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else return fail(ps, "invalid \\u escape");
  }
  *out = v;
  return true;
}

static void put_utf8(buf_t *b, unsigned cp) {
  char s[4];
  if (cp < 0x80) { s[0] = cp; put(b, s, 1); }
  else if (cp < 0x800) { s[0] = 0xC0 | (cp >> 6); s[1] = 0x80 | (cp & 0x3F); put(b, s, 2); }
  else if (cp < 0x10000) { s[0] = 0xE0 | (cp >> 12); s[1] = 0x80 | ((cp >> 6) & 0x3F); s[2] = 0x80 | (cp & 0x3F); put(b, s, 3); }
  else { s[0] = 0xF0 | (cp >> 18); s[1] = 0x80 | ((cp >> 12) & 0x3F); s[2] = 0x80 | ((cp >> 6) & 0x3F); s[3] = 0x80 | (cp & 0x3F); put(b, s, 4); }
}

// Length of the valid UTF-8 sequence at p (RFC 3629: no overlongs, no
// surrogates, nothing above U+10FFFF), or 0.
static size_t utf8_len(const uint8_t *p, const uint8_t *end) {
  uint8_t c = p[0];
  size_t n;
  unsigned cp, min;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) { n = 2; cp = c & 0x1F; min = 0x80; }
  else if ((c & 0xF0) == 0xE0) { n = 3; cp = c & 0x0F; min = 0x800; }
  else if ((c & 0xF8) == 0xF0) { n = 4; cp = c & 0x07; min = 0x10000; }
  else return 0;
  if ((size_t)(end - p) < n) return 0;
  for (size_t i = 1; i < n; i++) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

static bool parse_string(parser_t *ps, char **out, size_t *out_len) {
  buf_t b = {0};
  ps->p++;  // the opening quote
  for (;;) {
    if (ps->p >= ps->end) return fail(ps, "unterminated string");
    uint8_t c = *ps->p;
    if (c == '"') { ps->p++; break; }
    if (c < 0x20) return fail(ps, "control character in string");
    if (c == '\\') {
      ps->p++;
      if (ps->p >= ps->end) return fail(ps, "unterminated string");
      uint8_t e = *ps->p++;
      switch (e) {
        case '"': putc_(&b, '"'); break;
        case '\\': putc_(&b, '\\'); break;
        case '/': putc_(&b, '/'); break;
        case 'b': putc_(&b, '\b'); break;
        case 'f': putc_(&b, '\f'); break;
        case 'n': putc_(&b, '\n'); break;
        case 'r': putc_(&b, '\r'); break;
        case 't': putc_(&b, '\t'); break;
        case 'u': {
          unsigned cp;
          if (!hex4(ps, &cp)) return false;
          if (cp >= 0xDC00 && cp <= 0xDFFF) return fail(ps, "lone trailing surrogate");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            unsigned lo;
            if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u') return fail(ps, "lone leading surrogate");
            ps->p += 2;
            if (!hex4(ps, &lo)) return false;
            if (lo < 0xDC00 || lo > 0xDFFF) return fail(ps, "lone leading surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(&b, cp);
          break;
        }
        default: return fail(ps, "invalid escape");
      }
      continue;
    }
    size_t n = utf8_len(ps->p, ps->end);
    if (!n) return fail(ps, "invalid UTF-8");
    put(&b, ps->p, n);
    ps->p += n;
  }
  putc_(&b, '\0');
  *out = b.ptr;
  *out_len = b.len - 1;
  return true;
}

static bool digits(parser_t *ps) {
  const uint8_t *s = ps->p;
  while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  return ps->p > s;
}

// Prints `v` as Python's repr and Rust's serde_json do for ordinary
// magnitudes: the fewest digits that read back the same, in decimal with at
// least one fractional digit (12.5, 100.0, 0.001), and in exponent form only
// below 1e-4 or from 1e16 on.
static void shortest(double v, char *out, size_t cap) {
  char e[40];
  int prec = 0;
  for (; prec < 17; prec++) {
    snprintf(e, sizeof e, "%.*e", prec, v);
    if (strtod(e, NULL) == v) break;
  }
  // e is "[-]d.ddde[+-]xx": split it into sign, digits and exponent.
  char digits[24];
  size_t nd = 0;
  const char *p = e;
  bool negative = *p == '-';
  if (negative) p++;
  for (; *p && *p != 'e'; p++)
    if (*p != '.') digits[nd++] = *p;
  int exp = atoi(p + 1);
  while (nd > 1 && digits[nd - 1] == '0') nd--;
  digits[nd] = '\0';
  buf_t b = {0};
  if (negative) putc_(&b, '-');
  if (exp < -4 || exp >= 16) {
    putc_(&b, digits[0]);
    if (nd > 1) { putc_(&b, '.'); put(&b, digits + 1, nd - 1); }
    char x[8];
    snprintf(x, sizeof x, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    put(&b, x, strlen(x));
  } else if (exp < 0) {
    put(&b, "0.", 2);
    for (int i = -1; i > exp; i--) putc_(&b, '0');
    put(&b, digits, nd);
  } else {
    for (int i = 0; i <= exp; i++) putc_(&b, (size_t)i < nd ? digits[i] : '0');
    putc_(&b, '.');
    if ((size_t)exp + 1 < nd) put(&b, digits + exp + 1, nd - exp - 1);
    else putc_(&b, '0');
  }
  putc_(&b, '\0');
  snprintf(out, cap, "%s", b.ptr);
  free(b.ptr);
}

// Integers keep their digits, as Rust, Python and JavaScript print them back;
// any other number goes through `shortest`.
static bool parse_number(parser_t *ps, json_t *j) {
  const uint8_t *s = ps->p;
  bool integer = true;
  if (*ps->p == '-') ps->p++;
  if (ps->p < ps->end && *ps->p == '0') ps->p++;
  else if (!digits(ps)) return fail(ps, "invalid number");
  if (ps->p < ps->end && *ps->p == '.') {
    ps->p++;
    integer = false;
    if (!digits(ps)) return fail(ps, "invalid number");
  }
  if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
    ps->p++;
    integer = false;
    if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
    if (!digits(ps)) return fail(ps, "invalid number");
  }
  size_t n = ps->p - s;
  char *text = malloc(n + 40);
  if (!text) abort();
  memcpy(text, s, n);
  text[n] = '\0';
  if (!integer || n > 19) {
    double v = strtod(text, NULL);
    if (!isfinite(v)) return fail(ps, "number out of range");
    shortest(v, text, n + 40);
  }
  j->text = text;
  j->len = strlen(text);
  return true;
}

static int member_cmp(const void *a, const void *b) {
  const member_t *x = a, *y = b;
  size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
  int c = memcmp(x->key, y->key, n);
  if (c) return c;
  if (x->key_len != y->key_len) return x->key_len < y->key_len ? -1 : 1;
  return x->order < y->order ? -1 : 1;
}

static bool literal(parser_t *ps, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n)) return fail(ps, "expected a value");
  ps->p += n;
  return true;
}

static json_t *parse_value(parser_t *ps, int depth) {
  if (depth > MAX_DEPTH) { fail(ps, "nested too deeply"); return NULL; }
  skip_ws(ps);
  if (ps->p >= ps->end) { fail(ps, "unexpected end"); return NULL; }
  json_t *j;
  switch (*ps->p) {
    case 'n': j = node(J_NULL); return literal(ps, "null") ? j : NULL;
    case 't': j = node(J_BOOL); j->boolean = true; return literal(ps, "true") ? j : NULL;
    case 'f': j = node(J_BOOL); return literal(ps, "false") ? j : NULL;
    case '"': j = node(J_STR); return parse_string(ps, &j->text, &j->len) ? j : NULL;
    case '[': {
      j = node(J_ARR);
      size_t cap = 0;
      ps->p++;
      skip_ws(ps);
      if (ps->p < ps->end && *ps->p == ']') { ps->p++; return j; }
      for (;;) {
        json_t *item = parse_value(ps, depth + 1);
        if (!item) return NULL;
        if (j->count == cap) {
          cap = cap * 2 + 4;
          j->items = realloc(j->items, cap * sizeof *j->items);
          if (!j->items) abort();
        }
        j->items[j->count++] = item;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        if (ps->p < ps->end && *ps->p == ']') { ps->p++; return j; }
        fail(ps, "expected , or ]");
        return NULL;
      }
    }
    case '{': {
      j = node(J_OBJ);
      size_t cap = 0;
      ps->p++;
      skip_ws(ps);
      if (ps->p < ps->end && *ps->p == '}') { ps->p++; return j; }
      for (;;) {
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != '"') { fail(ps, "expected a key"); return NULL; }
        member_t m = {.order = j->count};
        if (!parse_string(ps, &m.key, &m.key_len)) return NULL;
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != ':') { fail(ps, "expected :"); return NULL; }
        ps->p++;
        if (!(m.value = parse_value(ps, depth + 1))) return NULL;
        if (j->count == cap) {
          cap = cap * 2 + 4;
          j->members = realloc(j->members, cap * sizeof *j->members);
          if (!j->members) abort();
        }
        j->members[j->count++] = m;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        if (ps->p < ps->end && *ps->p == '}') { ps->p++; break; }
        fail(ps, "expected , or }");
        return NULL;
      }
      // Sort by key then input order, and keep only the last of each key.
      qsort(j->members, j->count, sizeof *j->members, member_cmp);
      size_t kept = 0;
      for (size_t i = 0; i < j->count; i++) {
        member_t *next = i + 1 < j->count ? &j->members[i + 1] : NULL;
        if (next && next->key_len == j->members[i].key_len && !memcmp(next->key, j->members[i].key, next->key_len)) continue;
        j->members[kept++] = j->members[i];
      }
      j->count = kept;
      return j;
    }
    default:
      if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) {
        j = node(J_NUM);
        return parse_number(ps, j) ? j : NULL;
      }
      fail(ps, "expected a value");
      return NULL;
  }
}

static json_t *parse(const uint8_t *bytes, size_t len, char *error, size_t error_len) {
  parser_t ps = {.p = bytes, .start = bytes, .end = bytes + len};
  json_t *j = parse_value(&ps, 0);
  if (j) {
    skip_ws(&ps);
    if (ps.p != ps.end) { fail(&ps, "trailing characters"); j = NULL; }
  }
  if (!j) snprintf(error, error_len, "%s", ps.error);
  return j;
}

static void print_string(buf_t *b, const char *s, size_t n) {
  putc_(b, '"');
  for (size_t i = 0; i < n; i++) {
    uint8_t c = s[i];
    switch (c) {
      case '"': put(b, "\\\"", 2); break;
      case '\\': put(b, "\\\\", 2); break;
      case '\b': put(b, "\\b", 2); break;
      case '\f': put(b, "\\f", 2); break;
      case '\n': put(b, "\\n", 2); break;
      case '\r': put(b, "\\r", 2); break;
      case '\t': put(b, "\\t", 2); break;
      default:
        if (c < 0x20) {
          char esc[8];
          snprintf(esc, sizeof esc, "\\u%04x", c);
          put(b, esc, 6);
        } else {
          putc_(b, c);
        }
    }
  }
  putc_(b, '"');
}

static void print(buf_t *b, const json_t *j) {
  switch (j->kind) {
    case J_NULL: put(b, "null", 4); break;
    case J_BOOL: j->boolean ? put(b, "true", 4) : put(b, "false", 5); break;
    case J_NUM: put(b, j->text, j->len); break;
    case J_STR: print_string(b, j->text, j->len); break;
    case J_ARR:
      putc_(b, '[');
      for (size_t i = 0; i < j->count; i++) {
        if (i) putc_(b, ',');
        print(b, j->items[i]);
      }
      putc_(b, ']');
      break;
    case J_OBJ:
      putc_(b, '{');
      for (size_t i = 0; i < j->count; i++) {
        if (i) putc_(b, ',');
        print_string(b, j->members[i].key, j->members[i].key_len);
        putc_(b, ':');
        print(b, j->members[i].value);
      }
      putc_(b, '}');
      break;
  }
}

static member_t *member(json_t *obj, const char *key) {
  for (size_t i = 0; i < obj->count; i++)
    if (obj->members[i].key_len == strlen(key) && !memcmp(obj->members[i].key, key, obj->members[i].key_len))
      return &obj->members[i];
  return NULL;
}

// The handler's error strings are freed by the bindings after the call
// returns, so they must be on the heap.
static bool reject(handler_handler_error_t *err, const char *fmt, ...) {
  char reason[512];
  va_list args;
  va_start(args, fmt);
  vsnprintf(reason, sizeof reason, fmt, args);
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
  char error[200];
  json_t *change = parse(msg->payload.ptr, msg->payload.len, error, sizeof error);
  if (!change) return reject(err, "malformed " WHAT ": not JSON: %s", error);
  if (change->kind != J_OBJ) return reject(err, "malformed " WHAT ": not a JSON object");
  member_t *id = member(change, "id");
  if (!id || id->value->kind != J_STR || id->value->len == 0)
    return reject(err, "malformed " WHAT ": id must be a non-empty string");
  bool deleted = false;
  member_t *d = member(change, "deleted");
  if (d) {
    if (d->value->kind != J_BOOL) return reject(err, "malformed " WHAT ": deleted must be true or false");
    deleted = d->value->boolean;
    // The stored product never carries the flag.
    size_t at = d - change->members;
    memmove(d, d + 1, (change->count - at - 1) * sizeof *d);
    change->count--;
    id = member(change, "id");
  }

  buf_t key = {0};
  put(&key, "product:", 8);
  put(&key, id->value->text, id->value->len);
  handler_string_t cache_key = {(uint8_t *)key.ptr, key.len};
  switchyard_handler_cache_capability_error_t cerr;
  if (deleted) {
    bool existed;
    if (!switchyard_handler_cache_delete(&cache_key, &existed, &cerr)) return failure(err, &cerr);
  } else {
    buf_t value = {0};
    print(&value, change);
    handler_list_u8_t bytes = {(uint8_t *)value.ptr, value.len};
    if (!switchyard_handler_cache_set(&cache_key, &bytes, NULL, &cerr)) return failure(err, &cerr);
  }
  return true;
}
