/*
 * wasi_nn: WasmEdge's WASI-NN ABI (`wasi_ephemeral_nn`, WasmEdge 0.15 and newer),
 * as the agent serves it on every engine. Header only: the functions are imports.
 *
 * Every function returns a wasi_nn_errno. A module that includes this header
 * imports `wasi_ephemeral_nn`, which the agent gives it only when models are
 * preloaded for it (modules/README.md).
 */
#ifndef WASI_NN_H
#define WASI_NN_H

#include <stdint.h>

typedef enum {
    WASI_NN_SUCCESS = 0,
    WASI_NN_INVALID_ARGUMENT = 1,
    WASI_NN_INVALID_ENCODING = 2,
    WASI_NN_MISSING_MEMORY = 3,
    WASI_NN_BUSY = 4,
    WASI_NN_RUNTIME_ERROR = 5,
    WASI_NN_UNSUPPORTED_OPERATION = 6,
    WASI_NN_TOO_LARGE = 7,
    WASI_NN_NOT_FOUND = 8,
} wasi_nn_errno;

typedef enum {
    WASI_NN_F16 = 0,
    WASI_NN_F32 = 1,
    WASI_NN_F64 = 2,
    WASI_NN_U8 = 3,
    WASI_NN_I32 = 4,
    WASI_NN_I64 = 5,
} wasi_nn_type;

enum { WASI_NN_ENCODING_TFLITE = 4 };
enum { WASI_NN_TARGET_CPU = 0 };

/* 20 bytes in guest memory, as the ABI lays it out. */
typedef struct {
    const uint32_t *dims;
    uint32_t rank;
    uint32_t type; /* a wasi_nn_type */
    const void *data;
    uint32_t data_len;
} wasi_nn_tensor;

/* One {ptr, len} of `load`'s builder array; TFLite takes exactly one. */
typedef struct {
    const void *data;
    uint32_t len;
} wasi_nn_builder;

#define WASI_NN_IMPORT(name) __attribute__((import_module("wasi_ephemeral_nn"), import_name(name)))

WASI_NN_IMPORT("load")
int32_t wasi_nn_load(const wasi_nn_builder *builders, uint32_t n, uint32_t encoding,
                     uint32_t target, uint32_t *graph);
WASI_NN_IMPORT("load_by_name")
int32_t wasi_nn_load_by_name(const char *name, uint32_t len, uint32_t *graph);
WASI_NN_IMPORT("load_by_name_with_config")
int32_t wasi_nn_load_by_name_with_config(const char *name, uint32_t len, const char *config,
                                         uint32_t config_len, uint32_t *graph);
WASI_NN_IMPORT("init_execution_context")
int32_t wasi_nn_init_execution_context(uint32_t graph, uint32_t *context);
WASI_NN_IMPORT("set_input")
int32_t wasi_nn_set_input(uint32_t context, uint32_t index, const wasi_nn_tensor *tensor);
WASI_NN_IMPORT("compute")
int32_t wasi_nn_compute(uint32_t context);
WASI_NN_IMPORT("get_output")
int32_t wasi_nn_get_output(uint32_t context, uint32_t index, void *out, uint32_t out_max,
                           uint32_t *written);
WASI_NN_IMPORT("unload")
int32_t wasi_nn_unload(uint32_t graph);
WASI_NN_IMPORT("finalize_execution_context")
int32_t wasi_nn_finalize_execution_context(uint32_t context);

#undef WASI_NN_IMPORT

#endif
