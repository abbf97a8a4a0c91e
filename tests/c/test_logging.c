/*
 * The log callback from C (C11 and C++17): records that pass ETB_LOG arrive with their level and
 * target, the filter applies first, NULL restores standard error, the previous callback is never
 * called after a change, and the callback cannot change itself. Run with
 * ETB_LOG="warn,etb_core::bootstrap=info" (ctest sets it) and ETB_DEV_AGENT.
 */
#define _POSIX_C_SOURCE 200809L
#include "etha_tensor_bus.h"

#include "harness.h"

#include <pthread.h>

typedef struct Seen {
    pthread_mutex_t lock;
    int records, infos, debugs, reentry_status;
    char last_target[128], last_message[512];
} Seen;

static Seen g_a = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, -1, {0}, {0}};
static Seen g_b = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, -1, {0}, {0}};

static void on_record(int32_t level, const char *target, const char *message, void *user_data) {
    Seen *s = (Seen *)user_data;
    pthread_mutex_lock(&s->lock);
    s->records++;
    if (level == ETB_LOG_INFO) s->infos++;
    if (level == ETB_LOG_DEBUG) s->debugs++;
    snprintf(s->last_target, sizeof s->last_target, "%s", target);
    snprintf(s->last_message, sizeof s->last_message, "%s", message);
    pthread_mutex_unlock(&s->lock);
}

static void reentrant(int32_t level, const char *target, const char *message, void *user_data) {
    Seen *s = (Seen *)user_data;
    (void)level;
    (void)target;
    (void)message;
    s->reentry_status = etb_set_log_callback(NULL, NULL);
}

static int bootstrap_once(long long rank) {
    EtbClient *c = NULL;
    EtbBootstrapInfo *i = NULL;
    EtbBootstrapOptions o;
    etb_bootstrap_options_init(&o);
    o.cuda_mode = ETB_CUDA_SKIP;
    o.connection_timeout_s = 5.0;
    set_direct(rank);
    if (etb_bootstrap_client_ex(&o, &c, &i) != ETB_OK) return 0;
    etb_info_free(i);
    etb_client_close(c);
    return 1;
}

static int t_records_levels_and_filter(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    CHECK(agent.pid > 0, "agent did not start");
    CHECK(etb_set_log_callback(on_record, &g_a) == ETB_OK, "%s", etb_last_error_message());
    CHECK(bootstrap_once(rank), "bootstrap: %s", etb_last_error_message());
    CHECK(g_a.infos >= 1, "the bootstrap's info record did not arrive (%d records)", g_a.records);
    CHECK(strcmp(g_a.last_target, "etb_core::bootstrap") == 0, "target %s", g_a.last_target);
    CHECK(strstr(g_a.last_message, "bootstrapped: agent rank") != NULL, "message %s", g_a.last_message);
    /* A failure is recorded at debug level: ETB_LOG (warn elsewhere) filters it out first. */
    CHECK(etb_client_transfer(NULL, "b", ETB_TRANSFER_SEND, 1.0) == ETB_ERR_NULL_ARGUMENT, "NULL client");
    CHECK(g_a.debugs == 0, "a debug record passed the filter");
    /* Another callback: the first one is never called again. */
    CHECK(etb_set_log_callback(on_record, &g_b) == ETB_OK, "%s", etb_last_error_message());
    {
        int before = g_a.records;
        CHECK(bootstrap_once(rank), "bootstrap: %s", etb_last_error_message());
        CHECK(g_a.records == before, "the replaced callback was called");
        CHECK(g_b.infos >= 1, "the new callback got nothing");
    }
    /* The callback cannot change itself. */
    CHECK(etb_set_log_callback(reentrant, &g_b) == ETB_OK, "%s", etb_last_error_message());
    CHECK(bootstrap_once(rank), "bootstrap: %s", etb_last_error_message());
    CHECK(g_b.reentry_status == ETB_ERR_INVALID_ARGUMENT, "set from inside the callback: %d", g_b.reentry_status);
    /* NULL: back to standard error; no callback is called any more. */
    CHECK(etb_set_log_callback(NULL, NULL) == ETB_OK, "%s", etb_last_error_message());
    {
        int a = g_a.records, b = g_b.records;
        CHECK(bootstrap_once(rank), "bootstrap: %s", etb_last_error_message());
        CHECK(g_a.records == a && g_b.records == b, "a callback was called after NULL");
    }
    stop_agent(&agent);
    return nothing_left(rank);
}

int main(void) {
    g_next_rank = (long long)getpid() * 1000 + 500;
    signal(SIGPIPE, SIG_IGN);
    run_case("records_levels_and_filter", t_records_levels_and_filter);
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
