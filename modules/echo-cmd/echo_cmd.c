/*
 * echo-cmd: the example of a plain WASI command module (see modules/README.md).
 *
 * Reads one reading per line on stdin, series inline as "data" arrays, and
 * writes one line per reading on stdout:
 *   {"device":..,"seq":..,"values":<values>,"series":<series>,"samples":<samples>}
 * where samples is the total length of the series' "data" arrays. A line that
 * is not such a reading is reported on stderr (the agent's log) and produces
 * no message; blank lines are skipped. Lines may be of any length.
 *
 * It links edge_json alone: a command module has no reactor exports.
 */
#define _POSIX_C_SOURCE 200809L /* getline, under -std=c11 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edge_json.h"

/* Returns NULL and fills *out, or says what is wrong with the line. */
static const char *summarise(const edge_json *root, edge_jw *out)
{
    edge_json device, seq, values, series, k, v, data, x;
    edge_json_iter it, elems;
    size_t n_values = 0, n_series = 0;
    uint64_t samples = 0;
    if (root->type != EDGE_JSON_OBJECT)
        return "not a JSON object";
    edge_json_get(root, "device", &device);
    edge_json_get(root, "seq", &seq);
    edge_json_get(root, "values", &values);
    edge_json_get(root, "series", &series);
    if (device.type != EDGE_JSON_STRING || seq.type != EDGE_JSON_NUMBER)
        return "device must be a string and seq a number";
    if (values.type == EDGE_JSON_OBJECT)
        n_values = edge_json_count(&values);
    else if (values.type != EDGE_JSON_NONE)
        return "values must be an object";
    if (series.type != EDGE_JSON_NONE && series.type != EDGE_JSON_OBJECT)
        return "series must be an object";
    edge_json_iter_init(&it, &series);
    while (edge_json_next_member(&it, &k, &v)) {
        if (!edge_json_get(&v, "data", &data) || data.type != EDGE_JSON_ARRAY)
            return "a series has no data array";
        edge_json_iter_init(&elems, &data);
        while (edge_json_next_element(&elems, &x)) {
            if (x.type != EDGE_JSON_NUMBER)
                return "series data must be numbers";
            samples++;
        }
        n_series++;
    }

    edge_jw_reset(out);
    edge_jw_object_begin(out);
    edge_jw_key(out, "device");
    edge_jw_json(out, &device);
    edge_jw_key(out, "seq");
    edge_jw_json(out, &seq);
    edge_jw_key(out, "values");
    edge_jw_int(out, (int64_t)n_values);
    edge_jw_key(out, "series");
    edge_jw_int(out, (int64_t)n_series);
    edge_jw_key(out, "samples");
    edge_jw_int(out, (int64_t)samples);
    edge_jw_object_end(out);
    return edge_jw_failed(out) ? "out of memory" : NULL;
}

int main(void)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    unsigned long lineno = 0;
    edge_jw out;
    edge_jw_init(&out);
    while ((len = getline(&line, &cap, stdin)) != -1) {
        edge_json root;
        size_t at;
        const char *why;
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        if (len == 0)
            continue;
        if (edge_json_parse(line, (size_t)len, &root, &at) != 0) {
            fprintf(stderr, "echo-cmd: line %lu: not valid JSON (at byte %zu)\n", lineno, at);
            continue;
        }
        why = summarise(&root, &out);
        if (why != NULL) {
            fprintf(stderr, "echo-cmd: line %lu: %s\n", lineno, why);
            continue;
        }
        fwrite(out.buf, 1, out.len, stdout);
        fputc('\n', stdout);
        /* The host reads messages as they come; a pipe is fully buffered. */
        fflush(stdout);
    }
    free(line);
    edge_jw_free(&out);
    return 0;
}
