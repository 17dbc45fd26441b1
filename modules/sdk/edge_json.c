/*
 * edge_json: see edge_json.h. Owns JSON text only; must stay free of the
 * guest ABI so that command modules can link it alone.
 */
#include "edge_json.h"
#include "edge_pow10.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- reader */

typedef struct {
    const char *p;
    const char *end;
} parser;

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && is_ws(*p))
        p++;
    return p;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The length of the well-formed UTF-8 sequence at p (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or 0. */
static size_t utf8_char(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0], lo = 0x80, hi = 0xBF;
    size_t n;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if ((size_t)(end - p) < n || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    return n;
}

static bool parse_string(parser *ps, edge_json *out)
{
    const char *start = ps->p;
    const char *p = start + 1;
    while (p < ps->end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            out->ptr = start;
            out->len = (uint32_t)(p + 1 - start);
            out->type = EDGE_JSON_STRING;
            ps->p = p + 1;
            return true;
        }
        if (c < 0x20)
            break;
        if (c >= 0x80) {
            size_t n = utf8_char((const unsigned char *)p, (const unsigned char *)ps->end);
            if (n == 0)
                break;
            p += n;
            continue;
        }
        if (c == '\\') {
            if (++p >= ps->end)
                break;
            switch (*p) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                break;
            case 'u':
                if (ps->end - p < 5)
                    goto fail;
                for (int i = 1; i <= 4; i++)
                    if (hex_value(p[i]) < 0)
                        goto fail;
                p += 4;
                break;
            default:
                goto fail;
            }
        }
        p++;
    }
fail:
    ps->p = p;
    return false;
}

static bool parse_number(parser *ps, edge_json *out)
{
    const char *start = ps->p;
    const char *p = start;
    const char *end = ps->end;
    if (p < end && *p == '-')
        p++;
    if (p < end && *p == '0') {
        p++;
    } else if (p < end && *p >= '1' && *p <= '9') {
        while (p < end && is_digit(*p))
            p++;
    } else {
        goto fail;
    }
    if (p < end && *p == '.') {
        p++;
        if (p >= end || !is_digit(*p))
            goto fail;
        while (p < end && is_digit(*p))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || !is_digit(*p))
            goto fail;
        while (p < end && is_digit(*p))
            p++;
    }
    /* The cap keeps edge_json_number() to a stack buffer; no sane producer
     * writes a double in more digits than this. */
    if (p - start > EDGE_JSON_MAX_NUMBER)
        goto fail;
    out->ptr = start;
    out->len = (uint32_t)(p - start);
    out->type = EDGE_JSON_NUMBER;
    ps->p = p;
    return true;
fail:
    ps->p = p;
    return false;
}

static bool parse_literal(parser *ps, const char *word, size_t n, edge_json_type type, edge_json *out)
{
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return false;
    out->ptr = ps->p;
    out->len = (uint32_t)n;
    out->type = type;
    ps->p += n;
    return true;
}

static bool parse_value(parser *ps, int depth, edge_json *out);

static bool parse_container(parser *ps, int depth, bool is_object, edge_json *out)
{
    const char *start = ps->p;
    char close = is_object ? '}' : ']';
    edge_json item;
    if (depth >= EDGE_JSON_MAX_DEPTH)
        return false;
    ps->p = skip_ws(ps->p + 1, ps->end);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        goto done;
    }
    for (;;) {
        if (is_object) {
            if (ps->p >= ps->end || *ps->p != '"' || !parse_string(ps, &item))
                return false;
            ps->p = skip_ws(ps->p, ps->end);
            if (ps->p >= ps->end || *ps->p != ':')
                return false;
            ps->p = skip_ws(ps->p + 1, ps->end);
        }
        if (!parse_value(ps, depth + 1, &item))
            return false;
        ps->p = skip_ws(ps->p, ps->end);
        if (ps->p >= ps->end)
            return false;
        if (*ps->p == close) {
            ps->p++;
            break;
        }
        if (*ps->p != ',')
            return false;
        ps->p = skip_ws(ps->p + 1, ps->end);
    }
done:
    out->ptr = start;
    out->len = (uint32_t)(ps->p - start);
    out->type = is_object ? EDGE_JSON_OBJECT : EDGE_JSON_ARRAY;
    return true;
}

