/*
 * C test of the worker commands against the real shared library and etb-dev-agent processes.
 * Compiled as C11 and as C++17 with -Wall -Wextra -Werror. Needs ETB_DEV_AGENT.
 */
#define _POSIX_C_SOURCE 200809L
#include "etha_tensor_bus.h"

#include "harness.h"

#include <dirent.h>

/* Completion semaphores of this process still in /dev/shm. */
static int our_semaphores(void) {
    char tag[32];
    int n = 0;
    DIR *d = opendir("/dev/shm");
    struct dirent *e;
    snprintf(tag, sizeof tag, "_%d_", (int)getpid());
    if (!d) return -1;
    while ((e = readdir(d)) != NULL)
        if (strncmp(e->d_name, "sem.command_", 12) == 0 && strstr(e->d_name, tag)) n++;
    closedir(d);
    return n;
}

static EtbClient *connect_to(long long rank) {
    EtbClient *client = NULL;
    EtbBootstrapInfo *info = NULL;
    set_direct(rank);
    if (etb_bootstrap_client(NULL, NULL, 5.0, &client, &info) != ETB_OK) return NULL;
    etb_info_free(info);
    return client;
}

static int t_every_command(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    EtbClient *c;
    EtbTensorPayload tensors[2];
    /* Payloads must look like pickles: pickle.dumps(b"\x01\x02", 3), pickle.dumps((2, 4), 3). */
    const uint8_t data[] = {0x80, 0x03, 'C', 0x02, 0x01, 0x02, 'q', 0x00, '.'};
    const uint8_t mesh[] = {0x80, 0x03, 'K', 0x02, 'K', 0x04, 0x86, 'q', 0x00, '.'};
    const uint8_t none[] = {0x80, 0x04, 'N', '.'};
    bool signal = true, done = false;
    EtbCompletion *comp = NULL;
    char long_id[301];
    CHECK(agent.pid > 0, "agent did not start");
    c = connect_to(rank);
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(etb_client_init_pair(c, "weights", "train", "infer", 4, mesh, sizeof mesh, NULL, 0, 5.0), ETB_OK);
    tensors[0].pair_name = "weights";
    tensors[0].data = data;
    tensors[0].len = sizeof data;
    tensors[1].pair_name = "weights";
    tensors[1].data = none;
    tensors[1].len = sizeof none;
    EXPECT(etb_client_register_tensors(c, "step_0", tensors, 2, 1 << 20, 5.0), ETB_OK);
    EXPECT(etb_client_query_transfer_signal(c, "step_0", 5.0, &signal), ETB_OK);
    CHECK(!signal, "absent signal must read false");
    EXPECT(etb_client_transfer(c, "step_0", ETB_TRANSFER_SEND, 5.0), ETB_OK);
    EXPECT(etb_client_query_transfer_signal(c, "step_0", 5.0, &signal), ETB_OK);
    CHECK(signal, "signal after send");
    EXPECT(etb_client_transfer_async(c, "step_0", ETB_TRANSFER_RECV, 5.0, &comp), ETB_OK);
    EXPECT(etb_completion_wait(comp, 5.0), ETB_OK);
    EXPECT(etb_completion_poll(comp, &done), ETB_OK);
    CHECK(done, "poll after wait");
    etb_completion_free(comp);
    EXPECT(etb_client_query_transfer_signal(c, "step_0", 5.0, &signal), ETB_OK);
    CHECK(!signal, "signal after recv");
    memset(long_id, 'q', 300);
    long_id[300] = '\0';
    EXPECT(register_batch(c, "step_1"), ETB_OK);
    EXPECT(register_batch(c, long_id), ETB_OK);
    EXPECT(etb_client_transfer_detached(c, "step_1", ETB_TRANSFER_SEND, 5.0), ETB_OK);
    EXPECT(etb_client_transfer(c, long_id, ETB_TRANSFER_SEND, 5.0), ETB_OK);
    EXPECT(etb_client_cleanup_batch(c, "step_0", 5.0), ETB_OK);
    CHECK(our_semaphores() == 0, "completion semaphores left: %d", our_semaphores());
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(rank);
}

