/*
 * CUDA binding against the fake driver (tests/fake_cuda/fake_cuda.c), loaded by the library
 * through ETB_CUDA_DRIVER_PATH as libcuda.so.1 would be. Compiled as C11 and C++17.
 * Needs ETB_DEV_AGENT and ETB_CUDA_DRIVER_PATH.
 */
#define _POSIX_C_SOURCE 200809L
#include "etha_tensor_bus.h"

#include "harness.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

typedef int (*CtxGetCurrent)(void **);
static const char *(*fake_calls)(void);
static int (*fake_retain_count)(int);
static int (*fake_release_errors)(void);
static void *(*fake_context)(int);
static void (*fake_reset)(void);
static CtxGetCurrent fake_ctx_get_current;

static int load_fake(void) {
    void *h = dlopen(getenv("ETB_CUDA_DRIVER_PATH"), RTLD_NOW | RTLD_LOCAL);
    if (!h) return 0;
    *(void **)(&fake_calls) = dlsym(h, "fake_cuda_calls");
    *(void **)(&fake_retain_count) = dlsym(h, "fake_cuda_retain_count");
    *(void **)(&fake_release_errors) = dlsym(h, "fake_cuda_release_errors");
    *(void **)(&fake_context) = dlsym(h, "fake_cuda_context");
    *(void **)(&fake_reset) = dlsym(h, "fake_cuda_reset");
    *(void **)(&fake_ctx_get_current) = dlsym(h, "cuCtxGetCurrent");
    return fake_calls && fake_retain_count && fake_release_errors && fake_context && fake_reset && fake_ctx_get_current;
}

static void *current_context(void) {
    void *ctx = NULL;
    fake_ctx_get_current(&ctx);
    return ctx;
}

/* Bootstraps with `mode` against agent `rank`; returns the status. */
static EtbStatus boot(long long rank, const char *local_rank, EtbCudaMode mode, EtbClient **c, EtbBootstrapInfo **i) {
    EtbBootstrapOptions o;
    char r[32];
    snprintf(r, sizeof r, "%lld", rank);
    set_env(r, "0", NULL, local_rank);
    etb_bootstrap_options_init(&o);
    o.cuda_mode = mode;
    o.connection_timeout_s = 5.0;
    return etb_bootstrap_client_ex(&o, c, i);
}

