/*
 * The demo worker: bootstraps against its agent through the C ABI and prints its BootstrapInfo.
 *
 *   demo ROOT      the agent's files are ROOT/etb_demo_rank{N}_command.lmdb and
 *                  ROOT/etb_demo_rank{N}_state.lmdb (a naming callback, as deployments use)
 *   demo           the default names /tmp/agent_rank{N}_{command,state}.lmdb
 *
 * The agent rank comes from AGENT_RANK, or RANK + AGENT_RANK_OFFSET, as torchrun workers have.
 */
#include "etha_tensor_bus.h"

#include <stdio.h>

static int32_t name_under_root(int64_t agent_rank, char *command_queue_path, size_t command_queue_path_capacity,
                               char *state_path, size_t state_path_capacity, void *user_data) {
    const char *root = (const char *)user_data;
    int a = snprintf(command_queue_path, command_queue_path_capacity, "%s/etb_demo_rank%lld_command.lmdb", root,
                     (long long)agent_rank);
    int b = snprintf(state_path, state_path_capacity, "%s/etb_demo_rank%lld_state.lmdb", root, (long long)agent_rank);
    return (a < 0 || (size_t)a >= command_queue_path_capacity || b < 0 || (size_t)b >= state_path_capacity) ? 1 : 0;
}

int main(int argc, char **argv) {
    EtbClient *client = NULL;
    EtbBootstrapInfo *info = NULL;
    double age = 0.0;
    EtbStatus status = etb_bootstrap_client(argc > 1 ? name_under_root : NULL, argc > 1 ? (void *)argv[1] : NULL,
                                            30.0, &client, &info);
    if (status != ETB_OK) {
        fprintf(stderr, "bootstrap failed: %s\n", etb_last_error_message());
        return 1;
    }
    printf("etha-tensor-bus %s: worker bootstrapped\n", etb_version());
    printf("BootstrapInfo:\n");
    printf("  agent_rank         = %lld\n", (long long)etb_info_agent_rank(info));
    printf("  global_rank        = %lld\n", (long long)etb_info_global_rank(info));
    if (etb_info_has_rank_offset(info))
        printf("  rank_offset        = %lld\n", (long long)etb_info_rank_offset(info));
    else
        printf("  rank_offset        = None\n");
    printf("  device             = %s\n", etb_info_device(info));
    printf("  command_queue_path = %s\n", etb_info_command_queue_path(info));
    printf("  state_path         = %s\n", etb_info_state_path(info));
    printf("  method             = %s\n", etb_info_method(info));
    printf("  agent_pid          = %d\n", etb_info_agent_pid(info));
    if (etb_client_heartbeat_age(client, &age) == ETB_OK) printf("  heartbeat age      = %.2f ms\n", age * 1e3);
    etb_client_close(client);
    etb_info_free(info);
    return 0;
}