static bool parse_value(parser *ps, int depth, edge_json *out)
{
    if (ps->p >= ps->end)
        return false;
    switch (*ps->p) {
    case '{': return parse_container(ps, depth, true, out);
    case '[': return parse_container(ps, depth, false, out);
    case '"': return parse_string(ps, out);
    case 't': return parse_literal(ps, "true", 4, EDGE_JSON_BOOL, out);
    case 'f': return parse_literal(ps, "false", 5, EDGE_JSON_BOOL, out);
    case 'n': return parse_literal(ps, "null", 4, EDGE_JSON_NULL, out);
    default: return parse_number(ps, out);
    }
}

int edge_json_parse(const char *text, size_t len, edge_json *root, size_t *error_offset)
{
    parser ps;
    edge_json v;
    /* Spans store 32-bit lengths. */
    if (text == NULL || len > 0x7fffffffu) {
        if (error_offset)
            *error_offset = 0;
        return -1;
    }
    ps.end = text + len;
    ps.p = skip_ws(text, ps.end);
    if (parse_value(&ps, 0, &v)) {
        ps.p = skip_ws(ps.p, ps.end);
        if (ps.p == ps.end) {
            *root = v;
            return 0;
        }
    }
    if (error_offset)
        *error_offset = (size_t)(ps.p - text);
    return -1;
}

/* The rest of the reader walks text that edge_json_parse() accepted, so it
 * only has to find where things end, never to check them again. */

static edge_json_type type_of(char c)
{
    switch (c) {
    case '{': return EDGE_JSON_OBJECT;
    case '[': return EDGE_JSON_ARRAY;
    case '"': return EDGE_JSON_STRING;
    case 't': case 'f': return EDGE_JSON_BOOL;
    case 'n': return EDGE_JSON_NULL;
    default: return EDGE_JSON_NUMBER;
    }
}

static const char *string_end(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return end;
}

static const char *value_end(const char *p, const char *end)
{
    switch (*p) {
    case '"':
        return string_end(p, end);
    case '{':
    case '[': {
        int depth = 0;
        while (p < end) {
            char c = *p;
            if (c == '"') {
                p = string_end(p, end);
                continue;
            }
            if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                if (--depth == 0)
                    return p + 1;
            }
            p++;
        }
        return end;
    }
    default:
        while (p < end && *p != ',' && *p != '}' && *p != ']' && !is_ws(*p))
            p++;
        return p;
    }
}

static void take_value(edge_json_iter *it, edge_json *v)
{
    const char *e = value_end(it->p, it->end);
    v->ptr = it->p;
    v->len = (uint32_t)(e - it->p);
    v->type = type_of(*it->p);
    it->p = e;
}

void edge_json_iter_init(edge_json_iter *it, const edge_json *c)
{
    if (c && (c->type == EDGE_JSON_OBJECT || c->type == EDGE_JSON_ARRAY) && c->len >= 2) {
        it->p = c->ptr + 1;
        it->end = c->ptr + c->len - 1; /* the closing bracket */
    } else {
        it->p = it->end = NULL;
    }
}

/* Moves past whitespace and the separating comma to the next item. */
static bool iter_advance(edge_json_iter *it)
{
    const char *p = it->p;
    while (p < it->end && (is_ws(*p) || *p == ','))
        p++;
    it->p = p;
    return p < it->end;
}

bool edge_json_next_member(edge_json_iter *it, edge_json *key, edge_json *value)
{
    if (!iter_advance(it) || *it->p != '"')
        return false;
    take_value(it, key);
    while (it->p < it->end && (is_ws(*it->p) || *it->p == ':'))
        it->p++;
    if (it->p >= it->end)
        return false;
    take_value(it, value);
    return true;
}

bool edge_json_next_element(edge_json_iter *it, edge_json *value)
{
    if (!iter_advance(it))
        return false;
    take_value(it, value);
    return true;
}

bool edge_json_get(const edge_json *obj, const char *key, edge_json *out)
{
    edge_json_iter it;
    edge_json k, v;
    size_t n = strlen(key);
    out->ptr = NULL;
    out->len = 0;
    out->type = EDGE_JSON_NONE;
    if (obj == NULL || obj->type != EDGE_JSON_OBJECT)
        return false;
    edge_json_iter_init(&it, obj);
    while (edge_json_next_member(&it, &k, &v)) {
        if (edge_json_string_eq(&k, key, n)) {
            *out = v;
            return true;
        }
    }
    return false;
}

