/*
 * A fake CUDA driver for the tests: exports the driver entry points the library uses, records
 * every call, and misbehaves on request. Loaded by the library through ETB_CUDA_DRIVER_PATH,
 * exactly as the real libcuda.so.1 would be.
 *
 * Knobs (read at each call): FAKE_CUDA_DEVICES (default 2), FAKE_CUDA_FAIL_INIT (a CUresult
 * for cuInit to return), FAKE_CUDA_FAIL_RETAIN (for cuDevicePrimaryCtxRetain),
 * FAKE_CUDA_FAIL_SET_CURRENT (for cuCtxSetCurrent with a non-NULL context).
 * Build variants: -DFAKE_UNVERSIONED exports only the unversioned names of cuDeviceGetUuid and
 * cuDevicePrimaryCtxRelease (an older driver); -DFAKE_NO_RETAIN lacks cuDevicePrimaryCtxRetain.
 * Introspection for the tests: fake_cuda_calls(), fake_cuda_retain_count(dev),
 * fake_cuda_release_errors(), fake_cuda_reset().
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef struct { char bytes[16]; } CUuuid;

#define MAX_DEVICES 16
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_calls[65536];
static int g_retains[MAX_DEVICES];
static int g_release_errors;
static int g_initialized;
static __thread CUcontext t_current;
static char g_contexts[MAX_DEVICES]; /* their addresses are the fake contexts */

static void record(const char *fmt, int arg) {
    char item[128];
    pthread_mutex_lock(&g_lock);
    snprintf(item, sizeof item, fmt, arg);
    if (strlen(g_calls) + strlen(item) + 2 < sizeof g_calls) {
        strcat(g_calls, item);
        strcat(g_calls, ";");
    }
    pthread_mutex_unlock(&g_lock);
}

static int knob(const char *name, int fallback) {
    const char *v = getenv(name);
    return v && *v ? atoi(v) : fallback;
}

static int devices(void) { return knob("FAKE_CUDA_DEVICES", 2); }

CUresult cuInit(unsigned int flags) {
    int fail = knob("FAKE_CUDA_FAIL_INIT", 0);
    record("cuInit(%d)", (int)flags);
    if (fail) return fail;
    g_initialized = 1;
    return 0;
}

CUresult cuDriverGetVersion(int *version) {
    record("cuDriverGetVersion", 0);
    *version = 12080;
    return 0;
}

CUresult cuDeviceGetCount(int *count) {
    record("cuDeviceGetCount", 0);
    if (!g_initialized) return 3; /* CUDA_ERROR_NOT_INITIALIZED */
    *count = devices();
    return 0;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    record("cuDeviceGet(%d)", ordinal);
    if (ordinal < 0 || ordinal >= devices()) return 101; /* CUDA_ERROR_INVALID_DEVICE */
    *device = ordinal;
    return 0;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
    record("cuDeviceGetName(%d)", dev);
    snprintf(name, (size_t)len, "Fake GPU %d", dev);
    return 0;
}

CUresult cuDeviceGetPCIBusId(char *bus, int len, CUdevice dev) {
    record("cuDeviceGetPCIBusId(%d)", dev);
    snprintf(bus, (size_t)len, "0000:%02X:00.0", 0x18 + dev);
    return 0;
}

#ifdef FAKE_UNVERSIONED
#define UUID_NAME "cuDeviceGetUuid(%d)"
#define RELEASE_NAME "cuDevicePrimaryCtxRelease(%d)"
#define cuDeviceGetUuid_v2 cuDeviceGetUuid
#define cuDevicePrimaryCtxRelease_v2 cuDevicePrimaryCtxRelease
#else
#define UUID_NAME "cuDeviceGetUuid_v2(%d)"
#define RELEASE_NAME "cuDevicePrimaryCtxRelease_v2(%d)"
#endif

CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) {
    int i;
    record(UUID_NAME, dev);
    for (i = 0; i < 16; i++) uuid->bytes[i] = (char)(0xA0 + i + dev);
    return 0;
}

#ifndef FAKE_NO_RETAIN
CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev) {
    int fail = knob("FAKE_CUDA_FAIL_RETAIN", 0);
    record("cuDevicePrimaryCtxRetain(%d)", dev);
    if (fail) return fail;
    pthread_mutex_lock(&g_lock);
    g_retains[dev]++;
    pthread_mutex_unlock(&g_lock);
    *ctx = &g_contexts[dev];
    return 0;
}
#endif

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    record(RELEASE_NAME, dev);
    pthread_mutex_lock(&g_lock);
    if (g_retains[dev] <= 0) g_release_errors++;
    else g_retains[dev]--;
    pthread_mutex_unlock(&g_lock);
    return 0;
}

CUresult cuCtxSetCurrent(CUcontext ctx) {
    int fail = knob("FAKE_CUDA_FAIL_SET_CURRENT", 0);
    record("cuCtxSetCurrent(%d)", ctx ? (int)((char *)ctx - g_contexts) : -1);
    if (ctx && fail) return fail;
    t_current = ctx;
    return 0;
}

CUresult cuCtxGetCurrent(CUcontext *ctx) {
    *ctx = t_current;
    return 0;
}

CUresult cuGetErrorName(CUresult error, const char **name) {
    switch (error) {
    case 100: *name = "CUDA_ERROR_NO_DEVICE"; return 0;
    case 101: *name = "CUDA_ERROR_INVALID_DEVICE"; return 0;
    case 2: *name = "CUDA_ERROR_OUT_OF_MEMORY"; return 0;
    default: *name = NULL; return 1;
    }
}

CUresult cuGetErrorString(CUresult error, const char **text) {
    switch (error) {
    case 100: *text = "no CUDA-capable device is detected"; return 0;
    case 101: *text = "invalid device ordinal"; return 0;
    case 2: *text = "out of memory"; return 0;
    default: *text = NULL; return 1;
    }
}

/* ---- introspection for the tests ---- */
const char *fake_cuda_calls(void) { return g_calls; }
int fake_cuda_retain_count(int dev) { return g_retains[dev]; }
int fake_cuda_release_errors(void) { return g_release_errors; }
void *fake_cuda_context(int dev) { return &g_contexts[dev]; }
void fake_cuda_reset(void) {
    pthread_mutex_lock(&g_lock);
    g_calls[0] = '\0';
    pthread_mutex_unlock(&g_lock);
}
