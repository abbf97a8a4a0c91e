/*
 * One process, several GPUs (issue 22), against the fake CUDA driver (tests/fake_cuda, two
 * devices, loaded through ETB_CUDA_DRIVER_PATH) and etb-dev-agent: one process connects to two
 * agents with two device choices (each client bound to its device, a payload made through each
 * names its own device, from any thread), the ptrace rule for several agents, and what
 * `device_index` does (its default, the old struct sizes, a missing device, SKIP, LOCAL_RANK).
 * Compiled as C11 and C++17, and run under the sanitizers. Needs ETB_DEV_AGENT and
 * ETB_CUDA_DRIVER_PATH; ETB_LOG unset (the default, warn).
 *
 * The ptrace case runs first: what a process authorized is process-wide and never narrowed.
 */
#define _POSIX_C_SOURCE 200809L
#include "etha_tensor_bus.h"

#include "harness.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

static const char *(*fake_calls)(void);
static int (*fake_retain_count)(int);
static int (*fake_release_errors)(void);
static void *(*fake_context)(int);
static void (*fake_reset)(void);
static unsigned long long (*fake_alloc)(int, unsigned long long, int);
static int (*fake_ctx_get_current)(void **);

static int load_fake(void) {
    void *h = dlopen(getenv("ETB_CUDA_DRIVER_PATH"), RTLD_NOW | RTLD_LOCAL);
    if (!h) return 0;
    *(void **)(&fake_calls) = dlsym(h, "fake_cuda_calls");
    *(void **)(&fake_retain_count) = dlsym(h, "fake_cuda_retain_count");
    *(void **)(&fake_release_errors) = dlsym(h, "fake_cuda_release_errors");
    *(void **)(&fake_context) = dlsym(h, "fake_cuda_context");
    *(void **)(&fake_reset) = dlsym(h, "fake_cuda_reset");
    *(void **)(&fake_alloc) = dlsym(h, "fake_cuda_alloc");
    *(void **)(&fake_ctx_get_current) = dlsym(h, "cuCtxGetCurrent");
    return fake_calls && fake_retain_count && fake_release_errors && fake_context && fake_reset && fake_alloc &&
           fake_ctx_get_current;
}

static void *current_context(void) {
    void *ctx = NULL;
    fake_ctx_get_current(&ctx);
    return ctx;
}

/* ---- the library's ptrace records (the log callback) ---- */

static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_ptrace_warnings;
static char g_ptrace_message[1024];

static void on_record(int32_t level, const char *target, const char *message, void *user_data) {
    (void)user_data;
    if (level != ETB_LOG_WARN || strstr(target, "ptrace") == NULL) return;
    pthread_mutex_lock(&g_log_lock);
    g_ptrace_warnings++;
    snprintf(g_ptrace_message, sizeof g_ptrace_message, "%s", message);
    pthread_mutex_unlock(&g_log_lock);
}

static int ptrace_warnings(void) {
    int n;
    pthread_mutex_lock(&g_log_lock);
    n = g_ptrace_warnings;
    pthread_mutex_unlock(&g_log_lock);
    return n;
}

/* ---- connecting ---- */

/* etb_client_connect to agent `rank` at its default paths, with `device_index` (-1: the default). */
static EtbStatus connect_to(long long rank, int32_t device_index, EtbCudaMode mode, EtbClient **c,
                            EtbBootstrapInfo **i) {
    EtbBootstrapOptions o;
    char cq[128], st[128];
    snprintf(cq, sizeof cq, "/tmp/agent_rank%lld_command.lmdb", rank);
    snprintf(st, sizeof st, "/tmp/agent_rank%lld_state.lmdb", rank);
    etb_bootstrap_options_init(&o);
    o.cuda_mode = mode;
    o.connection_timeout_s = 5.0;
    o.device_index = device_index;
    return etb_client_connect(rank, cq, st, &o, c, i);
}

/* etb_bootstrap_client_ex for agent `rank` with LOCAL_RANK `local_rank`, from options `o`. */
static EtbStatus boot_with(long long rank, const char *local_rank, const EtbBootstrapOptions *o, EtbClient **c,
                           EtbBootstrapInfo **i) {
    char r[32];
    snprintf(r, sizeof r, "%lld", rank);
    set_env(r, "0", NULL, local_rank);
    return etb_bootstrap_client_ex(o, c, i);
}