size_t edge_json_count(const edge_json *c)
{
    edge_json_iter it;
    edge_json k, v;
    size_t n = 0;
    edge_json_iter_init(&it, c);
    if (c == NULL)
        return 0;
    if (c->type == EDGE_JSON_OBJECT) {
        while (edge_json_next_member(&it, &k, &v))
            n++;
    } else if (c->type == EDGE_JSON_ARRAY) {
        while (edge_json_next_element(&it, &v))
            n++;
    }
    return n;
}

/* The Eisel-Lemire algorithm (Lemire, "Number parsing at a gigabyte per
 * second", 2021; as in Go's strconv): m * 10^q, m the decimal digits as an
 * integer (at most 19 of them, so exact), correctly rounded through one or
 * two 64x128-bit products. It gives up (false) only where the truncated
 * product cannot settle the rounding, or q is outside the table; strtod then
 * decides. Python writes most doubles in 16 or 17 digits, past Clinger's fast
 * path, and wasi-libc's strtod costs about a microsecond each. */
static bool eisel_lemire(uint64_t m, int q, double *out)
{
    const uint64_t *pow;
    unsigned __int128 x, y;
    uint64_t hi, lo, mantissa, bits, exp2;
    int clz;
    if (q < EDGE_POW10_MIN || q > EDGE_POW10_MAX)
        return false;
    pow = edge_pow10[q - EDGE_POW10_MIN];
    clz = __builtin_clzll(m);
    m <<= clz;
    /* 217706 / 2^16 approximates log2(10); the shift floors for negative q. */
    exp2 = (uint64_t)(((217706 * q) >> 16) + 64 + 1023 - clz);
    x = (unsigned __int128)m * pow[0];
    hi = (uint64_t)(x >> 64);
    lo = (uint64_t)x;
    if ((hi & 0x1FF) == 0x1FF && lo + m < m) {
        /* The low 9 bits could still carry: take the table's low word too. */
        uint64_t merged_hi = hi, merged_lo;
        y = (unsigned __int128)m * pow[1];
        merged_lo = lo + (uint64_t)(y >> 64);
        if (merged_lo < lo)
            merged_hi++;
        if ((merged_hi & 0x1FF) == 0x1FF && merged_lo + 1 == 0 && (uint64_t)y + m < m)
            return false;
        hi = merged_hi;
        lo = merged_lo;
    }
    mantissa = hi >> ((hi >> 63) + 9);
    exp2 -= 1 ^ (hi >> 63);
    if (lo == 0 && (hi & 0x1FF) == 0 && (mantissa & 3) == 1)
        return false; /* exactly halfway, maybe: round-half-even needs all digits */
    mantissa += mantissa & 1;
    mantissa >>= 1;
    if (mantissa >> 53) {
        mantissa >>= 1;
        exp2++;
    }
    if (exp2 - 1 >= 0x7FF - 1)
        return false; /* subnormal, or too large */
    bits = exp2 << 52 | (mantissa & ((UINT64_C(1) << 52) - 1));
    memcpy(out, &bits, sizeof bits);
    return true;
}

/* Exact powers of ten: every one up to 10^22 is a double. */
static const double exact_pow10[] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/* Numbers without strtod: Clinger's fast path for short ones (at most 15
 * significant digits form an integer below 2^53, and 10^e for |e| <= 22 is
 * exact, so one multiplication or division rounds correctly), Eisel-Lemire
 * for up to 19 digits. False leaves the number to strtod. */
static bool fast_number(const char *p, const char *end, double *out)
{
    bool negative = *p == '-';
    uint64_t m = 0;
    int digits = 0, exp10 = 0;
    if (negative)
        p++;
    for (; p < end && is_digit(*p); p++) {
        if (m != 0 || *p != '0')
            digits++;
        if (digits > 19)
            return false;
        m = m * 10 + (uint64_t)(*p - '0');
    }
    if (p < end && *p == '.') {
        for (p++; p < end && is_digit(*p); p++) {
            if (m != 0 || *p != '0')
                digits++;
            if (digits > 19)
                return false;
            m = m * 10 + (uint64_t)(*p - '0');
            exp10--;
        }
    }
    if (p < end) { /* the exponent: the grammar leaves nothing else */
        bool minus = false;
        int e = 0;
        p++;
        if (*p == '+' || *p == '-')
            minus = *p++ == '-';
        for (; p < end; p++) {
            if (e > 1000)
                return false;
            e = e * 10 + (*p - '0');
        }
        exp10 += minus ? -e : e;
    }
    if (m == 0)
        *out = 0.0;
    else if (digits <= 15 && exp10 >= 0 && exp10 <= 22)
        *out = (double)m * exact_pow10[exp10];
    else if (digits <= 15 && exp10 < 0 && exp10 >= -22)
        *out = (double)m / exact_pow10[-exp10];
    else if (!eisel_lemire(m, exp10, out))
        return false;
    if (negative)
        *out = -*out;
    return true;
}

