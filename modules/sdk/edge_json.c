/*
 * edge_json: see edge_json.h. Owns JSON text only; must stay free of the
 * guest ABI so that command modules can link it alone.
 */
#include "edge_json.h"

#include <math.h>
#include <stdio.h>
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

int edge_json_number(const edge_json *v, double *out)
{
    /* strtod needs a terminator, and the token may sit at the very end of
     * the host's buffer, so it is copied rather than read in place. */
    char buf[EDGE_JSON_MAX_NUMBER + 1];
    if (v == NULL || v->type != EDGE_JSON_NUMBER || v->len > EDGE_JSON_MAX_NUMBER)
        return -1;
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

void edge_jw_number(edge_jw *w, double v)
{
    char buf[32];
    int n = 0;
    if (!isfinite(v)) {
        edge_jw_null(w);
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (prec == 17 || strtod(buf, NULL) == v)
            break;
    }
    before_value(w);
    put(w, buf, (size_t)n);
}

void edge_jw_number_full(edge_jw *w, double v)
{
    char buf[32];
    int n;
    if (!isfinite(v)) {
        edge_jw_null(w);
        return;
    }
    if (v == (double)(int64_t)v && fabs(v) < 9007199254740992.0) {
        edge_jw_int(w, (int64_t)v);
        return;
    }
    n = snprintf(buf, sizeof buf, "%.17g", v);
    before_value(w);
    put(w, buf, (size_t)n);
}

void edge_jw_int(edge_jw *w, int64_t v)
{
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%lld", (long long)v);
    before_value(w);
    put(w, buf, (size_t)n);
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
