/*
 * Native payloads from C (C11 and C++17, and under the sanitizers): CUDA tensor payloads
 * through the fake CUDA driver (tests/fake_cuda, ETB_CUDA_DRIVER_PATH), every error row, the
 * handle cache, the context push/pop, events, lifetimes (close, fork), mesh shapes and
 * placements. ETB_TEST_CUDA_VARIANT picks the driver build's cases: "" (default),
 * "unversioned" (push/pop/destroy fallbacks), "noipc" (no cuIpcGetMemHandle), "singular" (no
 * cuPointerGetAttributes: the default cases through the singular calls), "quiet" (the default
 * build with FAKE_CUDA_QUIET=1, as the benchmarks run it).
 */
#define _POSIX_C_SOURCE 200809L
#include "etha_tensor_bus.h"

#include "harness.h"

#include <dlfcn.h>
#include <pthread.h>

static unsigned long long (*fake_alloc)(int, unsigned long long, int);
static unsigned long long (*fake_alloc_at)(int, unsigned long long, unsigned long long, int);
static void (*fake_free)(unsigned long long);
static void (*fake_fail)(const char *, int);
static void (*fake_old_driver)(int);
static int (*fake_count)(const char *);
static unsigned long long (*fake_total_calls)(void);
static int (*fake_live_events)(void);
static const char *(*fake_calls)(void);
static int (*fake_ctx_get_current)(void **);

static int load_fake(void) {
    void *h = dlopen(getenv("ETB_CUDA_DRIVER_PATH"), RTLD_NOW | RTLD_LOCAL);
    if (!h) return 0;
    *(void **)(&fake_alloc) = dlsym(h, "fake_cuda_alloc");
    *(void **)(&fake_alloc_at) = dlsym(h, "fake_cuda_alloc_at");
    *(void **)(&fake_free) = dlsym(h, "fake_cuda_free");
    *(void **)(&fake_fail) = dlsym(h, "fake_cuda_fail");
    *(void **)(&fake_old_driver) = dlsym(h, "fake_cuda_old_driver");
    *(void **)(&fake_count) = dlsym(h, "fake_cuda_count");
    *(void **)(&fake_total_calls) = dlsym(h, "fake_cuda_total_calls");
    *(void **)(&fake_live_events) = dlsym(h, "fake_cuda_live_events");
    *(void **)(&fake_calls) = dlsym(h, "fake_cuda_calls");
    *(void **)(&fake_ctx_get_current) = dlsym(h, "cuCtxGetCurrent");
    return fake_alloc && fake_alloc_at && fake_free && fake_fail && fake_old_driver && fake_count && fake_live_events &&
           fake_calls && fake_ctx_get_current && fake_total_calls;
}

/* Whether this run's driver build lacks cuPointerGetAttributes (the "singular" variant). */
static int singular_driver(void) {
    const char *variant = getenv("ETB_TEST_CUDA_VARIANT");
    return variant && strcmp(variant, "singular") == 0;
}

/* A client on cuda:1 (through the fake driver) against a fresh agent. */
static EtbClient *boot(Agent *agent, EtbCudaMode mode) {
    long long rank = fresh_rank();
    char r[32];
    EtbBootstrapOptions o;
    EtbClient *c = NULL;
    EtbBootstrapInfo *i = NULL;
    *agent = start_agent(rank, 1, NULL, NULL);
    if (agent->pid <= 0) return NULL;
    snprintf(r, sizeof r, "%lld", rank);
    set_env(r, "0", NULL, "1");
    etb_bootstrap_options_init(&o);
    o.cuda_mode = mode;
    o.connection_timeout_s = 5.0;
    if (etb_bootstrap_client_ex(&o, &c, &i) != ETB_OK) return NULL;
    etb_info_free(i);
    return c;
}

