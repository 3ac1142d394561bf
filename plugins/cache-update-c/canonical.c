// The reader and the canonical encoder of canonical.h, rule for rule as
// plugins/cache-update/SPEC.md states them, in the same order as the Rust
// (the canonical module of sdk-rust/src/lib.rs), Python and JavaScript helpers, so that each
// reason names the same byte.

#include "canonical.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// A growable byte buffer.
typedef struct {
  char *ptr;
  size_t len, cap;
} buf_t;

static void put(buf_t *b, const void *data, size_t n) {
  if (b->len + n + 1 > b->cap) {
    b->cap = (b->len + n + 1) * 2 + 64;
    b->ptr = realloc(b->ptr, b->cap);
    if (!b->ptr) abort();
  }
  memcpy(b->ptr + b->len, data, n);
  b->len += n;
  b->ptr[b->len] = '\0';  // so a buffer is always a C string too
}

static void put_char(buf_t *b, char c) { put(b, &c, 1); }

static void put_str(buf_t *b, const char *s) { put(b, s, strlen(s)); }

static void put_fmt(buf_t *b, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  int n = vsnprintf(NULL, 0, fmt, args);
  va_end(args);
  char *s = malloc((size_t)n + 1);
  if (!s) abort();
  va_start(args, fmt);
  vsnprintf(s, (size_t)n + 1, fmt, args);
  va_end(args);
  put(b, s, (size_t)n);
  free(s);
}

static void *alloc(size_t n) {
  void *p = calloc(1, n ? n : 1);
  if (!p) abort();
  return p;
}

// ---- canonical strings (SPEC.md 2.2) ----

static void put_string(buf_t *b, const char *s, size_t n) {
  put_char(b, '"');
  size_t run = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t c = (uint8_t)s[i];
    const char *escape;
    switch (c) {
      case '"': escape = "\\\""; break;
      case '\\': escape = "\\\\"; break;
      case '\b': escape = "\\b"; break;
      case '\t': escape = "\\t"; break;
      case '\n': escape = "\\n"; break;
      case '\f': escape = "\\f"; break;
      case '\r': escape = "\\r"; break;
      default:
        if (c >= 0x20) continue;
        escape = NULL;
    }
    put(b, s + run, i - run);
    if (escape) put_str(b, escape);
    else put_fmt(b, "\\u%04x", c);
    run = i + 1;
  }
  put(b, s + run, n - run);
  put_char(b, '"');
}

// ---- UTF-8 and UTF-16 ----

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

