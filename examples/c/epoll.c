/* Completions in an epoll loop: four batches sent at once, each transfer's completion handed to
 * the client's watcher, the loop woken by the client's event fd as each one is proven done.
 * README, "Event loops".
 *   cc examples/c/epoll.c -Iinclude -Ltarget/release -letha_tensor_bus -lcuda \
 *      -Wl,-rpath,$PWD/target/release -o epoll && AGENT_RANK=0 RANK=0 ./epoll */
#include "etha_tensor_bus.h"

#include <stdio.h>
#include <sys/epoll.h>
#include <unistd.h>

/* From cuda.h, the CUDA driver API (libcuda). */
typedef unsigned long long CUdeviceptr;
int cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize);

#define TRY(call)                                                  \
    do {                                                           \
        if ((call) != ETB_OK) {                                    \
            fprintf(stderr, "%s\n", etb_last_error_message());     \
            return 1;                                              \
        }                                                          \
    } while (0)

#define BATCHES 4

int main(void) {
    EtbClient *client = NULL;
    EtbBootstrapInfo *info = NULL;
    EtbPayload *payloads[BATCHES] = {NULL};
    EtbCompletion *sent[BATCHES] = {NULL};
    const int64_t shape[1] = {4096};
    char batch[BATCHES][16];
    struct epoll_event ev = {0};
    int fd = -1, ep, done = 0, i;

    TRY(etb_bootstrap_client(NULL, NULL, 30.0, &client, &info));
    TRY(etb_client_init_pair(client, "weights", "train", "infer", 2, NULL, 0, NULL, 0, 300.0));
    for (i = 0; i < BATCHES; i++) {
        EtbCudaTensor tensor;
        EtbTensorPayload entry;
        CUdeviceptr buffer = 0;
        if (cuMemAlloc_v2(&buffer, sizeof(float) * 4096) != 0) return 1;
        etb_cuda_tensor_init(&tensor);
        tensor.dtype = ETB_DTYPE_FLOAT32;
        tensor.data = buffer;
        tensor.ndim = 1;
        tensor.shape = shape;
        TRY(etb_client_cuda_tensor_payload(client, &tensor, &payloads[i]));
        entry.pair_name = "weights";
        entry.data = etb_payload_data(payloads[i]);
        entry.len = etb_payload_len(payloads[i]);
        snprintf(batch[i], sizeof batch[i], "layer_%d", i);
        TRY(etb_client_register_tensors(client, batch[i], &entry, 1, 0, 30.0));
    }
    /* The client's event fd: readable while a watched completion's outcome waits to be taken. */
    TRY(etb_client_event_fd(client, &fd));
    ep = epoll_create1(EPOLL_CLOEXEC);
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) return 1;
    for (i = 0; i < BATCHES; i++) {
        TRY(etb_client_transfer_async(client, batch[i], ETB_TRANSFER_SEND, 30.0, &sent[i]));
        TRY(etb_completion_watch(sent[i], (uint64_t)i)); /* the token: which batch */
    }
    while (done < BATCHES) {
        uint64_t tokens[BATCHES];
        size_t n = 0, k;
        if (epoll_wait(ep, &ev, 1, 60000) != 1) {
            fprintf(stderr, "no completion within 60 s\n");
            return 1;
        }
        TRY(etb_client_take_resolved(client, tokens, BATCHES, &n));
        for (k = 0; k < n; k++) {
            bool ok = false;
            /* Resolved means final: the poll answers at once, success or the error. */
            TRY(etb_completion_poll(sent[tokens[k]], &ok));
            printf("%s sent\n", batch[tokens[k]]);
            done++;
        }
    }
    printf("all %d transfers done\n", BATCHES);
    close(ep);
    for (i = 0; i < BATCHES; i++) {
        etb_completion_free(sent[i]);
        TRY(etb_client_cleanup_batch(client, batch[i], 30.0));
        etb_payload_free(payloads[i]);
    }
    etb_info_free(info);
    etb_client_close(client);
    return 0;
}
