/*
 * C test of the bootstrap API against the real shared library and real agent processes.
 * Compiled twice by the test runner: as C11 and as C++17, with -Wall -Wextra -Werror.
 *
 * Needs ETB_DEV_AGENT (path of etb-dev-agent). Every case uses agent ranks derived from this
 * process's pid, so several copies can run at once. Prints "ok - NAME" / "not ok - NAME: WHY"
 * and ends with "N passed, N failed".
 *
 * With ETB_EXTERNAL_AGENT_PID set, runs only the happy path against an agent someone else
 * started (the Python stand-in), whose environment (AGENT_RANK, RANK...) is already set.
 */
#define _POSIX_C_SOURCE 200809L
#include "etha_tensor_bus.h"

#include "harness.h"

#include <dlfcn.h>

/* Sentinels that must survive a failed call untouched. */
static EtbClient *const CLIENT_SENTINEL = (EtbClient *)(void *)0x1;
static EtbBootstrapInfo *const INFO_SENTINEL = (EtbBootstrapInfo *)(void *)0x1;

/* Bootstraps expecting `want`; on success the handles are closed. */
static int expect_status(EtbPathNamingFn fn, void *ud, double timeout, EtbStatus want) {
    EtbClient *client = CLIENT_SENTINEL;
    EtbBootstrapInfo *info = INFO_SENTINEL;
    EtbStatus s = etb_bootstrap_client(fn, ud, timeout, &client, &info);
    if (s == ETB_OK) {
        etb_client_close(client);
        etb_info_free(info);
    }
    CHECK(s == want, "got %s, want %s (%s)", etb_status_name(s), etb_status_name(want), etb_last_error_message());
    if (s != ETB_OK) {
        CHECK(client == CLIENT_SENTINEL && info == INFO_SENTINEL, "out-pointers written on failure");
        CHECK(strlen(etb_last_error_message()) > 0, "no last-error message");
    }
    return 1;
}

/* ---- cases ---- */

static int t_library_basics(void) {
    char want[64];
    CHECK(strcmp(etb_last_error_message(), "") == 0, "last error not empty at start: %s", etb_last_error_message());
    snprintf(want, sizeof want, "%d.%d.%d", ETB_VERSION_MAJOR, ETB_VERSION_MINOR, ETB_VERSION_PATCH);
    CHECK(strcmp(etb_version(), want) == 0, "version %s vs macros %s", etb_version(), want);
    CHECK(strcmp(etb_status_name(ETB_OK), "ETB_OK") == 0, "name of 0");
    CHECK(strcmp(etb_status_name(ETB_ERR_AGENT_NOT_RESPONDING), "ETB_ERR_AGENT_NOT_RESPONDING") == 0, "name of 6");
    CHECK(strcmp(etb_status_name(ETB_ERR_CLOSED), "ETB_ERR_CLOSED") == 0, "name of 19");
    CHECK(ETB_ERR_PANIC == 11 && ETB_ERR_QUEUE_FULL == 12 && ETB_ERR_CLOSED == 19, "published numbers");
    CHECK(strcmp(etb_status_name(-1), "ETB_UNKNOWN_STATUS") == 0, "name of -1");
    CHECK(strcmp(etb_status_name(20), "ETB_UNKNOWN_STATUS") == 0, "name of 20");
    CHECK(etb_setup_ptrace() == ETB_OK, "etb_setup_ptrace: %s", etb_last_error_message());
    return 1;
}