static void put_utf8(buf_t *b, unsigned cp) {
  char s[4];
  if (cp < 0x80) { s[0] = (char)cp; put(b, s, 1); }
  else if (cp < 0x800) { s[0] = (char)(0xC0 | (cp >> 6)); s[1] = (char)(0x80 | (cp & 0x3F)); put(b, s, 2); }
  else if (cp < 0x10000) {
    s[0] = (char)(0xE0 | (cp >> 12)); s[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); s[2] = (char)(0x80 | (cp & 0x3F));
    put(b, s, 3);
  } else {
    s[0] = (char)(0xF0 | (cp >> 18)); s[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    s[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); s[3] = (char)(0x80 | (cp & 0x3F));
    put(b, s, 4);
  }
}

// Walks a valid UTF-8 string as UTF-16 code units.
typedef struct {
  const uint8_t *p, *end;
  unsigned pending;  // the low surrogate still to come, or 0
} units_t;

static long next_unit(units_t *u) {
  if (u->pending) {
    unsigned low = u->pending;
    u->pending = 0;
    return low;
  }
  if (u->p >= u->end) return -1;
  size_t n = utf8_len(u->p, u->end);
  unsigned cp = n == 1 ? u->p[0] : (unsigned)(u->p[0] & (0xFF >> (n + 1)));
  for (size_t i = 1; i < n; i++) cp = (cp << 6) | (u->p[i] & 0x3F);
  u->p += n;
  if (cp < 0x10000) return cp;
  cp -= 0x10000;
  u->pending = 0xDC00 | (cp & 0x3FF);
  return 0xD800 | (cp >> 10);
}

// Keys in UTF-16 code unit order, as RFC 8785 (and JavaScript's sort) has
// them; byte order differs for characters from U+E000 up.
static int member_cmp(const void *a, const void *b) {
  const json_member_t *x = a, *y = b;
  units_t ux = {(const uint8_t *)x->key, (const uint8_t *)x->key + x->key_len, 0};
  units_t uy = {(const uint8_t *)y->key, (const uint8_t *)y->key + y->key_len, 0};
  for (;;) {
    long cx = next_unit(&ux), cy = next_unit(&uy);
    if (cx != cy) return cx < cy ? -1 : 1;
    if (cx < 0) return 0;
  }
}

// ---- numbers (SPEC.md 1.4 and 2.3) ----

// A decimal number as ±0.digits × 10^point, digits without leading or
// trailing zeros (none for zero, whose sign is dropped). Two numbers are
// equal exactly when their decimals are.
typedef struct {
  bool negative;
  char *digits;
  size_t count;
  long long point;
} decimal_t;

// Exponents beyond this are clamped: payloads are far shorter than it, so a
// clamped exponent still tells a number apart from every canonical text.
#define EXPONENT_CLAMP 1000000000LL

static bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

// The value of a JSON number text (or of printf's %e output).
static decimal_t decimal_of(const char *t, size_t n) {
  decimal_t d = {0};
  size_t i = 0;
  bool negative = n > 0 && t[0] == '-';
  if (negative) i++;
  size_t int_start = i;
  while (i < n && is_digit((uint8_t)t[i])) i++;
  size_t int_end = i, frac_start = i, frac_end = i;
  if (i < n && t[i] == '.') {
    frac_start = ++i;
    while (i < n && is_digit((uint8_t)t[i])) i++;
    frac_end = i;
  }
  long long exp = 0;
  if (i < n && (t[i] == 'e' || t[i] == 'E')) {
    i++;
    bool exp_negative = i < n && t[i] == '-';
    if (i < n && (t[i] == '-' || t[i] == '+')) i++;
    for (; i < n && is_digit((uint8_t)t[i]); i++) {
      exp = exp * 10 + (t[i] - '0');
      if (exp > EXPONENT_CLAMP) exp = EXPONENT_CLAMP;
    }
    if (exp_negative) exp = -exp;
  }
  d.digits = alloc(int_end - int_start + frac_end - frac_start + 1);
  size_t all = 0;
  for (size_t k = int_start; k < int_end; k++)
    if (all || t[k] != '0') d.digits[all++] = t[k];
  for (size_t k = frac_start; k < frac_end; k++)
    if (all || t[k] != '0') d.digits[all++] = t[k];
  d.count = all;
  while (d.count && d.digits[d.count - 1] == '0') d.count--;
  d.digits[d.count] = '\0';
  if (d.count == 0) return d;
  d.negative = negative;
  d.point = (long long)all + exp - (long long)(frac_end - frac_start);
  return d;
}

static bool decimal_eq(const decimal_t *a, const decimal_t *b) {
  return a->negative == b->negative && a->count == b->count && a->point == b->point &&
         !memcmp(a->digits, b->digits, a->count);
}

// The shortest digits that read back as `v` (finite), and of those the
// nearest, the even one on a tie, as ECMAScript requires. At each length,
// %e gives the nearest digits (exactly, ties to even); when they do not read
// back, the neighbour on the other side of v is the only other candidate.
static decimal_t decimal_of_double(double v) {
  double m = fabs(v);
  char e[64], other[64];
  decimal_t d = {0};
  if (m == 0) {
    d.digits = alloc(1);
    return d;
  }
  for (int prec = 0; prec <= 16; prec++) {
    snprintf(e, sizeof e, "%.*e", prec, m);
    double back = strtod(e, NULL);
    if (back == m || prec == 16) {
      d = decimal_of(e, strlen(e));
      break;
    }
    // e is "d.ddde±x": its digits as one integer, and the exponent.
    unsigned long long s = 0;
    const char *p = e;
    for (; *p != 'e'; p++)
      if (*p != '.') s = s * 10 + (unsigned long long)(*p - '0');
    int x = atoi(p + 1);
    snprintf(other, sizeof other, "%llue%d", back < m ? s + 1 : s - 1, x - prec);
    if (strtod(other, NULL) == m) {
      d = decimal_of(other, strlen(other));
      break;
    }
  }
  d.negative = v < 0;
  return d;
}

// ECMAScript's Number::toString layout of a decimal (SPEC.md 2.3).
static char *es_text(const decimal_t *d) {
  buf_t b = {0};
  if (d->count == 0) {
    put_char(&b, '0');
    return b.ptr;
  }
  long long k = (long long)d->count, n = d->point;
  if (d->negative) put_char(&b, '-');
  if (k <= n && n <= 21) {
    put(&b, d->digits, d->count);
    for (long long i = 0; i < n - k; i++) put_char(&b, '0');
  } else if (0 < n && n <= 21) {
    put(&b, d->digits, (size_t)n);
    put_char(&b, '.');
    put(&b, d->digits + n, (size_t)(k - n));
  } else if (-6 < n && n <= 0) {
    put_str(&b, "0.");
    for (long long i = 0; i < -n; i++) put_char(&b, '0');
    put(&b, d->digits, d->count);
  } else {
    put_char(&b, d->digits[0]);
    if (k > 1) {
      put_char(&b, '.');
      put(&b, d->digits + 1, d->count - 1);
    }
    put_fmt(&b, "e%c%lld", n - 1 < 0 ? '-' : '+', n - 1 < 0 ? 1 - n : n - 1);
  }
  return b.ptr;
}

// True for zero, and for at most 15 significant digits in the normal range
// of doubles (1e-307 <= |x| < 1e308): there 15-digit steps are wider than a
// double's spacing, so no other 15-digit decimal, shorter or not, reads back
// as the nearest double, whose canonical digits are therefore these. The
// full check (strtod, then the shortest digits) gives the same answer; this
// one spares it, which matters: wasi-libc's strtod and printf work in long
// double, which WebAssembly emulates in software, some hundred times slower.
static bool exact_by_digits(const decimal_t *d) {
  return d->count == 0 || (d->count <= 15 && d->point >= -306 && d->point <= 308);
}

// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, the whole of t.
static bool is_json_number(const uint8_t *t, size_t n) {
  size_t i = n > 0 && t[0] == '-';
  if (i < n && t[i] == '0') i++;
  else if (i < n && t[i] >= '1' && t[i] <= '9') while (i < n && is_digit(t[i])) i++;
  else return false;
  if (i < n && t[i] == '.') {
    size_t start = ++i;
    while (i < n && is_digit(t[i])) i++;
    if (i == start) return false;
  }
  if (i < n && (t[i] == 'e' || t[i] == 'E')) {
    i++;
    if (i < n && (t[i] == '+' || t[i] == '-')) i++;
    size_t start = i;
    while (i < n && is_digit(t[i])) i++;
    if (i == start) return false;
  }
  return i == n;
}

// ---- the reader (SPEC.md section 1) ----

typedef struct {
  const uint8_t *b;
  size_t len, at;
  buf_t reason;
} reader_t;

// Each returns false, so `return not_json(r, ...)` ends the parse.
static bool not_json(reader_t *r, const char *what, size_t at) {
  put_fmt(&r->reason, "not JSON: %s at byte %zu", what, at);
  return false;
}

static bool end(reader_t *r) { return not_json(r, "unexpected end", r->len); }

static int peek(const reader_t *r) { return r->at < r->len ? r->b[r->at] : -1; }

static void ws(reader_t *r) {
  while (r->at < r->len && (r->b[r->at] == ' ' || r->b[r->at] == '\t' || r->b[r->at] == '\n' || r->b[r->at] == '\r'))
    r->at++;
}

static json_t *node(json_kind_t kind) {
  json_t *j = alloc(sizeof *j);
  j->kind = kind;
  return j;
}

// The four hex digits of a \u escape whose backslash is at `escape`.
static bool hex4(reader_t *r, size_t escape, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    int c = peek(r);
    if (c < 0) return end(r);
    if (c >= '0' && c <= '9') v = v * 16 + (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v = v * 16 + (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v = v * 16 + (unsigned)(c - 'A' + 10);
    else return not_json(r, "invalid escape", escape);
    r->at++;
  }
  *out = v;
  return true;
}

static bool escape(reader_t *r, buf_t *out) {
  size_t at = r->at++;
  int c = peek(r);
  if (c < 0) return end(r);
  const char *simple = strchr("\"\\/bfnrt", c);
  if (c && simple) {
    static const char decoded[] = "\"\\/\b\f\n\r\t";
    put_char(out, decoded[simple - "\"\\/bfnrt"]);
    r->at++;
    return true;
  }
  if (c != 'u') return not_json(r, "invalid escape", at);
  r->at++;
  unsigned unit;
  if (!hex4(r, at, &unit)) return false;
  if (unit >= 0xDC00 && unit <= 0xDFFF) return not_json(r, "lone surrogate", at);
  if (unit >= 0xD800 && unit <= 0xDBFF) {
    for (const char *want = "\\u"; *want; want++) {
      int next = peek(r);
      if (next < 0) return end(r);
      if (next != *want) return not_json(r, "lone surrogate", at);
      r->at++;
    }
    unsigned low;
    if (!hex4(r, r->at - 2, &low)) return false;
    if (low < 0xDC00 || low > 0xDFFF) return not_json(r, "lone surrogate", at);
    unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
  }
  put_utf8(out, unit);
  return true;
}

// A string starting at its opening quote; the payload is valid UTF-8 already.
static bool string(reader_t *r, char **text, size_t *len) {
  buf_t b = {0};
  put(&b, "", 0);
  r->at++;
  for (;;) {
    size_t run = r->at;
    while (r->at < r->len && r->b[r->at] >= 0x20 && r->b[r->at] != '"' && r->b[r->at] != '\\') r->at++;
    put(&b, r->b + run, r->at - run);
    int c = peek(r);
    if (c < 0) return end(r);
    if (c == '"') {
      r->at++;
      *text = b.ptr;
      *len = b.len;
      return true;
    }
    if (c != '\\') return not_json(r, "control character in string", r->at);
    if (!escape(r, &b)) return false;
  }
}

static bool is_number_byte(uint8_t c) { return is_digit(c) || c == '+' || c == '-' || c == '.' || c == 'e' || c == 'E'; }

static bool number(reader_t *r, json_t *j) {
  size_t start = r->at;
  while (r->at < r->len && is_number_byte(r->b[r->at])) r->at++;
  size_t n = r->at - start;
  if (!is_json_number(r->b + start, n)) return not_json(r, "invalid number", start);
  char *token = alloc(n + 1);
  memcpy(token, r->b + start, n);
  decimal_t sent = decimal_of(token, n);
  if (exact_by_digits(&sent)) {
    j->text = es_text(&sent);
    j->len = strlen(j->text);
    return true;
  }
  // strtod is correctly rounded (nearest double, ties to even), like
  // JavaScript's Number(); the token is plain JSON, which it reads the same.
  double v = strtod(token, NULL);
  if (isinf(v)) {
    put_fmt(&r->reason, "number at byte %zu is beyond the range of a double", start);
    return false;
  }
  decimal_t nearest = decimal_of_double(v);
  if (!decimal_eq(&sent, &nearest)) {
    put_fmt(&r->reason, "number at byte %zu cannot be stored exactly (the nearest double is %s)", start,
            es_text(&nearest));
    return false;
  }
  j->text = es_text(&sent);
  j->len = strlen(j->text);
  return true;
}

// How a key is shown in a reason: its canonical string, cut after 64
// characters (code points) with "..." after the closing quote.
static void put_shown_key(buf_t *b, const char *key, size_t len) {
  size_t cut = 0, chars = 0;
  while (cut < len && chars < 64) {
    cut += utf8_len((const uint8_t *)key + cut, (const uint8_t *)key + len);
    chars++;
  }
  put_string(b, key, cut);
  if (cut < len) put_str(b, "...");
}

// Open-addressing set of an object's member indices, by key, so a duplicate
// is found when its key is read, not after the object.
typedef struct {
  size_t *slots;  // index + 1, 0 for empty
  size_t cap;
} keyset_t;

static uint64_t hash(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ULL;
  return h;
}

// Adds member `index` of `members`; false if its key is there already.
static bool keyset_add(keyset_t *set, const json_member_t *members, size_t index) {
  if ((index + 1) * 2 > set->cap) {
    keyset_t bigger = {alloc(sizeof(size_t) * (set->cap * 2 + 16)), set->cap * 2 + 16};
    for (size_t i = 0; i < set->cap; i++)
      if (set->slots[i]) keyset_add(&bigger, members, set->slots[i] - 1);
    free(set->slots);
    *set = bigger;
  }
  const json_member_t *m = &members[index];
  for (size_t i = hash(m->key, m->key_len) % set->cap;; i = (i + 1) % set->cap) {
    if (!set->slots[i]) {
      set->slots[i] = index + 1;
      return true;
    }
    const json_member_t *o = &members[set->slots[i] - 1];
    if (o->key_len == m->key_len && !memcmp(o->key, m->key, m->key_len)) return false;
  }
}

static json_t *value(reader_t *r, size_t open);

static json_t *object(reader_t *r, size_t open) {
  json_t *j = node(J_OBJ);
  size_t cap = 0;
  keyset_t keys = {0};
  r->at++;
  ws(r);
  if (peek(r) == '}') {
    r->at++;
    return j;
  }
  for (;;) {
    size_t key_at = r->at;
    int c = peek(r);
    if (c < 0) return end(r), NULL;
    if (c != '"') return not_json(r, "expected a string key", r->at), NULL;
    if (j->count == cap) {
      cap = cap * 2 + 4;
      j->members = realloc(j->members, cap * sizeof *j->members);
      if (!j->members) abort();
    }
    json_member_t *m = &j->members[j->count];
    if (!string(r, &m->key, &m->key_len)) return NULL;
    if (!keyset_add(&keys, j->members, j->count)) {
      put_str(&r->reason, "duplicate key ");
      put_shown_key(&r->reason, m->key, m->key_len);
      put_fmt(&r->reason, " at byte %zu", key_at);
      return NULL;
    }
    ws(r);
    c = peek(r);
    if (c < 0) return end(r), NULL;
    if (c != ':') return not_json(r, "expected ':'", r->at), NULL;
    r->at++;
    ws(r);
    if (!(m->value = value(r, open))) return NULL;
    j->count++;
    ws(r);
    c = peek(r);
    if (c < 0) return end(r), NULL;
    if (c == ',') {
      r->at++;
      ws(r);
    } else if (c == '}') {
      r->at++;
      break;
    } else {
      return not_json(r, "expected ',' or '}'", r->at), NULL;
    }
  }
  free(keys.slots);
  // Keys are unique, so the order is total.
  qsort(j->members, j->count, sizeof *j->members, member_cmp);
  return j;
}

static json_t *array(reader_t *r, size_t open) {
  json_t *j = node(J_ARR);
  size_t cap = 0;
  r->at++;
  ws(r);
  if (peek(r) == ']') {
    r->at++;
    return j;
  }
  for (;;) {
    json_t *item = value(r, open);
    if (!item) return NULL;
    if (j->count == cap) {
      cap = cap * 2 + 4;
      j->items = realloc(j->items, cap * sizeof *j->items);
      if (!j->items) abort();
    }
    j->items[j->count++] = item;
    ws(r);
    int c = peek(r);
    if (c < 0) return end(r), NULL;
    if (c == ',') {
      r->at++;
      ws(r);
    } else if (c == ']') {
      r->at++;
      return j;
    } else {
      return not_json(r, "expected ',' or ']'", r->at), NULL;
    }
  }
}

static json_t *literal(reader_t *r, const char *word, json_t *j) {
  size_t n = strlen(word);
  if (r->len - r->at < n || memcmp(r->b + r->at, word, n)) return not_json(r, "expected a value", r->at), NULL;
  r->at += n;
  return j;
}

// A value starting at the current byte, inside `open` arrays and objects.
static json_t *value(reader_t *r, size_t open) {
  int c = peek(r);
  if (c < 0) return end(r), NULL;
  if ((c == '{' || c == '[') && open == JSON_MAX_DEPTH) {
    put_fmt(&r->reason, "nested deeper than %d levels at byte %zu", JSON_MAX_DEPTH, r->at);
    return NULL;
  }
  json_t *j;
  switch (c) {
    case '{': return object(r, open + 1);
    case '[': return array(r, open + 1);
    case '"': j = node(J_STR); return string(r, &j->text, &j->len) ? j : NULL;
    case 't': j = node(J_BOOL); j->boolean = true; return literal(r, "true", j);
    case 'f': return literal(r, "false", node(J_BOOL));
    case 'n': return literal(r, "null", node(J_NULL));
    default:
      if (c == '-' || is_digit((uint8_t)c)) {
        j = node(J_NUM);
        return number(r, j) ? j : NULL;
      }
      return not_json(r, "expected a value", r->at), NULL;
  }
}

json_t *json_parse(const uint8_t *bytes, size_t len, const char **reason) {
  reader_t r = {.b = bytes, .len = len};
  // The whole payload is UTF-8 before any JSON rule is checked (SPEC.md 1.1).
  for (size_t i = 0; i < len;) {
    size_t n = utf8_len(bytes + i, bytes + len);
    if (!n) {
      not_json(&r, "invalid UTF-8", i);
      *reason = r.reason.ptr;
      return NULL;
    }
    i += n;
  }
  ws(&r);
  json_t *j = value(&r, 0);
  if (j) {
    ws(&r);
    if (r.at < len) {
      not_json(&r, "trailing characters", r.at);
      j = NULL;
    }
  }
  if (!j) *reason = r.reason.ptr;
  return j;
}

json_member_t *json_member(json_t *object, const char *key) {
  size_t n = strlen(key);
  for (size_t i = 0; i < object->count; i++)
    if (object->members[i].key_len == n && !memcmp(object->members[i].key, key, n)) return &object->members[i];
  return NULL;
}

void json_remove(json_t *object, json_member_t *member) {
  size_t at = (size_t)(member - object->members);
  memmove(member, member + 1, (object->count - at - 1) * sizeof *member);
  object->count--;
}

// ---- the canonical encoding (SPEC.md section 2) ----

static void print(buf_t *b, const json_t *j) {
  switch (j->kind) {
    case J_NULL: put_str(b, "null"); break;
    case J_BOOL: put_str(b, j->boolean ? "true" : "false"); break;
    case J_NUM: put(b, j->text, j->len); break;
    case J_STR: put_string(b, j->text, j->len); break;
    case J_ARR:
      put_char(b, '[');
      for (size_t i = 0; i < j->count; i++) {
        if (i) put_char(b, ',');
        print(b, j->items[i]);
      }
      put_char(b, ']');
      break;
    case J_OBJ:
      put_char(b, '{');
      for (size_t i = 0; i < j->count; i++) {
        if (i) put_char(b, ',');
        put_string(b, j->members[i].key, j->members[i].key_len);
        put_char(b, ':');
        print(b, j->members[i].value);
      }
      put_char(b, '}');
      break;
  }
}

char *json_canonical(const json_t *value, size_t *len) {
  buf_t b = {0};
  put(&b, "", 0);
  print(&b, value);
  *len = b.len;
  return b.ptr;
}
