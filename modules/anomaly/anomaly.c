/*
 * anomaly: window features per channel, scored by a TFLite model through WASI-NN.
 *
 * Config (every key optional, unknown keys rejected):
 *   {"model": "anomaly", "channels": ["temperature", "vibration", "pressure"],
 *    "window": 32, "every": 1, "threshold": 0.5,
 *    "topic": "anomaly", "alert_topic": "alerts/anomaly"}
 * model: the name of a model the agent preloaded for this module (WASI-NN
 * load_by_name). channels: 1 to 8 names, in the model's input order. window:
 * samples per channel, 1 to 1024 (the bundled model was trained on 32).
 *
 * Each numeric value named like a channel adds one sample to its window, each
 * series of that name its samples in order. Once every channel's window is
 * full, every N-th reading computes, per channel in order, the mean, the
 * population standard deviation, the minimum and the maximum of the window
 * (as scripts/make-model.py does, in double, then as float32), passes them as
 * one f32 tensor [1, 4 * channels] and emits
 *   {"device":..,"seq":..,"ts":..,"score":S,"anomaly":S >= threshold}
 * on `topic`. When the score rises to the threshold from below (or on the
 * first score), it also emits {"device","seq","ts","score","threshold"} on
 * `alert_topic`; the next alert comes only after a score below it.
 *
 * Error codes: 1 the model could not be loaded or given a context (configure);
 * 2 an inference call failed (the WASI-NN error number is in the log).
 */
#include "edge_module.h"
#include "wasi_nn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CHANNELS 8
#define MAX_WINDOW 1024
#define N_STATS 4

enum { E_MODEL = 1, E_INFER = 2 };

typedef struct {
    char name[65];
    size_t name_len;
    double *ring;
    uint32_t head;
    uint32_t n;
} channel;

static const char *const default_channels[] = {"temperature", "vibration", "pressure"};
static channel channels[MAX_CHANNELS];
static size_t n_channels;
static uint32_t window = 32;
static uint32_t every = 1;
static double threshold = 0.5;
static uint64_t readings;
static bool alerting;
static char model[65] = "anomaly";
static char topic[129] = "anomaly";
static char alert_topic[129] = "alerts/anomaly";
static uint32_t context;
static float features[MAX_CHANNELS * N_STATS];
static uint32_t dims[2];
static edge_jw out;

static int config_error(const char *what)
{
    edge_logf(EDGE_LOG_ERROR, "config: %s", what);
    return EDGE_E_CONFIG;
}

static int add_channel(const char *name, size_t len)
{
    channel *c = &channels[n_channels];
    if (n_channels == MAX_CHANNELS)
        return config_error("channels lists more than 8 names");
    if (len == 0 || len >= sizeof c->name)
        return config_error("a channel name must be 1 to 64 bytes");
    for (size_t i = 0; i < n_channels; i++)
        if (channels[i].name_len == len && memcmp(channels[i].name, name, len) == 0)
            return config_error("a channel is named twice");
    memcpy(c->name, name, len);
    c->name_len = len;
    n_channels++;
    return 0;
}