static int t_options(void) {
    EtbBootstrapOptions o;
    unsigned char big[sizeof(EtbBootstrapOptions) + 16];
    EtbClient *c = NULL;
    EtbBootstrapInfo *i = NULL;
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    char r[32];
    CHECK(agent.pid > 0, "agent did not start");
    snprintf(r, sizeof r, "%lld", rank);
    set_env(r, "0", NULL, NULL);
    memset(&o, 0x5a, sizeof o);
    etb_bootstrap_options_init(&o);
    CHECK(o.struct_size == sizeof o && o.path_naming_fn == NULL && o.user_data == NULL, "init defaults");
    CHECK(o.connection_timeout_s == 30.0 && o.cuda_mode == ETB_CUDA_AUTO, "init defaults");
    CHECK(offsetof(EtbBootstrapOptions, cuda_mode) == 32 && offsetof(EtbBootstrapOptions, ptrace_mode) == 40, "layout pinned");
    CHECK(offsetof(EtbBootstrapOptions, allow_shared_agent) == 48 && offsetof(EtbBootstrapOptions, reserved1) == 52,
          "layout pinned");
    CHECK(offsetof(EtbBootstrapOptions, device_index) == 56 && sizeof o == 64, "layout pinned");
    CHECK(o.ptrace_mode == ETB_PTRACE_AGENT && o.allow_shared_group == 0 && o.allow_shared_agent == 0, "init defaults");
    CHECK(o.reserved1 == 0 && o.device_index == -1, "init defaults: device_index -1");
    CHECK(etb_bootstrap_client_ex(NULL, &c, &i) == ETB_ERR_NULL_ARGUMENT, "NULL options");
    o.cuda_mode = ETB_CUDA_SKIP;
    o.struct_size = 35;
    CHECK(etb_bootstrap_client_ex(&o, &c, &i) == ETB_ERR_INVALID_ARGUMENT, "struct_size 35: %s", etb_last_error_message());
    o.struct_size = 36; /* an older caller that knows exactly the five fields */
    CHECK(etb_bootstrap_client_ex(&o, &c, &i) == ETB_OK, "struct_size 36: %s", etb_last_error_message());
    etb_client_close(c);
    etb_info_free(i);
    o.struct_size = 40; /* the first layout's sizeof, with garbage in its padding */
    o.reserved0 = 0xdeadbeef;
    o.ptrace_mode = 99; /* past its struct_size: never read */
    CHECK(etb_bootstrap_client_ex(&o, &c, &i) == ETB_OK, "struct_size 40: %s", etb_last_error_message());
    o.reserved0 = 0;
    o.ptrace_mode = ETB_PTRACE_AGENT;
    etb_client_close(c);
    etb_info_free(i);
    memset(big, 0, sizeof big);
    memcpy(big, &o, sizeof o);
    ((EtbBootstrapOptions *)(void *)big)->struct_size = sizeof big; /* a newer caller, zero tail */
    CHECK(etb_bootstrap_client_ex((EtbBootstrapOptions *)(void *)big, &c, &i) == ETB_OK, "zero tail: %s", etb_last_error_message());
    etb_client_close(c);
    etb_info_free(i);
    big[sizeof o + 3] = 1; /* a newer caller asking for something this library does not know */
    c = NULL;
    CHECK(etb_bootstrap_client_ex((EtbBootstrapOptions *)(void *)big, &c, &i) == ETB_ERR_INVALID_ARGUMENT, "non-zero tail");
    CHECK(strstr(etb_last_error_message(), "byte 67") != NULL, "%s", etb_last_error_message());
    CHECK(sizeof o == 64, "the byte above is past sizeof");
    CHECK(strstr(etb_last_error_message(), "newer") != NULL && c == NULL, "%s", etb_last_error_message());
    /* What was padding in the earlier layouts (reserved0, bytes 36..39; reserved1, 52..55) and
     * the padding after device_index are ignored, whatever they hold. */
    memset(big, 0, sizeof big);
    etb_bootstrap_options_init(&o);
    o.cuda_mode = ETB_CUDA_SKIP;
    memcpy(big, &o, sizeof o);
    memset(big + offsetof(EtbBootstrapOptions, reserved0), 0xab, sizeof(uint32_t));
    memset(big + offsetof(EtbBootstrapOptions, reserved1), 0xab, sizeof(uint32_t));
    memset(big + offsetof(EtbBootstrapOptions, device_index) + sizeof(int32_t), 0xab,
           sizeof o - offsetof(EtbBootstrapOptions, device_index) - sizeof(int32_t));
    CHECK(etb_bootstrap_client_ex((EtbBootstrapOptions *)(void *)big, &c, &i) == ETB_OK, "garbage padding: %s",
          etb_last_error_message());
    etb_client_close(c);
    etb_info_free(i);
    /* A garbage struct_size (an uninitialized struct) is refused without reading past it. */
    o.struct_size = 1u << 30;
    CHECK(etb_bootstrap_client_ex(&o, &c, &i) == ETB_ERR_INVALID_ARGUMENT, "huge struct_size");
    o.struct_size = sizeof o;
    o.cuda_mode = 3;
    CHECK(etb_bootstrap_client_ex(&o, &c, &i) == ETB_ERR_INVALID_ARGUMENT, "unknown cuda_mode");
    o.cuda_mode = ETB_CUDA_SKIP;
    o.ptrace_mode = 7;
    CHECK(etb_bootstrap_client_ex(&o, &c, &i) == ETB_ERR_INVALID_ARGUMENT, "unknown ptrace_mode");
    etb_bootstrap_options_init(NULL);
    stop_agent(&agent);
    return nothing_left(rank);
}

