/*
 * faulty: misbehaves on purpose, for the agent's fault tests.
 *
 * Config: {"fault": "<name>", "spins": N} ("none" when absent; an unknown name
 * or key is a config error; spins only for slow). On every reading it commits
 * that fault:
 *
 *   none        emits {"seq":..} on topic "echo" and returns 0
 *   trap        executes `unreachable`
 *   loop        spins forever (a deadline or fuel must stop it)
 *   bomb        mallocs and touches 64 KiB blocks until malloc fails, then traps
 *   recurse     recurses without bound until the engine's call stack is exhausted
 *   exit        exit(3), i.e. WASI proc_exit(3)
 *   big_emit    emits a 1 MiB payload on "echo" (over the default max_emit_bytes)
 *   bad_topic   emits on "a/#" (a wildcard is not a valid topic)
 *   error_code  returns 7
 *   oob         loads from 0xFFFFFFF0, past the end of linear memory
 *   log         logs one line at each level, then does what none does
 *   stdout      prints a line on stdout and one on stderr, then does what none does
 *   slow        counts to spins (default 10 million), then emits {"device","seq",
 *               "ts"} on "slow": a module that takes a while, for durability tests
 *
 * Each fault must survive the optimizer: the comments at each say how.
 */
#include "edge_module.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    NONE, TRAP, LOOP, BOMB, RECURSE, EXIT, BIG_EMIT, BAD_TOPIC, ERROR_CODE, OOB, LOG, STDOUT,
    SLOW,
} fault;

static const char *const fault_names[] = {
    "none", "trap", "loop", "bomb", "recurse", "exit", "big_emit", "bad_topic",
    "error_code", "oob", "log", "stdout", "slow",
};

static fault chosen = NONE;
static uint32_t spins = 10000000;
static edge_jw out;

int module_configure(const edge_json *cfg)
{
    edge_json_iter it;
    edge_json k, v;
    edge_json_iter_init(&it, cfg);
    while (edge_json_next_member(&it, &k, &v)) {
        size_t i;
        if (edge_json_string_eqz(&k, "spins")) {
            if (edge_json_uint32(&v, &spins) != 0) {
                edge_log(EDGE_LOG_ERROR, "config: spins is not a whole number below 2^32");
                return EDGE_E_CONFIG;
            }
            continue;
        }
        if (!edge_json_string_eqz(&k, "fault")) {
            edge_log(EDGE_LOG_ERROR, "config: unknown key (expected fault or spins)");
            return EDGE_E_CONFIG;
        }
        for (i = 0; i < sizeof fault_names / sizeof fault_names[0]; i++)
            if (edge_json_string_eqz(&v, fault_names[i]))
                break;
        if (i == sizeof fault_names / sizeof fault_names[0]) {
            edge_log(EDGE_LOG_ERROR, "config: fault is not a known fault name");
            return EDGE_E_CONFIG;
        }
        chosen = (fault)i;
    }
    edge_jw_init(&out);
    return 0;
}

static int emit_seq(const char *topic, const edge_reading *r)
{
    edge_jw_reset(&out);
    edge_jw_object_begin(&out);
    edge_jw_key(&out, "seq");
    edge_jw_json(&out, &r->seq);
    edge_jw_object_end(&out);
    return edge_emit_json(topic, &out);
}

/* A volatile counter: every iteration is an observable side effect, so the
 * loop may not be deleted (C11 6.8.5p6 only lets loops without one go). */
static volatile unsigned spin;

static int slow(const edge_reading *r)
{
    for (uint32_t i = 0; i < spins; i++)
        spin++;
    edge_jw_reset(&out);
    edge_jw_object_begin(&out);
    edge_jw_reading_header(&out, r);
    edge_jw_object_end(&out);
    return edge_emit_json("slow", &out);
}

static _Noreturn void loop_forever(void)
{
    for (;;)
        spin++;
}

/* Storing each block through a volatile makes it escape, so the compiler may
 * not pair malloc with nothing and delete both. */
static void *volatile bomb_sink;

static _Noreturn void bomb(void)
{
    for (;;) {
        unsigned char *block = malloc(64 * 1024);
        if (block == NULL)
            __builtin_trap();
        for (size_t i = 0; i < 64 * 1024; i += 4096)
            block[i] = 1;
        bomb_sink = block;
    }
}

/* The recursion must exhaust the engine's call stack, not the C shadow stack
 * in linear memory: that would end as an out-of-bounds access (or silently
 * overwrite data) instead of the stack-exhaustion error under test. So the
 * frame holds no address-taken local, and each call goes through a volatile
 * function pointer: the compiler cannot know the callee, hence cannot inline
 * it or turn the recursion into a loop, and the addition after the call keeps
 * it out of tail position. The build checks the call_indirect is there. */
static int recurse(int depth);
static int (*volatile recurse_through)(int) = recurse;

__attribute__((noinline)) static int recurse(int depth)
{
    return recurse_through(depth + 1) + depth;
}

static int big_emit(const edge_reading *r)
{
    enum { SIZE = 1024 * 1024 };
    static char *payload;
    int head;
    if (payload == NULL && (payload = malloc(SIZE)) == NULL)
        return EDGE_E_NOMEM;
    /* Valid JSON of exactly 1 MiB, so only its size can be what the host
     * rejects. */
    head = snprintf(payload, SIZE, "{\"seq\":%.*s,\"pad\":\"", (int)r->seq.len, r->seq.ptr);
    memset(payload + head, 'a', SIZE - (size_t)head - 2);
    memcpy(payload + SIZE - 2, "\"}", 2);
    return edge_emit("echo", payload, SIZE);
}

int module_on_reading(const edge_reading *r)
{
    switch (chosen) {
    case NONE:
        return emit_seq("echo", r);
    case TRAP:
        __builtin_trap();
    case LOOP:
        loop_forever();
    case BOMB:
        bomb();
    case RECURSE:
        return recurse(0);
    case EXIT:
        exit(3);
    case BIG_EMIT:
        return big_emit(r);
    case BAD_TOPIC:
        return emit_seq("a/#", r);
    case ERROR_CODE:
        return 7;
    case OOB:
        return *(volatile int *)(uintptr_t)0xFFFFFFF0u;
    case LOG:
        edge_log(EDGE_LOG_DEBUG, "faulty: a debug line");
        edge_log(EDGE_LOG_INFO, "faulty: an info line");
        edge_log(EDGE_LOG_WARNING, "faulty: a warning line");
        edge_log(EDGE_LOG_ERROR, "faulty: an error line");
        return emit_seq("echo", r);
    case STDOUT:
        printf("faulty: a line on stdout\n");
        fprintf(stderr, "faulty: a line on stderr\n");
        fflush(stdout);
        fflush(stderr);
        return emit_seq("echo", r);
    case SLOW:
        return slow(r);
    }
    return 0;
}
