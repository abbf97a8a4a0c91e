/*
 * A fake CUDA driver for the tests: exports the driver entry points the library uses, records
 * every call, and misbehaves on request. Loaded by the library through ETB_CUDA_DRIVER_PATH,
 * exactly as the real libcuda.so.1 would be.
 *
 * Knobs (read at each call): FAKE_CUDA_DEVICES (default 2), FAKE_CUDA_FAIL_INIT (a CUresult
 * for cuInit to return), FAKE_CUDA_FAIL_RETAIN (for cuDevicePrimaryCtxRetain),
 * FAKE_CUDA_FAIL_SET_CURRENT (for cuCtxSetCurrent with a non-NULL context),
 * FAKE_CUDA_VERSION (what cuDriverGetVersion answers; default 12080).
 * Quiet mode, for the benchmarks (FAKE_CUDA_QUIET non-empty and not "0", read once, at the first
 * call): no call log and no per-function counts (fake_cuda_calls() stays "", fake_cuda_count()
 * 0); fake_cuda_total_calls() still counts, and injected failures still apply.
 * Build variants: -DFAKE_UNVERSIONED exports only the unversioned names of cuDeviceGetUuid,
 * cuDevicePrimaryCtxRelease, cuEventDestroy, cuCtxPushCurrent and cuCtxPopCurrent (an older
 * driver); -DFAKE_NO_RETAIN lacks cuDevicePrimaryCtxRetain; -DFAKE_NO_IPC lacks
 * cuIpcGetMemHandle; -DFAKE_NO_POINTER_ATTRIBUTES lacks cuPointerGetAttributes (the plural).
 * Memory: no memory is allocated; the tests declare fake allocations (addresses are plain
 * numbers) that cuMemGetAddressRange_v2, cuPointerGetAttribute(s) and cuIpcGetMemHandle look up.
 * Kinds: 0 device memory (cuMemAlloc), 1 pinned host memory, 2 managed memory, 3 virtual memory
 * (cuMemCreate + cuMemMap), 4 pool memory (cudaMallocAsync). Each allocation has a buffer id
 * (from 1, new for every allocation, also one made again at a freed address).
 * Events: cuEventCreate returns heap-allocated fake events, known until cuEventDestroy_v2 (or
 * fake_cuda_reset); an unknown event handle is CUDA_ERROR_INVALID_HANDLE.
 * Contexts: cuCtxPushCurrent_v2 / cuCtxPopCurrent_v2 keep a per-thread stack on top of the
 * context cuCtxSetCurrent makes current; the IPC and event calls need a current context.
 * Test control: fake_cuda_alloc(dev, size, kind), fake_cuda_alloc_at(dev, address, size, kind),
 * fake_cuda_free(base), fake_cuda_fail(function, result) (every call of that entry point returns
 * result without doing anything; 0 clears), fake_cuda_old_driver(on) (cuPointerGetAttribute(s) do
 * not know IS_LEGACY_CUDA_IPC_CAPABLE nor MEMPOOL_HANDLE).
 * Introspection for the tests: fake_cuda_calls(), fake_cuda_retain_count(dev),
 * fake_cuda_release_errors(), fake_cuda_count(function) (calls of that entry point, failed ones
 * included), fake_cuda_total_calls() (calls of every entry point, the fake_cuda_* functions
 * excepted), fake_cuda_live_events(), fake_cuda_reset() (the call log, counts, failures,
 * allocations, events and the old-driver mode; buffer ids, event ids and addresses keep
 * counting).
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
typedef unsigned long long CUdeviceptr;
typedef struct { char reserved[64]; } CUipcMemHandle;
typedef struct { char reserved[64]; } CUipcEventHandle;
typedef void *CUevent;
typedef void *CUstream;

#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_OUT_OF_MEMORY 2
#define CUDA_ERROR_INVALID_CONTEXT 201
#define CUDA_ERROR_INVALID_HANDLE 400
#define CUDA_ERROR_NOT_FOUND 500

#define MAX_DEVICES 16
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_calls[65536];
static int g_retains[MAX_DEVICES];
static int g_release_errors;
static int g_initialized;
static __thread CUcontext t_current;
static char g_contexts[MAX_DEVICES]; /* their addresses are the fake contexts */