static int t_auto_binds_local_rank(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    EtbClient *c = NULL;
    EtbBootstrapInfo *i = NULL;
    const char *calls;
    CHECK(agent.pid > 0, "agent did not start");
    fake_reset();
    CHECK(boot(rank, "1", ETB_CUDA_AUTO, &c, &i) == ETB_OK, "%s", etb_last_error_message());
    calls = fake_calls();
    CHECK(strcmp(calls, "cuDriverGetVersion;cuInit(0);cuDeviceGetCount;cuDeviceGet(1);cuDeviceGetName(1);"
                        "cuDeviceGetPCIBusId(1);cuDeviceGetUuid_v2(1);cuDevicePrimaryCtxRetain(1);cuCtxSetCurrent(1);") == 0,
          "call sequence: %s", calls);
    CHECK(etb_info_cuda_bound(i), "bound");
    CHECK(strcmp(etb_info_device_name(i), "Fake GPU 1") == 0, "name %s", etb_info_device_name(i));
    CHECK(strcmp(etb_info_device_pci_bus_id(i), "0000:19:00.0") == 0, "bus %s", etb_info_device_pci_bus_id(i));
    CHECK(strcmp(etb_info_device_uuid(i), "GPU-a1a2a3a4-a5a6-a7a8-a9aa-abacadaeafb0") == 0, "uuid %s", etb_info_device_uuid(i));
    CHECK(etb_info_cuda_driver_version(i) == 12080, "driver version %d", etb_info_cuda_driver_version(i));
    CHECK(etb_client_cuda_context(c) == fake_context(1), "the client's context is device 1's primary context");
    CHECK(current_context() == fake_context(1), "current on the bootstrapping thread");
    CHECK(fake_retain_count(1) == 1, "one retain");
    etb_client_close(c);
    etb_info_free(i);
    CHECK(fake_retain_count(1) == 0 && fake_release_errors() == 0, "released once on close");
    CHECK(current_context() == NULL, "close leaves no dead context current on the closing thread");
    stop_agent(&agent);
    return nothing_left(rank);
}

static void *bind_on_thread(void *arg) {
    static int ok;
    EtbClient *c = (EtbClient *)arg;
    ok = current_context() == NULL && etb_client_bind_current_thread(c) == ETB_OK &&
         current_context() == etb_client_cuda_context(c);
    return &ok;
}

static int t_second_thread_and_two_clients(void) {
    long long r1 = fresh_rank(), r2 = fresh_rank();
    Agent a1 = start_agent(r1, 1, NULL, NULL), a2 = start_agent(r2, 1, NULL, NULL);
    EtbClient *c1 = NULL, *c2 = NULL;
    EtbBootstrapInfo *i1 = NULL, *i2 = NULL;
    pthread_t th;
    void *result = NULL;
    CHECK(a1.pid > 0 && a2.pid > 0, "agents did not start");
    CHECK(boot(r1, "0", ETB_CUDA_AUTO, &c1, &i1) == ETB_OK, "%s", etb_last_error_message());
    CHECK(boot(r2, "0", ETB_CUDA_REQUIRE, &c2, &i2) == ETB_OK, "%s", etb_last_error_message());
    CHECK(fake_retain_count(0) == 2, "two clients on one device: retain count %d", fake_retain_count(0));
    pthread_create(&th, NULL, bind_on_thread, c1);
    pthread_join(th, &result);
    CHECK(*(int *)result, "binding on a second thread");
    etb_client_close(c1);
    CHECK(fake_retain_count(0) == 1, "after one close: %d", fake_retain_count(0));
    etb_client_close(c2);
    CHECK(fake_retain_count(0) == 0 && fake_release_errors() == 0, "after both: %d, errors %d", fake_retain_count(0),
          fake_release_errors());
    etb_info_free(i1);
    etb_info_free(i2);
    stop_agent(&a1);
    stop_agent(&a2);
    return nothing_left(r1) && nothing_left(r2);
}