static int t_default_naming_direct(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    EtbClient *client = NULL;
    EtbBootstrapInfo *info = NULL;
    char want[256];
    double age = -1;
    EtbStatus s;
    CHECK(agent.pid > 0, "agent did not start");
    snprintf(want, sizeof want, "%lld", rank);
    set_env(want, "5", "100", "2");
    s = etb_bootstrap_client(NULL, NULL, 5.0, &client, &info);
    CHECK(s == ETB_OK, "bootstrap: %s", etb_last_error_message());
    CHECK(client != NULL && info != NULL, "handles");
    CHECK(etb_info_agent_rank(info) == rank, "agent_rank %lld", (long long)etb_info_agent_rank(info));
    CHECK(etb_info_global_rank(info) == 5, "global_rank");
    CHECK(!etb_info_has_rank_offset(info) && etb_info_rank_offset(info) == 0, "direct has no offset");
    CHECK(strcmp(etb_info_device(info), "cuda:2") == 0, "device %s", etb_info_device(info));
    CHECK(etb_info_device_index(info) == 2, "device_index");
    CHECK(strcmp(etb_info_method(info), "direct") == 0, "method %s", etb_info_method(info));
    snprintf(want, sizeof want, "/tmp/agent_rank%lld_command.lmdb", rank);
    CHECK(strcmp(etb_info_command_queue_path(info), want) == 0, "queue path %s", etb_info_command_queue_path(info));
    snprintf(want, sizeof want, "/tmp/agent_rank%lld_state.lmdb", rank);
    CHECK(strcmp(etb_info_state_path(info), want) == 0, "state path %s", etb_info_state_path(info));
    CHECK(etb_info_agent_pid(info) == agent.pid, "agent pid %d, want %d", etb_info_agent_pid(info), (int)agent.pid);
    CHECK(etb_client_heartbeat_age(client, &age) == ETB_OK && age >= -1.0 && age < 5.0, "heartbeat age %f", age);
    etb_client_close(client);
    etb_info_free(info);
    stop_agent(&agent);
    return nothing_left(rank);
}

static int t_offset_method(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    EtbClient *client = NULL;
    EtbBootstrapInfo *info = NULL;
    char r[32];
    CHECK(agent.pid > 0, "agent did not start");
    snprintf(r, sizeof r, "%lld", rank - 4);
    set_env(NULL, r, "4", NULL);
    CHECK(etb_bootstrap_client(NULL, NULL, 5.0, &client, &info) == ETB_OK, "%s", etb_last_error_message());
    CHECK(etb_info_agent_rank(info) == rank && etb_info_global_rank(info) == rank - 4, "ranks");
    CHECK(etb_info_has_rank_offset(info) && etb_info_rank_offset(info) == 4, "offset");
    CHECK(strcmp(etb_info_method(info), "offset") == 0, "method %s", etb_info_method(info));
    CHECK(strcmp(etb_info_device(info), "cuda:0") == 0 && etb_info_device_index(info) == 0, "LOCAL_RANK default 0");
    etb_client_close(client);
    etb_info_free(info);
    stop_agent(&agent);
    return nothing_left(rank);
}

typedef struct Naming {
    long long rank;
    int calls;
    long long seen_rank;
    int32_t result;
    int mode; /* 0: write default paths of `rank`; 1: empty; 2: fill without NUL */
} Naming;

static int32_t naming_cb(int64_t agent_rank, char *cq, size_t cq_cap, char *st, size_t st_cap, void *user_data) {
    Naming *n = (Naming *)user_data;
    n->calls++;
    n->seen_rank = (long long)agent_rank;
    if (n->mode == 1) return n->result;
    if (n->mode == 2) {
        memset(cq, 'a', cq_cap);
        snprintf(st, st_cap, "/tmp/x");
        return n->result;
    }
    snprintf(cq, cq_cap, "/tmp/agent_rank%lld_command.lmdb", n->rank);
    snprintf(st, st_cap, "/tmp/agent_rank%lld_state.lmdb", n->rank);
    return n->result;
}

static int t_callback_naming(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    EtbClient *client = NULL;
    EtbBootstrapInfo *info = NULL;
    Naming n;
    char want[256];
    memset(&n, 0, sizeof n);
    n.rank = rank;
    CHECK(agent.pid > 0, "agent did not start");
    set_env("77", "1", NULL, NULL); /* the callback maps rank 77 to our agent's files */
    CHECK(etb_bootstrap_client(naming_cb, &n, 5.0, &client, &info) == ETB_OK, "%s", etb_last_error_message());
    CHECK(n.calls == 1 && n.seen_rank == 77, "callback calls %d rank %lld", n.calls, n.seen_rank);
    CHECK(etb_info_agent_rank(info) == 77, "agent rank");
    snprintf(want, sizeof want, "/tmp/agent_rank%lld_state.lmdb", rank);
    CHECK(strcmp(etb_info_state_path(info), want) == 0, "state path %s", etb_info_state_path(info));
    CHECK(etb_info_agent_pid(info) == agent.pid, "pid");
    etb_client_close(client);
    etb_info_free(info);
    stop_agent(&agent);
    return nothing_left(rank);
}

