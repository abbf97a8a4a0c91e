/*
 * etha-tensor-bus: a header-only C++17 wrapper over the C API (etha_tensor_bus.h).
 *
 * Ownership and errors only, no behaviour of its own: etb::Client, etb::BootstrapInfo and
 * etb::Completion own their C handles (move-only, released in their destructors), and every
 * failing call throws etb::Error (a std::runtime_error) carrying the EtbStatus and the library's
 * message. Thread-safety is the C API's: a Client may be used from several threads at once; a
 * Completion from one thread at a time.
 *
 *   auto [client, info] = etb::bootstrap_client();
 *   std::cout << info.agent_rank() << " on " << info.device() << "\n";
 *   client.transfer("step_0", etb::TransferKind::Send);
 */
#ifndef ETHA_TENSOR_BUS_HPP
#define ETHA_TENSOR_BUS_HPP

#include "etha_tensor_bus.h"

#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace etb {

/// A failed call: the status (`status()`) and the library's message (`what()`).
class Error : public std::runtime_error {
public:
    Error(EtbStatus status, const std::string &message) : std::runtime_error(message), status_(status) {}
    EtbStatus status() const noexcept { return status_; }

private:
    EtbStatus status_;
};

namespace detail {
inline void check(EtbStatus status) {
    if (status != ETB_OK) throw Error(status, etb_last_error_message());
}
inline std::string text(const char *s) { return s ? std::string(s) : std::string(); }
inline const uint8_t *bytes(const std::optional<std::vector<uint8_t>> &v) {
    // An empty payload is not an absent one: give it a non-NULL pointer.
    static const uint8_t empty = 0;
    return v ? (v->empty() ? &empty : v->data()) : nullptr;
}
}  // namespace detail

/// What bootstrap found out (the reference's BootstrapInfo). Immutable; move-only.
class BootstrapInfo {
public:
    /// Adopts `info` (released with etb_info_free).
    explicit BootstrapInfo(EtbBootstrapInfo *info) noexcept : info_(info) {}
    BootstrapInfo(BootstrapInfo &&other) noexcept : info_(std::exchange(other.info_, nullptr)) {}
    BootstrapInfo &operator=(BootstrapInfo &&other) noexcept {
        if (this != &other) {
            etb_info_free(info_);
            info_ = std::exchange(other.info_, nullptr);
        }
        return *this;
    }
    BootstrapInfo(const BootstrapInfo &) = delete;
    BootstrapInfo &operator=(const BootstrapInfo &) = delete;
    ~BootstrapInfo() { etb_info_free(info_); }

    int64_t agent_rank() const noexcept { return etb_info_agent_rank(info_); }
    int64_t global_rank() const noexcept { return etb_info_global_rank(info_); }
    /// The AGENT_RANK_OFFSET used; empty for method "direct".
    std::optional<int64_t> rank_offset() const noexcept {
        return etb_info_has_rank_offset(info_) ? std::optional<int64_t>(etb_info_rank_offset(info_)) : std::nullopt;
    }
    std::string device() const { return detail::text(etb_info_device(info_)); }
    int32_t device_index() const noexcept { return etb_info_device_index(info_); }
    std::string command_queue_path() const { return detail::text(etb_info_command_queue_path(info_)); }
    std::string state_path() const { return detail::text(etb_info_state_path(info_)); }
    std::string method() const { return detail::text(etb_info_method(info_)); }
    /// The agent's pid; empty when it could not be identified.
    std::optional<int32_t> agent_pid() const noexcept {
        int32_t pid = etb_info_agent_pid(info_);
        return pid > 0 ? std::optional<int32_t>(pid) : std::nullopt;
    }
    /// Whether bootstrap bound the worker to its GPU.
    bool cuda_bound() const noexcept { return etb_info_cuda_bound(info_); }
    std::optional<std::string> device_name() const { return optional_text(etb_info_device_name(info_)); }
    std::optional<std::string> device_pci_bus_id() const { return optional_text(etb_info_device_pci_bus_id(info_)); }
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    std::optional<std::string> device_uuid() const { return optional_text(etb_info_device_uuid(info_)); }
    /// E.g. 12080; 0 when no driver answered.
    int32_t cuda_driver_version() const noexcept { return etb_info_cuda_driver_version(info_); }
    const EtbBootstrapInfo *get() const noexcept { return info_; }

private:
    static std::optional<std::string> optional_text(const char *s) {
        return s ? std::optional<std::string>(s) : std::nullopt;
    }
    EtbBootstrapInfo *info_;
};