/* FAKE_CUDA_QUIET, read once: -1 not read yet, 0 no, 1 yes. */
static int g_quiet = -1;
static int quiet(void) {
    int q = __atomic_load_n(&g_quiet, __ATOMIC_RELAXED);
    if (q < 0) {
        const char *v = getenv("FAKE_CUDA_QUIET");
        q = v && *v && strcmp(v, "0") != 0;
        __atomic_store_n(&g_quiet, q, __ATOMIC_RELAXED);
    }
    return q;
}

/* Appends "item;" to the call log while it fits; the log's length is kept, never recounted. */
static size_t g_calls_len;
static void record(const char *fmt, int arg) {
    char item[128];
    int n;
    if (quiet()) return;
    n = snprintf(item, sizeof item, fmt, arg);
    if (n < 0) return;
    if ((size_t)n >= sizeof item) n = (int)sizeof item - 1;
    pthread_mutex_lock(&g_lock);
    if (g_calls_len + (size_t)n + 2 < sizeof g_calls) {
        memcpy(g_calls + g_calls_len, item, (size_t)n);
        g_calls[g_calls_len + (size_t)n] = ';';
        g_calls_len += (size_t)n + 1;
        g_calls[g_calls_len] = '\0';
    }
    pthread_mutex_unlock(&g_lock);
}

static int knob(const char *name, int fallback) {
    const char *v = getenv(name);
    return v && *v ? atoi(v) : fallback;
}

static int devices(void) { return knob("FAKE_CUDA_DEVICES", 2); }

/* ---- call counts and injected failures (test control), under g_lock ---- */
#define MAX_NAMES 64
#define NAME_LEN 64
static struct { char name[NAME_LEN]; int count; } g_counts[MAX_NAMES];
static struct { char name[NAME_LEN]; CUresult result; } g_fails[MAX_NAMES];

/* Calls of every entry point (atomic), and how many failures are injected (under g_lock). */
static unsigned long long g_total_calls;
static int g_fail_count;

/*
 * Every entry point starts here: counts the call, answers the failure injected for it (0: none).
 * In quiet mode only the total is counted, and the lock is taken only while failures are injected.
 */
static CUresult enter(const char *function) {
    CUresult result = 0;
    int i, q = quiet();
    __atomic_fetch_add(&g_total_calls, 1, __ATOMIC_RELAXED);
    if (q && __atomic_load_n(&g_fail_count, __ATOMIC_RELAXED) == 0) return 0;
    pthread_mutex_lock(&g_lock);
    for (i = 0; i < MAX_NAMES && !q; i++) {
        if (g_counts[i].name[0] == '\0') {
            snprintf(g_counts[i].name, NAME_LEN, "%s", function);
            g_counts[i].count = 1;
            break;
        }
        if (strcmp(g_counts[i].name, function) == 0) {
            g_counts[i].count++;
            break;
        }
    }
    for (i = 0; i < MAX_NAMES && g_fail_count; i++)
        if (g_fails[i].result && strcmp(g_fails[i].name, function) == 0) result = g_fails[i].result;
    pthread_mutex_unlock(&g_lock);
    return result;
}

CUresult cuInit(unsigned int flags) {
    CUresult injected = enter("cuInit");
    int fail = knob("FAKE_CUDA_FAIL_INIT", 0);
    record("cuInit(%d)", (int)flags);
    if (injected) return injected;
    if (fail) return fail;
    g_initialized = 1;
    return 0;
}

CUresult cuDriverGetVersion(int *version) {
    CUresult injected = enter("cuDriverGetVersion");
    record("cuDriverGetVersion", 0);
    if (injected) return injected;
    *version = knob("FAKE_CUDA_VERSION", 12080);
    return 0;
}

CUresult cuDeviceGetCount(int *count) {
    CUresult injected = enter("cuDeviceGetCount");
    record("cuDeviceGetCount", 0);
    if (injected) return injected;
    if (!g_initialized) return 3; /* CUDA_ERROR_NOT_INITIALIZED */
    *count = devices();
    return 0;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    CUresult injected = enter("cuDeviceGet");
    record("cuDeviceGet(%d)", ordinal);
    if (injected) return injected;
    if (ordinal < 0 || ordinal >= devices()) return 101; /* CUDA_ERROR_INVALID_DEVICE */
    *device = ordinal;
    return 0;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
    CUresult injected = enter("cuDeviceGetName");
    record("cuDeviceGetName(%d)", dev);
    if (injected) return injected;
    snprintf(name, (size_t)len, "Fake GPU %d", dev);
    return 0;
}