static int t_failing_callbacks(void) {
    Naming n;
    memset(&n, 0, sizeof n);
    set_env("3", "0", NULL, NULL);
    n.result = 7;
    if (!expect_status(naming_cb, &n, 0.0, ETB_ERR_NAMING)) return 0;
    CHECK(strstr(etb_last_error_message(), "returned 7") != NULL, "message: %s", etb_last_error_message());
    n.result = 0;
    n.mode = 1;
    if (!expect_status(naming_cb, &n, 0.0, ETB_ERR_NAMING)) return 0;
    CHECK(strstr(etb_last_error_message(), "empty") != NULL, "message: %s", etb_last_error_message());
    n.mode = 2;
    if (!expect_status(naming_cb, &n, 0.0, ETB_ERR_NAMING)) return 0;
    CHECK(strstr(etb_last_error_message(), "without a terminating NUL") != NULL, "message: %s", etb_last_error_message());
    return 1;
}

static int t_agent_after_worker(void) {
    long long rank = fresh_rank();
    double t0 = now_s(), took; /* before the spawn: the agent's delay may start before we run again */
    Agent agent = start_agent(rank, 0, "--start-delay", "0.3");
    EtbClient *client = NULL;
    EtbBootstrapInfo *info = NULL;
    CHECK(agent.pid > 0, "agent did not start");
    set_direct(rank);
    CHECK(etb_bootstrap_client(NULL, NULL, 10.0, &client, &info) == ETB_OK, "%s", etb_last_error_message());
    took = now_s() - t0;
    CHECK(took >= 0.3, "connected before the agent existed? %.3f s", took);
    CHECK(etb_info_agent_pid(info) == agent.pid, "pid");
    etb_client_close(client);
    etb_info_free(info);
    stop_agent(&agent);
    return nothing_left(rank);
}

static int t_no_agent(void) {
    double t0, took;
    set_direct(fresh_rank());
    t0 = now_s();
    if (!expect_status(NULL, NULL, 0.3, ETB_ERR_AGENT_NOT_FOUND)) return 0;
    took = now_s() - t0;
    CHECK(took >= 0.3, "error before the deadline: %.4f s", took);
    CHECK(took < 1.3, "error long after the deadline: %.4f s", took);
    CHECK(strstr(etb_last_error_message(), "not found at /tmp/agent_rank") != NULL, "message: %s", etb_last_error_message());
    return 1;
}

/* No agent at our rank, one at another: the message lists where the agents are (default
 * naming); with a naming callback it says they cannot be listed and names `etb status`. */
static int t_agents_found_elsewhere(void) {
    long long rank = fresh_rank(), other = fresh_rank();
    Agent agent = start_agent(other, 1, NULL, NULL);
    char rank_text[32], want[64];
    Naming n;
    CHECK(agent.pid > 0, "agent did not start");
    snprintf(rank_text, sizeof rank_text, "%lld", rank);
    set_env(NULL, rank_text, NULL, NULL); /* agent rank = RANK + 0 = rank: nobody there */
    if (!expect_status(NULL, NULL, 0.05, ETB_ERR_AGENT_NOT_FOUND)) { stop_agent(&agent); return 0; }
    CHECK(strstr(etb_last_error_message(), "agents found in /tmp: ranks ") != NULL, "%s", etb_last_error_message());
    snprintf(want, sizeof want, "%lld", other);
    /* Ranks listed as ranges: ours is the last of the fresh ones, so it appears as itself. */
    CHECK(strstr(strstr(etb_last_error_message(), "agents found in /tmp"), want) != NULL, "%s", etb_last_error_message());
    memset(&n, 0, sizeof n);
    n.rank = rank;
    if (!expect_status(naming_cb, &n, 0.05, ETB_ERR_AGENT_NOT_FOUND)) { stop_agent(&agent); return 0; }
    CHECK(strstr(etb_last_error_message(), "cannot list") != NULL, "%s", etb_last_error_message());
    CHECK(strstr(etb_last_error_message(), "etb status --state") != NULL, "%s", etb_last_error_message());
    stop_agent(&agent);
    return nothing_left(other);
}