static int t_unmatched_and_timeouts(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, "--unmatched", NULL);
    EtbClient *c;
    CHECK(agent.pid > 0, "agent did not start");
    c = connect_to(rank);
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(etb_client_init_pair(c, "p", "a", "b", 2, NULL, 0, NULL, 0, 5.0), ETB_ERR_PAIR_NOT_MATCHED);
    etb_client_close(c);
    stop_agent(&agent);
    agent = start_agent(rank, 1, "--never-ack", "CleanupBatch");
    c = connect_to(rank);
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(etb_client_cleanup_batch(c, "b", 0.1), ETB_ERR_TIMEOUT);
    CHECK(our_semaphores() == 0, "semaphore left after a timeout");
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(rank);
}

static int t_agent_death(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, "--exit-on", "Transfer");
    EtbClient *c;
    double t0, took;
    CHECK(agent.pid > 0, "agent did not start");
    c = connect_to(rank);
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(register_batch(c, "dies"), ETB_OK);
    t0 = now_s();
    EXPECT(etb_client_transfer(c, "dies", ETB_TRANSFER_SEND, 30.0), ETB_ERR_AGENT_DIED);
    took = now_s() - t0;
    CHECK(took < 2.0, "death seen after %.3f s", took);
    EXPECT(etb_client_cleanup_batch(c, "after", 30.0), ETB_ERR_AGENT_DIED);
    waitpid(agent.pid, NULL, 0);
    /* A new agent on the same files: reconnect keeps the handle. */
    agent = start_agent(rank, 1, NULL, NULL);
    CHECK(agent.pid > 0, "second agent did not start");
    EXPECT(etb_client_reconnect(c, 5.0), ETB_OK);
    EXPECT(etb_client_cleanup_batch(c, "after", 5.0), ETB_OK);
    EXPECT(etb_client_reconnect(c, NAN), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_client_reconnect(NULL, 1.0), ETB_ERR_NULL_ARGUMENT);
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(rank) && our_semaphores() == 0;
}