static void options_for(EtbBootstrapOptions *o, EtbCudaMode mode, int32_t device_index) {
    etb_bootstrap_options_init(o);
    o->cuda_mode = mode;
    o->connection_timeout_s = 5.0;
    o->device_index = device_index;
}

/* ---- payloads ---- */

/* The storage device a CUDA tensor payload of float32 names (rebuild_cuda_tensor's 7th argument,
 * after `GLOBAL torch.storage TypedStorage`, `GLOBAL torch float32`: a BININT1), and the device
 * the fake driver wrote into the IPC handle that follows it; -1 when not found. */
static void devices_named(const EtbPayload *p, int *storage_device, int *handle_device) {
    static const char marker[] = "ctorch.storage\nTypedStorage\nctorch\nfloat32\nK";
    const uint8_t *d = etb_payload_data(p);
    size_t n = etb_payload_len(p), m = sizeof marker - 1, at;
    *storage_device = *handle_device = -1;
    for (at = 0; at + m + 1 < n; at++) {
        if (memcmp(d + at, marker, m) != 0) continue;
        *storage_device = d[at + m];
        /* then SHORT_BINBYTES of the 64-byte handle: 'C', 64, "FAKEIPC\0", buffer id, base, device */
        at += m + 1;
        if (at + 2 + 28 <= n && d[at] == 'C' && d[at + 1] == 64 && memcmp(d + at + 2, "FAKEIPC", 8) == 0)
            *handle_device = d[at + 2 + 24] | d[at + 2 + 25] << 8;
        return;
    }
}

#define PAYLOADS_PER_THREAD 8

typedef struct Worker {
    const EtbClient *own, *other;
    int device;
    unsigned long long base;
    /* filled by the thread */
    int failures;
    char why[512];
} Worker;

/* On its own thread: makes the *other* client's context current, then makes payloads of its own
 * device's memory through its own client, each waiting on the legacy default stream (so that
 * each needs its client's context: an interprocess event; the allocation lookup needs none):
 * each must name its device, and leave the other context current. */
static void *make_payloads(void *arg) {
    Worker *w = (Worker *)arg;
    const int64_t shape[1] = {16};
    void *others = etb_client_cuda_context(w->other);
    int k;
    if (etb_client_bind_current_thread(w->other) != ETB_OK || current_context() != others) {
        w->failures++;
        snprintf(w->why, sizeof w->why, "binding the other client: %s", etb_last_error_message());
        return NULL;
    }
    for (k = 0; k < PAYLOADS_PER_THREAD; k++) {
        EtbCudaTensor t;
        EtbPayload *p = NULL;
        EtbStatus s;
        int storage = -1, handle = -1;
        etb_cuda_tensor_init(&t);
        t.dtype = ETB_DTYPE_FLOAT32;
        t.data = w->base + (unsigned long long)k * 64;
        t.ndim = 1;
        t.shape = shape;
        t.wait_on_stream = 1;
        t.stream = NULL;
        s = etb_client_cuda_tensor_payload(w->own, &t, &p);
        if (s == ETB_OK) devices_named(p, &storage, &handle);
        if (s != ETB_OK || storage != w->device || handle != w->device || current_context() != others) {
            w->failures++;
            snprintf(w->why, sizeof w->why, "payload %d through the cuda:%d client: %s, storage device %d, handle "
                     "device %d, %s", k, w->device, etb_status_name(s), storage, handle,
                     current_context() == others ? "the thread's context restored" : "the thread's context changed");
        }
        etb_payload_free(p);
    }
    return NULL;
}

/* How many times `needle` occurs in `hay`. */
static int occurrences(const char *hay, const char *needle) {
    int n = 0;
    const char *at = hay;
    while ((at = strstr(at, needle)) != NULL) {
        n++;
        at += strlen(needle);
    }
    return n;
}

/* Whether every driver call of a payload that needs a context (the singular pointer attributes
 * and address range, the IPC handle, the event's calls; not cuPointerGetAttributes, which needs
 * none) in the call log `calls` ran with context `device` pushed on top: the log records each
 * push with the context's device and each pop with the context it takes off. Returns how many
 * such calls it saw, or -1 (and says which call ran under which context in `why`). */