static int t_stale_heartbeat(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, "--heartbeat-offset", "60");
    double t0, took;
    CHECK(agent.pid > 0, "agent did not start");
    set_direct(rank);
    t0 = now_s();
    if (!expect_status(NULL, NULL, 0.2, ETB_ERR_AGENT_NOT_RESPONDING)) { stop_agent(&agent); return 0; }
    took = now_s() - t0;
    CHECK(took >= 0.2 && took < 1.2, "error at %.4f s for a 0.2 s deadline", took);
    CHECK(strstr(etb_last_error_message(), "too old") != NULL, "message: %s", etb_last_error_message());
    stop_agent(&agent);
    return nothing_left(rank);
}

static int t_missing_queue(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, "--no-queue", NULL);
    double t0, took;
    CHECK(agent.pid > 0, "agent did not start");
    set_direct(rank);
    t0 = now_s();
    if (!expect_status(NULL, NULL, 0.2, ETB_ERR_AGENT_NOT_FOUND)) { stop_agent(&agent); return 0; }
    took = now_s() - t0;
    CHECK(took >= 0.2 && took < 1.2, "error at %.4f s for a 0.2 s deadline", took);
    CHECK(strstr(etb_last_error_message(), "/cq_space_agent_rank") != NULL, "message: %s", etb_last_error_message());
    stop_agent(&agent);
    return nothing_left(rank);
}

static int t_bad_environment(void) {
    struct { const char *agent_rank, *rank, *offset, *local_rank, *needle; } rows[] = {
        {NULL, NULL, NULL, NULL, "RANK is not set"},
        {"0", NULL, NULL, NULL, "RANK is not set"},
        {"1.5", "0", NULL, NULL, "AGENT_RANK=\"1.5\""},
        {"-1", "0", NULL, NULL, "AGENT_RANK=\"-1\""},
        {"", "0", NULL, NULL, "AGENT_RANK=\"\""},
        {NULL, "1_0", NULL, NULL, "RANK=\"1_0\""},
        {NULL, "0", "x", NULL, "AGENT_RANK_OFFSET=\"x\""},
        {NULL, "0", "-1", NULL, "negative"},
        {NULL, "9223372036854775807", "1", NULL, "overflows"},
        {"0", "0", NULL, "-1", "LOCAL_RANK=\"-1\""},
        {"0", "0", NULL, "2147483648", "LOCAL_RANK=\"2147483648\""},
    };
    size_t i;
    for (i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        set_env(rows[i].agent_rank, rows[i].rank, rows[i].offset, rows[i].local_rank);
        if (!expect_status(NULL, NULL, 0.0, ETB_ERR_ENV)) return 0;
        CHECK(strstr(etb_last_error_message(), rows[i].needle) != NULL, "row %zu: %s", i, etb_last_error_message());
    }
    return 1;
}

static int t_bad_timeouts(void) {
    set_direct(fresh_rank());
    if (!expect_status(NULL, NULL, NAN, ETB_ERR_INVALID_ARGUMENT)) return 0;
    if (!expect_status(NULL, NULL, -1.0, ETB_ERR_INVALID_ARGUMENT)) return 0;
    if (!expect_status(NULL, NULL, -INFINITY, ETB_ERR_INVALID_ARGUMENT)) return 0;
    CHECK(strstr(etb_last_error_message(), "connection_timeout_s") != NULL, "%s", etb_last_error_message());
    return 1;
}

static int t_infinite_timeout_and_zero(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    CHECK(agent.pid > 0, "agent did not start");
    set_direct(rank);
    if (!expect_status(NULL, NULL, INFINITY, ETB_OK)) { stop_agent(&agent); return 0; }
    if (!expect_status(NULL, NULL, 0.0, ETB_OK)) { stop_agent(&agent); return 0; }
    stop_agent(&agent);
    return nothing_left(rank);
}

