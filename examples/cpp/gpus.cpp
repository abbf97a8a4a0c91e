// One process, several GPUs, as JAX (or any single-controller runtime) drives every local GPU:
// one client per local agent, each bound to its own device, each used from its own thread.
// README, "Several GPUs in one process". The arguments are the agents' ranks, one per local GPU
// in device order; their files are the default ones, /tmp/agent_rank{N}_{command,state}.lmdb.
//   c++ -std=c++17 examples/cpp/gpus.cpp -Iinclude -Ltarget/release -letha_tensor_bus -lcuda -pthread
//       -Wl,-rpath,$PWD/target/release -o gpus && ./gpus 0 1
#include "etha_tensor_bus.hpp"

#include <iostream>
#include <thread>

// From cuda.h, the CUDA driver API (libcuda).
using CUdeviceptr = unsigned long long;
extern "C" int cuMemAlloc_v2(CUdeviceptr *dptr, std::size_t bytesize);

int main(int argc, char **argv) {
    try {
        std::vector<etb::Client> clients;
        for (int device = 0; device < argc - 1; device++) {
            const std::string files = std::string("/tmp/agent_rank") + argv[device + 1];
            etb::BootstrapOptions options;
            options.device_index = device;  // this client's GPU: its context, its payloads' device
            auto [client, info] = etb::connect_client(std::stoll(argv[device + 1]), files + "_command.lmdb",
                                                      files + "_state.lmdb", options);
            std::cout << "agent rank " << info.agent_rank() << " on " << info.device() << "\n";
            clients.push_back(std::move(client));
        }
        std::vector<std::string> outcome(clients.size());
        std::vector<std::thread> threads;
        for (std::size_t device = 0; device < clients.size(); device++) {
            threads.emplace_back([&clients, &outcome, device] {
                try {
                    const etb::Client &client = clients[device];
                    client.bind_current_thread();  // cuMemAlloc allocates on the current context's device
                    CUdeviceptr buffer = 0;
                    if (cuMemAlloc_v2(&buffer, 1024 * 1024 * 2) != 0) throw std::runtime_error("cuMemAlloc failed");
                    client.init_pair("weights", "train", "infer", 2, etb::Bytes(), etb::Bytes(), 300.0);
                    etb::Batch batch = client.register_tensors(
                        "step_0", {{etb::CudaTensorView(buffer, etb::Dtype::BFloat16, {1024, 1024}), "weights"}});
                    client.transfer("step_0", etb::TransferKind::Send, 300.0);
                    client.cleanup_batch("step_0");
                    outcome[device] = "sent step_0";  // the buffer stays allocated: the agent may map it
                } catch (const std::exception &e) {
                    outcome[device] = e.what();
                }
            });
        }
        for (std::thread &t : threads) t.join();
        for (std::size_t device = 0; device < clients.size(); device++)
            std::cout << "cuda:" << device << ": " << outcome[device] << "\n";
        return 0;
    } catch (const std::exception &e) {
        std::cerr << e.what() << "\n";  // an etb::Error's what() starts with the status name
        return 1;
    }
}