static int driver_calls_under(const char *calls, int device, char *why, size_t why_len) {
    static const char *const payload_calls[] = {"cuPointerGetAttribute(", "cuMemGetAddressRange_v2",
                                                "cuIpcGetMemHandle",      "cuEventCreate",
                                                "cuEventRecord",          "cuIpcGetEventHandle"};
    int stack[64], depth = 0, seen = 0, x;
    size_t i, n = strlen(calls);
    char *copy = (char *)malloc(n + 1), *item, *rest;
    if (!copy) return -1;
    memcpy(copy, calls, n + 1);
    for (item = strtok_r(copy, ";", &rest); item; item = strtok_r(NULL, ";", &rest)) {
        if (sscanf(item, "cuCtxPushCurrent_v2(%d)", &x) == 1) {
            if (depth < 64) stack[depth++] = x;
        } else if (sscanf(item, "cuCtxPopCurrent_v2(%d)", &x) == 1) {
            if (depth > 0) depth--;
        } else {
            for (i = 0; i < sizeof payload_calls / sizeof payload_calls[0]; i++) {
                if (strncmp(item, payload_calls[i], strlen(payload_calls[i])) != 0) continue;
                seen++;
                if (depth == 0 || stack[depth - 1] != device) {
                    snprintf(why, why_len, "%.200s ran with context %d pushed, not the client's %d", item,
                             depth ? stack[depth - 1] : -1, device);
                    free(copy);
                    return -1;
                }
            }
        }
    }
    free(copy);
    return seen;
}