static int t_null_out_pointers(void) {
    EtbClient *client = CLIENT_SENTINEL;
    EtbBootstrapInfo *info = INFO_SENTINEL;
    set_direct(fresh_rank());
    CHECK(etb_bootstrap_client(NULL, NULL, 0.0, NULL, &info) == ETB_ERR_NULL_ARGUMENT, "client_out NULL");
    CHECK(strstr(etb_last_error_message(), "client_out") != NULL, "%s", etb_last_error_message());
    CHECK(etb_bootstrap_client(NULL, NULL, 0.0, &client, NULL) == ETB_ERR_NULL_ARGUMENT, "info_out NULL");
    CHECK(strstr(etb_last_error_message(), "info_out") != NULL, "%s", etb_last_error_message());
    CHECK(etb_bootstrap_client(NULL, NULL, 0.0, NULL, NULL) == ETB_ERR_NULL_ARGUMENT, "both NULL");
    CHECK(client == CLIENT_SENTINEL && info == INFO_SENTINEL, "out-pointers written");
    return 1;
}

static int t_null_to_accessors(void) {
    double age = 42.0;
    CHECK(etb_info_agent_rank(NULL) == -1, "agent_rank");
    CHECK(strstr(etb_last_error_message(), "`info` is NULL") != NULL, "%s", etb_last_error_message());
    CHECK(etb_info_global_rank(NULL) == -1, "global_rank");
    CHECK(etb_info_has_rank_offset(NULL) == false, "has_rank_offset");
    CHECK(etb_info_rank_offset(NULL) == 0, "rank_offset");
    CHECK(etb_info_device(NULL) == NULL, "device");
    CHECK(etb_info_device_index(NULL) == -1, "device_index");
    CHECK(etb_info_command_queue_path(NULL) == NULL, "command_queue_path");
    CHECK(etb_info_state_path(NULL) == NULL, "state_path");
    CHECK(etb_info_method(NULL) == NULL, "method");
    CHECK(etb_info_agent_pid(NULL) == -1, "agent_pid");
    CHECK(etb_client_heartbeat_age(NULL, &age) == ETB_ERR_NULL_ARGUMENT && age == 42.0, "heartbeat_age");
    etb_info_free(NULL);
    etb_client_close(NULL);
    return 1;
}

static int t_two_clients_one_agent(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    EtbClient *a = NULL, *b = NULL;
    EtbBootstrapInfo *ia = NULL, *ib = NULL;
    double age = -1;
    EtbBootstrapOptions o;
    CHECK(agent.pid > 0, "agent did not start");
    set_direct(rank);
    /* One worker per agent by default: the second is refused, naming the first. */
    CHECK(etb_bootstrap_client(NULL, NULL, 5.0, &a, &ia) == ETB_OK, "first: %s", etb_last_error_message());
    CHECK(etb_bootstrap_client(NULL, NULL, 5.0, &b, &ib) == ETB_ERR_AGENT_BUSY, "second without sharing");
    CHECK(strstr(etb_last_error_message(), "AGENT_RANK_OFFSET") != NULL, "%s", etb_last_error_message());
    etb_client_close(a);
    etb_info_free(ia);
    /* With sharing allowed by both. */
    etb_bootstrap_options_init(&o);
    o.allow_shared_agent = 1;
    o.connection_timeout_s = 5.0;
    CHECK(etb_bootstrap_client_ex(&o, &a, &ia) == ETB_OK, "first: %s", etb_last_error_message());
    CHECK(etb_bootstrap_client_ex(&o, &b, &ib) == ETB_OK, "second: %s", etb_last_error_message());
    CHECK(etb_info_agent_pid(ib) == agent.pid, "second client's agent pid");
    etb_client_close(a);
    etb_info_free(ia);
    CHECK(etb_client_heartbeat_age(b, &age) == ETB_OK && age < 5.0, "second client after first closed: %s",
          etb_last_error_message());
    etb_client_close(b);
    etb_info_free(ib);
    stop_agent(&agent);
    return nothing_left(rank);
}