int edge_json_number(const edge_json *v, double *out)
{
    /* strtod needs a terminator, and the token may sit at the very end of
     * the host's buffer, so it is copied rather than read in place. */
    char buf[EDGE_JSON_MAX_NUMBER + 1];
    if (v == NULL || v->type != EDGE_JSON_NUMBER || v->len > EDGE_JSON_MAX_NUMBER)
        return -1;
    if (fast_number(v->ptr, v->ptr + v->len, out))
        return 0;
    memcpy(buf, v->ptr, v->len);
    buf[v->len] = '\0';
    *out = strtod(buf, NULL);
    return 0;
}

int edge_json_uint32(const edge_json *v, uint32_t *out)
{
    double d;
    if (edge_json_number(v, &d) != 0 || !(d >= 0.0 && d <= 4294967295.0) || d != floor(d))
        return -1;
    *out = (uint32_t)d;
    return 0;
}

int edge_json_bool(const edge_json *v, bool *out)
{
    if (v == NULL || v->type != EDGE_JSON_BOOL)
        return -1;
    *out = v->ptr[0] == 't';
    return 0;
}

static unsigned read_hex4(const char *p)
{
    return (unsigned)(hex_value(p[0]) << 12 | hex_value(p[1]) << 8 | hex_value(p[2]) << 4 | hex_value(p[3]));
}

/* Decodes one character of a validated string body at *pp into out as UTF-8;
 * returns the number of bytes written (1 to 4). */
static size_t decode_char(const char **pp, const char *end, char out[4])
{
    const char *p = *pp;
    unsigned cp;
    if (*p != '\\') {
        /* A raw character is copied whole (the parser checked it), so that
         * a truncating decode never splits one. */
        size_t n = (unsigned char)*p < 0x80 ? 1 : utf8_char((const unsigned char *)p, (const unsigned char *)end);
        memcpy(out, p, n);
        *pp = p + n;
        return n;
    }
    p++;
    switch (*p) {
    case 'b': out[0] = '\b'; *pp = p + 1; return 1;
    case 'f': out[0] = '\f'; *pp = p + 1; return 1;
    case 'n': out[0] = '\n'; *pp = p + 1; return 1;
    case 'r': out[0] = '\r'; *pp = p + 1; return 1;
    case 't': out[0] = '\t'; *pp = p + 1; return 1;
    case 'u': break;
    default: out[0] = *p; *pp = p + 1; return 1; /* '"', '\\', '/' */
    }
    cp = read_hex4(p + 1);
    p += 5;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
            unsigned lo = read_hex4(p + 2);
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            } else {
                cp = 0xFFFD;
            }
        } else {
            cp = 0xFFFD;
        }
    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        cp = 0xFFFD;
    }
    *pp = p;
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

bool edge_json_string_eq(const edge_json *v, const char *s, size_t n)
{
    const char *p, *end;
    size_t i = 0;
    if (v == NULL || v->type != EDGE_JSON_STRING)
        return false;
    p = v->ptr + 1;
    end = v->ptr + v->len - 1;
    /* Names rarely contain escapes: compare the bytes directly then. */
    if (memchr(p, '\\', (size_t)(end - p)) == NULL)
        return (size_t)(end - p) == n && memcmp(p, s, n) == 0;
    while (p < end) {
        char ch[4];
        size_t k = decode_char(&p, end, ch);
        if (i + k > n || memcmp(s + i, ch, k) != 0)
            return false;
        i += k;
    }
    return i == n;
}

bool edge_json_string_eqz(const edge_json *v, const char *s)
{
    return edge_json_string_eq(v, s, strlen(s));
}