static int t_require_skip_and_failures(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    EtbClient *c = NULL;
    EtbBootstrapInfo *i = NULL;
    CHECK(agent.pid > 0, "agent did not start");
    /* An ordinal past the device count. */
    CHECK(boot(rank, "5", ETB_CUDA_REQUIRE, &c, &i) == ETB_ERR_CUDA, "REQUIRE, ordinal 5 of 2");
    CHECK(strstr(etb_last_error_message(), "past the 2 device") != NULL, "%s", etb_last_error_message());
    CHECK(boot(rank, "5", ETB_CUDA_AUTO, &c, &i) == ETB_OK, "AUTO goes on: %s", etb_last_error_message());
    CHECK(!etb_info_cuda_bound(i) && etb_info_device_name(i) == NULL && etb_info_device_uuid(i) == NULL, "unbound");
    CHECK(etb_info_device_pci_bus_id(i) == NULL && etb_info_cuda_driver_version(i) == 12080, "driver answered");
    CHECK(etb_client_cuda_context(c) == NULL, "no context");
    CHECK(etb_client_bind_current_thread(c) == ETB_ERR_CUDA, "bind unbound");
    etb_client_close(c);
    etb_info_free(i);
    /* A failing cuInit: the driver's own error text. */
    setenv("FAKE_CUDA_FAIL_INIT", "100", 1);
    CHECK(boot(rank, "0", ETB_CUDA_REQUIRE, &c, &i) == ETB_ERR_CUDA, "REQUIRE, cuInit fails");
    CHECK(strstr(etb_last_error_message(), "CUDA_ERROR_NO_DEVICE (100): no CUDA-capable device is detected") != NULL, "%s",
          etb_last_error_message());
    CHECK(boot(rank, "0", ETB_CUDA_AUTO, &c, &i) == ETB_OK, "AUTO, cuInit fails: %s", etb_last_error_message());
    CHECK(!etb_info_cuda_bound(i), "unbound");
    etb_client_close(c);
    etb_info_free(i);
    unsetenv("FAKE_CUDA_FAIL_INIT");
    /* A failing retain releases nothing it did not get. */
    setenv("FAKE_CUDA_FAIL_RETAIN", "2", 1);
    CHECK(boot(rank, "0", ETB_CUDA_REQUIRE, &c, &i) == ETB_ERR_CUDA, "REQUIRE, retain fails");
    CHECK(strstr(etb_last_error_message(), "CUDA_ERROR_OUT_OF_MEMORY") != NULL, "%s", etb_last_error_message());
    unsetenv("FAKE_CUDA_FAIL_RETAIN");
    CHECK(fake_release_errors() == 0 && fake_retain_count(0) == 0, "no stray release");
    /* Retained, then cuCtxSetCurrent fails: the retain is given back. */
    setenv("FAKE_CUDA_FAIL_SET_CURRENT", "2", 1);
    CHECK(boot(rank, "0", ETB_CUDA_REQUIRE, &c, &i) == ETB_ERR_CUDA, "REQUIRE, set current fails");
    unsetenv("FAKE_CUDA_FAIL_SET_CURRENT");
    CHECK(fake_retain_count(0) == 0 && fake_release_errors() == 0, "retain released after the failure: %d",
          fake_retain_count(0));
    /* SKIP never touches the driver. */
    fake_reset();
    CHECK(boot(rank, "0", ETB_CUDA_SKIP, &c, &i) == ETB_OK, "%s", etb_last_error_message());
    CHECK(strcmp(fake_calls(), "") == 0, "SKIP called the driver: %s", fake_calls());
    CHECK(!etb_info_cuda_bound(i) && etb_info_cuda_driver_version(i) == 0, "SKIP: unbound, no driver answered");
    etb_client_close(c);
    etb_info_free(i);
    CHECK(etb_info_cuda_bound(NULL) == false && etb_info_cuda_driver_version(NULL) == -1, "NULL info");
    CHECK(etb_info_device_name(NULL) == NULL && etb_client_cuda_context(NULL) == NULL, "NULL");
    CHECK(etb_client_bind_current_thread(NULL) == ETB_ERR_NULL_ARGUMENT, "NULL client");
    stop_agent(&agent);
    return nothing_left(rank);
}

