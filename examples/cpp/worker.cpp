// A worker in C++: bootstraps against its agent, shares a GPU buffer with it as one bfloat16
// (1024, 1024) tensor of the pair "weights", sends it, and cleans up. README, "Try it".
//   c++ -std=c++17 examples/cpp/worker.cpp -Iinclude -Ltarget/release -letha_tensor_bus -lcuda
//       -Wl,-rpath,$PWD/target/release -o worker && AGENT_RANK=0 RANK=0 ./worker
#include "etha_tensor_bus.hpp"

#include <iostream>

// From cuda.h, the CUDA driver API (libcuda).
using CUdeviceptr = unsigned long long;
extern "C" int cuMemAlloc_v2(CUdeviceptr *dptr, std::size_t bytesize);

int main() {
    try {
        // Finds the agent (AGENT_RANK, or RANK + AGENT_RANK_OFFSET) and binds cuda:{LOCAL_RANK}.
        auto [client, info] = etb::bootstrap_client();
        std::cout << "bootstrapped: agent rank " << info.agent_rank() << " on " << info.device() << "\n";
        CUdeviceptr buffer = 0;
        if (cuMemAlloc_v2(&buffer, 1024 * 1024 * 2) != 0) throw std::runtime_error("cuMemAlloc failed");
        // The agent must know the pair and the batch before it transfers it.
        client.init_pair("weights", "train", "infer", 2, etb::Bytes(), etb::Bytes(), 300.0);
        etb::Batch batch = client.register_tensors(
            "step_0", {{etb::CudaTensorView(buffer, etb::Dtype::BFloat16, {1024, 1024}), "weights"}});
        client.transfer("step_0", etb::TransferKind::Send, 300.0);  // blocks until the agent sent it
        std::cout << "sent step_0 (transfer signal " << (client.query_transfer_signal("step_0") ? "set" : "clear")
                  << ")\n";
        client.cleanup_batch("step_0");
        // The buffer must stay allocated while the agent maps it.
        std::cout << "the agent " << (batch.in_use() ? "still maps" : "released") << " the buffer\n";
        return 0;
    } catch (const std::exception &e) {
        std::cerr << e.what() << "\n";  // an etb::Error's what() starts with the status name
        return 1;
    }
}
