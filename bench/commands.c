/*
 * Command figures through the C ABI, against etb-dev-agent (ETB_DEV_AGENT):
 *   enqueue DIR N     N detached transfers into a queue under DIR that nobody consumes:
 *                     commands per second
 *   roundtrip N       N blocking transfers against a consuming agent: latency per command
 *   death N           N times: a blocking transfer the agent never acknowledges, the agent
 *                     SIGKILLed 100-110 ms in; time from the kill to the call's return
 */
#define _POSIX_C_SOURCE 200809L
#include "etha_tensor_bus.h"

#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(const char *what, double *v, int n, double scale, const char *unit) {
    qsort(v, (size_t)n, sizeof *v, cmp);
    printf("%-38s n=%-6d median=%10.1f %s  p10=%10.1f  p90=%10.1f\n", what, n, v[n / 2] * scale, unit,
           v[n / 10] * scale, v[(n * 9) / 10] * scale);
}

static char g_dir[512];
static int naming(int64_t rank, char *cq, size_t cq_cap, char *st, size_t st_cap, void *ud) {
    (void)ud;
    snprintf(cq, cq_cap, "%s/etb_bench_%d_%lld_command.lmdb", g_dir, (int)getpid(), (long long)rank);
    snprintf(st, st_cap, "%s/etb_bench_%d_%lld_state.lmdb", g_dir, (int)getpid(), (long long)rank);
    return 0;
}

static pid_t start_agent(long long rank, const char *a1, const char *a2) {
    char cq[1024], st[1024], line[128];
    const char *argv[12];
    int n = 0, fd[2];
    pid_t pid;
    posix_spawn_file_actions_t fa;
    naming(rank, cq, sizeof cq, st, sizeof st, NULL);
    argv[n++] = getenv("ETB_DEV_AGENT");
    argv[n++] = "--command-queue";
    argv[n++] = cq;
    argv[n++] = "--state";
    argv[n++] = st;
    argv[n++] = "--die-with-parent";
    if (a1) argv[n++] = a1;
    if (a2) argv[n++] = a2;
    argv[n] = NULL;
    if (!argv[0] || pipe(fd) != 0) exit(2);
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
    if (posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, environ) != 0) exit(2);
    posix_spawn_file_actions_destroy(&fa);
    close(fd[1]);
    if (read(fd[0], line, sizeof line) <= 0) exit(2);
    close(fd[0]);
    return pid;
}

static EtbClient *connect_rank(long long rank) {
    char r[32];
    EtbClient *c = NULL;
    EtbBootstrapInfo *info = NULL;
    snprintf(r, sizeof r, "%lld", rank);
    setenv("AGENT_RANK", r, 1);
    setenv("RANK", "0", 1);
    if (etb_bootstrap_client(naming, NULL, 10.0, &c, &info) != ETB_OK) {
        fprintf(stderr, "bootstrap: %s\n", etb_last_error_message());
        exit(1);
    }
    etb_info_free(info);
    return c;
}

static void stop(pid_t pid) {
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

static int enqueue(int n) {
    pid_t agent = start_agent(1, "--no-dequeue", NULL);
    EtbClient *c = connect_rank(1);
    char id[32];
    double t0 = now_s(), took;
    int i;
    for (i = 0; i < n; i++) {
        snprintf(id, sizeof id, "b%d", i);
        if (etb_client_transfer_detached(c, id, ETB_TRANSFER_SEND, 0.0) != ETB_OK) {
            fprintf(stderr, "enqueue %d: %s\n", i, etb_last_error_message());
            return 1;
        }
    }
    took = now_s() - t0;
    printf("%-38s n=%-6d %10.0f commands/s  (%.2f us each)\n", "enqueue, detached, no consumer", n, n / took,
           took / n * 1e6);
    etb_client_close(c);
    stop(agent);
    return 0;
}

static int roundtrip(int n) {
    pid_t agent = start_agent(2, NULL, NULL);
    EtbClient *c = connect_rank(2);
    double *t = (double *)calloc((size_t)n, sizeof *t);
    int i;
    for (i = 0; i < n; i++) {
        double t0 = now_s();
        if (etb_client_transfer(c, "rt", ETB_TRANSFER_SEND, 10.0) != ETB_OK) {
            fprintf(stderr, "transfer: %s\n", etb_last_error_message());
            return 1;
        }
        t[i] = now_s() - t0;
    }
    report("round trip, blocking transfer", t, n, 1e6, "us");
    etb_client_close(c);
    stop(agent);
    free(t);
    return 0;
}

typedef struct Kill {
    pid_t pid;
    double at;
    long delay_ns;
} Kill;

static void *killer(void *arg) {
    Kill *k = (Kill *)arg;
    struct timespec d = {0, k->delay_ns};
    nanosleep(&d, NULL);
    k->at = now_s();
    kill(k->pid, SIGKILL);
    return NULL;
}

static int death(int n) {
    double *t = (double *)calloc((size_t)n, sizeof *t);
    int i;
    for (i = 0; i < n; i++) {
        Kill k;
        pthread_t th;
        EtbClient *c;
        EtbStatus s;
        k.pid = start_agent(100 + i, "--never-ack", "Transfer");
        /* 100 ms plus a spread over 10 ms, so kills fall anywhere in the library's wait slices. */
        k.delay_ns = 100 * 1000 * 1000 + (long)((i * 7919) % 10000) * 1000;
        c = connect_rank(100 + i);
        pthread_create(&th, NULL, killer, &k);
        s = etb_client_transfer(c, "dies", ETB_TRANSFER_SEND, 30.0);
        t[i] = now_s();
        pthread_join(th, NULL);
        t[i] -= k.at;
        if (s != ETB_ERR_AGENT_DIED) {
            fprintf(stderr, "expected AGENT_DIED, got %s\n", etb_status_name(s));
            return 1;
        }
        etb_client_close(c);
        waitpid(k.pid, NULL, 0);
        /* Remove the killed agent's files: a fresh agent cleans up at start and at exit. */
        stop(start_agent(100 + i, NULL, NULL));
    }
    report("agent death: kill -> AGENT_DIED", t, n, 1e3, "ms");
    free(t);
    return 0;
}

int main(int argc, char **argv) {
    int n;
    if (argc < 3) {
        fprintf(stderr, "usage: %s enqueue DIR N | roundtrip DIR N | death DIR N\n", argv[0]);
        return 2;
    }
    snprintf(g_dir, sizeof g_dir, "%s", argv[2]);
    n = argc > 3 ? atoi(argv[3]) : 1000;
    if (strcmp(argv[1], "enqueue") == 0) return enqueue(n);
    if (strcmp(argv[1], "roundtrip") == 0) return roundtrip(n);
    if (strcmp(argv[1], "death") == 0) return death(n);
    return 2;
}
