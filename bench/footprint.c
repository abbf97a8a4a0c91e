/*
 * Resident memory added by loading the library (dlopen, not linked: the baseline excludes it)
 * and by one bootstrap. Prints JSON. Usage: footprint LIB.so  (agent named as for bench/ours.c)
 */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef int32_t (*Naming)(int64_t, char *, size_t, char *, size_t, void *);
typedef int32_t (*Boot)(Naming, void *, double, void **, void **);

static long rss_kib(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
    if (f) fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static int32_t naming(int64_t rank, char *cq, size_t cq_cap, char *st, size_t st_cap, void *ud) {
    snprintf(cq, cq_cap, "%s/bench_rank%lld_command.lmdb", (const char *)ud, (long long)rank);
    snprintf(st, st_cap, "%s/bench_rank%lld_state.lmdb", (const char *)ud, (long long)rank);
    return 0;
}

int main(int argc, char **argv) {
    long before = rss_kib(), loaded, booted;
    void *lib, *client = NULL, *info = NULL;
    Boot boot;
    if (argc < 2 || !(lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL))) return 1;
    loaded = rss_kib();
    *(void **)(&boot) = dlsym(lib, "etb_bootstrap_client");
    if (!boot || boot(naming, getenv("ETB_BENCH_ROOT"), 30.0, &client, &info) != 0) return 1;
    booted = rss_kib();
    printf("{\"rss_before_kib\": %ld, \"load_kib\": %ld, \"bootstrap_kib\": %ld, \"total_kib\": %ld}\n", before,
           loaded - before, booted - loaded, booted - before);
    return 0;
}