CUresult cuDeviceGetPCIBusId(char *bus, int len, CUdevice dev) {
    CUresult injected = enter("cuDeviceGetPCIBusId");
    record("cuDeviceGetPCIBusId(%d)", dev);
    if (injected) return injected;
    snprintf(bus, (size_t)len, "0000:%02X:00.0", 0x18 + dev);
    return 0;
}

#ifdef FAKE_UNVERSIONED
#define UUID_FN "cuDeviceGetUuid"
#define RELEASE_FN "cuDevicePrimaryCtxRelease"
#define EVENT_DESTROY_FN "cuEventDestroy"
#define PUSH_FN "cuCtxPushCurrent"
#define POP_FN "cuCtxPopCurrent"
#define cuDeviceGetUuid_v2 cuDeviceGetUuid
#define cuDevicePrimaryCtxRelease_v2 cuDevicePrimaryCtxRelease
#define cuEventDestroy_v2 cuEventDestroy
#define cuCtxPushCurrent_v2 cuCtxPushCurrent
#define cuCtxPopCurrent_v2 cuCtxPopCurrent
#else
#define UUID_FN "cuDeviceGetUuid_v2"
#define RELEASE_FN "cuDevicePrimaryCtxRelease_v2"
#define EVENT_DESTROY_FN "cuEventDestroy_v2"
#define PUSH_FN "cuCtxPushCurrent_v2"
#define POP_FN "cuCtxPopCurrent_v2"
#endif
#define UUID_NAME UUID_FN "(%d)"
#define RELEASE_NAME RELEASE_FN "(%d)"

CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) {
    int i;
    CUresult injected = enter(UUID_FN);
    record(UUID_NAME, dev);
    if (injected) return injected;
    for (i = 0; i < 16; i++) uuid->bytes[i] = (char)(0xA0 + i + dev);
    return 0;
}

#ifndef FAKE_NO_RETAIN
CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev) {
    CUresult injected = enter("cuDevicePrimaryCtxRetain");
    int fail = knob("FAKE_CUDA_FAIL_RETAIN", 0);
    record("cuDevicePrimaryCtxRetain(%d)", dev);
    if (injected) return injected;
    if (fail) return fail;
    pthread_mutex_lock(&g_lock);
    g_retains[dev]++;
    pthread_mutex_unlock(&g_lock);
    *ctx = &g_contexts[dev];
    return 0;
}
#endif

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    CUresult injected = enter(RELEASE_FN);
    record(RELEASE_NAME, dev);
    if (injected) return injected;
    pthread_mutex_lock(&g_lock);
    if (g_retains[dev] <= 0) g_release_errors++;
    else g_retains[dev]--;
    pthread_mutex_unlock(&g_lock);
    return 0;
}

CUresult cuCtxSetCurrent(CUcontext ctx) {
    CUresult injected = enter("cuCtxSetCurrent");
    int fail = knob("FAKE_CUDA_FAIL_SET_CURRENT", 0);
    record("cuCtxSetCurrent(%d)", ctx ? (int)((char *)ctx - g_contexts) : -1);
    if (injected) return injected;
    if (ctx && fail) return fail;
    t_current = ctx;
    return 0;
}

CUresult cuCtxGetCurrent(CUcontext *ctx) {
    CUresult injected = enter("cuCtxGetCurrent");
    if (injected) return injected;
    *ctx = t_current;
    return 0;
}

/* The fake context's device (-1: NULL, -2: not one of ours), for the call log. */
static int context_index(CUcontext ctx) {
    uintptr_t p = (uintptr_t)ctx, first = (uintptr_t)&g_contexts[0];
    if (!ctx) return -1;
    if (p < first || p >= first + MAX_DEVICES) return -2;
    return (int)(p - first);
}

/*
 * The real driver keeps a per-thread stack of contexts whose top is the current one:
 * cuCtxPushCurrent makes ctx current over the one before, cuCtxPopCurrent takes the top off
 * (answering it) and makes the one below current again; popping an empty stack is
 * CUDA_ERROR_INVALID_CONTEXT. Here the stack holds the contexts saved under t_current.
 */
#define MAX_STACK 64
static __thread CUcontext t_stack[MAX_STACK];
static __thread int t_depth;

CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
    CUresult injected = enter(PUSH_FN);
    record(PUSH_FN "(%d)", context_index(ctx));
    if (injected) return injected;
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    if (t_depth >= MAX_STACK) return CUDA_ERROR_OUT_OF_MEMORY;
    t_stack[t_depth++] = t_current;
    t_current = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxPopCurrent_v2(CUcontext *previous) {
    CUresult injected = enter(POP_FN);
    record(POP_FN "(%d)", t_depth > 0 ? context_index(t_current) : -1);
    if (injected) return injected;
    if (t_depth <= 0) return CUDA_ERROR_INVALID_CONTEXT;
    if (previous) *previous = t_current;
    t_current = t_stack[--t_depth];
    return CUDA_SUCCESS;
}