static EtbStatus tensor_payload(EtbClient *c, int32_t dtype, uint64_t data, uint32_t ndim, const int64_t *shape,
                                const int64_t *strides, EtbPayload **out) {
    EtbCudaTensor t;
    etb_cuda_tensor_init(&t);
    t.dtype = dtype;
    t.data = data;
    t.ndim = ndim;
    t.shape = shape;
    t.strides = strides;
    return etb_client_cuda_tensor_payload(c, &t, out);
}

static int pickle_shaped(const EtbPayload *p) {
    const uint8_t *d = etb_payload_data(p);
    size_t n = etb_payload_len(p);
    return n > 3 && d[0] == 0x80 && d[1] == 0x03 && d[n - 1] == '.';
}

static int t_dtypes_and_layout_payloads(void) {
    const int64_t dims[2] = {2, 4}, bad[2] = {2, 0};
    EtbPlacement pl[3];
    EtbPayload *p = NULL;
    CHECK(etb_dtype_size(ETB_DTYPE_BFLOAT16) == 2 && strcmp(etb_dtype_name(ETB_DTYPE_BFLOAT16), "bfloat16") == 0, "bf16");
    CHECK(etb_dtype_size(ETB_DTYPE_FLOAT8_E5M2) == 1 && etb_dtype_name(12) == NULL && etb_dtype_size(-1) == 0, "table");
    CHECK(sizeof(EtbCudaTensor) == 48, "EtbCudaTensor is 48 bytes on 64-bit Linux");
    EXPECT(etb_mesh_shape_payload(dims, 2, &p), ETB_OK);
    CHECK(pickle_shaped(p), "a protocol-3 pickle");
    etb_payload_free(p);
    EXPECT(etb_mesh_shape_payload(dims, 0, &p), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_mesh_shape_payload(bad, 2, &p), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_mesh_shape_payload(NULL, 2, &p), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_mesh_shape_payload(dims, 2, NULL), ETB_ERR_NULL_ARGUMENT);
    pl[0].kind = ETB_PLACEMENT_SHARD;
    pl[0].dim = -1;
    pl[0].reduce_op = NULL;
    pl[1].kind = ETB_PLACEMENT_REPLICATE;
    pl[1].dim = 0;
    pl[1].reduce_op = NULL;
    pl[2].kind = ETB_PLACEMENT_PARTIAL;
    pl[2].dim = 0;
    pl[2].reduce_op = "avg";
    EXPECT(etb_placements_payload(pl, 3, &p), ETB_OK);
    CHECK(pickle_shaped(p), "a protocol-3 pickle");
    etb_payload_free(p);
    EXPECT(etb_placements_payload(NULL, 0, &p), ETB_OK);
    etb_payload_free(p);
    pl[2].reduce_op = "";
    EXPECT(etb_placements_payload(pl, 3, &p), ETB_ERR_INVALID_ARGUMENT);
    SAYS("reduce_op is empty");
    pl[1].kind = 7;
    EXPECT(etb_placements_payload(pl, 2, &p), ETB_ERR_INVALID_ARGUMENT);
    SAYS("placements[1].kind is 7");
    CHECK(etb_payload_data(NULL) == NULL && etb_payload_len(NULL) == 0, "NULL payload accessors");
    etb_payload_free(NULL);
    return 1;
}