static int t_null_and_bad_arguments(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, "--record", "/dev/null");
    EtbClient *c;
    EtbCompletion *comp = (EtbCompletion *)(void *)0x1;
    EtbTensorPayload bad;
    bool b = false;
    const char bad_utf8[3] = {(char)0xff, 'x', 0};
    CHECK(agent.pid > 0, "agent did not start");
    c = connect_to(rank);
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(etb_client_init_pair(NULL, "p", "l", "r", 1, NULL, 0, NULL, 0, 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_init_pair(c, NULL, "l", "r", 1, NULL, 0, NULL, 0, 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_init_pair(c, "p", NULL, "r", 1, NULL, 0, NULL, 0, 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_init_pair(c, "p", "l", NULL, 1, NULL, 0, NULL, 0, 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_init_pair(c, "p", "l", "r", 1, NULL, 3, NULL, 0, 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_init_pair(c, "p", "l", "r", 1, NULL, 0, NULL, 3, 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_init_pair(c, bad_utf8, "l", "r", 1, NULL, 0, NULL, 0, 1.0), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_client_init_pair(c, "p", "l", "r", -3, NULL, 0, NULL, 0, 1.0), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_client_init_pair(c, "p", "l", "r", 1, NULL, 0, NULL, 0, NAN), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_client_register_tensors(NULL, "b", NULL, 0, 0, 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_register_tensors(c, NULL, NULL, 0, 0, 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_register_tensors(c, "b", NULL, 2, 0, 1.0), ETB_ERR_NULL_ARGUMENT);
    bad.pair_name = NULL;
    bad.data = NULL;
    bad.len = 0;
    EXPECT(etb_client_register_tensors(c, "b", &bad, 1, 0, 1.0), ETB_ERR_NULL_ARGUMENT);
    CHECK(strstr(etb_last_error_message(), "tensors[0].pair_name") != NULL, "%s", etb_last_error_message());
    bad.pair_name = "p";
    bad.len = 8;
    EXPECT(etb_client_register_tensors(c, "b", &bad, 1, 0, 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_register_tensors(c, "b", NULL, 0, 0, -1.0), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_client_transfer(NULL, "b", ETB_TRANSFER_SEND, 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_transfer(c, NULL, ETB_TRANSFER_SEND, 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_transfer(c, "b", 2, 1.0), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_client_transfer(c, bad_utf8, ETB_TRANSFER_SEND, 1.0), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_client_query_transfer_signal(NULL, "b", 1.0, &b), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_query_transfer_signal(c, NULL, 1.0, &b), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_query_transfer_signal(c, "b", 1.0, NULL), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_cleanup_batch(NULL, "b", 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_cleanup_batch(c, NULL, 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_transfer_async(NULL, "b", ETB_TRANSFER_SEND, 1.0, &comp), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_transfer_async(c, "b", ETB_TRANSFER_SEND, 1.0, NULL), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_transfer_async(c, "b", 9, 1.0, &comp), ETB_ERR_INVALID_ARGUMENT);
    CHECK(comp == (EtbCompletion *)(void *)0x1, "completion_out written on failure");
    EXPECT(etb_client_transfer_detached(NULL, "b", ETB_TRANSFER_SEND, 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_transfer_detached(c, "b", ETB_TRANSFER_RECV, -0.5), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_completion_wait(NULL, 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_completion_poll(NULL, &b), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_heartbeat_age(c, NULL), ETB_ERR_NULL_ARGUMENT);
    etb_completion_free(NULL);
    CHECK(our_semaphores() == 0, "semaphores left: %d", our_semaphores());
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(rank);
}

/* pickle.dumps(b"\x01\x02", 3) */
static const uint8_t PICKLE[] = {0x80, 0x03, 'C', 0x02, 0x01, 0x02, 'q', 0x00, '.'};

/* Runs command `ty` against an agent that fails it after posting and dies 1.2 s later: the
 * call must say ETB_ERR_AGENT_DIED (never ETB_OK), naming the pid and etb_client_reconnect. */
static int dying(const char *ty, int keep_files) {
    long long rank = fresh_rank();
    Agent agent = start_agent4(rank, 1, "--fail-on", ty, "--fail-delay", keep_files ? "1.2" : "1.3");
    EtbClient *c;
    EtbCompletion *comp = NULL;
    EtbTensorPayload tensor;
    bool signal = false, done = false;
    EtbStatus s = ETB_OK;
    char pid_text[32];
    double t0;
    CHECK(agent.pid > 0, "agent did not start");
    c = connect_to(rank);
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    tensor.pair_name = "p";
    tensor.data = PICKLE;
    tensor.len = sizeof PICKLE;
    /* What the real agent needs before the command: the pair matched, the batch registered. */
    if (strcmp(ty, "InitPair") != 0) EXPECT(etb_client_init_pair(c, "p", "a", "b", 1, NULL, 0, NULL, 0, 5.0), ETB_OK);
    if (strcmp(ty, "InitPair") != 0 && strcmp(ty, "RegisterTensors") != 0)
        EXPECT(etb_client_register_tensors(c, "b", &tensor, 1, 0, 5.0), ETB_OK);
    t0 = now_s();
    if (strcmp(ty, "InitPair") == 0) s = etb_client_init_pair(c, "p", "a", "b", 1, NULL, 0, NULL, 0, 10.0);
    if (strcmp(ty, "RegisterTensors") == 0) s = etb_client_register_tensors(c, "b", &tensor, 1, 0, 10.0);
    if (strcmp(ty, "QueryStatus") == 0) s = etb_client_query_transfer_signal(c, "b", 10.0, &signal);
    if (strcmp(ty, "CleanupBatch") == 0) s = etb_client_cleanup_batch(c, "b", 10.0);
    if (strcmp(ty, "Transfer") == 0 && keep_files) s = etb_client_transfer(c, "b", ETB_TRANSFER_SEND, 10.0);
    if (strcmp(ty, "Transfer") == 0 && !keep_files) {
        EXPECT(etb_client_transfer_async(c, "b", ETB_TRANSFER_SEND, 10.0, &comp), ETB_OK);
        while (now_s() - t0 < 10.0) {
            s = etb_completion_poll(comp, &done);
            if (s != ETB_OK || done) break;
            {
                struct timespec ms = {0, 1000000};
                nanosleep(&ms, NULL);
            }
        }
        CHECK(!done, "poll reported done for a command the agent failed");
        EXPECT(etb_completion_wait(comp, 10.0), ETB_ERR_AGENT_DIED);
        etb_completion_free(comp);
    }
    CHECK(s == ETB_ERR_AGENT_DIED, "%s: got %s (%s)", ty, etb_status_name(s), etb_last_error_message());
    CHECK(now_s() - t0 > 1.1, "%s: decided before the agent died", ty);
    snprintf(pid_text, sizeof pid_text, "pid %d", (int)agent.pid);
    CHECK(strncmp(etb_last_error_message(), "ETB_ERR_AGENT_DIED: etb_", 24) == 0, "%s", etb_last_error_message());
    CHECK(strstr(etb_last_error_message(), pid_text) != NULL, "%s", etb_last_error_message());
    CHECK(strstr(etb_last_error_message(), "pairs and batches are gone") != NULL, "%s", etb_last_error_message());
    CHECK(strstr(etb_last_error_message(), "(etb_client_reconnect)") != NULL, "%s", etb_last_error_message());
    waitpid(agent.pid, NULL, 0);
    etb_client_close(c);
    if (keep_files) remove_agent_files(rank);
    return nothing_left(rank) && our_semaphores() == 0;
}

static int t_dying_init_pair(void) { return dying("InitPair", 0); }
static int t_dying_register_tensors(void) { return dying("RegisterTensors", 0); }
static int t_dying_transfer_async(void) { return dying("Transfer", 0); }
static int t_dying_transfer_files_kept(void) { return dying("Transfer", 1); }
static int t_dying_query(void) { return dying("QueryStatus", 0); }
static int t_dying_cleanup(void) { return dying("CleanupBatch", 0); }

static int t_non_pickles_refused(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, "--no-dequeue", NULL);
    EtbClient *c;
    EtbTensorPayload tensors[2];
    const uint8_t raw[8] = {0, 0, 128, 63, 0, 0, 0, 64}; /* two float32: a tensor's raw bytes */
    const uint8_t truncated[] = {0x80, 0x03, 'C', 0x02, 0x01, 0x02, 'q', 0x00};
    const uint8_t empty[1] = {0};
    CHECK(agent.pid > 0, "agent did not start");
    c = connect_to(rank);
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(etb_client_adopt_pair(c, "p"), ETB_OK); /* nobody reads this queue: no InitPair is answered */
    tensors[0].pair_name = "p";
    tensors[0].data = PICKLE;
    tensors[0].len = sizeof PICKLE;
    tensors[1].pair_name = "p";
    tensors[1].data = raw;
    tensors[1].len = sizeof raw;
    EXPECT(etb_client_register_tensors(c, "g", tensors, 2, 0, 1.0), ETB_ERR_INVALID_ARGUMENT);
    CHECK(strstr(etb_last_error_message(), "etb_client_register_tensors: RegisterTensors payload 1") != NULL, "%s",
          etb_last_error_message());
    CHECK(strstr(etb_last_error_message(), "ForkingPickler.dumps(tensor)") != NULL, "%s", etb_last_error_message());
    tensors[1].data = truncated;
    tensors[1].len = sizeof truncated;
    EXPECT(etb_client_register_tensors(c, "g", tensors, 2, 0, 1.0), ETB_ERR_INVALID_ARGUMENT);
    tensors[1].data = empty;
    tensors[1].len = 0;
    EXPECT(etb_client_register_tensors(c, "g", tensors, 2, 0, 1.0), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_client_init_pair(c, "g", "a", "b", 1, raw, sizeof raw, NULL, 0, 1.0), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_client_init_pair(c, "g", "a", "b", 1, NULL, 0, truncated, sizeof truncated, 1.0), ETB_ERR_INVALID_ARGUMENT);
    /* Nothing was enqueued: a pickle is, and its call then times out (nobody dequeues). */
    EXPECT(etb_client_register_tensors(c, "g", tensors, 1, 0, 0.05), ETB_ERR_TIMEOUT);
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(rank) && our_semaphores() == 0;
}

static int t_init_pair_timeout_names_the_peers(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, "--never-ack", "InitPair");
    EtbClient *c;
    CHECK(agent.pid > 0, "agent did not start");
    c = connect_to(rank);
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(etb_client_init_pair(c, "weights", "train", "infer", 4, NULL, 0, NULL, 0, 0.2), ETB_ERR_TIMEOUT);
    CHECK(strstr(etb_last_error_message(), "waiting for the peers of pair \"weights\"") != NULL, "%s",
          etb_last_error_message());
    CHECK(strstr(etb_last_error_message(), "init_pair with the same pair name") != NULL, "%s", etb_last_error_message());
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(rank) && our_semaphores() == 0;
}

static int t_async_forms_and_read_signal(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    EtbClient *c;
    EtbCompletion *comp = NULL;
    bool signal = true, done = false;
    CHECK(agent.pid > 0, "agent did not start");
    c = connect_to(rank);
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(etb_client_init_pair_async(c, "ap", "a", "b", 2, NULL, 0, NULL, 0, 5.0, &comp), ETB_OK);
    EXPECT(etb_completion_wait(comp, 5.0), ETB_OK);
    etb_completion_free(comp);
    EXPECT(etb_client_read_transfer_signal(c, "ab", &signal), ETB_OK);
    CHECK(!signal, "absent reads false");
    EXPECT(register_batch(c, "ab"), ETB_OK);
    EXPECT(etb_client_transfer(c, "ab", ETB_TRANSFER_SEND, 5.0), ETB_OK);
    EXPECT(etb_client_query_transfer_signal_async(c, "ab", 5.0, &comp), ETB_OK);
    while (!done) EXPECT(etb_completion_poll(comp, &done), ETB_OK);
    etb_completion_free(comp);
    EXPECT(etb_client_read_transfer_signal(c, "ab", &signal), ETB_OK);
    CHECK(signal, "the signal the agent recorded");
    EXPECT(etb_client_cleanup_batch_async(c, "ab", 5.0, &comp), ETB_OK);
    EXPECT(etb_completion_wait(comp, 5.0), ETB_OK);
    etb_completion_free(comp);
    /* Freed unwaited: its semaphore goes. */
    EXPECT(etb_client_cleanup_batch_async(c, "ab2", 5.0, &comp), ETB_OK);
    etb_completion_free(comp);
    EXPECT(etb_client_init_pair_async(c, "ap", "a", "b", 0, NULL, 0, NULL, 0, 5.0, &comp), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_client_init_pair_async(c, "ap", "a", "b", 2, NULL, 0, NULL, 0, 5.0, NULL), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_cleanup_batch_async(NULL, "x", 5.0, &comp), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_query_transfer_signal_async(c, NULL, 5.0, &comp), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_read_transfer_signal(c, "x", NULL), ETB_ERR_NULL_ARGUMENT);
    etb_client_close(c);
    stop_agent(&agent);
    /* An agent that does not match: the async InitPair says so once the agent survived it. */
    agent = start_agent(rank, 1, "--unmatched", NULL);
    c = connect_to(rank);
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(etb_client_init_pair_async(c, "np", "a", "b", 2, NULL, 0, NULL, 0, 5.0, &comp), ETB_OK);
    EXPECT(etb_completion_wait(comp, 5.0), ETB_ERR_PAIR_NOT_MATCHED);
    SAYS("etb_completion_wait: InitPair \"np\" completed but");
    etb_completion_free(comp);
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(rank) && our_semaphores() == 0;
}

static int t_connect_with_explicit_paths(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    EtbClient *c = NULL;
    EtbBootstrapInfo *i = NULL;
    char cq[128], st[128];
    CHECK(agent.pid > 0, "agent did not start");
    snprintf(cq, sizeof cq, "/tmp/agent_rank%lld_command.lmdb", rank);
    snprintf(st, sizeof st, "/tmp/agent_rank%lld_state.lmdb", rank);
    unsetenv("AGENT_RANK");
    unsetenv("RANK"); /* nothing of the environment is read */
    EXPECT(etb_client_connect(rank, cq, st, NULL, &c, &i), ETB_OK);
    CHECK(strcmp(etb_info_method(i), "direct") == 0 && etb_info_global_rank(i) == -1, "method %s", etb_info_method(i));
    CHECK(etb_info_agent_rank(i) == rank && strcmp(etb_info_state_path(i), st) == 0, "info");
    EXPECT(register_batch(c, "cx"), ETB_OK);
    EXPECT(etb_client_transfer(c, "cx", ETB_TRANSFER_SEND, 5.0), ETB_OK);
    etb_info_free(i);
    etb_client_close(c);
    EXPECT(etb_client_connect(rank, NULL, st, NULL, &c, &i), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_connect(rank, cq, cq, NULL, &c, &i), ETB_ERR_NAMING);
    stop_agent(&agent);
    return nothing_left(rank);
}

static int t_completion_after_close(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, "--never-ack", "Transfer");
    EtbClient *c;
    EtbCompletion *comp = NULL;
    bool done = true;
    CHECK(agent.pid > 0, "agent did not start");
    c = connect_to(rank);
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(register_batch(c, "pending"), ETB_OK);
    EXPECT(etb_client_transfer_async(c, "pending", ETB_TRANSFER_SEND, 1.0, &comp), ETB_OK);
    EXPECT(etb_completion_poll(comp, &done), ETB_OK);
    CHECK(!done, "not acknowledged yet");
    EXPECT(etb_completion_wait(comp, 0.0), ETB_ERR_TIMEOUT);
    etb_client_close(c);
    EXPECT(etb_completion_wait(comp, 1.0), ETB_ERR_CLOSED);
    CHECK(our_semaphores() == 1, "the pending completion holds its semaphore");
    etb_completion_free(comp);
    CHECK(our_semaphores() == 0, "freed completion removed its semaphore");
    stop_agent(&agent);
    return nothing_left(rank);
}

/* The client refuses, before the queue, what would kill the agent; an earlier client's batch and
 * pair are adopted (docs/protocol.md section 5). */
static int t_guard_and_adopt(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, NULL, NULL);
    EtbClient *c;
    EtbCompletion *comp = NULL;
    EtbTensorPayload tensor;
    bool known = true, signal = false;
    CHECK(agent.pid > 0, "agent did not start");
    c = connect_to(rank);
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(etb_client_transfer(c, "never", ETB_TRANSFER_SEND, 1.0), ETB_ERR_INVALID_ARGUMENT);
    SAYS("ETB_ERR_INVALID_ARGUMENT: etb_client_transfer: Transfer for batch \"never\"");
    SAYS("the agent would die of it");
    SAYS("nothing was enqueued");
    EXPECT(etb_client_transfer_async(c, "never", ETB_TRANSFER_SEND, 1.0, &comp), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_client_transfer_detached(c, "never", ETB_TRANSFER_SEND, 1.0), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_client_query_transfer_signal(c, "never", 1.0, &signal), ETB_ERR_INVALID_ARGUMENT);
    SAYS("answers nothing for an unknown batch");
    tensor.pair_name = "pair";
    tensor.data = PICKLE;
    tensor.len = sizeof PICKLE;
    EXPECT(etb_client_register_tensors(c, "b", &tensor, 1, 0, 1.0), ETB_ERR_INVALID_ARGUMENT);
    SAYS("names pair \"pair\"");
    EXPECT(etb_client_register_tensors(c, "b", NULL, 0, 0, 1.0), ETB_ERR_INVALID_ARGUMENT);
    SAYS("has no tensors");
    EXPECT(etb_client_batch_known(c, "never", &known), ETB_OK);
    CHECK(!known, "never registered");
    EXPECT(register_batch(c, "kept"), ETB_OK);
    EXPECT(etb_client_batch_known(c, "kept", &known), ETB_OK);
    CHECK(known, "registered");
    CHECK(our_semaphores() == 0, "a refused command left a semaphore");
    etb_client_close(c);
    /* A later client (as a restarted worker): the agent still holds them, this client must adopt. */
    c = connect_to(rank);
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(etb_client_transfer(c, "kept", ETB_TRANSFER_SEND, 1.0), ETB_ERR_INVALID_ARGUMENT);
    EXPECT(etb_client_adopt_batch(c, "kept"), ETB_OK);
    EXPECT(etb_client_transfer(c, "kept", ETB_TRANSFER_SEND, 5.0), ETB_OK);
    EXPECT(etb_client_query_transfer_signal(c, "kept", 5.0, &signal), ETB_OK);
    CHECK(signal, "the adopted batch was sent");
    EXPECT(etb_client_pair_known(c, "pair", &known), ETB_OK);
    CHECK(!known, "not adopted yet");
    EXPECT(etb_client_adopt_pair(c, "pair"), ETB_OK);
    EXPECT(etb_client_register_tensors(c, "more", &tensor, 1, 0, 5.0), ETB_OK);
    EXPECT(etb_client_cleanup_batch_detached(c, "more", 5.0), ETB_OK);
    EXPECT(etb_client_adopt_pair(NULL, "p"), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_adopt_batch(c, NULL), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_batch_known(c, "x", NULL), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_pair_known(NULL, "x", &known), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_cleanup_batch_detached(c, NULL, 1.0), ETB_ERR_NULL_ARGUMENT);
    EXPECT(etb_client_cleanup_batch_detached(c, "x", NAN), ETB_ERR_INVALID_ARGUMENT);
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(rank) && our_semaphores() == 0;
}

int main(void) {
    g_next_rank = (long long)getpid() * 1000 + 600;
    signal(SIGPIPE, SIG_IGN);
    run_case("every_command", t_every_command);
    run_case("unmatched_pair_and_timeouts", t_unmatched_and_timeouts);
    run_case("agent_death", t_agent_death);
    run_case("null_and_bad_arguments", t_null_and_bad_arguments);
    run_case("completion_after_close", t_completion_after_close);
    run_case("async_forms_and_read_signal", t_async_forms_and_read_signal);
    run_case("connect_with_explicit_paths", t_connect_with_explicit_paths);
    run_case("dying_agent_init_pair", t_dying_init_pair);
    run_case("dying_agent_register_tensors", t_dying_register_tensors);
    run_case("dying_agent_transfer_async_poll_and_wait", t_dying_transfer_async);
    run_case("dying_agent_transfer_files_kept", t_dying_transfer_files_kept);
    run_case("dying_agent_query", t_dying_query);
    run_case("dying_agent_cleanup", t_dying_cleanup);
    run_case("non_pickle_payloads_refused", t_non_pickles_refused);
    run_case("init_pair_timeout_names_the_peers", t_init_pair_timeout_names_the_peers);
    run_case("guard_and_adopt", t_guard_and_adopt);
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