static int t_two_agents_two_devices(void) {
    long long ra = fresh_rank(), rb = fresh_rank(), rc = fresh_rank();
    Agent a = start_agent(ra, 1, NULL, NULL), b = start_agent(rb, 1, NULL, NULL), c3 = start_agent(rc, 1, NULL, NULL);
    EtbClient *c0 = NULL, *c1 = NULL, *c2 = NULL;
    EtbBootstrapInfo *i0 = NULL, *i1 = NULL, *i2 = NULL;
    Worker w[2];
    pthread_t th[2];
    char pid_text[64];
    size_t mark;
    int k;
    CHECK(a.pid > 0 && b.pid > 0 && c3.pid > 0, "agents did not start");
    CHECK(etb_set_log_callback(on_record, NULL) == ETB_OK, "%s", etb_last_error_message());
    fake_reset();

    /* One process, two agents, two devices. */
    CHECK(connect_to(ra, 0, ETB_CUDA_REQUIRE, &c0, &i0) == ETB_OK, "connect, device 0: %s", etb_last_error_message());
    CHECK(ptrace_warnings() == 0, "the first agent alone is authorized without a warning: %.700s", g_ptrace_message);
    CHECK(connect_to(rb, 1, ETB_CUDA_REQUIRE, &c1, &i1) == ETB_OK, "connect, device 1: %s", etb_last_error_message());
    CHECK(strcmp(etb_info_device(i0), "cuda:0") == 0 && etb_info_device_index(i0) == 0, "info 0: %s",
          etb_info_device(i0));
    CHECK(strcmp(etb_info_device(i1), "cuda:1") == 0 && etb_info_device_index(i1) == 1, "info 1: %s",
          etb_info_device(i1));
    CHECK(etb_info_cuda_bound(i0) && strcmp(etb_info_device_name(i0), "Fake GPU 0") == 0, "bound to device 0");
    CHECK(etb_info_cuda_bound(i1) && strcmp(etb_info_device_name(i1), "Fake GPU 1") == 0, "bound to device 1");
    CHECK(strcmp(etb_info_device_uuid(i0), etb_info_device_uuid(i1)) != 0, "two devices, two uuids");
    CHECK(etb_info_agent_pid(i0) == a.pid && etb_info_agent_pid(i1) == b.pid, "each client's agent");
    CHECK(etb_client_cuda_context(c0) == fake_context(0), "client 0 holds device 0's primary context");
    CHECK(etb_client_cuda_context(c1) == fake_context(1), "client 1 holds device 1's primary context");
    CHECK(fake_retain_count(0) == 1 && fake_retain_count(1) == 1, "one retain per device: %d, %d",
          fake_retain_count(0), fake_retain_count(1));
    CHECK(current_context() == fake_context(1), "the connecting thread is left on the last client's device");

    /* The ptrace rule: the kernel keeps one tracer per process; the second live agent widens the
     * authorization to every process, said once, naming both agents. */
    CHECK(ptrace_warnings() == 1, "one warning for the second agent, got %d", ptrace_warnings());
    snprintf(pid_text, sizeof pid_text, "agent pid %d", (int)a.pid);
    CHECK(strstr(g_ptrace_message, pid_text) != NULL, "the first agent is named: %.700s", g_ptrace_message);
    snprintf(pid_text, sizeof pid_text, "pid %d too", (int)b.pid);
    CHECK(strstr(g_ptrace_message, pid_text) != NULL, "the second agent is named: %.700s", g_ptrace_message);
    CHECK(strstr(g_ptrace_message, "PR_SET_PTRACER_ANY") != NULL, "what was authorized: %.700s", g_ptrace_message);
    /* A third agent: ANY stays, nothing more to say. */
    CHECK(connect_to(rc, 1, ETB_CUDA_REQUIRE, &c2, &i2) == ETB_OK, "connect, third agent: %s",
          etb_last_error_message());
    CHECK(ptrace_warnings() == 1, "ANY is kept silently for a third agent, got %d warnings", ptrace_warnings());
    CHECK(fake_retain_count(1) == 2, "two clients on device 1: %d", fake_retain_count(1));
    etb_client_close(c2);
    etb_info_free(i2);
    stop_agent(&c3);

    /* Payloads from other threads: each thread has the other client's context current. */
    for (k = 0; k < 2; k++) {
        memset(&w[k], 0, sizeof w[k]);
        w[k].own = k == 0 ? c0 : c1;
        w[k].other = k == 0 ? c1 : c0;
        w[k].device = k;
        w[k].base = fake_alloc(k, 1 << 16, 0);
        CHECK(w[k].base != 0, "fake allocation on device %d", k);
    }
    /* One thread after the other first: the log then tells whose context each pushed. */
    for (k = 0; k < 2; k++) {
        char pushed[64], wrong[64];
        mark = strlen(fake_calls());
        pthread_create(&th[k], NULL, make_payloads, &w[k]);
        pthread_join(th[k], NULL);
        CHECK(w[k].failures == 0, "%.800s", w[k].why);
        snprintf(pushed, sizeof pushed, "cuCtxPushCurrent_v2(%d)", k);
        snprintf(wrong, sizeof wrong, "cuCtxPushCurrent_v2(%d)", 1 - k);
        CHECK(occurrences(fake_calls() + mark, pushed) >= PAYLOADS_PER_THREAD, "client %d pushed its context %d "
              "times for %d payloads", k, occurrences(fake_calls() + mark, pushed), PAYLOADS_PER_THREAD);
        CHECK(occurrences(fake_calls() + mark, wrong) == 0, "client %d pushed the other device's context", k);
        {
            char why[512] = "";
            int under = driver_calls_under(fake_calls() + mark, k, why, sizeof why);
            CHECK(under >= PAYLOADS_PER_THREAD, "client %d's payload calls: %d seen; %.400s", k, under, why);
        }
    }
    /* Then both at once. */
    for (k = 0; k < 2; k++) pthread_create(&th[k], NULL, make_payloads, &w[k]);
    for (k = 0; k < 2; k++) pthread_join(th[k], NULL);
    CHECK(w[0].failures == 0 && w[1].failures == 0, "concurrent: %.400s %.400s", w[0].why, w[1].why);
    /* Memory of the other device is refused, naming both devices. */
    {
        EtbCudaTensor t;
        EtbPayload *p = NULL;
        const int64_t shape[1] = {16};
        etb_cuda_tensor_init(&t);
        t.dtype = ETB_DTYPE_FLOAT32;
        t.data = w[0].base;
        t.ndim = 1;
        t.shape = shape;
        CHECK(etb_client_cuda_tensor_payload(c1, &t, &p) == ETB_ERR_INVALID_ARGUMENT && p == NULL,
              "device 0's memory through the cuda:1 client");
        SAYS("another device (cuda:0) than the client's (cuda:1)");
    }

    etb_client_close(c0);
    etb_client_close(c1);
    CHECK(fake_retain_count(0) == 0 && fake_retain_count(1) == 0 && fake_release_errors() == 0,
          "every retain released once: %d, %d, errors %d", fake_retain_count(0), fake_retain_count(1),
          fake_release_errors());
    etb_info_free(i0);
    etb_info_free(i1);
    CHECK(etb_set_log_callback(NULL, NULL) == ETB_OK, "%s", etb_last_error_message());
    stop_agent(&a);
    stop_agent(&b);
    return nothing_left(ra) && nothing_left(rb) && nothing_left(rc);
}