/* ---- fake allocations, under g_lock ---- */
#define MAX_ALLOCS 256
#define FIRST_ADDRESS 0x7f0000000000ULL
#define ADDRESS_STRIDE 0x100000000ULL
struct fake_alloc {
    int used;
    CUdeviceptr base;
    unsigned long long size;
    int device;
    int kind; /* 0 device, 1 pinned host, 2 managed, 3 virtual, 4 pool */
    unsigned long long buffer_id;
    void *pool; /* the memory pool of pool memory, NULL otherwise */
};
static struct fake_alloc g_allocs[MAX_ALLOCS];
static unsigned long long g_next_buffer_id = 1;
static unsigned long long g_next_slot;   /* n in FIRST_ADDRESS + n * ADDRESS_STRIDE */
static char g_pool;                      /* its address is the fake memory pool */
static int g_old_driver;

/* The allocation containing ptr (base <= ptr < base + size), or -1. */
static int find_alloc(CUdeviceptr ptr) {
    int i;
    for (i = 0; i < MAX_ALLOCS; i++)
        if (g_allocs[i].used && ptr >= g_allocs[i].base && ptr - g_allocs[i].base < g_allocs[i].size) return i;
    return -1;
}

static int overlaps(CUdeviceptr base, unsigned long long size) {
    int i;
    for (i = 0; i < MAX_ALLOCS; i++)
        if (g_allocs[i].used && base < g_allocs[i].base + g_allocs[i].size && g_allocs[i].base < base + size) return 1;
    return 0;
}

/* Adds an allocation at base (0: the next fresh address); answers its base, 0 if refused. */
static CUdeviceptr add_alloc(int device, CUdeviceptr base, unsigned long long size, int kind) {
    int i, slot = -1;
    if (size == 0 || kind < 0 || kind > 4) return 0;
    pthread_mutex_lock(&g_lock);
    for (i = 0; i < MAX_ALLOCS && slot < 0; i++)
        if (!g_allocs[i].used) slot = i;
    if (slot >= 0 && base == 0) {
        /* one stride per allocation, more for one above 4 GiB, so that none overlap */
        base = FIRST_ADDRESS + g_next_slot * ADDRESS_STRIDE;
        g_next_slot += (size + ADDRESS_STRIDE - 1) / ADDRESS_STRIDE;
    }
    if (slot < 0 || size > ~0ULL - base || overlaps(base, size)) {
        pthread_mutex_unlock(&g_lock);
        return 0;
    }
    g_allocs[slot].used = 1;
    g_allocs[slot].base = base;
    g_allocs[slot].size = size;
    g_allocs[slot].device = device;
    g_allocs[slot].kind = kind;
    g_allocs[slot].buffer_id = g_next_buffer_id++;
    g_allocs[slot].pool = kind == 4 ? &g_pool : NULL;
    pthread_mutex_unlock(&g_lock);
    return base;
}

/*
 * The real driver answers the base and size of the allocation (cuMemAlloc, cuMemMap range,
 * pool block, registered host memory) that contains ptr, CUDA_ERROR_NOT_FOUND for an address
 * it did not hand out.
 */