/* A driver with only the unversioned entry points (an older driver): still bound. */
static int t_unversioned_driver(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    EtbClient *c = NULL;
    EtbBootstrapInfo *i = NULL;
    CHECK(agent.pid > 0, "agent did not start");
    fake_reset();
    CHECK(boot(rank, "0", ETB_CUDA_REQUIRE, &c, &i) == ETB_OK, "%s", etb_last_error_message());
    CHECK(strstr(fake_calls(), "cuDeviceGetUuid(0)") != NULL, "%s", fake_calls());
    etb_client_close(c);
    etb_info_free(i);
    CHECK(strstr(fake_calls(), "cuDevicePrimaryCtxRelease(0)") != NULL && fake_retain_count(0) == 0, "%s", fake_calls());
    stop_agent(&agent);
    return nothing_left(rank);
}

/* A driver missing an entry point: AUTO goes on unbound, REQUIRE names the symbol. */
static int t_missing_entry_point(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    EtbClient *c = NULL;
    EtbBootstrapInfo *i = NULL;
    CHECK(agent.pid > 0, "agent did not start");
    CHECK(boot(rank, "0", ETB_CUDA_REQUIRE, &c, &i) == ETB_ERR_CUDA, "REQUIRE with a missing entry point");
    CHECK(strstr(etb_last_error_message(), "no entry point cuDevicePrimaryCtxRetain") != NULL, "%s",
          etb_last_error_message());
    CHECK(boot(rank, "0", ETB_CUDA_AUTO, &c, &i) == ETB_OK, "AUTO: %s", etb_last_error_message());
    CHECK(!etb_info_cuda_bound(i) && etb_info_cuda_driver_version(i) == 0, "unbound, driver unusable");
    CHECK(strcmp(fake_calls(), "") == 0, "an unusable driver was called: %s", fake_calls());
    etb_client_close(c);
    etb_info_free(i);
    stop_agent(&agent);
    return nothing_left(rank);
}

int main(void) {
    const char *variant = getenv("ETB_TEST_CUDA_VARIANT");
    g_next_rank = (long long)getpid() * 1000 + 300;
    signal(SIGPIPE, SIG_IGN);
    unsetenv("FAKE_CUDA_FAIL_INIT");
    unsetenv("FAKE_CUDA_FAIL_RETAIN");
    unsetenv("FAKE_CUDA_FAIL_SET_CURRENT");
    unsetenv("FAKE_CUDA_DEVICES");
    if (!getenv("ETB_CUDA_DRIVER_PATH") || !load_fake()) {
        printf("not ok - setup: ETB_CUDA_DRIVER_PATH must name the fake driver\n0 passed, 1 failed\n");
        return 1;
    }
    if (variant && strcmp(variant, "unversioned") == 0) {
        run_case("unversioned_driver", t_unversioned_driver);
    } else if (variant && strcmp(variant, "missing") == 0) {
        run_case("missing_entry_point", t_missing_entry_point);
    } else {
        run_case("options_struct", t_options);
        run_case("auto_binds_local_rank", t_auto_binds_local_rank);
        run_case("second_thread_and_two_clients", t_second_thread_and_two_clients);
        run_case("require_skip_and_failures", t_require_skip_and_failures);
    }
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