static int t_device_index_choices(void) {
    long long rank = fresh_rank(), absent = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    EtbBootstrapOptions o;
    EtbClient *c = NULL;
    EtbBootstrapInfo *i = NULL;
    size_t calls;
    CHECK(agent.pid > 0, "agent did not start");

    /* The default (-1): LOCAL_RANK's device, as before the field. */
    options_for(&o, ETB_CUDA_REQUIRE, -1);
    CHECK(boot_with(rank, "1", &o, &c, &i) == ETB_OK, "%s", etb_last_error_message());
    CHECK(strcmp(etb_info_device(i), "cuda:1") == 0 && etb_client_cuda_context(c) == fake_context(1), "LOCAL_RANK 1");
    etb_client_close(c);
    etb_info_free(i);
    /* A choice wins over LOCAL_RANK. */
    options_for(&o, ETB_CUDA_REQUIRE, 0);
    CHECK(boot_with(rank, "1", &o, &c, &i) == ETB_OK, "%s", etb_last_error_message());
    CHECK(strcmp(etb_info_device(i), "cuda:0") == 0 && etb_info_device_index(i) == 0, "chosen: %s", etb_info_device(i));
    CHECK(etb_client_cuda_context(c) == fake_context(0) && strcmp(etb_info_device_name(i), "Fake GPU 0") == 0,
          "bound to the chosen device");
    etb_client_close(c);
    etb_info_free(i);
    /* An older caller (the 56-byte layout) never reaches device_index, whatever lies past it. */
    options_for(&o, ETB_CUDA_REQUIRE, 0);
    o.reserved1 = 0xabababab;
    o.struct_size = 56;
    CHECK(boot_with(rank, "1", &o, &c, &i) == ETB_OK, "struct_size 56: %s", etb_last_error_message());
    CHECK(strcmp(etb_info_device(i), "cuda:1") == 0 && etb_client_cuda_context(c) == fake_context(1),
          "struct_size 56 binds LOCAL_RANK's device: %s", etb_info_device(i));
    etb_client_close(c);
    etb_info_free(i);
    o.struct_size = 60; /* exactly up to device_index */
    CHECK(boot_with(rank, "1", &o, &c, &i) == ETB_OK, "struct_size 60: %s", etb_last_error_message());
    CHECK(strcmp(etb_info_device(i), "cuda:0") == 0, "struct_size 60 reads device_index: %s", etb_info_device(i));
    etb_client_close(c);
    etb_info_free(i);

    /* A device the driver does not have: ETB_ERR_CUDA naming both, in AUTO too; nothing written. */
    options_for(&o, ETB_CUDA_AUTO, 2);
    c = NULL;
    i = NULL;
    CHECK(boot_with(rank, "0", &o, &c, &i) == ETB_ERR_CUDA, "AUTO, device_index 2 of 2: %s", etb_last_error_message());
    SAYS("device_index 2 is past the 2 device(s) the driver reports");
    SAYS("cuda:0 to cuda:1");
    CHECK(c == NULL && i == NULL, "nothing written on failure");
    o.cuda_mode = ETB_CUDA_REQUIRE;
    CHECK(boot_with(rank, "0", &o, &c, &i) == ETB_ERR_CUDA, "REQUIRE, device_index 2: %s", etb_last_error_message());
    CHECK(connect_to(rank, 7, ETB_CUDA_AUTO, &c, &i) == ETB_ERR_CUDA, "connect, device_index 7");
    SAYS("device_index 7 is past the 2 device(s)");
    CHECK(fake_retain_count(0) == 0 && fake_retain_count(1) == 0 && fake_release_errors() == 0, "no retain left");
    /* LOCAL_RANK past the count under AUTO: goes on unbound, as before. */
    options_for(&o, ETB_CUDA_AUTO, -1);
    CHECK(boot_with(rank, "5", &o, &c, &i) == ETB_OK, "AUTO, LOCAL_RANK 5: %s", etb_last_error_message());
    CHECK(!etb_info_cuda_bound(i) && strcmp(etb_info_device(i), "cuda:5") == 0, "unbound, cuda:5");
    etb_client_close(c);
    etb_info_free(i);
    /* SKIP: the choice only names the info's device; the driver is not called. */
    calls = strlen(fake_calls());
    options_for(&o, ETB_CUDA_SKIP, 1);
    CHECK(boot_with(rank, "0", &o, &c, &i) == ETB_OK, "SKIP: %s", etb_last_error_message());
    CHECK(strcmp(etb_info_device(i), "cuda:1") == 0 && etb_info_device_index(i) == 1 && !etb_info_cuda_bound(i),
          "SKIP, device_index 1: %s", etb_info_device(i));
    CHECK(strlen(fake_calls()) == calls, "SKIP called the driver: %s", fake_calls() + calls);
    etb_client_close(c);
    etb_info_free(i);

    /* etb_client_connect: cuda:0 by default, whatever LOCAL_RANK says; the choice otherwise. */
    set_env(NULL, NULL, NULL, "1");
    CHECK(connect_to(rank, -1, ETB_CUDA_REQUIRE, &c, &i) == ETB_OK, "%s", etb_last_error_message());
    CHECK(strcmp(etb_info_device(i), "cuda:0") == 0 && etb_client_cuda_context(c) == fake_context(0),
          "connect's default: %s", etb_info_device(i));
    etb_client_close(c);
    etb_info_free(i);
    CHECK(etb_client_connect(rank, "/tmp/x_command.lmdb", NULL, NULL, &c, &i) == ETB_ERR_NULL_ARGUMENT, "NULL path");

    /* Below -1: refused before any wait (no agent at this rank, a timeout of 0). */
    options_for(&o, ETB_CUDA_AUTO, -2);
    o.connection_timeout_s = 0.0;
    CHECK(boot_with(absent, "0", &o, &c, &i) == ETB_ERR_INVALID_ARGUMENT, "device_index -2: %s",
          etb_last_error_message());
    SAYS("device_index is -2: use -1 (the default");
    CHECK(connect_to(absent, -7, ETB_CUDA_AUTO, &c, &i) == ETB_ERR_INVALID_ARGUMENT, "connect, -7: %s",
          etb_last_error_message());
    /* With a device chosen LOCAL_RANK does not pick it, but is still read: a malformed one fails. */
    options_for(&o, ETB_CUDA_AUTO, 0);
    CHECK(boot_with(rank, "one", &o, &c, &i) == ETB_ERR_ENV, "LOCAL_RANK \"one\" with device_index 0");
    SAYS("LOCAL_RANK");
    set_env(NULL, NULL, NULL, NULL);
    stop_agent(&agent);
    return nothing_left(rank) && nothing_left(absent);
}

int main(void) {
    g_next_rank = (long long)getpid() * 1000 + 400;
    signal(SIGPIPE, SIG_IGN);
    unsetenv("FAKE_CUDA_FAIL_INIT");
    unsetenv("FAKE_CUDA_FAIL_RETAIN");
    unsetenv("FAKE_CUDA_FAIL_SET_CURRENT");
    unsetenv("FAKE_CUDA_DEVICES");
    unsetenv("ETB_LOG");
    if (!getenv("ETB_CUDA_DRIVER_PATH") || !load_fake()) {
        printf("not ok - setup: ETB_CUDA_DRIVER_PATH must name the fake driver\n0 passed, 1 failed\n");
        return 1;
    }
    run_case("two_agents_two_devices", t_two_agents_two_devices);
    run_case("device_index_choices", t_device_index_choices);
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
