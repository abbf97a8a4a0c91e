// A worker in C++ through the header-only wrapper: bootstraps against its agent and prints its
// BootstrapInfo. With an argument ROOT, the agent's files are ROOT/etb_demo_rank{N}_*.lmdb.
#include "etha_tensor_bus.hpp"

#include <iostream>

int main(int argc, char **argv) {
    try {
        etb::PathNamingFn naming = nullptr;
        if (argc > 1) {
            std::string root = argv[1];
            naming = [root](int64_t rank) {
                std::string base = root + "/etb_demo_rank" + std::to_string(rank);
                return std::make_pair(base + "_command.lmdb", base + "_state.lmdb");
            };
        }
        auto [client, info] = etb::bootstrap_client(naming, 30.0);
        std::cout << "etha-tensor-bus " << etb::version() << " (C++): worker bootstrapped\n"
                  << "  agent_rank         = " << info.agent_rank() << "\n"
                  << "  global_rank        = " << info.global_rank() << "\n"
                  << "  rank_offset        = " << (info.rank_offset() ? std::to_string(*info.rank_offset()) : "None") << "\n"
                  << "  device             = " << info.device() << "\n"
                  << "  command_queue_path = " << info.command_queue_path() << "\n"
                  << "  state_path         = " << info.state_path() << "\n"
                  << "  method             = " << info.method() << "\n"
                  << "  agent_pid          = " << (info.agent_pid() ? std::to_string(*info.agent_pid()) : "unknown") << "\n"
                  << "  heartbeat age      = " << client.heartbeat_age() * 1e3 << " ms\n";
        return 0;
    } catch (const etb::Error &e) {
        std::cerr << "bootstrap failed: " << e.what() << "\n";  // what() starts with the status name
        return 1;
    }
}