enum class TransferKind : int32_t { Send = ETB_TRANSFER_SEND, Recv = ETB_TRANSFER_RECV };

/// One tensor of register_tensors: its pair and its payload, borrowed for the call.
struct TensorPayload {
    std::string pair_name;
    const uint8_t *data;
    std::size_t size;
};

/// A transfer issued without waiting. Move-only; its destructor removes its semaphore.
class Completion {
public:
    explicit Completion(EtbCompletion *completion) noexcept : completion_(completion) {}
    Completion(Completion &&other) noexcept : completion_(std::exchange(other.completion_, nullptr)) {}
    Completion &operator=(Completion &&other) noexcept {
        if (this != &other) {
            etb_completion_free(completion_);
            completion_ = std::exchange(other.completion_, nullptr);
        }
        return *this;
    }
    Completion(const Completion &) = delete;
    Completion &operator=(const Completion &) = delete;
    ~Completion() { etb_completion_free(completion_); }

    void wait(double timeout_s = 30.0) { detail::check(etb_completion_wait(completion_, timeout_s)); }
    bool poll() {
        bool done = false;
        detail::check(etb_completion_poll(completion_, &done));
        return done;
    }
    EtbCompletion *get() const noexcept { return completion_; }

private:
    EtbCompletion *completion_;
};

/// A worker's connection to its agent. Move-only; the destructor closes it.
class Client {
public:
    /// Adopts `client` (released with etb_client_close).
    explicit Client(EtbClient *client) noexcept : client_(client) {}
    Client(Client &&other) noexcept : client_(std::exchange(other.client_, nullptr)) {}
    Client &operator=(Client &&other) noexcept {
        if (this != &other) {
            etb_client_close(client_);
            client_ = std::exchange(other.client_, nullptr);
        }
        return *this;
    }
    Client(const Client &) = delete;
    Client &operator=(const Client &) = delete;
    ~Client() { etb_client_close(client_); }

    void init_pair(const std::string &pair_name, const std::string &local_name, const std::string &remote_name,
                   int64_t expected_world_size,
                   const std::optional<std::vector<uint8_t>> &mesh_shape_payload = std::nullopt,
                   const std::optional<std::vector<uint8_t>> &placements_payload = std::nullopt,
                   double timeout_s = 30.0) {
        detail::check(etb_client_init_pair(client_, pair_name.c_str(), local_name.c_str(), remote_name.c_str(),
                                           expected_world_size, detail::bytes(mesh_shape_payload),
                                           mesh_shape_payload ? mesh_shape_payload->size() : 0,
                                           detail::bytes(placements_payload),
                                           placements_payload ? placements_payload->size() : 0, timeout_s));
    }
    void register_tensors(const std::string &batch_id, const std::vector<TensorPayload> &tensors,
                          std::optional<int64_t> bucket_size = std::nullopt, double timeout_s = 30.0) {
        std::vector<EtbTensorPayload> c_tensors;
        c_tensors.reserve(tensors.size());
        for (const TensorPayload &t : tensors) c_tensors.push_back(EtbTensorPayload{t.pair_name.c_str(), t.data, t.size});
        detail::check(etb_client_register_tensors(client_, batch_id.c_str(), c_tensors.data(), c_tensors.size(),
                                                  bucket_size.value_or(0), timeout_s));
    }
    void transfer(const std::string &batch_id, TransferKind kind, double timeout_s = 30.0) {
        detail::check(etb_client_transfer(client_, batch_id.c_str(), static_cast<EtbTransferKind>(kind), timeout_s));
    }
    Completion transfer_async(const std::string &batch_id, TransferKind kind, double timeout_s = 30.0) {
        EtbCompletion *completion = nullptr;
        detail::check(etb_client_transfer_async(client_, batch_id.c_str(), static_cast<EtbTransferKind>(kind),
                                                timeout_s, &completion));
        return Completion(completion);
    }
    void transfer_detached(const std::string &batch_id, TransferKind kind, double timeout_s = 30.0) {
        detail::check(
            etb_client_transfer_detached(client_, batch_id.c_str(), static_cast<EtbTransferKind>(kind), timeout_s));
    }
    bool query_transfer_signal(const std::string &batch_id, double timeout_s = 30.0) {
        bool signal = false;
        detail::check(etb_client_query_transfer_signal(client_, batch_id.c_str(), timeout_s, &signal));
        return signal;
    }
    void cleanup_batch(const std::string &batch_id, double timeout_s = 30.0) {
        detail::check(etb_client_cleanup_batch(client_, batch_id.c_str(), timeout_s));
    }
    /// The CUcontext the client holds (the device's primary context); nullptr when unbound.
    void *cuda_context() const noexcept { return etb_client_cuda_context(client_); }
    /// Makes the client's context current on the calling thread.
    void bind_current_thread() const { detail::check(etb_client_bind_current_thread(client_)); }
    /// After the agent died and a new one started: use the new agent, keeping this handle.
    void reconnect(double timeout_s = 30.0) { detail::check(etb_client_reconnect(client_, timeout_s)); }
    double heartbeat_age() const {
        double age = 0.0;
        detail::check(etb_client_heartbeat_age(client_, &age));
        return age;
    }
    EtbClient *get() const noexcept { return client_; }

private:
    EtbClient *client_;
};