size_t edge_json_string_decode(const edge_json *v, char *buf, size_t cap)
{
    const char *p, *end;
    size_t n = 0;
    if (v == NULL || v->type != EDGE_JSON_STRING)
        return (size_t)-1;
    p = v->ptr + 1;
    end = v->ptr + v->len - 1;
    size_t written = 0;
    bool full = false;
    while (p < end) {
        char ch[4];
        size_t k = decode_char(&p, end, ch);
        /* Whole characters only: a cut name must still be valid UTF-8. */
        if (!full && written + k < cap) {
            memcpy(buf + written, ch, k);
            written += k;
        } else {
            full = true;
        }
        n += k;
    }
    if (cap > 0)
        buf[written] = '\0';
    return n;
}

char *edge_json_string_dup(const edge_json *v, size_t *len)
{
    size_t n;
    char *s;
    if (v == NULL || v->type != EDGE_JSON_STRING)
        return NULL;
    /* Decoding never lengthens a string: every escape is at least as long as
     * the UTF-8 it stands for. */
    s = malloc(v->len);
    if (s == NULL)
        return NULL;
    n = edge_json_string_decode(v, s, v->len);
    if (len)
        *len = n;
    return s;
}

/* ---------------------------------------------------------------- writer */

void edge_jw_init(edge_jw *w)
{
    memset(w, 0, sizeof *w);
}

void edge_jw_reset(edge_jw *w)
{
    w->len = 0;
    w->failed = false;
    w->need_comma = false;
}

void edge_jw_free(edge_jw *w)
{
    free(w->buf);
    edge_jw_init(w);
}

bool edge_jw_failed(const edge_jw *w)
{
    return w->failed;
}

static bool reserve(edge_jw *w, size_t n)
{
    size_t cap;
    char *b;
    if (w->failed)
        return false;
    if (n <= w->cap - w->len)
        return true;
    cap = w->cap ? w->cap : 256;
    while (cap - w->len < n) {
        if (cap > SIZE_MAX / 2) {
            w->failed = true;
            return false;
        }
        cap *= 2;
    }
    b = realloc(w->buf, cap);
    if (b == NULL) {
        w->failed = true;
        return false;
    }
    w->buf = b;
    w->cap = cap;
    return true;
}

static void put(edge_jw *w, const char *s, size_t n)
{
    if (reserve(w, n)) {
        memcpy(w->buf + w->len, s, n);
        w->len += n;
    }
}

static void put_char(edge_jw *w, char c)
{
    if (reserve(w, 1))
        w->buf[w->len++] = c;
}

static void before_value(edge_jw *w)
{
    if (w->need_comma)
        put_char(w, ',');
    w->need_comma = true;
}

void edge_jw_object_begin(edge_jw *w)
{
    before_value(w);
    put_char(w, '{');
    w->need_comma = false;
}

void edge_jw_object_end(edge_jw *w)
{
    put_char(w, '}');
    w->need_comma = true;
}

void edge_jw_array_begin(edge_jw *w)
{
    before_value(w);
    put_char(w, '[');
    w->need_comma = false;
}

void edge_jw_array_end(edge_jw *w)
{
    put_char(w, ']');
    w->need_comma = true;
}

static void put_string(edge_jw *w, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0;
    put_char(w, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6];
        size_t k = 2;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        /* Flush the run of bytes that need no escaping, then the escape. */
        put(w, s + run, i - run);
        run = i + 1;
        esc[0] = '\\';
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            k = 6;
        }
        put(w, esc, k);
    }
    put(w, s + run, n - run);
    put_char(w, '"');
}

void edge_jw_key_n(edge_jw *w, const char *key, size_t n)
{
    if (w->need_comma)
        put_char(w, ',');
    put_string(w, key, n);
    put_char(w, ':');
    w->need_comma = false;
}

void edge_jw_key(edge_jw *w, const char *key)
{
    edge_jw_key_n(w, key, strlen(key));
}

void edge_jw_key_json(edge_jw *w, const edge_json *key)
{
    if (w->need_comma)
        put_char(w, ',');
    put(w, key->ptr, key->len);
    put_char(w, ':');
    w->need_comma = false;
}