static int t_errors_in_order(void) {
    Agent agent;
    EtbClient *c = boot(&agent, ETB_CUDA_REQUIRE), *unbound;
    Agent agent2;
    const int64_t shape[2] = {4, 8}, neg[1] = {-1}, huge[2] = {INT64_MAX, INT64_MAX}, one[1] = {1};
    int64_t big_shape[65];
    unsigned char bigger[sizeof(EtbCudaTensor) + 8];
    EtbCudaTensor t;
    EtbPayload *p = (EtbPayload *)(void *)0x1;
    unsigned long long dev = fake_alloc(1, 4096, 0);
    size_t i;
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    /* NULL arguments first */
    etb_cuda_tensor_init(&t);
    EXPECT(etb_client_cuda_tensor_payload(NULL, &t, &p), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_cuda_tensor_payload(c, NULL, &p), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_cuda_tensor_payload(c, &t, NULL), ETB_ERR_NULL_ARGUMENT);
    SAYS("ETB_ERR_NULL_ARGUMENT: etb_client_cuda_tensor_payload: argument `payload_out` is NULL");
    /* then struct_size */
    t.struct_size = 40;
    EXPECT(etb_client_cuda_tensor_payload(c, &t, &p), ETB_ERR_INVALID_ARGUMENT);
    SAYS("struct_size is 40");
    memset(bigger, 0, sizeof bigger);
    etb_cuda_tensor_init((EtbCudaTensor *)(void *)bigger);
    ((EtbCudaTensor *)(void *)bigger)->struct_size = sizeof bigger;
    ((EtbCudaTensor *)(void *)bigger)->dtype = 99; /* a field error: reached only after the tail check */
    bigger[sizeof(EtbCudaTensor) + 2] = 1;
    EXPECT(etb_client_cuda_tensor_payload(c, (EtbCudaTensor *)(void *)bigger, &p), ETB_ERR_INVALID_ARGUMENT);
    SAYS("newer etha-tensor-bus");
    t.struct_size = 1u << 20;
    EXPECT(etb_client_cuda_tensor_payload(c, &t, &p), ETB_ERR_INVALID_ARGUMENT);
    /* then the binding: an unbound client, also for a tensor with no elements */
    unbound = boot(&agent2, ETB_CUDA_SKIP);
    CHECK(unbound != NULL, "bootstrap: %s", etb_last_error_message());
    etb_cuda_tensor_init(&t);
    t.dtype = 99; /* a field error, not reached */
    EXPECT(etb_client_cuda_tensor_payload(unbound, &t, &p), ETB_ERR_CUDA);
    SAYS("not bound to a GPU");
    SAYS("skip");
    etb_client_close(unbound);
    stop_agent(&agent2);
    /* then the fields */
    EXPECT(tensor_payload(c, 12, dev, 2, shape, NULL, &p), ETB_ERR_INVALID_ARGUMENT);
    SAYS("dtype 12");
    for (i = 0; i < 65; i++) big_shape[i] = 1;
    EXPECT(tensor_payload(c, 0, dev, 65, big_shape, NULL, &p), ETB_ERR_INVALID_ARGUMENT);
    SAYS("ndim is 65");
    EXPECT(tensor_payload(c, 0, dev, 1, neg, NULL, &p), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(tensor_payload(c, 0, dev, 1, one, neg, &p), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(tensor_payload(c, 0, dev, 2, huge, NULL, &p), ETB_ERR_INVALID_ARGUMENT);
    SAYS("overflows 64 bits");
    EXPECT(tensor_payload(c, 0, dev, 2, NULL, NULL, &p), ETB_ERR_NULL_ARGUMENT);
    etb_cuda_tensor_init(&t);
    t.data = dev;
    t.ndim = 1;
    t.shape = one;
    t.wait_on_stream = 2;
    EXPECT(etb_client_cuda_tensor_payload(c, &t, &p), ETB_ERR_INVALID_ARGUMENT);
    SAYS("wait_on_stream is 2");
    EXPECT(tensor_payload(c, 0, 0, 2, shape, NULL, &p), ETB_ERR_INVALID_ARGUMENT);
    CHECK(p == (EtbPayload *)(void *)0x1, "payload_out written on failure");
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(agent2.rank) && nothing_left(agent.rank);
}

static int t_memory_kinds(void) {
    Agent agent;
    EtbClient *c = boot(&agent, ETB_CUDA_REQUIRE);
    const int64_t shape[1] = {1024};
    EtbPayload *p = NULL;
    struct {
        int kind, device;
        const char *says;
    } rows[] = {{1, 1, "host memory"}, {2, 1, "managed"}, {3, 1, "virtual memory"}, {4, 1, "pool memory"},
                {0, 0, "another device (cuda:0)"}};
    size_t i;
    unsigned long long dev;
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    for (i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        unsigned long long ptr = fake_alloc(rows[i].device, 1 << 20, rows[i].kind);
        EXPECT(tensor_payload(c, ETB_DTYPE_FLOAT32, ptr, 1, shape, NULL, &p), ETB_ERR_INVALID_ARGUMENT);
        SAYS(rows[i].says);
        if (i < 4) SAYS("cuMemAlloc or cudaMalloc");
    }
    EXPECT(tensor_payload(c, ETB_DTYPE_FLOAT32, 0x1234, 1, shape, NULL, &p), ETB_ERR_INVALID_ARGUMENT);
    SAYS("unknown to the CUDA driver");
    dev = fake_alloc(1, 4096, 0);
    EXPECT(tensor_payload(c, ETB_DTYPE_FLOAT32, dev + 1024, 1, shape, NULL, &p), ETB_ERR_INVALID_ARGUMENT);
    SAYS("run past the end of its allocation");
    /* An older driver that does not know the newer attributes: "not that kind". */
    fake_old_driver(1);
    EXPECT(tensor_payload(c, ETB_DTYPE_FLOAT32, dev, 1, shape, NULL, &p), ETB_OK);
    etb_payload_free(p);
    fake_old_driver(0);
    /* A failing driver call: its error name in the message. */
    fake_fail("cuIpcGetMemHandle", 201);
    EXPECT(tensor_payload(c, ETB_DTYPE_FLOAT32, fake_alloc(1, 4096, 0), 1, shape, NULL, &p), ETB_ERR_CUDA);
    SAYS("CUDA_ERROR_INVALID_CONTEXT");
    fake_fail("cuIpcGetMemHandle", 0);
    /* Every driver call a payload makes, failing in turn: ETB_ERR_CUDA naming it, nothing made. */
    {
        const char *plural[] = {"cuPointerGetAttributes", "cuIpcGetMemHandle", "cuCtxPushCurrent_v2",
                                "cuEventCreate",          "cuEventRecord",     "cuIpcGetEventHandle"};
        const char *singular[] = {"cuPointerGetAttribute(", "cuMemGetAddressRange_v2", "cuIpcGetMemHandle",
                                  "cuCtxPushCurrent_v2",    "cuEventCreate",           "cuEventRecord",
                                  "cuIpcGetEventHandle"};
        const char **calls = singular_driver() ? singular : plural;
        size_t k, n = singular_driver() ? sizeof singular / sizeof singular[0] : sizeof plural / sizeof plural[0];
        for (k = 0; k < n; k++) {
            char name[64];
            snprintf(name, sizeof name, "%s", calls[k]);
            name[strcspn(name, "(")] = '\0';
            EtbCudaTensor t;
            int events = fake_live_events();
            etb_cuda_tensor_init(&t);
            t.dtype = ETB_DTYPE_FLOAT32;
            t.data = fake_alloc(1, 4096, 0); /* a new allocation: its handle is not cached yet */
            t.ndim = 1;
            t.shape = shape;
            t.wait_on_stream = 1;
            fake_fail(name, 999);
            p = (EtbPayload *)(void *)0x1;
            EXPECT(etb_client_cuda_tensor_payload(c, &t, &p), ETB_ERR_CUDA);
            fake_fail(name, 0);
            SAYS(calls[k]);
            CHECK(p == (EtbPayload *)(void *)0x1, "%s: payload_out written on failure", calls[k]);
            CHECK(fake_live_events() == events, "%s: an event was left behind", calls[k]);
        }
    }
    CHECK(strstr(fake_calls(), "32-bit ABI") == NULL, "the unversioned cuMemGetAddressRange was called");
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(agent.rank);
}

typedef struct {
    EtbClient *c;
    unsigned long long ptr;
    EtbStatus status;
    void *context_after;
    EtbPayload *p;
} ThreadCase;

static void *from_another_thread(void *arg) {
    ThreadCase *tc = (ThreadCase *)arg;
    const int64_t shape[1] = {16};
    tc->status = tensor_payload(tc->c, ETB_DTYPE_FLOAT32, tc->ptr, 1, shape, NULL, &tc->p);
    fake_ctx_get_current(&tc->context_after);
    return NULL;
}

static int t_handle_cache_threads_and_lifetimes(void) {
    Agent agent;
    EtbClient *c = boot(&agent, ETB_CUDA_REQUIRE);
    const int64_t shape[1] = {16};
    EtbPayload *a = NULL, *b = NULL, *again = NULL;
    unsigned long long base = fake_alloc(1, 1 << 16, 0);
    int before;
    pthread_t th;
    ThreadCase tc;
    bool in_use = false;
    pid_t child;
    int status = 0;
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    before = fake_count("cuIpcGetMemHandle");
    EXPECT(tensor_payload(c, ETB_DTYPE_FLOAT32, base, 1, shape, NULL, &a), ETB_OK);
    EXPECT(tensor_payload(c, ETB_DTYPE_FLOAT32, base + 64, 1, shape, NULL, &b), ETB_OK);
    CHECK(fake_count("cuIpcGetMemHandle") == before + 1, "one cuIpcGetMemHandle per allocation, got %d",
          fake_count("cuIpcGetMemHandle") - before);
    /* Freed and reused at the same address: another allocation, a new handle. */
    fake_free(base);
    CHECK(fake_alloc_at(1, base, 1 << 16, 0) == base, "realloc at the same address");
    EXPECT(tensor_payload(c, ETB_DTYPE_FLOAT32, base, 1, shape, NULL, &again), ETB_OK);
    CHECK(fake_count("cuIpcGetMemHandle") == before + 2, "a reused address got a stale handle");
    CHECK(etb_payload_len(a) == etb_payload_len(again) && memcmp(etb_payload_data(a), etb_payload_data(again),
                                                                 etb_payload_len(a)) != 0, "different bytes");
    etb_payload_free(again);
    /* A thread with no current context: the client's is pushed for the handle of a new allocation
     * (cuIpcGetMemHandle needs a current context), popped after. */
    memset(&tc, 0, sizeof tc);
    tc.c = c;
    tc.ptr = fake_alloc(1, 4096, 0);
    pthread_create(&th, NULL, from_another_thread, &tc);
    pthread_join(th, NULL);
    CHECK(tc.status == ETB_OK, "payload on another thread: %s", etb_status_name(tc.status));
    CHECK(tc.context_after == NULL, "the thread's context was not restored");
    etb_payload_free(tc.p);
    /* The stream path: an interprocess event recorded, living as long as the payload. */
    {
        EtbCudaTensor t;
        EtbPayload *ev = NULL;
        int events = fake_live_events();
        etb_cuda_tensor_init(&t);
        t.dtype = ETB_DTYPE_FLOAT32;
        t.data = base;
        t.ndim = 1;
        t.shape = shape;
        t.wait_on_stream = 1;
        t.stream = (void *)0x2; /* CU_STREAM_PER_THREAD */
        EXPECT(etb_client_cuda_tensor_payload(c, &t, &ev), ETB_OK);
        CHECK(fake_live_events() == events + 1, "the event lives with the payload");
        CHECK(strstr(fake_calls(), "cuEventRecord(stream 2)") != NULL, "recorded on the caller's stream");
        etb_payload_free(ev);
        CHECK(fake_live_events() == events, "the event died with the payload");
    }
    /* A payload outlives its client's close. */
    etb_client_close(c);
    EXPECT(etb_payload_in_use(a, &in_use), ETB_OK);
    CHECK(in_use, "the slot reads 1 until a consumer releases it");
    CHECK(pickle_shaped(a), "bytes still valid after the client's close");
    /* In a forked child: in_use is ETB_ERR_FORKED, free only forgets. */
    child = fork();
    if (child == 0) {
        bool u = false;
        int code = etb_payload_in_use(a, &u) == ETB_ERR_FORKED ? 0 : 1;
        etb_payload_free(a);
        _exit(code);
    }
    waitpid(child, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "in the child: ETB_ERR_FORKED expected");
    EXPECT(etb_payload_in_use(a, &in_use), ETB_OK);
    EXPECT(etb_payload_in_use(a, NULL), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_payload_in_use(NULL, &in_use), ETB_ERR_NULL_ARGUMENT);
    etb_payload_free(a);
    etb_payload_free(b);
    stop_agent(&agent);
    return nothing_left(agent.rank);
}

/* The call log's last 400 characters, for messages. */
static const char *log_tail(void) {
    const char *log = fake_calls();
    size_t n = strlen(log);
    return n > 400 ? log + n - 400 : log;
}

/* Driver calls since `*mark`, and moves the mark. */
static unsigned long long calls_since(unsigned long long *mark) {
    unsigned long long now = fake_total_calls(), n = now - *mark;
    *mark = now;
    return n;
}

/*
 * The driver calls of one payload, fresh (a new allocation: its IPC handle is made) and cached
 * (the same allocation again), with and without the stream event. With cuPointerGetAttributes:
 * one call for the lookup, without a context push, and one push for the handle and event. Without
 * it (the singular variant, or a driver older than 11.3): the singular calls of before.
 */
static int t_driver_calls_per_payload(void) {
    Agent agent;
    EtbClient *c = boot(&agent, ETB_CUDA_REQUIRE);
    const int64_t shape[1] = {16};
    unsigned long long base = fake_alloc(1, 1 << 16, 0), mark;
    int singular = singular_driver(), plural_before, k;
    /* fresh, cached, fresh + event, cached + event */
    const unsigned long long want_plural[4] = {4, 1, 7, 6}, want_singular[4] = {12, 9, 15, 14};
    const unsigned long long *want = singular ? want_singular : want_plural;
    EtbPayload *p[4] = {NULL, NULL, NULL, NULL};
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    plural_before = fake_count("cuPointerGetAttributes");
    for (k = 0; k < 4; k++) {
        EtbCudaTensor t;
        int pushes = fake_count("cuCtxPushCurrent_v2"), singles = fake_count("cuPointerGetAttribute"),
            ranges = fake_count("cuMemGetAddressRange_v2");
        etb_cuda_tensor_init(&t);
        t.dtype = ETB_DTYPE_FLOAT32;
        t.data = k == 2 ? fake_alloc(1, 1 << 16, 0) : base; /* payload 0 makes base's handle */
        t.ndim = 1;
        t.shape = shape;
        t.wait_on_stream = k >= 2;
        mark = fake_total_calls();
        EXPECT(etb_client_cuda_tensor_payload(c, &t, &p[k]), ETB_OK);
        {
            unsigned long long n = calls_since(&mark);
            CHECK(n == want[k], "payload %d (%s%s): %llu driver calls, want %llu: %s", k, k % 2 ? "cached" : "fresh",
                  k >= 2 ? " + event" : "", n, want[k], log_tail());
        }
        if (singular) {
            CHECK(fake_count("cuPointerGetAttribute") - singles == 6 && fake_count("cuMemGetAddressRange_v2") - ranges == 1,
                  "payload %d: six cuPointerGetAttribute and one cuMemGetAddressRange_v2 expected", k);
        } else {
            CHECK(fake_count("cuPointerGetAttribute") == singles && fake_count("cuMemGetAddressRange_v2") == ranges,
                  "payload %d: a singular lookup call with cuPointerGetAttributes there", k);
            CHECK(fake_count("cuCtxPushCurrent_v2") - pushes == (k == 1 ? 0 : 1),
                  "payload %d: %d context pushes", k, fake_count("cuCtxPushCurrent_v2") - pushes);
        }
    }
    CHECK(fake_count("cuPointerGetAttributes") - plural_before == (singular ? 0 : 4), "one cuPointerGetAttributes each");
    for (k = 0; k < 4; k++) etb_payload_free(p[k]);
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(agent.rank);
}

/*
 * The fallbacks to the singular calls: a driver older than 11.3 (it may not know every attribute
 * asked) is never asked the plural; a plural call that fails with CUDA_ERROR_INVALID_VALUE (an
 * attribute it does not know), CUDA_ERROR_NOT_SUPPORTED or CUDA_ERROR_INVALID_CONTEXT is followed
 * by the singular calls; any other failure is the payload's error.
 */
static int t_plural_fallbacks(void) {
    Agent agent, old_agent;
    EtbClient *c = boot(&agent, ETB_CUDA_REQUIRE), *old;
    const int64_t shape[1] = {16};
    const int fallbacks[3] = {1, 801, 201};
    EtbPayload *p = NULL;
    int plural, singles, k;
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    for (k = 0; k < 3; k++) {
        plural = fake_count("cuPointerGetAttributes");
        singles = fake_count("cuPointerGetAttribute");
        fake_fail("cuPointerGetAttributes", fallbacks[k]);
        EXPECT(tensor_payload(c, ETB_DTYPE_FLOAT32, fake_alloc(1, 4096, 0), 1, shape, NULL, &p), ETB_OK);
        fake_fail("cuPointerGetAttributes", 0);
        CHECK(fake_count("cuPointerGetAttributes") == plural + 1 && fake_count("cuPointerGetAttribute") == singles + 6,
              "error %d: the singular calls after the plural one", fallbacks[k]);
        etb_payload_free(p);
    }
    /* The old-driver mode: the plural call refuses the attributes it does not know. */
    fake_old_driver(1);
    singles = fake_count("cuPointerGetAttribute");
    EXPECT(tensor_payload(c, ETB_DTYPE_FLOAT32, fake_alloc(1, 4096, 0), 1, shape, NULL, &p), ETB_OK);
    fake_old_driver(0);
    CHECK(fake_count("cuPointerGetAttribute") == singles + 6, "the old driver's payload took the singular calls");
    etb_payload_free(p);
    /* Any other failure: ETB_ERR_CUDA naming the plural call, no singular call after it. */
    singles = fake_count("cuPointerGetAttribute");
    fake_fail("cuPointerGetAttributes", 999);
    EXPECT(tensor_payload(c, ETB_DTYPE_FLOAT32, fake_alloc(1, 4096, 0), 1, shape, NULL, &p), ETB_ERR_CUDA);
    fake_fail("cuPointerGetAttributes", 0);
    SAYS("cuPointerGetAttributes");
    CHECK(fake_count("cuPointerGetAttribute") == singles, "singular calls after a real failure");
    /* A driver of version 11.2 is never asked the plural. */
    setenv("FAKE_CUDA_VERSION", "11020", 1);
    old = boot(&old_agent, ETB_CUDA_REQUIRE);
    unsetenv("FAKE_CUDA_VERSION");
    CHECK(old != NULL, "bootstrap: %s", etb_last_error_message());
    plural = fake_count("cuPointerGetAttributes");
    singles = fake_count("cuPointerGetAttribute");
    EXPECT(tensor_payload(old, ETB_DTYPE_FLOAT32, fake_alloc(1, 4096, 0), 1, shape, NULL, &p), ETB_OK);
    CHECK(fake_count("cuPointerGetAttributes") == plural && fake_count("cuPointerGetAttribute") == singles + 6,
          "a driver of 11.2 was asked cuPointerGetAttributes");
    etb_payload_free(p);
    etb_client_close(old);
    stop_agent(&old_agent);
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(old_agent.rank) && nothing_left(agent.rank);
}

static int t_empty_tensor(void) {
    Agent agent;
    EtbClient *c = boot(&agent, ETB_CUDA_REQUIRE);
    const int64_t shape[2] = {4, 0};
    EtbPayload *p = NULL;
    bool in_use = true;
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(tensor_payload(c, ETB_DTYPE_INT64, 0, 2, shape, NULL, &p), ETB_OK);
    EXPECT(etb_payload_in_use(p, &in_use), ETB_OK);
    CHECK(!in_use, "an empty tensor holds no memory");
    etb_payload_free(p);
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(agent.rank);
}

static int t_older_driver_names(void) {
    Agent agent;
    EtbClient *c = boot(&agent, ETB_CUDA_REQUIRE);
    const int64_t shape[1] = {16};
    EtbPayload *p = NULL;
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(tensor_payload(c, ETB_DTYPE_FLOAT32, fake_alloc(1, 4096, 0), 1, shape, NULL, &p), ETB_OK);
    CHECK(fake_count("cuCtxPushCurrent") > 0 && fake_count("cuCtxPushCurrent_v2") == 0, "the unversioned push was used");
    CHECK(fake_count("cuCtxPopCurrent") > 0, "the unversioned pop was used");
    etb_payload_free(p);
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(agent.rank);
}

static int t_driver_without_ipc(void) {
    Agent agent;
    EtbClient *c = boot(&agent, ETB_CUDA_REQUIRE);
    const int64_t shape[1] = {16};
    EtbPayload *p = NULL;
    CHECK(c != NULL, "a driver lacking cuIpcGetMemHandle still binds: %s", etb_last_error_message());
    EXPECT(tensor_payload(c, ETB_DTYPE_FLOAT32, fake_alloc(1, 4096, 0), 1, shape, NULL, &p), ETB_ERR_CUDA);
    SAYS("no entry point cuIpcGetMemHandle");
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(agent.rank);
}

/* The benchmarks' quiet driver: no call log, no per-function counts; the total still counts. */
static int t_quiet_driver(void) {
    Agent agent;
    EtbClient *c = boot(&agent, ETB_CUDA_REQUIRE);
    const int64_t shape[1] = {16};
    EtbPayload *p = NULL;
    unsigned long long mark = fake_total_calls();
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(tensor_payload(c, ETB_DTYPE_FLOAT32, fake_alloc(1, 4096, 0), 1, shape, NULL, &p), ETB_OK);
    CHECK(calls_since(&mark) == 4, "the total counts in quiet mode");
    CHECK(strcmp(fake_calls(), "") == 0 && fake_count("cuPointerGetAttributes") == 0, "a quiet driver logged: %s",
          log_tail());
    etb_payload_free(p); /* its reference-counter file goes with the last payload of it */
    p = NULL;
    /* An injected failure still applies. */
    fake_fail("cuIpcGetMemHandle", 201);
    EXPECT(tensor_payload(c, ETB_DTYPE_FLOAT32, fake_alloc(1, 4096, 0), 1, shape, NULL, &p), ETB_ERR_CUDA);
    fake_fail("cuIpcGetMemHandle", 0);
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(agent.rank);
}

int main(void) {
    const char *variant = getenv("ETB_TEST_CUDA_VARIANT");
    g_next_rank = (long long)getpid() * 1000 + 400;
    signal(SIGPIPE, SIG_IGN);
    if (!getenv("ETB_CUDA_DRIVER_PATH") || !load_fake()) {
        printf("not ok - setup: ETB_CUDA_DRIVER_PATH must name the fake driver\n0 passed, 1 failed\n");
        return 1;
    }
    if (variant && strcmp(variant, "unversioned") == 0) {
        run_case("older_driver_names", t_older_driver_names);
    } else if (variant && strcmp(variant, "noipc") == 0) {
        run_case("driver_without_ipc", t_driver_without_ipc);
    } else if (variant && strcmp(variant, "quiet") == 0) {
        run_case("quiet_driver", t_quiet_driver);
    } else {
        run_case("dtypes_and_layout_payloads", t_dtypes_and_layout_payloads);
        run_case("errors_in_order", t_errors_in_order);
        run_case("memory_kinds", t_memory_kinds);
        run_case("handle_cache_threads_and_lifetimes", t_handle_cache_threads_and_lifetimes);
        run_case("empty_tensor", t_empty_tensor);
        run_case("driver_calls_per_payload", t_driver_calls_per_payload);
        if (!singular_driver()) run_case("plural_fallbacks", t_plural_fallbacks);
    }
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
