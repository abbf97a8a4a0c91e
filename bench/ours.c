/*
 * Our side of the benchmarks, through the C ABI (the path users call). One mode per run, driven
 * by bench/run.py, which starts the agents; prints one JSON object.
 *
 *   ours bootstrap N          N bootstraps (+ close) against a running agent
 *   ours connect              prints "waiting", bootstraps (the agent starts after), reads the
 *                             agent's first heartbeat time on stdin, prints the latency
 *   ours enqueue N [THREADS]  N detached transfers (split over THREADS) into a queue nobody reads
 *   ours issue N              N transfer_async + completion_free
 *   ours roundtrip N          N blocking transfers against a consuming agent
 *   ours payloads N           N CUDA tensor payloads, (1024, 1024) bfloat16, through the fake CUDA
 *                             driver (ETB_CUDA_DRIVER_PATH): fresh (each in its own allocation, so
 *                             each makes its IPC handle), then cached (N of one allocation whose
 *                             handle is made); the driver calls per payload of each, and the fake
 *                             driver's own cost per call (push/pop pairs through dlsym) and of the
 *                             lookup a payload makes (cuPointerGetAttributes; -1 without it)
 *   ours death                prints "waiting", then a blocking transfer the agent never
 *                             acknowledges; prints the wall time at which it returned
 *   ours footprint LIB        resident memory before and after dlopen(LIB) and a bootstrap
 *
 * The agent is named by AGENT_RANK/RANK and ETB_BENCH_ROOT (files ROOT/bench_rank{N}_*.lmdb).
 */
#define _POSIX_C_SOURCE 200809L
#include "etha_tensor_bus.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void summary(double *v, int n, double scale, const char *unit) {
    qsort(v, (size_t)n, sizeof *v, cmp);
    printf("{\"n\": %d, \"median\": %.3f, \"p10\": %.3f, \"p90\": %.3f, \"unit\": \"%s\"}\n", n, v[n / 2] * scale,
           v[n / 10] * scale, v[(n * 9) / 10 < n ? (n * 9) / 10 : n - 1] * scale, unit);
}

static int naming(int64_t rank, char *cq, size_t cq_cap, char *st, size_t st_cap, void *ud) {
    const char *root = (const char *)ud;
    snprintf(cq, cq_cap, "%s/bench_rank%lld_command.lmdb", root, (long long)rank);
    snprintf(st, st_cap, "%s/bench_rank%lld_state.lmdb", root, (long long)rank);
    return 0;
}

static EtbClient *boot(double *took) {
    EtbClient *c = NULL;
    EtbBootstrapInfo *info = NULL;
    EtbBootstrapOptions o;
    double t0 = mono();
    etb_bootstrap_options_init(&o);
    o.path_naming_fn = naming;
    o.user_data = getenv("ETB_BENCH_ROOT");
    /* The scaling runs put several producer processes on one agent. */
    o.allow_shared_agent = getenv("ETB_BENCH_SHARE") ? 1 : 0;
    if (etb_bootstrap_client_ex(&o, &c, &info) != ETB_OK) {
        fprintf(stderr, "bootstrap: %s\n", etb_last_error_message());
        exit(1);
    }
    if (took) *took = mono() - t0;
    etb_info_free(info);
    return c;
}

/* What the real agent needs before it transfers a batch: the pair matched, the batch registered
 * (one payload the stand-in takes for a tensor: a whole pickle). */
static void register_batch(EtbClient *c, const char *batch) {
    static const uint8_t tensor[] = {0x80, 0x03, 'C', 0x02, 0x01, 0x02, 'q', 0x00, '.'};
    EtbTensorPayload t = {"bench", tensor, sizeof tensor};
    if (etb_client_init_pair(c, "bench", "ours", "peer", 1, NULL, 0, NULL, 0, 30.0) != ETB_OK ||
        etb_client_register_tensors(c, batch, &t, 1, 0, 30.0) != ETB_OK) {
        fprintf(stderr, "register %s: %s\n", batch, etb_last_error_message());
        exit(1);
    }
}

/* For a queue nobody reads: the client is told the batch exists (as an earlier process's). */
static void adopt_batch(EtbClient *c, const char *batch) {
    if (etb_client_adopt_batch(c, batch) != ETB_OK) {
        fprintf(stderr, "adopt %s: %s\n", batch, etb_last_error_message());
        exit(1);
    }
}

typedef struct Producer {
    EtbClient *client;
    int n;
} Producer;

static void *produce(void *arg) {
    Producer *p = (Producer *)arg;
    int i;
    for (i = 0; i < p->n; i++) {
        if (etb_client_transfer_detached(p->client, "b", ETB_TRANSFER_SEND, 30.0) != ETB_OK) {
            fprintf(stderr, "enqueue: %s\n", etb_last_error_message());
            exit(1);
        }
    }
    return NULL;
}


