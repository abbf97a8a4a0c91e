/*
 * The small test harness shared by the C test programs: cases, checks, and etb-dev-agent
 * processes. Header-only (static functions); valid C11 and C++17.
 */
#ifndef ETB_TEST_HARNESS_H
#define ETB_TEST_HARNESS_H

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <unistd.h>

extern char **environ;

static int g_passed, g_failed;
static char g_why[1024];

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            snprintf(g_why, sizeof g_why, __VA_ARGS__);                    \
            return 0;                                                      \
        }                                                                  \
    } while (0)

/* A library call's status, and its last error message (the functions of etha_tensor_bus.h, which
 * each test program includes): fail the case with both when the status is not `want`, or when the
 * message lacks `text`. */
#define EXPECT(call, want)                                                                              \
    do {                                                                                                \
        EtbStatus s_ = (call);                                                                          \
        CHECK(s_ == (want), "%s: got %s, want %s (%s)", #call, etb_status_name(s_), etb_status_name(want), \
              etb_last_error_message());                                                                \
    } while (0)
#define SAYS(text)                                                                                      \
    CHECK(strstr(etb_last_error_message(), (text)) != NULL, "message lacks \"%s\": %s", (text), \
          etb_last_error_message())

static inline void run_case(const char *name, int (*fn)(void)) {
    g_why[0] = '\0';
    if (fn()) {
        g_passed++;
        printf("ok - %s\n", name);
    } else {
        g_failed++;
        printf("not ok - %s: %s\n", name, g_why);
    }
    fflush(stdout);
}

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- agents ---- */

typedef struct Agent {
    pid_t pid;
    long long rank;
} Agent;

static long long g_next_rank;

/* Adds this process's pid to the test run's ledger (ETB_TEST_LEDGER, tests/leak_check.py), so
 * that the suite's leak check knows the names it makes (ranks are pid * 1000 + k). */
static inline void register_in_ledger(void) {
    static int done;
    const char *ledger = getenv("ETB_TEST_LEDGER");
    FILE *f;
    if (done || !ledger) return;
    done = 1;
    f = fopen(ledger, "a");
    if (f) {
        fprintf(f, "%d\n", (int)getpid());
        fclose(f);
    }
}

static inline long long fresh_rank(void) {
    register_in_ledger();
    return g_next_rank++;
}

/* Starts etb-dev-agent for `rank` with up to four extra arguments (NULL for none); waits for its
 * "ready" line unless wait_ready is 0. Returns pid 0 on failure. */
static inline Agent start_agent4(long long rank, int wait_ready, const char *a1, const char *a2, const char *a3,
                                 const char *a4) {
    Agent agent;
    char rank_text[32];
    const char *argv[14];
    int n = 0, pipefd[2];
    posix_spawn_file_actions_t fa;
    agent.pid = 0;
    agent.rank = rank;
    snprintf(rank_text, sizeof rank_text, "%lld", rank);
    argv[n++] = getenv("ETB_DEV_AGENT");
    argv[n++] = "--rank";
    argv[n++] = rank_text;
    argv[n++] = "--exit-after";
    argv[n++] = "60";
    argv[n++] = "--die-with-parent";
    if (a1) argv[n++] = a1;
    if (a2) argv[n++] = a2;
    if (a3) argv[n++] = a3;
    if (a4) argv[n++] = a4;
    argv[n] = NULL;
    if (!argv[0] || pipe(pipefd) != 0) return agent;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
    posix_spawn_file_actions_addclose(&fa, pipefd[0]);
    if (posix_spawn(&agent.pid, argv[0], &fa, NULL, (char *const *)argv, environ) != 0) agent.pid = 0;
    posix_spawn_file_actions_destroy(&fa);
    close(pipefd[1]);
    if (agent.pid && wait_ready) {
        char line[64] = {0};
        ssize_t got = read(pipefd[0], line, sizeof line - 1);
        if (got <= 0 || strncmp(line, "ready pid=", 10) != 0) {
            kill(agent.pid, SIGKILL);
            waitpid(agent.pid, NULL, 0);
            agent.pid = 0;
        }
    }
    close(pipefd[0]);
    return agent;
}