/*
 * Shortest round-trip digits by Grisu2 (Florian Loitsch, "Printing
 * floating-point numbers quickly and accurately with integers", PLDI 2010),
 * laid out as in nlohmann/json's to_chars. Integer arithmetic only: several
 * times cheaper than printf("%.17g") in wasi-libc, which formats through
 * software long double, and the same bytes on every engine. The digits always
 * read back as the same double; in about 0.1% of cases one digit longer than
 * the shortest such string (1e23 comes out as 9.999999999999999e+22).
 */
typedef struct {
    uint64_t f;
    int e;
} diyfp;

/* c ~= 10^k as f * 2^e with f normalized, for k = -300, -292, ..., 324; the
 * f are 10^k rounded to 64 bits (computed exactly with Python's integers). */
static const struct {
    uint64_t f;
    int16_t e;
    int16_t k;
} cached_powers[] = {
    {0xAB70FE17C79AC6CA, -1060, -300},
    {0xFF77B1FCBEBCDC4F, -1034, -292},
    {0xBE5691EF416BD60C, -1007, -284},
    {0x8DD01FAD907FFC3C, -980, -276},
    {0xD3515C2831559A83, -954, -268},
    {0x9D71AC8FADA6C9B5, -927, -260},
    {0xEA9C227723EE8BCB, -901, -252},
    {0xAECC49914078536D, -874, -244},
    {0x823C12795DB6CE57, -847, -236},
    {0xC21094364DFB5637, -821, -228},
    {0x9096EA6F3848984F, -794, -220},
    {0xD77485CB25823AC7, -768, -212},
    {0xA086CFCD97BF97F4, -741, -204},
    {0xEF340A98172AACE5, -715, -196},
    {0xB23867FB2A35B28E, -688, -188},
    {0x84C8D4DFD2C63F3B, -661, -180},
    {0xC5DD44271AD3CDBA, -635, -172},
    {0x936B9FCEBB25C996, -608, -164},
    {0xDBAC6C247D62A584, -582, -156},
    {0xA3AB66580D5FDAF6, -555, -148},
    {0xF3E2F893DEC3F126, -529, -140},
    {0xB5B5ADA8AAFF80B8, -502, -132},
    {0x87625F056C7C4A8B, -475, -124},
    {0xC9BCFF6034C13053, -449, -116},
    {0x964E858C91BA2655, -422, -108},
    {0xDFF9772470297EBD, -396, -100},
    {0xA6DFBD9FB8E5B88F, -369, -92},
    {0xF8A95FCF88747D94, -343, -84},
    {0xB94470938FA89BCF, -316, -76},
    {0x8A08F0F8BF0F156B, -289, -68},
    {0xCDB02555653131B6, -263, -60},
    {0x993FE2C6D07B7FAC, -236, -52},
    {0xE45C10C42A2B3B06, -210, -44},
    {0xAA242499697392D3, -183, -36},
    {0xFD87B5F28300CA0E, -157, -28},
    {0xBCE5086492111AEB, -130, -20},
    {0x8CBCCC096F5088CC, -103, -12},
    {0xD1B71758E219652C, -77, -4},
    {0x9C40000000000000, -50, 4},
    {0xE8D4A51000000000, -24, 12},
    {0xAD78EBC5AC620000, 3, 20},
    {0x813F3978F8940984, 30, 28},
    {0xC097CE7BC90715B3, 56, 36},
    {0x8F7E32CE7BEA5C70, 83, 44},
    {0xD5D238A4ABE98068, 109, 52},
    {0x9F4F2726179A2245, 136, 60},
    {0xED63A231D4C4FB27, 162, 68},
    {0xB0DE65388CC8ADA8, 189, 76},
    {0x83C7088E1AAB65DB, 216, 84},
    {0xC45D1DF942711D9A, 242, 92},
    {0x924D692CA61BE758, 269, 100},
    {0xDA01EE641A708DEA, 295, 108},
    {0xA26DA3999AEF774A, 322, 116},
    {0xF209787BB47D6B85, 348, 124},
    {0xB454E4A179DD1877, 375, 132},
    {0x865B86925B9BC5C2, 402, 140},
    {0xC83553C5C8965D3D, 428, 148},
    {0x952AB45CFA97A0B3, 455, 156},
    {0xDE469FBD99A05FE3, 481, 164},
    {0xA59BC234DB398C25, 508, 172},
    {0xF6C69A72A3989F5C, 534, 180},
    {0xB7DCBF5354E9BECE, 561, 188},
    {0x88FCF317F22241E2, 588, 196},
    {0xCC20CE9BD35C78A5, 614, 204},
    {0x98165AF37B2153DF, 641, 212},
    {0xE2A0B5DC971F303A, 667, 220},
    {0xA8D9D1535CE3B396, 694, 228},
    {0xFB9B7CD9A4A7443C, 720, 236},
    {0xBB764C4CA7A44410, 747, 244},
    {0x8BAB8EEFB6409C1A, 774, 252},
    {0xD01FEF10A657842C, 800, 260},
    {0x9B10A4E5E9913129, 827, 268},
    {0xE7109BFBA19C0C9D, 853, 276},
    {0xAC2820D9623BF429, 880, 284},
    {0x80444B5E7AA7CF85, 907, 292},
    {0xBF21E44003ACDD2D, 933, 300},
    {0x8E679C2F5E44FF8F, 960, 308},
    {0xD433179D9C8CB841, 986, 316},
    {0x9E19DB92B4E31BA9, 1013, 324},
};