int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    int n = argc > 2 ? atoi(argv[2]) : 100, i;
    double *t = (double *)calloc((size_t)(n > 0 ? n : 1), sizeof *t);
    if (strcmp(mode, "bootstrap") == 0) {
        for (i = 0; i < n; i++) etb_client_close(boot(&t[i]));
        summary(t, n, 1e6, "us");
    } else if (strcmp(mode, "connect") == 0) {
        char line[64];
        EtbClient *c;
        double returned;
        printf("waiting\n");
        fflush(stdout);
        c = boot(NULL);
        returned = wall();
        if (!fgets(line, sizeof line, stdin)) return 1;
        printf("{\"latency_s\": %.6f}\n", returned - atof(line));
        etb_client_close(c);
    } else if (strcmp(mode, "enqueue") == 0) {
        int threads = argc > 3 ? atoi(argv[3]) : 1;
        pthread_t th[64];
        Producer p[64];
        EtbClient *c = boot(NULL);
        double t0;
        if (threads < 1 || threads > 64) return 2;
        adopt_batch(c, "b"); /* nobody reads this queue */
        for (i = 0; i < threads; i++) {
            p[i].client = c;
            p[i].n = n / threads;
        }
        t0 = mono();
        for (i = 0; i < threads; i++) pthread_create(&th[i], NULL, produce, &p[i]);
        for (i = 0; i < threads; i++) pthread_join(th[i], NULL);
        printf("{\"n\": %d, \"per_s\": %.1f, \"seconds\": %.6f}\n", (n / threads) * threads,
               (n / threads) * threads / (mono() - t0), mono() - t0);
        etb_client_close(c);
    } else if (strcmp(mode, "issue") == 0) {
        EtbClient *c = boot(NULL);
        adopt_batch(c, "b"); /* nobody reads this queue */
        for (i = 0; i < n; i++) {
            EtbCompletion *done = NULL;
            double t0 = mono();
            if (etb_client_transfer_async(c, "b", ETB_TRANSFER_SEND, 30.0, &done) != ETB_OK) return 1;
            etb_completion_free(done);
            t[i] = mono() - t0;
        }
        summary(t, n, 1e6, "us");
        etb_client_close(c);
    } else if (strcmp(mode, "roundtrip") == 0) {
        EtbClient *c = boot(NULL);
        double enqueue_only = 0;
        register_batch(c, "rt");
        register_batch(c, "share");
        for (i = 0; i < n; i++) {
            double t0 = mono();
            if (etb_client_transfer(c, "rt", ETB_TRANSFER_SEND, 30.0) != ETB_OK) {
                fprintf(stderr, "transfer: %s\n", etb_last_error_message());
                return 1;
            }
            t[i] = mono() - t0;
        }
        /* Our side's share: the same call's work without the agent's (issue + free, no wait). */
        for (i = 0; i < 200; i++) {
            EtbCompletion *done = NULL;
            double t0 = mono();
            etb_client_transfer_async(c, "share", ETB_TRANSFER_SEND, 30.0, &done);
            etb_completion_free(done);
            enqueue_only += mono() - t0;
        }
        qsort(t, (size_t)n, sizeof *t, cmp);
        printf("{\"n\": %d, \"median\": %.3f, \"p10\": %.3f, \"p90\": %.3f, \"unit\": \"us\", \"our_side_us\": %.3f}\n", n,
               t[n / 2] * 1e6, t[n / 10] * 1e6, t[(n * 9) / 10] * 1e6, enqueue_only / 200 * 1e6);
        etb_client_close(c);
    } else if (strcmp(mode, "payloads") == 0) {
        /* The fake driver's allocator: the same library the library itself loaded. */
        void *fake = dlopen(getenv("ETB_CUDA_DRIVER_PATH"), RTLD_NOW | RTLD_LOCAL);
        unsigned long long (*alloc)(int, unsigned long long, int) = NULL;
        void (*release)(unsigned long long) = NULL;
        unsigned long long (*total_calls)(void) = NULL;
        void *(*context_of)(int) = NULL;
        int (*push)(void *) = NULL, (*pop)(void **) = NULL;
        int (*lookup)(unsigned int, int *, void **, unsigned long long) = NULL;
        const int64_t shape[2] = {1024, 1024};
        EtbPayload **made = calloc((size_t)n, sizeof *made);
        EtbClient *c;
        EtbCudaTensor ct;
        double fresh = 0, cached = 0, fake_ns, lookup_ns = -1, t0;
        unsigned long long calls, fresh_calls, cached_calls, one;
        const int pairs = 1000000;
        void *ctx = NULL;
        if (fake) {
            *(void **)(&alloc) = dlsym(fake, "fake_cuda_alloc");
            *(void **)(&release) = dlsym(fake, "fake_cuda_free");
            *(void **)(&total_calls) = dlsym(fake, "fake_cuda_total_calls");
            *(void **)(&context_of) = dlsym(fake, "fake_cuda_context");
            *(void **)(&push) = dlsym(fake, "cuCtxPushCurrent_v2");
            *(void **)(&pop) = dlsym(fake, "cuCtxPopCurrent_v2");
            *(void **)(&lookup) = dlsym(fake, "cuPointerGetAttributes");
        }
        if (!alloc || !release || !total_calls || !context_of || !push || !pop || !made || n < 1) {
            fprintf(stderr, "payloads: ETB_CUDA_DRIVER_PATH must name the fake driver\n");
            return 1;
        }
        setenv("LOCAL_RANK", "0", 1);
        c = boot(NULL);
        etb_cuda_tensor_init(&ct);
        ct.dtype = ETB_DTYPE_BFLOAT16;
        ct.ndim = 2;
        ct.shape = shape;
        /* Fresh: a new allocation per payload. */
        calls = total_calls();
        for (i = 0; i < n; i++) {
            ct.data = alloc(0, 2u << 20, 0);
            t0 = mono();
            if (etb_client_cuda_tensor_payload(c, &ct, &made[i]) != ETB_OK) {
                fprintf(stderr, "payload: %s\n", etb_last_error_message());
                return 1;
            }
            fresh += mono() - t0;
            /* The fake's table is small: its entry goes, the payload (holding nothing of it) stays. */
            release(ct.data);
        }
        fresh_calls = total_calls() - calls;
        for (i = 0; i < n; i++) etb_payload_free(made[i]);
        /* Cached: one allocation, its handle made by a first payload (not timed). */
        ct.data = alloc(0, 2u << 20, 0);
        if (etb_client_cuda_tensor_payload(c, &ct, &made[0]) != ETB_OK) return 1;
        etb_payload_free(made[0]);
        calls = total_calls();
        for (i = 0; i < n; i++) {
            t0 = mono();
            if (etb_client_cuda_tensor_payload(c, &ct, &made[i]) != ETB_OK) {
                fprintf(stderr, "payload: %s\n", etb_last_error_message());
                return 1;
            }
            cached += mono() - t0;
        }
        cached_calls = total_calls() - calls;
        for (i = 0; i < n; i++) etb_payload_free(made[i]);
        /* The fake's own cost of the lookup a payload makes: the 8 attributes of cuda/ipc.rs. */
        if (lookup) {
            int attributes[8] = {2, 8, 9, 7, 17, 10, 11, 12};
            unsigned long long values[8];
            void *data[8];
            int k;
            for (k = 0; k < 8; k++) data[k] = &values[k];
            t0 = mono();
            for (i = 0; i < pairs / 10; i++)
                if (lookup(8, attributes, data, ct.data) != 0) return 1;
            lookup_ns = (mono() - t0) / (pairs / 10) * 1e9;
        }
        release(ct.data);
        free(made);
        etb_client_close(c);
        /* The fake driver's own cost of one call: push/pop pairs of a context, as a payload makes. */
        ctx = context_of(0);
        calls = total_calls();
        t0 = mono();
        for (i = 0; i < pairs; i++) {
            void *popped = NULL;
            if (push(ctx) != 0 || pop(&popped) != 0) return 1;
        }
        fake_ns = (mono() - t0) / (2.0 * pairs) * 1e9;
        one = total_calls() - calls;
        if (one != 2ull * (unsigned long long)pairs) {
            fprintf(stderr, "payloads: %llu fake calls counted for %d pairs\n", one, pairs);
            return 1;
        }
        printf("{\"n\": %d, \"seconds\": %.6f, \"per_s\": %.1f, \"us_each\": %.3f, "
               "\"fresh\": {\"seconds\": %.6f, \"per_s\": %.1f, \"us_each\": %.3f, \"driver_calls_each\": %.2f}, "
               "\"cached\": {\"seconds\": %.6f, \"per_s\": %.1f, \"us_each\": %.3f, \"driver_calls_each\": %.2f}, "
               "\"fake_driver_ns_per_call\": %.1f, \"fake_driver_lookup_ns\": %.1f, \"fake_driver_quiet\": %s}\n",
               n, fresh, n / fresh, fresh / n * 1e6, fresh, n / fresh, fresh / n * 1e6, (double)fresh_calls / n, cached,
               n / cached, cached / n * 1e6, (double)cached_calls / n, fake_ns, lookup_ns,
               getenv("FAKE_CUDA_QUIET") && *getenv("FAKE_CUDA_QUIET") && strcmp(getenv("FAKE_CUDA_QUIET"), "0") != 0
                   ? "true"
                   : "false");
        return 0;
    } else if (strcmp(mode, "death") == 0) {
        EtbClient *c = boot(NULL);
        EtbStatus s;
        register_batch(c, "dies");
        printf("waiting\n");
        fflush(stdout);
        s = etb_client_transfer(c, "dies", ETB_TRANSFER_SEND, 30.0);
        printf("{\"returned\": %.6f, \"status\": \"%s\"}\n", wall(), etb_status_name(s));
        etb_client_close(c);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    free(t);
    return 0;
}
