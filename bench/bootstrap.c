/*
 * Bootstrap figures through the C ABI (the path users call):
 *
 *   bootstrap warm N       N bootstraps (bootstrap + close + free) against an agent already
 *                          running; AGENT_RANK/RANK must name it.
 *   bootstrap connect N    N times: start etb-dev-agent (ETB_DEV_AGENT) for a fresh rank, call
 *                          bootstrap at once (the worker is first), and time from the agent's
 *                          first heartbeat (its `ready ... beat=T` line) to bootstrap's return.
 *
 * Prints median, p10 and p90 in microseconds.
 */
#define _POSIX_C_SOURCE 200809L
#include "etha_tensor_bus.h"

#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(const char *what, double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp);
    printf("%-34s n=%-5d median=%9.1f us  p10=%9.1f us  p90=%9.1f us\n", what, n, v[n / 2] * 1e6, v[n / 10] * 1e6,
           v[(n * 9) / 10] * 1e6);
}

static int warm(int n) {
    double *t = (double *)calloc((size_t)n, sizeof *t);
    int i;
    for (i = 0; i < n; i++) {
        EtbClient *c = NULL;
        EtbBootstrapInfo *info = NULL;
        double t0 = clock_s(CLOCK_MONOTONIC);
        if (etb_bootstrap_client(NULL, NULL, 5.0, &c, &info) != ETB_OK) {
            fprintf(stderr, "bootstrap: %s\n", etb_last_error_message());
            return 1;
        }
        t[i] = clock_s(CLOCK_MONOTONIC) - t0;
        etb_client_close(c);
        etb_info_free(info);
    }
    report("bootstrap, agent already running", t, n);
    free(t);
    return 0;
}

static int connect_after_start(int n) {
    double *t = (double *)calloc((size_t)n, sizeof *t);
    long long base = (long long)getpid() * 1000;
    int i;
    for (i = 0; i < n; i++) {
        char rank[32], line[256] = {0};
        const char *argv[8];
        int fd[2];
        pid_t pid;
        posix_spawn_file_actions_t fa;
        EtbClient *c = NULL;
        EtbBootstrapInfo *info = NULL;
        double returned, beat;
        const char *b;
        snprintf(rank, sizeof rank, "%lld", base + i);
        setenv("AGENT_RANK", rank, 1);
        setenv("RANK", "0", 1);
        argv[0] = getenv("ETB_DEV_AGENT");
        argv[1] = "--rank";
        argv[2] = rank;
        argv[3] = "--start-delay";
        argv[4] = "0.05";
        argv[5] = "--die-with-parent";
        argv[6] = NULL;
        if (!argv[0] || pipe(fd) != 0) return 1;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
        posix_spawn_file_actions_addclose(&fa, fd[0]);
        if (posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, environ) != 0) return 1;
        posix_spawn_file_actions_destroy(&fa);
        close(fd[1]);
        if (etb_bootstrap_client(NULL, NULL, 10.0, &c, &info) != ETB_OK) {
            fprintf(stderr, "bootstrap: %s\n", etb_last_error_message());
            return 1;
        }
        returned = clock_s(CLOCK_REALTIME);
        if (read(fd[0], line, sizeof line - 1) <= 0 || !(b = strstr(line, "beat="))) return 1;
        beat = atof(b + 5);
        t[i] = returned - beat;
        etb_client_close(c);
        etb_info_free(info);
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        close(fd[0]);
    }
    report("connect: first heartbeat -> return", t, n);
    free(t);
    return 0;
}

int main(int argc, char **argv) {
    int n = argc > 2 ? atoi(argv[2]) : 100;
    if (argc > 1 && strcmp(argv[1], "warm") == 0) return warm(n);
    if (argc > 1 && strcmp(argv[1], "connect") == 0) return connect_after_start(n);
    fprintf(stderr, "usage: %s warm|connect [N]\n", argv[0]);
    return 2;
}