/* The upper 64 bits of the 128-bit product, rounded. */
static diyfp diy_mul(diyfp x, diyfp y)
{
    uint64_t a = x.f >> 32, b = x.f & 0xFFFFFFFFu, c = y.f >> 32, d = y.f & 0xFFFFFFFFu;
    uint64_t ac = a * c, bc = b * c, ad = a * d, bd = b * d;
    uint64_t mid = (bd >> 32) + (ad & 0xFFFFFFFFu) + (bc & 0xFFFFFFFFu) + (UINT64_C(1) << 31);
    diyfp r = {ac + (ad >> 32) + (bc >> 32) + (mid >> 32), x.e + y.e + 64};
    return r;
}

/* x.f != 0. */
static diyfp diy_normalize(diyfp x)
{
    int shift = __builtin_clzll(x.f);
    x.f <<= shift;
    x.e -= shift;
    return x;
}

/* Steps the last digit down while that brings the number closer to w
 * without leaving the interval. */
static void grisu2_round(char *buf, int len, uint64_t dist, uint64_t delta, uint64_t rest, uint64_t ten_k)
{
    while (rest < dist && delta - rest >= ten_k &&
           (rest + ten_k < dist || dist - rest > rest + ten_k - dist)) {
        buf[len - 1]--;
        rest += ten_k;
    }
}

/* The fewest digits of a number in [lo, hi] near w (all three with the same
 * exponent, in [-60, -32]); adjusts *dec_exp and returns the digit count. */
static int grisu2_digits(char *buf, int *dec_exp, diyfp lo, diyfp w, diyfp hi)
{
    uint64_t delta = hi.f - lo.f, dist = hi.f - w.f;
    int shift = -hi.e;
    uint64_t one = UINT64_C(1) << shift, p2 = hi.f & (one - 1);
    uint32_t p1 = (uint32_t)(hi.f >> shift), pow10 = 1;
    int len = 0, n = 1, m = 0;
    while (n < 10 && p1 >= pow10 * 10) {
        pow10 *= 10;
        n++;
    }
    while (n > 0) {
        uint64_t rest;
        buf[len++] = (char)('0' + p1 / pow10);
        p1 %= pow10;
        n--;
        rest = ((uint64_t)p1 << shift) + p2;
        if (rest <= delta) {
            *dec_exp += n;
            grisu2_round(buf, len, dist, delta, rest, (uint64_t)pow10 << shift);
            return len;
        }
        pow10 /= 10;
    }
    for (;;) {
        p2 *= 10;
        buf[len++] = (char)('0' + (p2 >> shift));
        p2 &= one - 1;
        m++;
        delta *= 10;
        dist *= 10;
        if (p2 <= delta)
            break;
    }
    *dec_exp -= m;
    grisu2_round(buf, len, dist, delta, p2, one);
    return len;
}

