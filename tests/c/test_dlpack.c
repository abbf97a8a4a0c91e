/*
 * DLPack payloads from C (C11 and C++17, and under the sanitizers), against the fake CUDA
 * driver (ETB_CUDA_DRIVER_PATH) and etb-dev-agent: our header and dlpack/dlpack.h (DLPack 1.3,
 * vendored in tests/c/dlpack/) in both orders (this file: ours first; test_dlpack_order.c: the
 * other); a versioned and a legacy managed tensor give the bytes the EtbCudaTensor route gives
 * for the same memory (but the reference-counter slot); every refused device type, dtype, lanes,
 * flag, version and layout a row, the caller keeping the tensor; the deleter counted: once, at
 * etb_payload_free on the freeing thread when the slot reads 0, else on the etb-dlpack thread once
 * the slot is released (a consumer's release simulated by decrementing it), never at the
 * client's close; the read-only flag refusing a Transfer(recv) before the queue.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "etha_tensor_bus.h"

#include <dlpack/dlpack.h>

#include "harness.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>

int dlpack_other_order(void);

static unsigned long long (*fake_alloc)(int, unsigned long long, int);

/* ---- a producer: managed tensors whose deleter counts its calls and the thread it ran on ---- */

typedef struct Producer {
    int64_t shape[4];
    int64_t strides[4];
    int deleted;
    pthread_t thread;
    char thread_name[32];
} Producer;

static void record(Producer *pr) {
    pr->deleted++;
    pr->thread = pthread_self();
    pthread_getname_np(pthread_self(), pr->thread_name, sizeof pr->thread_name);
}

static void delete_versioned(DLManagedTensorVersioned *self) {
    record((Producer *)self->manager_ctx);
    free(self);
}

static void delete_legacy(DLManagedTensor *self) {
    record((Producer *)self->manager_ctx);
    free(self);
}

/* A DLTensor of `pr`'s shape (and strides when `strided`) on kDLCUDA `device` at `data`. */
static DLTensor dl(Producer *pr, unsigned long long data, int device, int ndim, int strided, uint8_t code, uint8_t bits) {
    DLTensor t;
    memset(&t, 0, sizeof t);
    t.data = (void *)(uintptr_t)data;
    t.device.device_type = kDLCUDA;
    t.device.device_id = device;
    t.ndim = ndim;
    t.dtype.code = code;
    t.dtype.bits = bits;
    t.dtype.lanes = 1;
    t.shape = pr->shape;
    t.strides = strided ? pr->strides : NULL;
    return t;
}

static DLManagedTensorVersioned *versioned(Producer *pr, DLTensor t, uint64_t flags) {
    DLManagedTensorVersioned *m = (DLManagedTensorVersioned *)calloc(1, sizeof *m);
    m->version.major = DLPACK_MAJOR_VERSION;
    m->version.minor = DLPACK_MINOR_VERSION;
    m->manager_ctx = pr;
    m->deleter = delete_versioned;
    m->flags = flags;
    m->dl_tensor = t;
    return m;
}

static DLManagedTensor *legacy(Producer *pr, DLTensor t) {
    DLManagedTensor *m = (DLManagedTensor *)calloc(1, sizeof *m);
    m->manager_ctx = pr;
    m->deleter = delete_legacy;
    m->dl_tensor = t;
    return m;
}

/* ---- the consumer's side of the reference counter ---- */

/* The payload's reference-counter slot, mapped from its file, as the agent's torch maps it:
 * the file and slot are read from the payload's pickle (the file name, a SHORT_BINBYTES
 * starting "/etb_rc_", then the slot as a BININT1/BININT2/BININT). Stays valid after the
 * payload's free (the mapping is this test's); unmap with unmap_slot. */
typedef struct SlotRef {
    void *map;
    int64_t *at;
} SlotRef;

#define RC_FILE_SIZE (64 + 10000 * 8)

