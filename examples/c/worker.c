/* A worker in C: bootstraps against its agent, shares a GPU buffer with it as one bfloat16
 * (1024, 1024) tensor of the pair "weights", sends it, and cleans up. README, "Try it".
 *   cc examples/c/worker.c -Iinclude -Ltarget/release -letha_tensor_bus -lcuda \
 *      -Wl,-rpath,$PWD/target/release -o worker && AGENT_RANK=0 RANK=0 ./worker */
#include "etha_tensor_bus.h"

#include <stdio.h>

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

int main(void) {
    EtbClient *client = NULL;
    EtbBootstrapInfo *info = NULL;
    EtbPayload *payload = NULL;
    EtbCudaTensor tensor;
    EtbTensorPayload entry;
    const int64_t shape[2] = {1024, 1024};
    CUdeviceptr buffer = 0;
    bool signal = false, in_use = false;

    /* Finds the agent (AGENT_RANK, or RANK + AGENT_RANK_OFFSET) and binds cuda:{LOCAL_RANK}. */
    TRY(etb_bootstrap_client(NULL, NULL, 30.0, &client, &info));
    printf("bootstrapped: agent rank %lld, pid %d, %s\n", (long long)etb_info_agent_rank(info),
           etb_info_agent_pid(info), etb_info_device(info));
    if (cuMemAlloc_v2(&buffer, 1024 * 1024 * 2) != 0) {
        fprintf(stderr, "cuMemAlloc failed\n");
        return 1;
    }
    /* The agent must know the pair and the batch before it transfers it. */
    TRY(etb_client_init_pair(client, "weights", "train", "infer", 2, NULL, 0, NULL, 0, 300.0));
    etb_cuda_tensor_init(&tensor);
    tensor.dtype = ETB_DTYPE_BFLOAT16;
    tensor.data = buffer;
    tensor.ndim = 2;
    tensor.shape = shape;
    TRY(etb_client_cuda_tensor_payload(client, &tensor, &payload));
    entry.pair_name = "weights";
    entry.data = etb_payload_data(payload);
    entry.len = etb_payload_len(payload);
    TRY(etb_client_register_tensors(client, "step_0", &entry, 1, 0, 30.0));
    TRY(etb_client_transfer(client, "step_0", ETB_TRANSFER_SEND, 300.0));
    TRY(etb_client_query_transfer_signal(client, "step_0", 30.0, &signal));
    printf("sent step_0 (transfer signal %s)\n", signal ? "set" : "clear");
    TRY(etb_client_cleanup_batch(client, "step_0", 30.0));
    /* The buffer must stay allocated while the agent maps it. */
    TRY(etb_payload_in_use(payload, &in_use));
    printf("the agent %s the buffer\n", in_use ? "still maps" : "released");
    etb_payload_free(payload);
    etb_info_free(info);
    etb_client_close(client);
    return 0;
}