/// Maps an agent rank to (command_queue_path, state_path).
using PathNamingFn = std::function<std::pair<std::string, std::string>(int64_t agent_rank)>;

namespace detail {
struct NamingContext {
    const PathNamingFn *fn;
    std::exception_ptr error;
};

inline bool copy_path(const std::string &path, char *buffer, std::size_t capacity) {
    if (path.find('\0') != std::string::npos || path.size() + 1 > capacity) return false;
    std::memcpy(buffer, path.c_str(), path.size() + 1);
    return true;
}

// Never lets an exception unwind into the library: it is kept and rethrown by bootstrap_client.
inline int32_t naming_trampoline(int64_t agent_rank, char *command_queue_path, std::size_t command_queue_capacity,
                                 char *state_path, std::size_t state_capacity, void *user_data) {
    NamingContext *ctx = static_cast<NamingContext *>(user_data);
    try {
        std::pair<std::string, std::string> paths = (*ctx->fn)(agent_rank);
        if (!copy_path(paths.first, command_queue_path, command_queue_capacity) ||
            !copy_path(paths.second, state_path, state_capacity)) {
            ctx->error = std::make_exception_ptr(
                Error(ETB_ERR_NAMING, "the path naming function returned a path with a NUL byte or longer than " +
                                          std::to_string(command_queue_capacity - 1) + " bytes"));
            return 1;
        }
        return 0;
    } catch (...) {
        ctx->error = std::current_exception();
        return 1;
    }
}
}  // namespace detail

enum class CudaMode : int32_t { Auto = ETB_CUDA_AUTO, Require = ETB_CUDA_REQUIRE, Skip = ETB_CUDA_SKIP };

/// Bootstraps this worker against its agent (see etb_bootstrap_client_ex). An exception thrown
/// by `path_naming_fn` reaches the caller as itself.
inline std::pair<Client, BootstrapInfo> bootstrap_client(PathNamingFn path_naming_fn = nullptr,
                                                         double connection_timeout_s = 30.0,
                                                         CudaMode cuda_mode = CudaMode::Auto) {
    EtbClient *client = nullptr;
    EtbBootstrapInfo *info = nullptr;
    detail::NamingContext ctx{&path_naming_fn, nullptr};
    EtbBootstrapOptions options;
    etb_bootstrap_options_init(&options);
    options.path_naming_fn = path_naming_fn ? &detail::naming_trampoline : nullptr;
    options.user_data = &ctx;
    options.connection_timeout_s = connection_timeout_s;
    options.cuda_mode = static_cast<EtbCudaMode>(cuda_mode);
    EtbStatus status = etb_bootstrap_client_ex(&options, &client, &info);
    if (ctx.error) std::rethrow_exception(ctx.error);
    detail::check(status);
    return std::pair<Client, BootstrapInfo>(Client(client), BootstrapInfo(info));
}

/// The reference's setup_ptrace(): lets every process of this user ptrace this one.
inline void setup_ptrace() { detail::check(etb_setup_ptrace()); }

inline std::string version() { return etb_version(); }

}  // namespace etb

#endif /* ETHA_TENSOR_BUS_HPP */