/* start_agent4 with up to two extra arguments. */
static inline Agent start_agent(long long rank, int wait_ready, const char *a1, const char *a2) {
    return start_agent4(rank, wait_ready, a1, a2, NULL, NULL);
}

/* Stops an agent cleanly (it removes its files and semaphores) and waits for it. */
static inline void stop_agent(Agent *agent) {
    if (agent->pid > 0) {
        kill(agent->pid, SIGTERM);
        waitpid(agent->pid, NULL, 0);
        agent->pid = 0;
    }
}

static inline int path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Every file and queue semaphore of agent `rank` (default naming), as printf formats. */
static const char *const AGENT_FILE_FMTS[] = {
    "/tmp/agent_rank%lld_command.lmdb", "/tmp/agent_rank%lld_command.lmdb-lock",
    "/tmp/agent_rank%lld_state.lmdb", "/tmp/agent_rank%lld_state.lmdb-lock",
    "/dev/shm/sem.cq_agent_rank%lld_command", "/dev/shm/sem.cq_space_agent_rank%lld_command",
    "/dev/shm/sem.cq_ready_agent_rank%lld_command"};
#define AGENT_FILE_COUNT (sizeof AGENT_FILE_FMTS / sizeof AGENT_FILE_FMTS[0])

/* The worker lock file beside the agent's state, which the library never removes (removing lock
 * files races): the harness removes it, as an operator would, once the test is done with it. */
static inline void remove_worker_lock(long long rank) {
    char p[256];
    snprintf(p, sizeof p, "/tmp/.agent_rank%lld_state.lmdb.worker", rank);
    unlink(p);
}

/* Removes a killed agent's leftovers, as its launch script would, and the worker lock file. */
static inline void remove_agent_files(long long rank) {
    char p[256];
    size_t i;
    for (i = 0; i < AGENT_FILE_COUNT; i++) {
        snprintf(p, sizeof p, AGENT_FILE_FMTS[i], rank);
        unlink(p);
    }
    remove_worker_lock(rank);
}

/* Nothing of agent `rank` left in /tmp or /dev/shm (its worker lock file removed first: see
 * remove_worker_lock). */
static inline int nothing_left(long long rank) {
    char p[256];
    size_t i;
    remove_worker_lock(rank);
    for (i = 0; i < AGENT_FILE_COUNT; i++) {
        snprintf(p, sizeof p, AGENT_FILE_FMTS[i], rank);
        if (path_exists(p)) {
            snprintf(g_why, sizeof g_why, "left behind: %s", p);
            return 0;
        }
    }
    return 1;
}

static inline void set_env(const char *agent_rank, const char *rank, const char *offset, const char *local_rank) {
    if (agent_rank) setenv("AGENT_RANK", agent_rank, 1); else unsetenv("AGENT_RANK");
    if (rank) setenv("RANK", rank, 1); else unsetenv("RANK");
    if (offset) setenv("AGENT_RANK_OFFSET", offset, 1); else unsetenv("AGENT_RANK_OFFSET");
    if (local_rank) setenv("LOCAL_RANK", local_rank, 1); else unsetenv("LOCAL_RANK");
}

static inline void set_direct(long long rank) {
    char r[32];
    snprintf(r, sizeof r, "%lld", rank);
    set_env(r, "0", NULL, NULL);
}

#ifdef ETHA_TENSOR_BUS_H
/* What the real agent needs before a batch can be transferred or queried (docs/protocol.md
 * section 5): the pair "pair" matched, then the batch registered with one payload that the
 * stand-ins take for a tensor (a whole pickle: pickle.dumps(b"\x01\x02", 3)). */
static inline EtbStatus register_batch(const EtbClient *c, const char *batch) {
    static const uint8_t tensor[] = {0x80, 0x03, 'C', 0x02, 0x01, 0x02, 'q', 0x00, '.'};
    EtbTensorPayload t;
    EtbStatus s = etb_client_init_pair(c, "pair", "train", "infer", 1, NULL, 0, NULL, 0, 10.0);
    if (s != ETB_OK) return s;
    t.pair_name = "pair";
    t.data = tensor;
    t.len = sizeof tensor;
    return etb_client_register_tensors(c, batch, &t, 1, 0, 10.0);
}
#endif

#endif /* ETB_TEST_HARNESS_H */
