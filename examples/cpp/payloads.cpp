/*
 * A worker in C++ that shares a GPU buffer with its agent, end to end: bootstraps (binding
 * cuda:{LOCAL_RANK}), initializes a pair with a mesh shape and placements, allocates a buffer
 * with the CUDA driver API, registers it as a bfloat16 (1024, 1024) tensor, sends it, and tells
 * whether the agent still holds the memory. Needs no CUDA toolkit: the driver (libcuda.so.1, or
 * $ETB_CUDA_DRIVER_PATH as the library loads it) is opened with dlopen. Against the tests' fake
 * driver, which has no cuMemAlloc_v2, the buffer comes from its fake_cuda_alloc instead.
 *
 *   c++ -std=c++17 -Wall -Wextra -Werror -Wpedantic -Iinclude examples/cpp/payloads.cpp \
 *       -Ltarget/debug -letha_tensor_bus -ldl -o payloads
 *   target/debug/etb-dev-agent --rank 5 &
 *   AGENT_RANK=5 RANK=0 LOCAL_RANK=1 ETB_CUDA_DRIVER_PATH=/tmp/fake_cuda.so \
 *       LD_LIBRARY_PATH=target/debug ./payloads
 */
#include "etha_tensor_bus.hpp"

#include <dlfcn.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <thread>

namespace {

using CUresult = int;
using CUdeviceptr = unsigned long long;

template <typename Fn>
Fn symbol(void *library, const char *name) {
    void *p = dlsym(library, name);
    Fn fn = nullptr;
    static_assert(sizeof fn == sizeof p, "function and object pointers have one size");
    std::memcpy(&fn, &p, sizeof fn);
    return fn;
}

// Device memory from the driver the library bound: cuMemAlloc_v2 / cuMemFree_v2 in the primary
// context that bootstrap made current on this thread, or the fake driver's stand-ins.
class DeviceBuffer {
public:
    DeviceBuffer(int device, std::size_t size) {
        const char *path = std::getenv("ETB_CUDA_DRIVER_PATH");
        library_ = dlopen(path && *path ? path : "libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!library_) throw std::runtime_error(std::string("cannot load the CUDA driver: ") + dlerror());
        auto mem_alloc = symbol<CUresult (*)(CUdeviceptr *, std::size_t)>(library_, "cuMemAlloc_v2");
        if (mem_alloc) {
            mem_free_ = symbol<CUresult (*)(CUdeviceptr)>(library_, "cuMemFree_v2");
            CUresult result = mem_alloc(&address_, size);
            if (result != 0) throw std::runtime_error("cuMemAlloc_v2 failed: CUresult " + std::to_string(result));
            std::cout << "allocated " << size << " bytes with cuMemAlloc_v2\n";
            return;
        }
        auto fake_alloc = symbol<CUdeviceptr (*)(int, unsigned long long, int)>(library_, "fake_cuda_alloc");
        if (!fake_alloc) throw std::runtime_error("the CUDA driver has no cuMemAlloc_v2");
        fake_free_ = symbol<void (*)(unsigned long long)>(library_, "fake_cuda_free");
        address_ = fake_alloc(device, size, 0 /* device memory */);
        if (address_ == 0) throw std::runtime_error("fake_cuda_alloc failed");
        std::cout << "the driver lacks cuMemAlloc_v2 (the tests' fake driver): declared " << size
                  << " bytes of fake device memory with fake_cuda_alloc instead\n";
    }
    DeviceBuffer(const DeviceBuffer &) = delete;
    DeviceBuffer &operator=(const DeviceBuffer &) = delete;
    // Freeing is explicit (free()): memory the agent may still map must never be freed.
    ~DeviceBuffer() {
        if (library_) dlclose(library_);
    }

    uint64_t address() const { return address_; }
    void free() {
        if (mem_free_) mem_free_(address_);
        if (fake_free_) fake_free_(address_);
        address_ = 0;
    }

private:
    void *library_ = nullptr;
    CUdeviceptr address_ = 0;
    CUresult (*mem_free_)(CUdeviceptr) = nullptr;
    void (*fake_free_)(unsigned long long) = nullptr;
};

}  // namespace

int main() {
    try {
        etb::BootstrapOptions options;
        options.cuda_mode = etb::CudaMode::Require;  // a GPU is the point here: fail clearly without one
        options.connection_timeout_s = 30.0;
        auto [client, info] = etb::bootstrap_client(options);
        std::cout << "etha-tensor-bus " << etb::version() << " (C++): worker bootstrapped against agent rank "
                  << info.agent_rank() << ", bound to " << info.device() << " ("
                  << info.device_name().value_or("?") << ")\n";

        // The pair: this worker's side of a (2,) mesh, its tensors sharded along dim 0.
        const std::string pair = "pair0";
        client.init_pair(pair, "trainer", "inference", 2, {2}, {etb::Placement::shard(0)});
        std::cout << "init_pair " << pair << ": mesh shape (2,), placements (Shard(dim=0),): matched\n";

        const std::vector<int64_t> shape = {1024, 1024};
        const etb::Dtype dtype = etb::Dtype::BFloat16;
        DeviceBuffer buffer(info.device_index(), 1024 * 1024 * etb::dtype_size(dtype));
        char address[32];
        std::snprintf(address, sizeof address, "0x%llx", static_cast<unsigned long long>(buffer.address()));

        // The payload is made, sent and kept by the Batch: its in_use() tells when the agent let go.
        const std::string batch_id = "step_0";
        etb::Batch batch =
            client.register_tensors(batch_id, {{etb::CudaTensorView(buffer.address(), dtype, shape), pair}});
        std::cout << "registered " << batch_id << ": " << etb::dtype_name(dtype) << " (1024, 1024) at " << address
                  << ", payload of " << batch.payloads()[0].size() << " bytes\n";

        client.transfer(batch_id, etb::TransferKind::Send);
        std::cout << "transfer " << batch_id << " send: acknowledged, signal "
                  << (client.query_transfer_signal(batch_id) ? "set" : "unset") << "\n";
        std::cout << "payload in use: " << (batch.in_use() ? "yes" : "no") << "\n";

        // Done with the batch: the agent drops its tensor; free the memory only once nobody holds it.
        client.cleanup_batch(batch_id);
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
        while (batch.in_use() && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        if (batch.in_use()) {
            std::cout << "after cleanup_batch the payload is still in use (a consumer holds the memory): "
                         "leaving the buffer allocated\n";
        } else {
            buffer.free();
            std::cout << "after cleanup_batch nobody holds the memory: buffer freed\n";
        }
        return 0;
    } catch (const etb::Error &e) {
        std::cerr << "failed: " << e.what() << "\n";  // what() starts with the status name
        return 1;
    } catch (const std::exception &e) {
        std::cerr << "failed: " << e.what() << "\n";
        return 1;
    }
}