/* v finite and > 0: at most 17 digits, and v reads back from digits * 10^*dec_exp. */
static int shortest_digits(double v, char *buf, int *dec_exp)
{
    uint64_t bits, F, E;
    diyfp d, w, hi, lo, c;
    int f, k, i;
    memcpy(&bits, &v, sizeof bits);
    E = bits >> 52 & 0x7FF;
    F = bits & ((UINT64_C(1) << 52) - 1);
    d.f = E == 0 ? F : F | UINT64_C(1) << 52;
    d.e = (E == 0 ? 1 : (int)E) - 1075;
    /* The halfway points to the neighbouring doubles; the lower one is
     * nearer when v is a power of two above the subnormals. */
    hi = diy_normalize((diyfp){2 * d.f + 1, d.e - 1});
    lo = F == 0 && E > 1 ? (diyfp){4 * d.f - 1, d.e - 2} : (diyfp){2 * d.f - 1, d.e - 1};
    lo.f <<= lo.e - hi.e;
    lo.e = hi.e;
    w = diy_normalize(d);
    /* The cached power that brings the products' exponent into [-60, -32]. */
    f = -60 - w.e - 1;
    k = f * 78913 / (1 << 18) + (f > 0);
    i = (300 + k + 7) / 8;
    c.f = cached_powers[i].f;
    c.e = cached_powers[i].e;
    *dec_exp = -cached_powers[i].k;
    w = diy_mul(w, c);
    hi = diy_mul(hi, c);
    lo = diy_mul(lo, c);
    /* Each product is off by less than one unit: narrowing the interval by
     * one on each side keeps everything inside it reading back as v. */
    lo.f++;
    hi.f--;
    return grisu2_digits(buf, dec_exp, lo, w, hi);
}

/* Writes finite v as Python's repr would, less a trailing ".0": fixed notation
 * for decimal exponents -4 to 15, else d.ddde+XX. At most 25 bytes. */
static size_t format_double(double v, char *out)
{
    char digits[20];
    size_t n = 0;
    int len, dec_exp, point;
    if (signbit(v)) {
        out[n++] = '-';
        v = -v;
    }
    if (v == 0) {
        out[n++] = '0';
        return n;
    }
    len = shortest_digits(v, digits, &dec_exp);
    point = len + dec_exp; /* digits before the decimal point */
    if (point > -4 && point <= 16) {
        if (point <= 0) {
            out[n++] = '0';
            out[n++] = '.';
            for (int i = point; i < 0; i++)
                out[n++] = '0';
            memcpy(out + n, digits, (size_t)len);
            n += (size_t)len;
        } else if (point >= len) {
            memcpy(out + n, digits, (size_t)len);
            n += (size_t)len;
            for (int i = len; i < point; i++)
                out[n++] = '0';
        } else {
            memcpy(out + n, digits, (size_t)point);
            n += (size_t)point;
            out[n++] = '.';
            memcpy(out + n, digits + point, (size_t)(len - point));
            n += (size_t)(len - point);
        }
    } else {
        int x = point - 1;
        out[n++] = digits[0];
        if (len > 1) {
            out[n++] = '.';
            memcpy(out + n, digits + 1, (size_t)(len - 1));
            n += (size_t)(len - 1);
        }
        out[n++] = 'e';
        out[n++] = x < 0 ? '-' : '+';
        x = x < 0 ? -x : x;
        if (x >= 100)
            out[n++] = (char)('0' + x / 100);
        out[n++] = (char)('0' + x / 10 % 10);
        out[n++] = (char)('0' + x % 10);
    }
    return n;
}

void edge_jw_number(edge_jw *w, double v)
{
    char buf[32];
    size_t n;
    if (!isfinite(v)) {
        edge_jw_null(w);
        return;
    }
    n = format_double(v, buf);
    before_value(w);
    put(w, buf, n);
}

void edge_jw_int(edge_jw *w, int64_t v)
{
    char buf[24];
    size_t n = sizeof buf;
    /* Through the unsigned magnitude, so INT64_MIN needs no special case. */
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        buf[--n] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        buf[--n] = '-';
    before_value(w);
    put(w, buf + n, sizeof buf - n);
}

void edge_jw_bool(edge_jw *w, bool v)
{
    before_value(w);
    if (v)
        put(w, "true", 4);
    else
        put(w, "false", 5);
}

void edge_jw_null(edge_jw *w)
{
    before_value(w);
    put(w, "null", 4);
}

void edge_jw_string_n(edge_jw *w, const char *s, size_t n)
{
    before_value(w);
    put_string(w, s, n);
}

void edge_jw_string(edge_jw *w, const char *s)
{
    edge_jw_string_n(w, s, strlen(s));
}

void edge_jw_json(edge_jw *w, const edge_json *v)
{
    before_value(w);
    put(w, v->ptr, v->len);
}