static int configure_channels(const edge_json *list)
{
    edge_json_iter it;
    edge_json v;
    char name[65];
    if (list->type != EDGE_JSON_ARRAY || edge_json_count(list) == 0)
        return config_error("channels must be a non-empty array of names");
    edge_json_iter_init(&it, list);
    while (edge_json_next_element(&it, &v)) {
        size_t n = edge_json_string_decode(&v, name, sizeof name);
        int rc;
        if (n == (size_t)-1)
            return config_error("channels must be a non-empty array of names");
        rc = add_channel(name, n);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int string_key(const edge_json *v, char *buf, size_t cap, bool is_topic, const char *what)
{
    size_t n = edge_json_string_decode(v, buf, cap);
    if (n == (size_t)-1 || n == 0 || n >= cap || (is_topic && !edge_topic_valid(buf, n)))
        return config_error(what);
    return 0;
}

static int open_model(void)
{
    uint32_t graph;
    int32_t rc = wasi_nn_load_by_name(model, (uint32_t)strlen(model), &graph);
    if (rc != WASI_NN_SUCCESS) {
        edge_logf(EDGE_LOG_ERROR, "WASI-NN load_by_name(\"%s\") failed: error %d", model, rc);
        return E_MODEL;
    }
    rc = wasi_nn_init_execution_context(graph, &context);
    if (rc != WASI_NN_SUCCESS) {
        edge_logf(EDGE_LOG_ERROR, "WASI-NN init_execution_context failed: error %d", rc);
        return E_MODEL;
    }
    return 0;
}

int module_configure(const edge_json *cfg)
{
    edge_json_iter it;
    edge_json k, v;
    int rc = 0;
    edge_json_iter_init(&it, cfg);
    while (rc == 0 && edge_json_next_member(&it, &k, &v)) {
        if (edge_json_string_eqz(&k, "model")) {
            rc = string_key(&v, model, sizeof model, false, "model must be a name of 1 to 64 bytes");
        } else if (edge_json_string_eqz(&k, "topic")) {
            rc = string_key(&v, topic, sizeof topic, true, "topic must be a valid relative topic");
        } else if (edge_json_string_eqz(&k, "alert_topic")) {
            rc = string_key(&v, alert_topic, sizeof alert_topic, true,
                            "alert_topic must be a valid relative topic");
        } else if (edge_json_string_eqz(&k, "window")) {
            if (edge_json_uint32(&v, &window) != 0 || window < 1 || window > MAX_WINDOW)
                rc = config_error("window must be an integer from 1 to 1024");
        } else if (edge_json_string_eqz(&k, "every")) {
            if (edge_json_uint32(&v, &every) != 0 || every < 1)
                rc = config_error("every must be a positive integer");
        } else if (edge_json_string_eqz(&k, "threshold")) {
            if (edge_json_number(&v, &threshold) != 0 || !(threshold >= 0 && threshold <= 1))
                rc = config_error("threshold must be a number from 0 to 1");
        } else if (edge_json_string_eqz(&k, "channels")) {
            rc = configure_channels(&v);
        } else {
            rc = config_error("unknown key (expected model, channels, window, every, threshold, "
                              "topic, alert_topic)");
        }
    }
    if (rc == 0 && n_channels == 0)
        for (size_t i = 0; rc == 0 && i < 3; i++)
            rc = add_channel(default_channels[i], strlen(default_channels[i]));
    for (size_t i = 0; rc == 0 && i < n_channels; i++) {
        channels[i].ring = malloc((size_t)window * sizeof *channels[i].ring);
        if (channels[i].ring == NULL)
            rc = EDGE_E_NOMEM;
    }
    if (rc != 0)
        return rc;
    edge_jw_init(&out);
    return open_model();
}

static channel *lookup(const edge_json *name)
{
    for (size_t i = 0; i < n_channels; i++)
        if (edge_json_string_eq(name, channels[i].name, channels[i].name_len))
            return &channels[i];
    return NULL;
}

static void push(channel *c, double x)
{
    c->ring[c->head] = x;
    if (++c->head == window)
        c->head = 0;
    if (c->n < window)
        c->n++;
}

/* mean, std, min, max of a full ring, oldest sample first. */
static void channel_features(const channel *c, float *f)
{
    double sum = 0.0, ssd = 0.0, mean, lo = INFINITY, hi = -INFINITY;
    for (uint32_t i = 0; i < window; i++) {
        double x = c->ring[(c->head + i) % window];
        sum += x;
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
    }
    mean = sum / window;
    for (uint32_t i = 0; i < window; i++) {
        double d = c->ring[(c->head + i) % window] - mean;
        ssd += d * d;
    }
    f[0] = (float)mean;
    f[1] = (float)sqrt(ssd / window);
    f[2] = (float)lo;
    f[3] = (float)hi;
}

static int infer(float *score)
{
    uint32_t written = 0;
    wasi_nn_tensor t = {dims, 2, WASI_NN_F32, features, 0};
    int32_t rc;
    dims[0] = 1;
    dims[1] = (uint32_t)(n_channels * N_STATS);
    t.data_len = dims[1] * (uint32_t)sizeof(float);
    for (size_t i = 0; i < n_channels; i++)
        channel_features(&channels[i], &features[i * N_STATS]);
    rc = wasi_nn_set_input(context, 0, &t);
    if (rc == WASI_NN_SUCCESS)
        rc = wasi_nn_compute(context);
    if (rc == WASI_NN_SUCCESS)
        rc = wasi_nn_get_output(context, 0, score, sizeof *score, &written);
    if (rc != WASI_NN_SUCCESS || written != sizeof *score) {
        edge_logf(EDGE_LOG_ERROR, "WASI-NN inference failed: error %d (%u output bytes)", rc,
                  (unsigned)written);
        return E_INFER;
    }
    return 0;
}

static int emit_score(const edge_reading *r, double score, const char *to, bool alert)
{
    edge_jw_reset(&out);
    edge_jw_object_begin(&out);
    edge_jw_reading_header(&out, r);
    edge_jw_key(&out, "score");
    edge_jw_number(&out, score);
    if (alert) {
        edge_jw_key(&out, "threshold");
        edge_jw_number(&out, threshold);
    } else {
        edge_jw_key(&out, "anomaly");
        edge_jw_bool(&out, score >= threshold);
    }
    edge_jw_object_end(&out);
    return edge_emit_json(to, &out);
}

int module_on_reading(const edge_reading *r)
{
    float score;
    int rc;
    for (size_t i = 0; i < r->n_values; i++) {
        channel *c = lookup(&r->values[i].name);
        if (c != NULL && r->values[i].value.type == EDGE_JSON_NUMBER)
            push(c, r->values[i].number);
    }
    for (size_t i = 0; i < r->n_series; i++) {
        const edge_series *s = &r->series[i];
        channel *c = lookup(&s->name);
        for (uint32_t j = 0; c != NULL && j < s->count; j++)
            push(c, edge_series_at(s, j));
    }
    for (size_t i = 0; i < n_channels; i++)
        if (channels[i].n < window)
            return 0;
    if (++readings % every != 0)
        return 0;
    rc = infer(&score);
    if (rc != 0)
        return rc;
    rc = emit_score(r, score, topic, false);
    if (rc == 0 && score >= threshold && !alerting)
        rc = emit_score(r, score, alert_topic, true);
    alerting = score >= threshold;
    return rc;
}