/* No CUDA driver at all (this machine, CI): AUTO bootstraps unbound, REQUIRE fails clearly. */
static int t_no_cuda_driver(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    EtbClient *client = NULL;
    EtbBootstrapInfo *info = NULL;
    EtbBootstrapOptions o;
    void *cuda = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    CHECK(agent.pid > 0, "agent did not start");
    if (cuda) {
        dlclose(cuda);
        printf("# skipped: a CUDA driver is installed here (tests/gpu/check.sh covers that case)\n");
        stop_agent(&agent);
        return nothing_left(rank);
    }
    unsetenv("ETB_CUDA_DRIVER_PATH");
    set_direct(rank);
    CHECK(etb_bootstrap_client(NULL, NULL, 5.0, &client, &info) == ETB_OK, "AUTO without a driver: %s",
          etb_last_error_message());
    CHECK(!etb_info_cuda_bound(info) && etb_info_cuda_driver_version(info) == 0, "unbound, no driver answered");
    CHECK(etb_info_device_name(info) == NULL && etb_info_device_pci_bus_id(info) == NULL, "no identity");
    CHECK(etb_client_cuda_context(client) == NULL, "no context");
    CHECK(etb_client_bind_current_thread(client) == ETB_ERR_CUDA, "binding an unbound client");
    etb_client_close(client);
    etb_info_free(info);
    etb_bootstrap_options_init(&o);
    o.cuda_mode = ETB_CUDA_REQUIRE;
    client = NULL;
    CHECK(etb_bootstrap_client_ex(&o, &client, &info) == ETB_ERR_CUDA, "REQUIRE without a driver");
    CHECK(strstr(etb_last_error_message(), "libcuda.so.1 could not be loaded") != NULL, "%s", etb_last_error_message());
    CHECK(client == NULL, "out-pointer written on failure");
    stop_agent(&agent);
    return nothing_left(rank);
}

static int t_external_agent(void) {
    EtbClient *client = NULL;
    EtbBootstrapInfo *info = NULL;
    double age = -1;
    int want_pid = atoi(getenv("ETB_EXTERNAL_AGENT_PID"));
    CHECK(etb_bootstrap_client(NULL, NULL, 10.0, &client, &info) == ETB_OK, "%s", etb_last_error_message());
    CHECK(etb_info_agent_pid(info) == want_pid, "agent pid %d, want %d", etb_info_agent_pid(info), want_pid);
    CHECK(etb_client_heartbeat_age(client, &age) == ETB_OK && age < 5.0, "age %f", age);
    printf("# agent_rank=%lld method=%s device=%s queue=%s state=%s\n", (long long)etb_info_agent_rank(info),
           etb_info_method(info), etb_info_device(info), etb_info_command_queue_path(info), etb_info_state_path(info));
    etb_client_close(client);
    etb_info_free(info);
    return 1;
}

int main(void) {
    g_next_rank = (long long)getpid() * 1000 + 500;
    signal(SIGPIPE, SIG_IGN);
    if (getenv("ETB_EXTERNAL_AGENT_PID")) {
        run_case("external_agent", t_external_agent);
    } else {
        run_case("library_basics", t_library_basics);
        run_case("default_naming_direct", t_default_naming_direct);
        run_case("offset_method", t_offset_method);
        run_case("callback_naming_with_user_data", t_callback_naming);
        run_case("failing_callbacks", t_failing_callbacks);
        run_case("agent_started_after_worker", t_agent_after_worker);
        run_case("no_agent_times_out", t_no_agent);
        run_case("stale_heartbeat", t_stale_heartbeat);
        run_case("agents_found_elsewhere", t_agents_found_elsewhere);
        run_case("missing_queue", t_missing_queue);
        run_case("bad_environment", t_bad_environment);
        run_case("bad_timeouts", t_bad_timeouts);
        run_case("infinite_and_zero_timeouts", t_infinite_timeout_and_zero);
        run_case("null_out_pointers", t_null_out_pointers);
        run_case("null_to_accessors_and_free", t_null_to_accessors);
        run_case("two_clients_one_agent", t_two_clients_one_agent);
        run_case("no_cuda_driver", t_no_cuda_driver);
    }
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