static SlotRef map_slot(const EtbPayload *p) {
    SlotRef ref = {NULL, NULL};
    const uint8_t *d = etb_payload_data(p);
    size_t n = etb_payload_len(p), i, len;
    char name[128];
    long index;
    int fd;
    void *map;
    for (i = 2; i + 8 < n; i++)
        if (d[i - 2] == 'C' && memcmp(d + i, "/etb_rc_", 8) == 0) break;
    if (i + 8 >= n) return ref;
    len = d[i - 1];
    if (len >= sizeof name || i + len + 5 > n) return ref;
    memcpy(name, d + i, len);
    name[len] = '\0';
    i += len;
    if (d[i] == 'K') index = d[i + 1];
    else if (d[i] == 'M') index = d[i + 1] | (d[i + 2] << 8);
    else if (d[i] == 'J') index = (long)(d[i + 1] | (d[i + 2] << 8) | (d[i + 3] << 16) | ((uint32_t)d[i + 4] << 24));
    else return ref;
    fd = shm_open(name, O_RDWR, 0);
    if (fd < 0) return ref;
    map = mmap(NULL, RC_FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return ref;
    ref.map = map;
    ref.at = (int64_t *)((char *)map + 64 + index * 8);
    return ref;
}

/* The consumer's release: torch decrements the slot when its storage dies. */
static void release_slot(SlotRef ref) {
    __atomic_fetch_sub(ref.at, 1, __ATOMIC_ACQ_REL);
}

static void unmap_slot(SlotRef ref) {
    if (ref.map) munmap(ref.map, RC_FILE_SIZE);
}

/* The consumer's release, then the free: the deleter runs in the free (no process exits with a
 * deferred deleter and its counter file left in /dev/shm). */
static void release_and_free(EtbPayload *p) {
    SlotRef ref = map_slot(p);
    if (ref.at) release_slot(ref);
    unmap_slot(ref);
    etb_payload_free(p);
}

static int wait_deleted(Producer *pr, int want, double seconds) {
    double end = now_s() + seconds;
    while (__atomic_load_n(&pr->deleted, __ATOMIC_ACQUIRE) < want && now_s() < end) usleep(1000);
    return __atomic_load_n(&pr->deleted, __ATOMIC_ACQUIRE) == want;
}

/* Bytes equal but the few of the slot index (both payloads hold their own slot). */
static int same_but_slot(const EtbPayload *a, const EtbPayload *b) {
    const uint8_t *x = etb_payload_data(a), *y = etb_payload_data(b);
    size_t n = etb_payload_len(a), i, differ = 0;
    if (n != etb_payload_len(b)) return 0;
    for (i = 0; i < n; i++) differ += x[i] != y[i];
    return differ <= 2;
}

/* ---- the client ---- */

static EtbClient *boot(Agent *agent) {
    long long rank = fresh_rank();
    char r[32];
    EtbBootstrapOptions o;
    EtbClient *c = NULL;
    EtbBootstrapInfo *i = NULL;
    *agent = start_agent(rank, 1, NULL, NULL);
    if (agent->pid <= 0) return NULL;
    snprintf(r, sizeof r, "%lld", rank);
    set_env(r, "0", NULL, "1"); /* cuda:1 */
    etb_bootstrap_options_init(&o);
    o.cuda_mode = ETB_CUDA_REQUIRE;
    o.connection_timeout_s = 5.0;
    if (etb_bootstrap_client_ex(&o, &c, &i) != ETB_OK) return NULL;
    etb_info_free(i);
    return c;
}

static EtbStatus cuda_route(EtbClient *c, int32_t dtype, unsigned long long data, uint32_t ndim, const int64_t *shape,
                            const int64_t *strides, int wait, EtbPayload **out) {
    EtbCudaTensor t;
    etb_cuda_tensor_init(&t);
    t.dtype = dtype;
    t.data = data;
    t.ndim = ndim;
    t.shape = shape;
    t.strides = strides;
    t.wait_on_stream = wait;
    return etb_client_cuda_tensor_payload(c, &t, out);
}

static int t_both_include_orders(void) {
    CHECK(dlpack_other_order(), "dlpack.h first, then ours: the calls did not compile to what they should");
    return 1;
}

static int t_same_payload_as_the_cuda_tensor_route(void) {
    Agent agent;
    EtbClient *c = boot(&agent);
    Producer pr;
    unsigned long long base;
    EtbPayload *a = NULL, *b = NULL, *ref = NULL;
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    memset(&pr, 0, sizeof pr);
    base = fake_alloc(1, 1 << 16, 0);
    pr.shape[0] = 4;
    pr.shape[1] = 8;
    pr.strides[0] = 1;
    pr.strides[1] = 4;
    /* byte_offset honoured, strides in elements: base + 256 with strides (1, 4). */
    {
        DLTensor t = dl(&pr, base, 1, 2, 1, kDLFloat, 32);
        t.byte_offset = 256;
        EXPECT(etb_client_dlpack_payload(c, versioned(&pr, t, 0), 0, NULL, &a), ETB_OK);
        EXPECT(etb_client_dlpack_legacy_payload(c, legacy(&pr, t), 0, NULL, &b), ETB_OK);
        EXPECT(cuda_route(c, ETB_DTYPE_FLOAT32, base + 256, 2, pr.shape, pr.strides, 0, &ref), ETB_OK);
        CHECK(same_but_slot(a, ref) && same_but_slot(b, ref), "not the EtbCudaTensor route's bytes");
        release_and_free(a);
        release_and_free(b);
        release_and_free(ref);
    }
    /* NULL strides: compact; a stream to wait on: the same event route. */
    {
        DLTensor t = dl(&pr, base + 64, 1, 2, 0, kDLBfloat, 16);
        EXPECT(etb_client_dlpack_payload(c, versioned(&pr, t, 0), 1, (void *)0x2, &a), ETB_OK);
        EXPECT(cuda_route(c, ETB_DTYPE_BFLOAT16, base + 64, 2, pr.shape, NULL, 1, &ref), ETB_OK);
        CHECK(etb_payload_len(a) == etb_payload_len(ref), "compact strides differ");
        release_and_free(a);
        release_and_free(ref);
    }
    /* DLPack's e5m2 (code 12) is our float8_e5m2 (11); e4m3fn (10) is our 10. */
    {
        DLTensor t = dl(&pr, base, 1, 1, 0, kDLFloat8_e5m2, 8);
        EXPECT(etb_client_dlpack_payload(c, versioned(&pr, t, 0), 0, NULL, &a), ETB_OK);
        EXPECT(cuda_route(c, ETB_DTYPE_FLOAT8_E5M2, base, 1, pr.shape, NULL, 0, &ref), ETB_OK);
        CHECK(same_but_slot(a, ref), "kDLFloat8_e5m2 is not ETB_DTYPE_FLOAT8_E5M2");
        release_and_free(a);
        release_and_free(ref);
        t = dl(&pr, base, 1, 1, 0, kDLFloat8_e4m3fn, 8);
        EXPECT(etb_client_dlpack_payload(c, versioned(&pr, t, 0), 0, NULL, &a), ETB_OK);
        EXPECT(cuda_route(c, ETB_DTYPE_FLOAT8_E4M3FN, base, 1, pr.shape, NULL, 0, &ref), ETB_OK);
        CHECK(same_but_slot(a, ref), "kDLFloat8_e4m3fn is not ETB_DTYPE_FLOAT8_E4M3FN");
        release_and_free(a);
        release_and_free(ref);
    }
    CHECK(pr.deleted == 5, "each of the 5 deleters once, in the free (%d)", pr.deleted);
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(agent.rank);
}

typedef struct Row {
    const char *what;
    int device_type, device_id, ndim, strided;
    uint8_t code, bits;
    uint16_t lanes;
    uint64_t flags;
    uint32_t major;
    int64_t shape0, stride0;
    int memory_kind;
    int wait;
    const char *says;
} Row;

static int t_every_refusal_a_row(void) {
    static const Row rows[] = {
        /* device types */
        {"kDLCPU", 1, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "kDLCPU"},
        {"kDLCUDAHost", 3, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "kDLCUDAHost"},
        {"kDLCUDAManaged", 13, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "kDLCUDAManaged"},
        {"kDLOpenCL", 4, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "kDLOpenCL"},
        {"kDLVulkan", 7, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "kDLVulkan"},
        {"kDLMetal", 8, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "kDLMetal"},
        {"kDLVPI", 9, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "kDLVPI"},
        {"kDLROCM", 10, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "kDLROCM"},
        {"kDLROCMHost", 11, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "kDLROCMHost"},
        {"kDLExtDev", 12, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "kDLExtDev"},
        {"kDLOneAPI", 14, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "kDLOneAPI"},
        {"kDLWebGPU", 15, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "kDLWebGPU"},
        {"kDLHexagon", 16, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "kDLHexagon"},
        {"kDLMAIA", 17, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "kDLMAIA"},
        {"kDLTrn", 18, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "kDLTrn"},
        {"an unknown device type", 99, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "device type 99"},
        /* the client is on cuda:1 */
        {"another device", 2, 0, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "on cuda:0 and this client is bound to cuda:1"},
        /* dtypes */
        {"float8_e4m3fnuz (DLPack's 11)", 2, 1, 1, 0, kDLFloat8_e4m3fnuz, 8, 1, 0, 1, 4, 1, 0, 0, "float8_e4m3fnuz"},
        {"float8_e5m2fnuz", 2, 1, 1, 0, kDLFloat8_e5m2fnuz, 8, 1, 0, 1, 4, 1, 0, 0, "float8_e5m2fnuz"},
        {"float8_e8m0fnu", 2, 1, 1, 0, kDLFloat8_e8m0fnu, 8, 1, 0, 1, 4, 1, 0, 0, "float8_e8m0fnu"},
        {"float8_e3m4", 2, 1, 1, 0, kDLFloat8_e3m4, 8, 1, 0, 1, 4, 1, 0, 0, "float8_e3m4"},
        {"float8_e4m3", 2, 1, 1, 0, kDLFloat8_e4m3, 8, 1, 0, 1, 4, 1, 0, 0, "float8_e4m3 "},
        {"float8_e4m3b11fnuz", 2, 1, 1, 0, kDLFloat8_e4m3b11fnuz, 8, 1, 0, 1, 4, 1, 0, 0, "float8_e4m3b11fnuz"},
        {"float6_e2m3fn", 2, 1, 1, 0, kDLFloat6_e2m3fn, 6, 1, 0, 1, 4, 1, 0, 0, "float6_e2m3fn"},
        {"float6_e3m2fn", 2, 1, 1, 0, kDLFloat6_e3m2fn, 6, 1, 0, 1, 4, 1, 0, 0, "float6_e3m2fn"},
        {"float4_e2m1fn", 2, 1, 1, 0, kDLFloat4_e2m1fn, 4, 1, 0, 1, 4, 1, 0, 0, "float4_e2m1fn"},
        {"complex64", 2, 1, 1, 0, kDLComplex, 64, 1, 0, 1, 4, 1, 0, 0, "complex64"},
        {"complex128", 2, 1, 1, 0, kDLComplex, 128, 1, 0, 1, 4, 1, 0, 0, "complex128"},
        {"uint16", 2, 1, 1, 0, kDLUInt, 16, 1, 0, 1, 4, 1, 0, 0, "uint16"},
        {"uint32", 2, 1, 1, 0, kDLUInt, 32, 1, 0, 1, 4, 1, 0, 0, "uint32"},
        {"uint64", 2, 1, 1, 0, kDLUInt, 64, 1, 0, 1, 4, 1, 0, 0, "uint64"},
        {"int4", 2, 1, 1, 0, kDLInt, 4, 1, 0, 1, 4, 1, 0, 0, "int4"},
        {"float8 (kDLFloat, 8 bits)", 2, 1, 1, 0, kDLFloat, 8, 1, 0, 1, 4, 1, 0, 0, "float8 "},
        {"bfloat32", 2, 1, 1, 0, kDLBfloat, 32, 1, 0, 1, 4, 1, 0, 0, "bfloat32"},
        {"bool1", 2, 1, 1, 0, kDLBool, 1, 1, 0, 1, 4, 1, 0, 0, "bool1"},
        {"opaque handle", 2, 1, 1, 0, kDLOpaqueHandle, 64, 1, 0, 1, 4, 1, 0, 0, "opaque_handle"},
        {"an unknown code", 2, 1, 1, 0, 200, 8, 1, 0, 1, 4, 1, 0, 0, "unknown code 200"},
        /* lanes, flags, version */
        {"lanes 4", 2, 1, 1, 0, kDLFloat, 32, 4, 0, 1, 4, 1, 0, 0, "4 lanes"},
        {"lanes 0", 2, 1, 1, 0, kDLFloat, 32, 0, 0, 1, 4, 1, 0, 0, "0 lanes"},
        {"the sub-byte padded flag", 2, 1, 1, 0, kDLUInt, 8, 1, DLPACK_FLAG_BITMASK_IS_SUBBYTE_TYPE_PADDED, 1, 4, 1, 0, 0,
         "DLPACK_FLAG_BITMASK_IS_SUBBYTE_TYPE_PADDED"},
        {"DLPack 2.x", 2, 1, 1, 0, kDLFloat, 32, 1, 0, 2, 4, 1, 0, 0, "DLPack 2."},
        {"DLPack 0.x in a versioned struct", 2, 1, 1, 0, kDLFloat, 32, 1, 0, 0, 4, 1, 0, 0, "DLPack 0."},
        /* layouts */
        {"a negative stride", 2, 1, 1, 1, kDLFloat, 32, 1, 0, 1, 4, -1, 0, 0, "strides[0] is -1"},
        {"a negative size", 2, 1, 1, 0, kDLFloat, 32, 1, 0, 1, -1, 1, 0, 0, "shape[0] is -1"},
        {"ndim 65", 2, 1, 65, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "ndim is 65"},
        {"ndim -1", 2, 1, -1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 0, "ndim is -1"},
        {"a span past the allocation", 2, 1, 1, 0, kDLFloat, 32, 1, 0, 1, 1 << 20, 1, 0, 0, "run past the end"},
        /* memory the driver says is not device memory, on a kDLCUDA tensor */
        {"pinned host memory as kDLCUDA", 2, 1, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 1, 0, "host"},
        {"wait_on_stream 2", 2, 1, 1, 0, kDLFloat, 32, 1, 0, 1, 4, 1, 0, 2, "wait_on_stream is 2"},
    };
    Agent agent;
    EtbClient *c = boot(&agent);
    size_t i;
    int64_t big_shape[65];
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    for (i = 0; i < 65; i++) big_shape[i] = 1;
    for (i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const Row *r = &rows[i];
        Producer pr;
        DLTensor t;
        DLManagedTensorVersioned *m;
        DLManagedTensor *l;
        EtbPayload *p = NULL;
        EtbStatus s;
        memset(&pr, 0, sizeof pr);
        pr.shape[0] = r->shape0;
        pr.strides[0] = r->stride0;
        t = dl(&pr, fake_alloc(1, 4096, r->memory_kind), r->device_id, r->ndim, r->strided, r->code, r->bits);
        t.device.device_type = (DLDeviceType)r->device_type;
        t.dtype.lanes = r->lanes;
        if (r->ndim == 65) t.shape = big_shape;
        m = versioned(&pr, t, r->flags);
        m->version.major = r->major;
        s = etb_client_dlpack_payload(c, m, r->wait, NULL, &p);
        CHECK(s == ETB_ERR_INVALID_ARGUMENT && p == NULL, "%s: got %s (%s)", r->what, etb_status_name(s),
              etb_last_error_message());
        CHECK(strstr(etb_last_error_message(), r->says) != NULL, "%s: message lacks \"%s\": %s", r->what, r->says,
              etb_last_error_message());
        CHECK(pr.deleted == 0, "%s: the deleter ran on a refusal", r->what);
        free(m); /* the caller kept it */
        if (r->flags == 0 && r->major == 1) {
            /* The legacy struct: the same refusal. */
            l = legacy(&pr, t);
            s = etb_client_dlpack_legacy_payload(c, l, r->wait, NULL, &p);
            CHECK(s == ETB_ERR_INVALID_ARGUMENT && strstr(etb_last_error_message(), r->says) != NULL,
                  "legacy %s: got %s (%s)", r->what, etb_status_name(s), etb_last_error_message());
            CHECK(pr.deleted == 0, "legacy %s: the deleter ran on a refusal", r->what);
            free(l);
        }
    }
    /* A versioned tensor of another major version: only its 8 version bytes are read (the
     * sanitizers' run catches a read past them). */
    {
        uint32_t *only_version = (uint32_t *)malloc(8);
        EtbPayload *p = NULL;
        only_version[0] = 2;
        only_version[1] = 0;
        EXPECT(etb_client_dlpack_payload(c, (DLManagedTensorVersioned *)(void *)only_version, 0, NULL, &p),
               ETB_ERR_INVALID_ARGUMENT);
        SAYS("only its version was read");
        free(only_version);
    }
    /* NULL arguments. */
    {
        Producer pr;
        DLManagedTensorVersioned *m;
        EtbPayload *p = NULL;
        memset(&pr, 0, sizeof pr);
        pr.shape[0] = 4;
        m = versioned(&pr, dl(&pr, fake_alloc(1, 4096, 0), 1, 1, 0, kDLFloat, 32), 0);
        EXPECT(etb_client_dlpack_payload(c, NULL, 0, NULL, &p), ETB_ERR_NULL_ARGUMENT);
        EXPECT(etb_client_dlpack_payload(c, m, 0, NULL, NULL), ETB_ERR_NULL_ARGUMENT);
        EXPECT(etb_client_dlpack_legacy_payload(c, NULL, 0, NULL, &p), ETB_ERR_NULL_ARGUMENT);
        m->dl_tensor.shape = NULL;
        EXPECT(etb_client_dlpack_payload(c, m, 0, NULL, &p), ETB_ERR_INVALID_ARGUMENT);
        SAYS("shape is NULL");
        CHECK(pr.deleted == 0, "the deleter ran on a refusal");
        free(m);
    }
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(agent.rank);
}

static int t_the_deleter_runs_once_at_the_documented_time(void) {
    Agent agent;
    EtbClient *c = boot(&agent);
    Producer now, later, closed, legacy_later, empty, never;
    unsigned long long base = fake_alloc(1, 1 << 16, 0);
    EtbPayload *p = NULL, *q = NULL, *r = NULL, *s = NULL, *e = NULL, *n = NULL;
    SlotRef sp, sq, sr, ss, sn;
    bool in_use = false;
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    memset(&now, 0, sizeof now);
    memset(&later, 0, sizeof later);
    memset(&closed, 0, sizeof closed);
    memset(&legacy_later, 0, sizeof legacy_later);
    memset(&empty, 0, sizeof empty);
    memset(&never, 0, sizeof never);
    now.shape[0] = later.shape[0] = closed.shape[0] = legacy_later.shape[0] = never.shape[0] = 16;
    /* 1. Released before the free: the deleter runs in etb_payload_free, on this thread. */
    EXPECT(etb_client_dlpack_payload(c, versioned(&now, dl(&now, base, 1, 1, 0, kDLFloat, 32), 0), 0, NULL, &p), ETB_OK);
    sp = map_slot(p);
    CHECK(sp.at != NULL, "the payload's slot not found");
    EXPECT(etb_payload_in_use(p, &in_use), ETB_OK);
    CHECK(in_use && now.deleted == 0, "the slot reads 1 and nothing ran");
    release_slot(sp);
    EXPECT(etb_payload_in_use(p, &in_use), ETB_OK);
    CHECK(!in_use, "released");
    CHECK(now.deleted == 0, "the deleter ran before the free");
    etb_payload_free(p);
    CHECK(now.deleted == 1 && pthread_equal(now.thread, pthread_self()), "not run in etb_payload_free on this thread (%d)",
          now.deleted);
    /* 2. Freed while in use (versioned and legacy): deferred, run once the slot reads 0. */
    EXPECT(etb_client_dlpack_payload(c, versioned(&later, dl(&later, base + 64, 1, 1, 0, kDLFloat, 32), 0), 0, NULL, &q),
           ETB_OK);
    EXPECT(etb_client_dlpack_legacy_payload(c, legacy(&legacy_later, dl(&legacy_later, base + 128, 1, 1, 0, kDLInt, 64)),
                                            0, NULL, &s),
           ETB_OK);
    sq = map_slot(q);
    ss = map_slot(s);
    CHECK(sq.at && ss.at, "slots not found");
    /* 3. One whose slot never reads 0: its deleter never runs. */
    EXPECT(etb_client_dlpack_payload(c, versioned(&never, dl(&never, base + 512, 1, 1, 0, kDLFloat, 32), 0), 0, NULL, &n),
           ETB_OK);
    sn = map_slot(n);
    CHECK(sn.at != NULL, "slot not found");
    /* 4. No elements: no slot, the deleter runs in the free. */
    empty.shape[0] = 0;
    EXPECT(etb_client_dlpack_payload(c, versioned(&empty, dl(&empty, 0, 1, 1, 0, kDLFloat, 32), 0), 0, NULL, &e), ETB_OK);
    etb_payload_free(e);
    CHECK(empty.deleted == 1 && pthread_equal(empty.thread, pthread_self()), "no elements: not run in the free");
    etb_payload_free(q);
    etb_payload_free(s);
    etb_payload_free(n);
    usleep(100 * 1000);
    CHECK(later.deleted == 0 && legacy_later.deleted == 0, "a deleter ran while the slot read 1");
    /* The agent's torch releases the memory: within a few 10 ms beats, once, on etb-dlpack. */
    release_slot(sq);
    CHECK(wait_deleted(&later, 1, 5.0), "the deferred deleter did not run (%d)", later.deleted);
    CHECK(!pthread_equal(later.thread, pthread_self()) && strcmp(later.thread_name, "etb-dlpack") == 0,
          "run on \"%s\", not the etb-dlpack thread", later.thread_name);
    CHECK(legacy_later.deleted == 0, "the legacy one ran with the other's release");
    release_slot(ss);
    CHECK(wait_deleted(&legacy_later, 1, 5.0), "the deferred legacy deleter did not run");
    CHECK(strcmp(legacy_later.thread_name, "etb-dlpack") == 0, "legacy: run on \"%s\"", legacy_later.thread_name);
    usleep(100 * 1000);
    CHECK(later.deleted == 1 && legacy_later.deleted == 1 && now.deleted == 1, "a deleter ran twice");
    /* 5. A payload that outlives its client's close: nothing runs at the close; its free with the
     * slot at 1 defers it, and the release runs it. */
    EXPECT(etb_client_dlpack_payload(c, versioned(&closed, dl(&closed, base + 256, 1, 1, 0, kDLFloat, 32), 0), 0, NULL, &r),
           ETB_OK);
    sr = map_slot(r);
    CHECK(sr.at != NULL, "slot not found");
    etb_client_close(c);
    usleep(50 * 1000);
    CHECK(closed.deleted == 0, "the deleter ran at the client's close");
    etb_payload_free(r);
    CHECK(closed.deleted == 0, "the deleter ran at the free while in use");
    release_slot(sr);
    CHECK(wait_deleted(&closed, 1, 5.0), "the deleter did not run after the close and the release");
    CHECK(never.deleted == 0, "the deleter of a slot that never read 0 ran");
    /* Leaves `never` deferred: the process ends with its deleter not run (its memory could still
     * be in use by a consumer), which is what the docs say. Release its slot now so that the
     * counter file goes with the reaper's last slot. */
    release_slot(sn);
    CHECK(wait_deleted(&never, 1, 5.0), "released at last: run");
    unmap_slot(sp);
    unmap_slot(sq);
    unmap_slot(ss);
    unmap_slot(sr);
    unmap_slot(sn);
    stop_agent(&agent);
    return nothing_left(agent.rank);
}

static int t_read_only_refuses_a_receive(void) {
    Agent agent;
    EtbClient *c = boot(&agent);
    Producer ro, rw;
    unsigned long long base = fake_alloc(1, 1 << 16, 0);
    EtbPayload *p = NULL, *w = NULL;
    EtbTensorPayload t;
    SlotRef sp, sw;
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    memset(&ro, 0, sizeof ro);
    memset(&rw, 0, sizeof rw);
    ro.shape[0] = rw.shape[0] = 16;
    EXPECT(etb_client_dlpack_payload(
               c, versioned(&ro, dl(&ro, base, 1, 1, 0, kDLFloat, 32), DLPACK_FLAG_BITMASK_READ_ONLY | DLPACK_FLAG_BITMASK_IS_COPIED),
               0, NULL, &p),
           ETB_OK);
    EXPECT(etb_client_dlpack_payload(c, versioned(&rw, dl(&rw, base + 64, 1, 1, 0, kDLFloat, 32), 0), 0, NULL, &w), ETB_OK);
    EXPECT(etb_client_init_pair(c, "pair", "train", "infer", 1, NULL, 0, NULL, 0, 10.0), ETB_OK);
    t.pair_name = "pair";
    t.data = etb_payload_data(p);
    t.len = etb_payload_len(p);
    EXPECT(etb_client_register_tensors(c, "ro", &t, 1, 0, 10.0), ETB_OK);
    EXPECT(etb_client_transfer(c, "ro", ETB_TRANSFER_RECV, 10.0), ETB_ERR_INVALID_ARGUMENT);
    SAYS("read-only");
    SAYS("nothing was enqueued");
    {
        EtbCompletion *done = NULL;
        EXPECT(etb_client_transfer_async(c, "ro", ETB_TRANSFER_RECV, 10.0, &done), ETB_ERR_INVALID_ARGUMENT);
        EXPECT(etb_client_transfer_detached(c, "ro", ETB_TRANSFER_RECV, 10.0), ETB_ERR_INVALID_ARGUMENT);
        CHECK(done == NULL, "no completion for a refused command");
    }
    EXPECT(etb_client_transfer(c, "ro", ETB_TRANSFER_SEND, 10.0), ETB_OK);
    /* A writable batch receives; after CleanupBatch the id is free of the flag. */
    t.data = etb_payload_data(w);
    t.len = etb_payload_len(w);
    EXPECT(etb_client_register_tensors(c, "rw", &t, 1, 0, 10.0), ETB_OK);
    EXPECT(etb_client_transfer(c, "rw", ETB_TRANSFER_RECV, 10.0), ETB_OK);
    EXPECT(etb_client_cleanup_batch(c, "ro", 10.0), ETB_OK);
    EXPECT(etb_client_register_tensors(c, "ro", &t, 1, 0, 10.0), ETB_OK);
    EXPECT(etb_client_transfer(c, "ro", ETB_TRANSFER_RECV, 10.0), ETB_OK);
    sp = map_slot(p);
    sw = map_slot(w);
    CHECK(sp.at && sw.at, "slots not found");
    release_slot(sp);
    release_slot(sw);
    etb_payload_free(p);
    etb_payload_free(w);
    CHECK(ro.deleted == 1 && rw.deleted == 1, "released before the free: run in the free");
    unmap_slot(sp);
    unmap_slot(sw);
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(agent.rank);
}

int main(void) {
    void *h;
    g_next_rank = (long long)getpid() * 1000 + 700;
    signal(SIGPIPE, SIG_IGN);
    h = getenv("ETB_CUDA_DRIVER_PATH") ? dlopen(getenv("ETB_CUDA_DRIVER_PATH"), RTLD_NOW | RTLD_LOCAL) : NULL;
    if (h) *(void **)(&fake_alloc) = dlsym(h, "fake_cuda_alloc");
    if (!fake_alloc) {
        printf("not ok - setup: ETB_CUDA_DRIVER_PATH must name the fake driver\n0 passed, 1 failed\n");
        return 1;
    }
    run_case("both_include_orders", t_both_include_orders);
    run_case("same_payload_as_the_cuda_tensor_route", t_same_payload_as_the_cuda_tensor_route);
    run_case("every_refusal_a_row", t_every_refusal_a_row);
    run_case("the_deleter_runs_once_at_the_documented_time", t_the_deleter_runs_once_at_the_documented_time);
    run_case("read_only_refuses_a_receive", t_read_only_refuses_a_receive);
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