CUresult cuMemGetAddressRange_v2(CUdeviceptr *base, size_t *size, CUdeviceptr ptr) {
    CUresult injected = enter("cuMemGetAddressRange_v2");
    int i;
    record("cuMemGetAddressRange_v2", 0);
    if (injected) return injected;
    pthread_mutex_lock(&g_lock);
    i = find_alloc(ptr);
    if (i >= 0) {
        if (base) *base = g_allocs[i].base;
        if (size) *size = (size_t)g_allocs[i].size;
    }
    pthread_mutex_unlock(&g_lock);
    return i >= 0 ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

/*
 * The real driver still exports the pre-3.2 ABI under the plain name, with 32-bit pointers and
 * sizes: a library that calls it by mistake passes a truncated pointer and gets truncated
 * answers. The lookup is on the 32-bit value (nothing for the fake 64-bit addresses).
 */
CUresult cuMemGetAddressRange(unsigned int *base, unsigned int *size, unsigned int ptr) {
    CUresult injected = enter("cuMemGetAddressRange");
    int i;
    record("cuMemGetAddressRange(32-bit ABI)", 0);
    if (injected) return injected;
    pthread_mutex_lock(&g_lock);
    i = find_alloc((CUdeviceptr)ptr);
    if (i >= 0) {
        if (base) *base = (unsigned int)g_allocs[i].base;
        if (size) *size = (unsigned int)g_allocs[i].size;
    }
    pthread_mutex_unlock(&g_lock);
    return i >= 0 ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

/*
 * The real driver answers one attribute of the allocation containing ptr, without a current
 * context; a pointer it did not hand out is CUDA_ERROR_INVALID_VALUE whatever the attribute, as
 * is an attribute it does not know (an older driver knows neither IS_LEGACY_CUDA_IPC_CAPABLE
 * nor MEMPOOL_HANDLE). Managed memory answers MEMORY_TYPE device.
 */
#define CU_POINTER_ATTRIBUTE_MEMORY_TYPE 2
#define CU_POINTER_ATTRIBUTE_BUFFER_ID 7
#define CU_POINTER_ATTRIBUTE_IS_MANAGED 8
#define CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL 9
#define CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE 10
#define CU_POINTER_ATTRIBUTE_RANGE_START_ADDR 11
#define CU_POINTER_ATTRIBUTE_RANGE_SIZE 12
#define CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE 17

/* Whether the driver knows the attribute (the old-driver mode knows fewer), under g_lock. */
static int knows_attribute(int attribute) {
    switch (attribute) {
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE:
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE: return !g_old_driver;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
    case CU_POINTER_ATTRIBUTE_BUFFER_ID:
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE: return 1;
    default: return 0;
    }
}

/* Writes attribute of allocation a (NULL: an unknown pointer, every value 0) into data, in the
 * attribute's own type, as the real driver does. */
static void attribute_value(const struct fake_alloc *a, int attribute, void *data) {
    unsigned int u;
    int d;
    unsigned long long id;
    void *pool;
    CUdeviceptr range_base;
    size_t range_size;
    switch (attribute) {
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
        u = !a ? 0u : a->kind == 1 ? 1u /* CU_MEMORYTYPE_HOST */ : 2u /* CU_MEMORYTYPE_DEVICE */;
        memcpy(data, &u, sizeof u);
        break;
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
        u = a && a->kind == 2;
        memcpy(data, &u, sizeof u);
        break;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
        d = a ? a->device : 0;
        memcpy(data, &d, sizeof d);
        break;
    case CU_POINTER_ATTRIBUTE_BUFFER_ID:
        id = a ? a->buffer_id : 0;
        memcpy(data, &id, sizeof id);
        break;
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE:
        u = a && a->kind == 0;
        memcpy(data, &u, sizeof u);
        break;
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE:
        pool = a ? a->pool : NULL;
        memcpy(data, &pool, sizeof pool);
        break;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
        range_base = a ? a->base : 0;
        memcpy(data, &range_base, sizeof range_base);
        break;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
        range_size = a ? (size_t)a->size : 0;
        memcpy(data, &range_size, sizeof range_size);
        break;
    default: break;
    }
}

CUresult cuPointerGetAttribute(void *data, int attribute, CUdeviceptr ptr) {
    CUresult injected = enter("cuPointerGetAttribute");
    struct fake_alloc a;
    int i, known;
    memset(&a, 0, sizeof a);
    record("cuPointerGetAttribute(%d)", attribute);
    if (injected) return injected;
    pthread_mutex_lock(&g_lock);
    known = knows_attribute(attribute);
    i = find_alloc(ptr);
    if (i >= 0) a = g_allocs[i];
    pthread_mutex_unlock(&g_lock);
    if (!known || i < 0 || !data) return CUDA_ERROR_INVALID_VALUE;
    attribute_value(&a, attribute, data);
    return CUDA_SUCCESS;
}

#ifndef FAKE_NO_POINTER_ATTRIBUTES
/*
 * The real driver answers several attributes in one call, each into its own data[i], in the
 * attribute's type, without a current context. Unlike the singular call, a pointer it did not
 * hand out is not an error: every attribute gets its NULL value (0) and the call succeeds. An
 * attribute it does not know (the old-driver mode's), a NULL array or a NULL data[i] is
 * CUDA_ERROR_INVALID_VALUE for the whole call, and nothing is written.
 */
CUresult cuPointerGetAttributes(unsigned int count, int *attributes, void **data, CUdeviceptr ptr) {
    CUresult injected = enter("cuPointerGetAttributes");
    struct fake_alloc a;
    unsigned int k;
    int i, known = 1;
    memset(&a, 0, sizeof a);
    record("cuPointerGetAttributes(%d)", (int)count);
    if (injected) return injected;
    if (count == 0 || !attributes || !data) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_lock);
    for (k = 0; k < count; k++) known = known && knows_attribute(attributes[k]) && data[k];
    i = find_alloc(ptr);
    if (i >= 0) a = g_allocs[i];
    pthread_mutex_unlock(&g_lock);
    if (!known) return CUDA_ERROR_INVALID_VALUE;
    for (k = 0; k < count; k++) attribute_value(i >= 0 ? &a : NULL, attributes[k], data[k]);
    return CUDA_SUCCESS;
}
#endif

static void put_le(char *out, unsigned long long value, int bytes) {
    int i;
    for (i = 0; i < bytes; i++) out[i] = (char)((value >> (8 * i)) & 0xFF);
}

#ifndef FAKE_NO_IPC
/*
 * The real driver, with a current context, answers an opaque 64-byte handle another process
 * opens with cuIpcOpenMemHandle; only the base of a cuMemAlloc allocation qualifies (not an
 * interior pointer, not host, managed, virtual or pool memory): CUDA_ERROR_INVALID_VALUE.
 * Here: "FAKEIPC\0", the buffer id, the base (8 bytes each, little-endian), the device (4).
 */
CUresult cuIpcGetMemHandle(CUipcMemHandle *handle, CUdeviceptr ptr) {
    CUresult injected = enter("cuIpcGetMemHandle");
    struct fake_alloc a;
    int i;
    memset(&a, 0, sizeof a);
    pthread_mutex_lock(&g_lock);
    i = find_alloc(ptr);
    if (i >= 0) a = g_allocs[i];
    pthread_mutex_unlock(&g_lock);
    record("cuIpcGetMemHandle(buffer %d)", i >= 0 ? (int)a.buffer_id : 0);
    if (injected) return injected;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    if (!handle || i < 0 || a.base != ptr || a.kind != 0) return CUDA_ERROR_INVALID_VALUE;
    memset(handle, 0, sizeof *handle);
    memcpy(handle->reserved, "FAKEIPC", 8);
    put_le(handle->reserved + 8, a.buffer_id, 8);
    put_le(handle->reserved + 16, a.base, 8);
    put_le(handle->reserved + 24, (unsigned int)a.device, 4);
    return CUDA_SUCCESS;
}
#endif

/* ---- fake events: heap-allocated, listed while alive, under g_lock ---- */
#define CU_EVENT_DISABLE_TIMING 2u
#define CU_EVENT_INTERPROCESS 4u
struct fake_event {
    struct fake_event *next;
    unsigned int flags;
    unsigned long long id;
    CUstream stream; /* the last cuEventRecord's */
};
static struct fake_event *g_events;
static int g_live_events;
static unsigned long long g_next_event_id = 1;

static struct fake_event *find_event(CUevent event) {
    struct fake_event *e;
    for (e = g_events; e; e = e->next)
        if ((CUevent)e == event) return e;
    return NULL;
}

/*
 * The real driver creates an event in the current context (CUDA_ERROR_INVALID_CONTEXT without
 * one); it refuses unknown flags and CU_EVENT_INTERPROCESS without CU_EVENT_DISABLE_TIMING
 * (CUDA_ERROR_INVALID_VALUE).
 */
CUresult cuEventCreate(CUevent *event, unsigned int flags) {
    CUresult injected = enter("cuEventCreate");
    struct fake_event *e;
    record("cuEventCreate(%d)", (int)flags);
    if (injected) return injected;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    if (!event || (flags & ~7u) || ((flags & CU_EVENT_INTERPROCESS) && !(flags & CU_EVENT_DISABLE_TIMING)))
        return CUDA_ERROR_INVALID_VALUE;
    e = calloc(1, sizeof *e);
    if (!e) return CUDA_ERROR_OUT_OF_MEMORY;
    e->flags = flags;
    pthread_mutex_lock(&g_lock);
    e->id = g_next_event_id++;
    e->next = g_events;
    g_events = e;
    g_live_events++;
    pthread_mutex_unlock(&g_lock);
    *event = e;
    return CUDA_SUCCESS;
}

/*
 * The real driver, with a current context, captures the work queued so far on stream into the
 * event (0: the legacy default stream, 2: CU_STREAM_PER_THREAD); an invalid event is
 * CUDA_ERROR_INVALID_HANDLE.
 */
CUresult cuEventRecord(CUevent event, CUstream stream) {
    CUresult injected = enter("cuEventRecord");
    struct fake_event *e;
    record("cuEventRecord(stream %d)", (int)(intptr_t)stream);
    if (injected) return injected;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    if (!event) return CUDA_ERROR_INVALID_HANDLE;
    pthread_mutex_lock(&g_lock);
    e = find_event(event);
    if (e) e->stream = stream;
    pthread_mutex_unlock(&g_lock);
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

/*
 * The real driver, with a current context, answers an opaque 64-byte handle another process
 * opens with cuIpcOpenEventHandle; the event must have been created with CU_EVENT_INTERPROCESS
 * (CUDA_ERROR_INVALID_VALUE otherwise). Here: "FAKEEVT\0", then the event's id (8 bytes,
 * little-endian).
 */
CUresult cuIpcGetEventHandle(CUipcEventHandle *handle, CUevent event) {
    CUresult injected = enter("cuIpcGetEventHandle");
    struct fake_event *e;
    unsigned int flags = 0;
    unsigned long long id = 0;
    pthread_mutex_lock(&g_lock);
    e = event ? find_event(event) : NULL;
    if (e) {
        flags = e->flags;
        id = e->id;
    }
    pthread_mutex_unlock(&g_lock);
    record("cuIpcGetEventHandle(event %d)", (int)id);
    if (injected) return injected;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    if (!e) return CUDA_ERROR_INVALID_HANDLE;
    if (!handle || !(flags & CU_EVENT_INTERPROCESS)) return CUDA_ERROR_INVALID_VALUE;
    memset(handle, 0, sizeof *handle);
    memcpy(handle->reserved, "FAKEEVT", 8);
    put_le(handle->reserved + 8, id, 8);
    return CUDA_SUCCESS;
}

/* The real driver destroys the event (CUDA_ERROR_INVALID_HANDLE for an invalid one). */
CUresult cuEventDestroy_v2(CUevent event) {
    CUresult injected = enter(EVENT_DESTROY_FN);
    struct fake_event **p, *e = NULL;
    unsigned long long id = 0;
    pthread_mutex_lock(&g_lock);
    for (p = &g_events; event && *p; p = &(*p)->next)
        if ((CUevent)*p == event) {
            e = *p;
            id = e->id;
            break;
        }
    if (e && !injected) {
        *p = e->next;
        g_live_events--;
    }
    pthread_mutex_unlock(&g_lock);
    record(EVENT_DESTROY_FN "(event %d)", (int)id);
    if (injected) return injected;
    if (!e) return CUDA_ERROR_INVALID_HANDLE;
    free(e);
    return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult error, const char **name) {
    CUresult injected = enter("cuGetErrorName");
    if (injected) return injected;
    switch (error) {
    case 100: *name = "CUDA_ERROR_NO_DEVICE"; return 0;
    case 101: *name = "CUDA_ERROR_INVALID_DEVICE"; return 0;
    case 2: *name = "CUDA_ERROR_OUT_OF_MEMORY"; return 0;
    case 0: *name = "CUDA_SUCCESS"; return 0;
    case 1: *name = "CUDA_ERROR_INVALID_VALUE"; return 0;
    case 201: *name = "CUDA_ERROR_INVALID_CONTEXT"; return 0;
    case 400: *name = "CUDA_ERROR_INVALID_HANDLE"; return 0;
    case 500: *name = "CUDA_ERROR_NOT_FOUND"; return 0;
    default: *name = NULL; return 1;
    }
}

CUresult cuGetErrorString(CUresult error, const char **text) {
    CUresult injected = enter("cuGetErrorString");
    if (injected) return injected;
    switch (error) {
    case 100: *text = "no CUDA-capable device is detected"; return 0;
    case 101: *text = "invalid device ordinal"; return 0;
    case 2: *text = "out of memory"; return 0;
    case 0: *text = "no error"; return 0;
    case 1: *text = "invalid argument"; return 0;
    case 201: *text = "invalid device context"; return 0;
    case 400: *text = "invalid resource handle"; return 0;
    case 500: *text = "named symbol not found"; return 0;
    default: *text = NULL; return 1;
    }
}

/*
 * The real driver allocates device memory on the current context's device
 * (CUDA_ERROR_INVALID_CONTEXT without one); cuMemFree_v2 frees what cuMemAlloc_v2 handed out
 * (CUDA_ERROR_INVALID_VALUE for anything else). So an example worker can take its buffer from
 * the driver API as it would on a GPU.
 */
CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    CUresult injected = enter("cuMemAlloc_v2");
    int device;
    record("cuMemAlloc_v2", 0);
    if (injected) return injected;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    if (!dptr || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
    device = context_index(t_current);
    *dptr = add_alloc(device, 0, bytesize, 0);
    return *dptr ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuMemFree_v2(CUdeviceptr dptr) {
    CUresult injected = enter("cuMemFree_v2");
    int i, found = 0;
    record("cuMemFree_v2", 0);
    if (injected) return injected;
    pthread_mutex_lock(&g_lock);
    for (i = 0; i < MAX_ALLOCS; i++)
        if (g_allocs[i].used && g_allocs[i].base == dptr && g_allocs[i].kind == 0) {
            g_allocs[i].used = 0;
            found = 1;
        }
    pthread_mutex_unlock(&g_lock);
    return found ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* ---- test control ---- */
unsigned long long fake_cuda_alloc(int device, unsigned long long size, int kind) {
    return add_alloc(device, 0, size, kind);
}

unsigned long long fake_cuda_alloc_at(int device, unsigned long long address, unsigned long long size, int kind) {
    if (address == 0) return 0;
    return add_alloc(device, address, size, kind);
}

void fake_cuda_free(unsigned long long base) {
    int i;
    pthread_mutex_lock(&g_lock);
    for (i = 0; i < MAX_ALLOCS; i++)
        if (g_allocs[i].used && g_allocs[i].base == base) g_allocs[i].used = 0;
    pthread_mutex_unlock(&g_lock);
}

void fake_cuda_fail(const char *function, int result) {
    int i, slot = -1;
    if (!function || !*function || strlen(function) >= NAME_LEN) return;
    pthread_mutex_lock(&g_lock);
    for (i = 0; i < MAX_NAMES; i++) {
        if (g_fails[i].result && strcmp(g_fails[i].name, function) == 0) {
            slot = i;
            break;
        }
        if (!g_fails[i].result && slot < 0) slot = i;
    }
    if (slot >= 0) {
        snprintf(g_fails[slot].name, NAME_LEN, "%s", function);
        g_fails[slot].result = result;
    }
    for (i = 0, slot = 0; i < MAX_NAMES; i++) slot += g_fails[i].result != 0;
    __atomic_store_n(&g_fail_count, slot, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&g_lock);
}

void fake_cuda_old_driver(int on) {
    pthread_mutex_lock(&g_lock);
    g_old_driver = on != 0;
    pthread_mutex_unlock(&g_lock);
}

/* ---- introspection for the tests ---- */
const char *fake_cuda_calls(void) { return g_calls; }
int fake_cuda_retain_count(int dev) { return g_retains[dev]; }
int fake_cuda_release_errors(void) { return g_release_errors; }
void *fake_cuda_context(int dev) { return &g_contexts[dev]; }

int fake_cuda_count(const char *function) {
    int i, count = 0;
    if (!function) return 0;
    pthread_mutex_lock(&g_lock);
    for (i = 0; i < MAX_NAMES && g_counts[i].name[0]; i++)
        if (strcmp(g_counts[i].name, function) == 0) count = g_counts[i].count;
    pthread_mutex_unlock(&g_lock);
    return count;
}

unsigned long long fake_cuda_total_calls(void) { return __atomic_load_n(&g_total_calls, __ATOMIC_RELAXED); }

int fake_cuda_live_events(void) {
    int live;
    pthread_mutex_lock(&g_lock);
    live = g_live_events;
    pthread_mutex_unlock(&g_lock);
    return live;
}

void fake_cuda_reset(void) {
    struct fake_event *e, *next;
    pthread_mutex_lock(&g_lock);
    g_calls[0] = '\0';
    g_calls_len = 0;
    __atomic_store_n(&g_total_calls, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&g_fail_count, 0, __ATOMIC_RELAXED);
    memset(g_counts, 0, sizeof g_counts);
    memset(g_fails, 0, sizeof g_fails);
    memset(g_allocs, 0, sizeof g_allocs);
    g_old_driver = 0;
    for (e = g_events; e; e = next) {
        next = e->next;
        free(e);
    }
    g_events = NULL;
    g_live_events = 0;
    pthread_mutex_unlock(&g_lock);
}
