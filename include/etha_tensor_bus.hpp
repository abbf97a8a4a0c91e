/*
 * etha-tensor-bus: a header-only C++17 wrapper over the C API (etha_tensor_bus.h).
 *
 * Ownership and errors, no behaviour of its own beyond building the C structs:
 *  - etb::Client, etb::BootstrapInfo, etb::Completion and etb::Payload own their C handles
 *    (std::unique_ptr with the C release function as deleter: move-only, released when
 *    destroyed; a moved-from object holds nothing, and its get() is nullptr).
 *  - Every failing call throws etb::Error (a std::runtime_error) carrying the EtbStatus and the
 *    library's message, "ETB_ERR_X: etb_function: what failed ...", as it is. The wrapper's own
 *    checks throw the same way, naming the wrapper function ("ETB_ERR_X: etb::Client::...: ...").
 *  - Thread-safety is the C API's: a Client, BootstrapInfo or Payload (and a Batch, which only
 *    reads its payloads) may be used from several threads at once (const methods only); a
 *    Completion from one thread at a time; nothing may be used while it is destroyed or
 *    assigned to.
 *  - Byte strings passed in are etb::Bytes: a borrowed view (pointer and size) of a Payload, a
 *    std::vector<uint8_t> or any memory, read during the call only.
 *  - It covers the whole C API: every C function has its form here and every enumeration of
 *    macros its enum class (of the C type, one enumerator per macro), but for the few deliberate
 *    omissions that tests/python/test_wrappers.py lists with their reasons; that test fails when
 *    a function or a macro is added to the C API only.
 *
 *   auto [client, info] = etb::bootstrap_client();
 *   client.init_pair("pair", "local", "remote", 2, {2, 4}, {etb::Placement::shard(0)});
 *   etb::Batch batch = client.register_tensors(
 *       "step_0", {{etb::CudaTensorView(ptr, etb::Dtype::BFloat16, {1024, 1024}), "pair"}});
 *   client.transfer("step_0", etb::TransferKind::Send);
 *   // keep `ptr` allocated and unchanged while batch.in_use()
 */
#ifndef ETHA_TENSOR_BUS_HPP
#define ETHA_TENSOR_BUS_HPP

#include "etha_tensor_bus.h"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace etb {

/// A failed call: the status (`status()`, its name `status_name()`) and the library's message
/// (`what()`), which already starts with the status name ("ETB_ERR_X: etb_function: ...") and is
/// used as it is. Copyable, as exceptions are; thread-safe to read.
class Error : public std::runtime_error {
public:
    /// `message` should read "ETB_ERR_X: where: what failed", as the library's do.
    Error(EtbStatus status, const std::string &message) : std::runtime_error(message), status_(status) {}
    /// The EtbStatus of the failure (never ETB_OK).
    EtbStatus status() const noexcept { return status_; }
    /// The status's name, e.g. "ETB_ERR_ENV" (a static string).
    const char *status_name() const noexcept { return etb_status_name(status_); }

private:
    EtbStatus status_;
};

namespace detail {
/// Throws the calling thread's last error when `status` is not ETB_OK.
inline void check(EtbStatus status) {
    if (status == ETB_OK) return;
    std::string message = etb_last_error_message();
    if (message.empty()) message = std::string(etb_status_name(status)) + ": (the library gave no message)";
    throw Error(status, message);
}
/// An error found by the wrapper itself, worded as the library's: "ETB_ERR_X: where: what".
[[noreturn]] inline void fail(EtbStatus status, const char *where, const std::string &what) {
    throw Error(status, std::string(etb_status_name(status)) + ": " + where + ": " + what);
}
inline std::string text(const char *s) { return s ? std::string(s) : std::string(); }
inline std::optional<std::string> optional_text(const char *s) {
    return s ? std::optional<std::string>(s) : std::nullopt;
}
/// A non-NULL address for empty byte strings (NULL with length 0 means "absent" to the C API).
inline constexpr uint8_t empty_byte = 0;

struct ClientDeleter {
    void operator()(EtbClient *client) const noexcept { etb_client_close(client); }
};
struct InfoDeleter {
    void operator()(EtbBootstrapInfo *info) const noexcept { etb_info_free(info); }
};
struct CompletionDeleter {
    void operator()(EtbCompletion *completion) const noexcept { etb_completion_free(completion); }
};
struct PayloadDeleter {
    void operator()(EtbPayload *payload) const noexcept { etb_payload_free(payload); }
};
}  // namespace detail

class Payload;

/// A borrowed byte string for a command: a pointer and a size, nothing owned. It must not
/// outlive what it views (a Payload, a vector, a buffer); as a call's argument, a temporary owner
/// lives long enough. Two states the C API tells apart: *absent* (nullptr, 0; sent as nil: the
/// default, also from std::nullopt) and present (possibly empty: a non-null pointer with size 0,
/// e.g. from an empty vector). Trivially copyable; thread-safe as the bytes it views.
class Bytes {
public:
    /// Absent.
    constexpr Bytes() noexcept = default;
    /// Absent.
    constexpr Bytes(std::nullopt_t) noexcept {}
    /// `size` bytes at `data`. (nullptr, 0) is absent; nullptr with a size is rejected by the
    /// library (ETB_ERR_NULL_ARGUMENT).
    constexpr Bytes(const uint8_t *data, std::size_t size) noexcept : data_(data), size_(size) {}
    /// The vector's bytes (present, also when empty). Borrowed: the vector must not change or
    /// die while the view is used.
    Bytes(const std::vector<uint8_t> &bytes) noexcept
        : data_(bytes.empty() ? &detail::empty_byte : bytes.data()), size_(bytes.size()) {}
    /// The vector's bytes, or absent for std::nullopt (the wrapper's earlier payload type).
    Bytes(const std::optional<std::vector<uint8_t>> &bytes) noexcept : Bytes() {
        if (bytes) *this = Bytes(*bytes);
    }
    /// The payload's bytes (absent for a moved-from payload). Borrowed from the payload.
    Bytes(const Payload &payload) noexcept;

    constexpr const uint8_t *data() const noexcept { return data_; }
    constexpr std::size_t size() const noexcept { return size_; }
    /// True for the absent value (sent as nil), false for every present one, empty or not.
    constexpr bool absent() const noexcept { return data_ == nullptr && size_ == 0; }

private:
    const uint8_t *data_ = nullptr;
    std::size_t size_ = 0;
};

/// An owned, immutable byte string made by the library (etb_*_payload): a CUDA tensor's IPC
/// handle, a mesh shape or placements, pickled for the agent. Move-only; released (etb_payload_free)
/// when destroyed. It outlives the client that made it. A CUDA tensor payload holds a
/// reference-counter slot: **keep the tensor's memory allocated and unchanged while in_use() is
/// true**. Thread-safe: its const methods may run on several threads at once.
class Payload {
public:
    /// Holds nothing (as a moved-from payload).
    Payload() noexcept = default;
    /// Adopts `payload` (a payload from the library, or nullptr); it is freed with this object.
    explicit Payload(EtbPayload *payload) noexcept : payload_(payload) {}

    /// The bytes, owned by the payload: valid while it lives. nullptr when it holds nothing.
    const uint8_t *data() const noexcept { return etb_payload_data(payload_.get()); }
    /// The length in bytes; 0 when it holds nothing.
    std::size_t size() const noexcept { return etb_payload_len(payload_.get()); }
    /// The bytes as a borrowed view, for any call that takes Bytes. Valid while the payload lives.
    Bytes view() const noexcept { return Bytes(data(), size()); }
    /// A copy of the bytes.
    std::vector<uint8_t> to_vector() const { return std::vector<uint8_t>(data(), data() + size()); }
    /// For a CUDA tensor payload: whether a consumer (the agent's torch) still holds the tensor's
    /// memory. False for every other payload. The memory is free only when every payload made for
    /// it reads false. Throws etb::Error: ETB_ERR_NULL_ARGUMENT when it holds nothing,
    /// ETB_ERR_FORKED in a process forked after it was made. One atomic load; thread-safe.
    [[nodiscard]] bool in_use() const {
        bool in_use = false;
        detail::check(etb_payload_in_use(payload_.get(), &in_use));
        return in_use;
    }
    /// True when it holds a payload.
    explicit operator bool() const noexcept { return payload_ != nullptr; }
    /// The C handle, still owned by this object.
    EtbPayload *get() const noexcept { return payload_.get(); }
    /// Gives up the C handle: the caller releases it with etb_payload_free.
    [[nodiscard]] EtbPayload *release() noexcept { return payload_.release(); }

private:
    std::unique_ptr<EtbPayload, detail::PayloadDeleter> payload_;
};

inline Bytes::Bytes(const Payload &payload) noexcept : Bytes(payload.view()) {}

/// The dtypes of CUDA tensor payloads, numbered as ETB_DTYPE_* (torch's dtypes): one enumerator per
/// macro, of the C type (tests/python/test_wrappers.py checks that none is missing).
enum class Dtype : EtbDtype {
    Float32 = ETB_DTYPE_FLOAT32,
    Float64 = ETB_DTYPE_FLOAT64,
    Float16 = ETB_DTYPE_FLOAT16,
    BFloat16 = ETB_DTYPE_BFLOAT16,
    UInt8 = ETB_DTYPE_UINT8,
    Int8 = ETB_DTYPE_INT8,
    Int16 = ETB_DTYPE_INT16,
    Int32 = ETB_DTYPE_INT32,
    Int64 = ETB_DTYPE_INT64,
    Bool = ETB_DTYPE_BOOL,
    Float8E4M3FN = ETB_DTYPE_FLOAT8_E4M3FN,
    Float8E5M2 = ETB_DTYPE_FLOAT8_E5M2,
};

/// torch's name of a dtype (e.g. "bfloat16"), a static string; nullptr for a value that is not
/// an ETB_DTYPE_*. Thread-safe.
inline const char *dtype_name(Dtype dtype) noexcept { return etb_dtype_name(static_cast<EtbDtype>(dtype)); }
/// Bytes per element; 0 for a value that is not an ETB_DTYPE_*. Thread-safe.
inline std::size_t dtype_size(Dtype dtype) noexcept { return etb_dtype_size(static_cast<EtbDtype>(dtype)); }

/// A tensor in device memory, described for Client::cuda_tensor_payload (nothing is owned or
/// checked here: the library checks it when the payload is made). `data` is the device address
/// of the first element (a CUdeviceptr; 0 only for a tensor with no elements), from
/// cuMemAlloc/cudaMalloc on the client's device. `strides` in elements, or none for contiguous
/// row-major (then as many as `shape`). `stream`: none when the caller has synchronized;
/// set (nullptr is CUDA's legacy default stream) when the agent must first wait for the work
/// queued so far on that CUstream (wait_on_stream = 1). A plain value type.
struct CudaTensorView {
    uint64_t data = 0;
    Dtype dtype = Dtype::Float32;
    std::vector<int64_t> shape;
    std::optional<std::vector<int64_t>> strides;
    std::optional<void *> stream;

    CudaTensorView() = default;
    /// A tensor at the device address `data`.
    CudaTensorView(uint64_t data_, Dtype dtype_, std::vector<int64_t> shape_,
                   std::optional<std::vector<int64_t>> strides_ = std::nullopt,
                   std::optional<void *> stream_ = std::nullopt)
        : data(data_), dtype(dtype_), shape(std::move(shape_)), strides(std::move(strides_)), stream(stream_) {}
    /// A tensor at the device pointer `data` (e.g. from cudaMalloc: a unified address).
    template <typename T>
    CudaTensorView(const T *data_, Dtype dtype_, std::vector<int64_t> shape_,
                   std::optional<std::vector<int64_t>> strides_ = std::nullopt,
                   std::optional<void *> stream_ = std::nullopt)
        : CudaTensorView(static_cast<uint64_t>(reinterpret_cast<std::uintptr_t>(data_)), dtype_, std::move(shape_),
                         std::move(strides_), stream_) {}
};

/// A DTensor placement: Shard(dim), Replicate() or Partial(reduce_op), for placements_payload
/// and init_pair. Made by the factory functions; a plain value type.
class Placement {
public:
    enum class Kind : decltype(EtbPlacement::kind) {
        Shard = ETB_PLACEMENT_SHARD,
        Replicate = ETB_PLACEMENT_REPLICATE,
        Partial = ETB_PLACEMENT_PARTIAL,
    };
    /// `Shard(dim)`; a negative dim counts from the end, as in torch.
    static Placement shard(int dim) { return Placement(Kind::Shard, dim, std::string()); }
    /// `Replicate()`.
    static Placement replicate() { return Placement(Kind::Replicate, 0, std::string()); }
    /// `Partial(reduce_op)`; an empty reduce_op is rejected when the payload is made.
    static Placement partial(std::string reduce_op = "sum") {
        return Placement(Kind::Partial, 0, std::move(reduce_op));
    }

    Kind kind() const noexcept { return kind_; }
    /// The shard dimension (Shard only; 0 otherwise).
    int dim() const noexcept { return dim_; }
    /// The reduction (Partial only; empty otherwise).
    const std::string &reduce_op() const noexcept { return reduce_op_; }

    friend bool operator==(const Placement &a, const Placement &b) noexcept {
        return a.kind_ == b.kind_ && a.dim_ == b.dim_ && a.reduce_op_ == b.reduce_op_;
    }
    friend bool operator!=(const Placement &a, const Placement &b) noexcept { return !(a == b); }

private:
    Placement(Kind kind, int dim, std::string reduce_op) : kind_(kind), dim_(dim), reduce_op_(std::move(reduce_op)) {}
    Kind kind_;
    int dim_;
    std::string reduce_op_;
};

/// What the reference sends for `tuple(device_mesh.mesh.shape)`: a pickled tuple of the dims
/// (at least one, each >= 1, else etb::Error ETB_ERR_INVALID_ARGUMENT). Needs no client and no
/// GPU. Thread-safe.
[[nodiscard]] inline Payload mesh_shape_payload(const std::vector<int64_t> &dims) {
    static const int64_t none = 0;  // a non-NULL address for an empty list: "ndims is 0", not NULL
    EtbPayload *payload = nullptr;
    detail::check(etb_mesh_shape_payload(dims.empty() ? &none : dims.data(), dims.size(), &payload));
    return Payload(payload);
}

/// A pickled tuple of torch.distributed.tensor placements (empty: the empty tuple). An empty
/// reduce_op is etb::Error ETB_ERR_INVALID_ARGUMENT. Needs no client and no GPU. Thread-safe.
[[nodiscard]] inline Payload placements_payload(const std::vector<Placement> &placements) {
    std::vector<EtbPlacement> c_placements;
    c_placements.reserve(placements.size());
    for (const Placement &p : placements) {
        EtbPlacement c{};
        c.kind = static_cast<int32_t>(p.kind());
        c.dim = static_cast<int32_t>(p.dim());
        c.reduce_op = p.kind() == Placement::Kind::Partial ? p.reduce_op().c_str() : nullptr;
        c_placements.push_back(c);
    }
    EtbPayload *payload = nullptr;
    detail::check(etb_placements_payload(c_placements.data(), c_placements.size(), &payload));
    return Payload(payload);
}

/// What bootstrap found out (the reference's BootstrapInfo). Immutable: every accessor may run
/// on several threads at once. Move-only; released (etb_info_free) when destroyed; independent
/// of its client. A moved-from info answers -1, empty strings and empty optionals.
class BootstrapInfo {
public:
    /// Adopts `info` (released with etb_info_free).
    explicit BootstrapInfo(EtbBootstrapInfo *info) noexcept : info_(info) {}

    /// The agent rank this worker is connected to.
    int64_t agent_rank() const noexcept { return etb_info_agent_rank(info_.get()); }
    /// The worker's global rank (RANK).
    int64_t global_rank() const noexcept { return etb_info_global_rank(info_.get()); }
    /// The AGENT_RANK_OFFSET used; empty for method "direct".
    std::optional<int64_t> rank_offset() const noexcept {
        return etb_info_has_rank_offset(info_.get()) ? std::optional<int64_t>(etb_info_rank_offset(info_.get()))
                                                     : std::nullopt;
    }
    /// "cuda:{device_index()}".
    std::string device() const { return detail::text(etb_info_device(info_.get())); }
    /// The client's device: BootstrapOptions::device_index when chosen, else LOCAL_RANK (0 when
    /// unset; bootstrap_client) or 0 (connect_client).
    int32_t device_index() const noexcept { return etb_info_device_index(info_.get()); }
    /// The agent's command-queue LMDB path.
    std::string command_queue_path() const { return detail::text(etb_info_command_queue_path(info_.get())); }
    /// The agent's state LMDB path.
    std::string state_path() const { return detail::text(etb_info_state_path(info_.get())); }
    /// "direct" (AGENT_RANK) or "offset" (RANK + AGENT_RANK_OFFSET).
    std::string method() const { return detail::text(etb_info_method(info_.get())); }
    /// The agent's pid; empty when it could not be identified.
    std::optional<int32_t> agent_pid() const noexcept {
        int32_t pid = etb_info_agent_pid(info_.get());
        return pid > 0 ? std::optional<int32_t>(pid) : std::nullopt;
    }
    /// Whether bootstrap bound the worker to its GPU.
    bool cuda_bound() const noexcept { return etb_info_cuda_bound(info_.get()); }
    /// The bound device's name; empty when unbound.
    std::optional<std::string> device_name() const { return detail::optional_text(etb_info_device_name(info_.get())); }
    /// The bound device's PCI bus id; empty when unbound.
    std::optional<std::string> device_pci_bus_id() const {
        return detail::optional_text(etb_info_device_pci_bus_id(info_.get()));
    }
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`; empty when unbound.
    std::optional<std::string> device_uuid() const { return detail::optional_text(etb_info_device_uuid(info_.get())); }
    /// E.g. 12080; 0 when no driver answered.
    int32_t cuda_driver_version() const noexcept { return etb_info_cuda_driver_version(info_.get()); }
    /// The C handle, still owned by this object.
    const EtbBootstrapInfo *get() const noexcept { return info_.get(); }

private:
    std::unique_ptr<EtbBootstrapInfo, detail::InfoDeleter> info_;
};

/// A transfer direction (ETB_TRANSFER_*).
enum class TransferKind : EtbTransferKind { Send = ETB_TRANSFER_SEND, Recv = ETB_TRANSFER_RECV };

/// One tensor of the byte overload of Client::register_tensors: its pair and its payload (a
/// pickle: a Payload, `ForkingPickler.dumps(tensor)`, ...), both borrowed for the call.
struct TensorPayload {
    std::string pair_name;
    Bytes payload;

    TensorPayload(std::string pair_name_, Bytes payload_) : pair_name(std::move(pair_name_)), payload(payload_) {}
    /// `size` bytes at `data` (the wrapper's earlier form).
    TensorPayload(std::string pair_name_, const uint8_t *data, std::size_t size)
        : pair_name(std::move(pair_name_)), payload(data, size) {}
};

/// One tensor of the CUDA overload of Client::register_tensors: `{view, "pair"}`.
struct CudaTensorEntry {
    CudaTensorView tensor;
    std::string pair_name;
};

/// A registered batch: its id, and the payloads made for its tensors (with their pairs), kept
/// alive so that in_use() can tell when the agent no longer holds the memory. Move-only (it owns
/// Payloads). Destroying it releases the payloads (the library reuses a slot only once it reads 0)
/// but not the memory, and not the agent's record of the batch (Client::cleanup_batch).
/// Thread-safe: its const methods may run on several threads at once.
class Batch {
public:
    /// A batch of `payloads` (one per tensor, pair_names[i] for payloads[i]).
    Batch(std::string id, std::vector<Payload> payloads, std::vector<std::string> pair_names)
        : id_(std::move(id)), payloads_(std::move(payloads)), pair_names_(std::move(pair_names)) {
        if (pair_names_.size() != payloads_.size())
            detail::fail(ETB_ERR_INVALID_ARGUMENT, "etb::Batch::Batch",
                         std::to_string(payloads_.size()) + " payloads but " + std::to_string(pair_names_.size()) +
                             " pair names");
    }
    // Move-only, spelled out so that std::is_copy_constructible says so (a vector of move-only
    // elements claims to be copyable); nothing is hand-written.
    Batch(const Batch &) = delete;
    Batch &operator=(const Batch &) = delete;
    Batch(Batch &&) noexcept = default;
    Batch &operator=(Batch &&) noexcept = default;

    /// The batch id given to register_tensors.
    const std::string &id() const noexcept { return id_; }
    /// The number of tensors.
    std::size_t size() const noexcept { return payloads_.size(); }
    /// The payloads, in the order of the tensors.
    const std::vector<Payload> &payloads() const noexcept { return payloads_; }
    /// The pair of each tensor, in the same order.
    const std::vector<std::string> &pair_names() const noexcept { return pair_names_; }
    /// True while any payload's in_use() is true: keep the memory of every tensor allocated and
    /// unchanged until it reads false. Throws etb::Error as Payload::in_use.
    [[nodiscard]] bool in_use() const {
        for (const Payload &p : payloads_)
            if (p.in_use()) return true;
        return false;
    }

private:
    std::string id_;
    std::vector<Payload> payloads_;
    std::vector<std::string> pair_names_;
};

/// A command issued without waiting (Client::transfer_async, init_pair_async,
/// cleanup_batch_async, query_transfer_signal_async). Move-only; destroying it removes its
/// semaphore, whether or not the command was acknowledged, before or after its client's close.
/// Use it from one thread at a time.
class Completion {
public:
    /// Adopts `completion` (released with etb_completion_free).
    explicit Completion(EtbCompletion *completion) noexcept : completion_(completion) {}

    /// Waits until the agent acknowledged the command and was seen to survive it. Throws
    /// etb::Error: ETB_ERR_TIMEOUT, ETB_ERR_AGENT_DIED, ETB_ERR_CLOSED (its client was closed),
    /// ETB_ERR_PAIR_NOT_MATCHED (an InitPair the agent survived without matching the pair).
    void wait(double timeout_s = 30.0) { detail::check(etb_completion_wait(completion_.get(), timeout_s)); }
    /// Waits at most `timeout` (any std::chrono duration): true once the agent acknowledged the
    /// command and was seen to survive it, false when the time ran out first (the command may
    /// still complete: wait again, poll, or watch). Throws etb::Error as wait() for every other
    /// outcome.
    template <class Rep, class Period>
    [[nodiscard]] bool wait_for(std::chrono::duration<Rep, Period> timeout) {
        const double seconds = std::chrono::duration<double>(timeout).count();
        const EtbStatus s = etb_completion_wait(completion_.get(), seconds > 0 ? seconds : 0.0);
        if (s == ETB_ERR_TIMEOUT) return false;
        detail::check(s);
        return true;
    }
    /// Whether the command is acknowledged, without blocking. Throws etb::Error as wait().
    [[nodiscard]] bool poll() {
        bool done = false;
        detail::check(etb_completion_poll(completion_.get(), &done));
        return done;
    }
    /// Hands the completion to its client's watcher thread: once its outcome is final, `token`
    /// comes out of Client::take_resolved() and Client::event_fd() turns readable (for an epoll
    /// or other event loop). Destroying the completion unwatches it.
    void watch(uint64_t token) { detail::check(etb_completion_watch(completion_.get(), token)); }
    /// The C handle, still owned by this object.
    EtbCompletion *get() const noexcept { return completion_.get(); }

private:
    std::unique_ptr<EtbCompletion, detail::CompletionDeleter> completion_;
};

/// A worker's connection to its agent (made by bootstrap_client or connect_client). Move-only;
/// closed (etb_client_close) when destroyed. Every method is const and may run on several threads
/// at once, except destruction and assignment. Commands block as the C header's conventions say
/// (timeout_s covers the wait for queue space and for the completion) and throw etb::Error.
/// Payloads and completions it made outlive it.
class Client {
public:
    /// Adopts `client` (released with etb_client_close).
    explicit Client(EtbClient *client) noexcept : client_(client) {}

    /// Sends InitPair and waits for the pair to match (this can take minutes: size timeout_s for
    /// it). The payloads are the pickled mesh shape and placements, or absent (the default).
    void init_pair(const std::string &pair_name, const std::string &local_name, const std::string &remote_name,
                   int64_t expected_world_size, Bytes mesh_shape_payload = Bytes(),
                   Bytes placements_payload = Bytes(), double timeout_s = 30.0) const {
        detail::check(etb_client_init_pair(client_.get(), pair_name.c_str(), local_name.c_str(), remote_name.c_str(),
                                           expected_world_size, mesh_shape_payload.data(), mesh_shape_payload.size(),
                                           placements_payload.data(), placements_payload.size(), timeout_s));
    }
    /// init_pair with the payloads made from a mesh shape (e.g. {2, 4}) and placements (an empty
    /// vector sends the empty tuple).
    void init_pair(const std::string &pair_name, const std::string &local_name, const std::string &remote_name,
                   int64_t expected_world_size, const std::vector<int64_t> &mesh_shape,
                   const std::vector<Placement> &placements, double timeout_s = 30.0) const {
        Payload mesh = mesh_shape_payload(mesh_shape);
        Payload place = placements_payload(placements);
        init_pair(pair_name, local_name, remote_name, expected_world_size, mesh.view(), place.view(), timeout_s);
    }
    /// Sends InitPair without waiting for it (the reference's init_pair(blocking=False)): timeout_s
    /// bounds only the wait for queue space. The Completion's wait and poll report done only once
    /// the agent survived the command and recorded the pair as matched (else they throw
    /// ETB_ERR_PAIR_NOT_MATCHED). Payloads as init_pair's, borrowed for the call.
    [[nodiscard]] Completion init_pair_async(const std::string &pair_name, const std::string &local_name,
                                             const std::string &remote_name, int64_t expected_world_size,
                                             Bytes mesh_shape_payload = Bytes(), Bytes placements_payload = Bytes(),
                                             double timeout_s = 30.0) const {
        EtbCompletion *completion = nullptr;
        detail::check(etb_client_init_pair_async(client_.get(), pair_name.c_str(), local_name.c_str(),
                                                 remote_name.c_str(), expected_world_size, mesh_shape_payload.data(),
                                                 mesh_shape_payload.size(), placements_payload.data(),
                                                 placements_payload.size(), timeout_s, &completion));
        return Completion(completion);
    }
    /// init_pair_async with the payloads made from a mesh shape and placements.
    [[nodiscard]] Completion init_pair_async(const std::string &pair_name, const std::string &local_name,
                                             const std::string &remote_name, int64_t expected_world_size,
                                             const std::vector<int64_t> &mesh_shape,
                                             const std::vector<Placement> &placements, double timeout_s = 30.0) const {
        Payload mesh = mesh_shape_payload(mesh_shape);
        Payload place = placements_payload(placements);
        return init_pair_async(pair_name, local_name, remote_name, expected_world_size, mesh.view(), place.view(),
                               timeout_s);
    }

    /// The payload for a tensor in this client's device memory (see CudaTensorView): owned by the
    /// caller; keep the memory allocated and unchanged while its in_use() is true. Throws
    /// etb::Error: ETB_ERR_CUDA for an unbound client, ETB_ERR_INVALID_ARGUMENT for bad fields or
    /// memory the library cannot share (host, managed, pool, another device, unknown). Thread-safe.
    [[nodiscard]] Payload cuda_tensor_payload(const CudaTensorView &tensor) const {
        const char *where = "etb::Client::cuda_tensor_payload";
        if (tensor.shape.size() > std::numeric_limits<uint32_t>::max())
            detail::fail(ETB_ERR_INVALID_ARGUMENT, where, "shape has " + std::to_string(tensor.shape.size()) + " dims");
        if (tensor.strides && tensor.strides->size() != tensor.shape.size())
            detail::fail(ETB_ERR_INVALID_ARGUMENT, where,
                         "strides has " + std::to_string(tensor.strides->size()) + " entries, shape " +
                             std::to_string(tensor.shape.size()));
        EtbCudaTensor c;
        etb_cuda_tensor_init(&c);
        c.dtype = static_cast<EtbDtype>(tensor.dtype);
        c.data = tensor.data;
        c.ndim = static_cast<uint32_t>(tensor.shape.size());
        c.shape = tensor.shape.empty() ? nullptr : tensor.shape.data();
        c.strides = tensor.strides && !tensor.strides->empty() ? tensor.strides->data() : nullptr;
        c.wait_on_stream = tensor.stream ? 1 : 0;
        c.stream = tensor.stream.value_or(nullptr);
        EtbPayload *payload = nullptr;
        detail::check(etb_client_cuda_tensor_payload(client_.get(), &c, &payload));
        return Payload(payload);
    }

    /// The payload of a DLPack 1.x managed tensor (etb_client_dlpack_payload): the same payload
    /// cuda_tensor_payload makes for the same memory. `stream`: none when the producer's work is
    /// complete; set (nullptr is the legacy default stream) when the agent must first wait for
    /// the work queued on it. On success the returned Payload owns `tensor`: its deleter runs once,
    /// after the Payload is destroyed and once its in_use() reads false (in the destructor on this
    /// thread, or later on the library's etb-dlpack thread). On a throw (etb::Error:
    /// ETB_ERR_INVALID_ARGUMENT naming the refused device type, dtype, lanes, layout or version;
    /// ETB_ERR_CUDA for an unbound client) the caller still owns it. Thread-safe.
    [[nodiscard]] Payload dlpack_payload(struct DLManagedTensorVersioned *tensor,
                                         std::optional<void *> stream = std::nullopt) const {
        EtbPayload *payload = nullptr;
        detail::check(etb_client_dlpack_payload(client_.get(), tensor, stream ? 1 : 0, stream.value_or(nullptr),
                                                &payload));
        return Payload(payload);
    }

    /// dlpack_payload for a legacy (pre-1.0) DLManagedTensor (etb_client_dlpack_legacy_payload):
    /// the same checks (no version, no flags), payload and ownership. Thread-safe.
    [[nodiscard]] Payload dlpack_legacy_payload(struct DLManagedTensor *tensor,
                                                std::optional<void *> stream = std::nullopt) const {
        EtbPayload *payload = nullptr;
        detail::check(etb_client_dlpack_legacy_payload(client_.get(), tensor, stream ? 1 : 0,
                                                       stream.value_or(nullptr), &payload));
        return Payload(payload);
    }

    /// Sends RegisterTensors with the given payloads (borrowed for the call) and waits for it.
    /// bucket_size: none (or <= 0) for the agent's default. Payloads that do not look like pickles
    /// are ETB_ERR_INVALID_ARGUMENT, nothing enqueued.
    void register_tensors(const std::string &batch_id, const std::vector<TensorPayload> &tensors,
                          std::optional<int64_t> bucket_size = std::nullopt, double timeout_s = 30.0) const {
        std::vector<EtbTensorPayload> c_tensors;
        c_tensors.reserve(tensors.size());
        for (const TensorPayload &t : tensors)
            c_tensors.push_back(EtbTensorPayload{t.pair_name.c_str(), t.payload.data(), t.payload.size()});
        detail::check(etb_client_register_tensors(client_.get(), batch_id.c_str(), c_tensors.data(), c_tensors.size(),
                                                  bucket_size.value_or(0), timeout_s));
    }
    /// Makes the payloads of `tensors` (all or none: the first failure throws) as a Batch, without
    /// sending anything; send it with register_batch.
    [[nodiscard]] Batch make_batch(const std::string &batch_id, const std::vector<CudaTensorEntry> &tensors) const {
        std::vector<Payload> payloads;
        std::vector<std::string> pairs;
        payloads.reserve(tensors.size());
        pairs.reserve(tensors.size());
        for (const CudaTensorEntry &t : tensors) {
            payloads.push_back(cuda_tensor_payload(t.tensor));
            pairs.push_back(t.pair_name);
        }
        return Batch(batch_id, std::move(payloads), std::move(pairs));
    }
    /// Sends RegisterTensors for `batch` (its id, pairs and payloads) and waits for it. The batch
    /// stays the caller's: when this throws after the command was enqueued (ETB_ERR_TIMEOUT,
    /// ETB_ERR_AGENT_DIED), its in_use() still tells when the memory is free.
    void register_batch(const Batch &batch, std::optional<int64_t> bucket_size = std::nullopt,
                        double timeout_s = 30.0) const {
        std::vector<TensorPayload> tensors;
        tensors.reserve(batch.size());
        for (std::size_t i = 0; i < batch.size(); i++) tensors.emplace_back(batch.pair_names()[i], batch.payloads()[i]);
        register_tensors(batch.id(), tensors, bucket_size, timeout_s);
    }
    /// make_batch + register_batch: `register_tensors("b", {{view, "pair"}, ...})`. Returns the
    /// Batch, which keeps the payloads: keep the memory allocated and unchanged while its in_use()
    /// is true. When it throws, the payloads are released; if the command may have been enqueued
    /// (ETB_ERR_TIMEOUT, ETB_ERR_AGENT_DIED) and you must know when the memory is free, use
    /// make_batch and register_batch instead.
    [[nodiscard]] Batch register_tensors(const std::string &batch_id, const std::vector<CudaTensorEntry> &tensors,
                                         std::optional<int64_t> bucket_size = std::nullopt,
                                         double timeout_s = 30.0) const {
        Batch batch = make_batch(batch_id, tensors);
        register_batch(batch, bucket_size, timeout_s);
        return batch;
    }

    /// Sends Transfer and waits until the agent acknowledges it (after its NCCL send or recv).
    void transfer(const std::string &batch_id, TransferKind kind, double timeout_s = 30.0) const {
        detail::check(
            etb_client_transfer(client_.get(), batch_id.c_str(), static_cast<EtbTransferKind>(kind), timeout_s));
    }
    /// Sends Transfer without waiting for it (timeout_s bounds the wait for queue space); wait on
    /// or poll the Completion. Each pending completion holds a named semaphore: drop it when done.
    [[nodiscard]] Completion transfer_async(const std::string &batch_id, TransferKind kind,
                                            double timeout_s = 30.0) const {
        EtbCompletion *completion = nullptr;
        detail::check(etb_client_transfer_async(client_.get(), batch_id.c_str(), static_cast<EtbTransferKind>(kind),
                                                timeout_s, &completion));
        return Completion(completion);
    }
    /// Sends Transfer with nothing to wait on (fire and forget).
    void transfer_detached(const std::string &batch_id, TransferKind kind, double timeout_s = 30.0) const {
        detail::check(etb_client_transfer_detached(client_.get(), batch_id.c_str(),
                                                   static_cast<EtbTransferKind>(kind), timeout_s));
    }
    /// Sends QueryStatus: the batch's transfer signal as the agent recorded it (false when absent).
    [[nodiscard]] bool query_transfer_signal(const std::string &batch_id, double timeout_s = 30.0) const {
        bool signal = false;
        detail::check(etb_client_query_transfer_signal(client_.get(), batch_id.c_str(), timeout_s, &signal));
        return signal;
    }
    /// Sends QueryStatus without waiting for it (the reference's query_transfer_signal(blocking=False)):
    /// timeout_s bounds only the wait for queue space. The agent records the answer when it
    /// handles the query: read it with read_transfer_signal once the Completion is done.
    [[nodiscard]] Completion query_transfer_signal_async(const std::string &batch_id, double timeout_s = 30.0) const {
        EtbCompletion *completion = nullptr;
        detail::check(etb_client_query_transfer_signal_async(client_.get(), batch_id.c_str(), timeout_s, &completion));
        return Completion(completion);
    }
    /// The batch's transfer signal as the agent's state holds it now (false when absent), without
    /// sending anything: one short read.
    [[nodiscard]] bool read_transfer_signal(const std::string &batch_id) const {
        bool signal = false;
        detail::check(etb_client_read_transfer_signal(client_.get(), batch_id.c_str(), &signal));
        return signal;
    }
    /// Sends CleanupBatch and waits for it: the agent forgets the batch (and drops its tensors).
    void cleanup_batch(const std::string &batch_id, double timeout_s = 30.0) const {
        detail::check(etb_client_cleanup_batch(client_.get(), batch_id.c_str(), timeout_s));
    }
    /// Sends CleanupBatch without waiting for it (the reference's BatchHandler.close(blocking=False)):
    /// timeout_s bounds only the wait for queue space. A Completion dropped unwaited still removes
    /// its semaphore.
    [[nodiscard]] Completion cleanup_batch_async(const std::string &batch_id, double timeout_s = 30.0) const {
        EtbCompletion *completion = nullptr;
        detail::check(etb_client_cleanup_batch_async(client_.get(), batch_id.c_str(), timeout_s, &completion));
        return Completion(completion);
    }
    /// Sends CleanupBatch with no completion semaphore: a clean-up nobody waits for.
    void cleanup_batch_detached(const std::string &batch_id, double timeout_s = 30.0) const {
        detail::check(etb_client_cleanup_batch_detached(client_.get(), batch_id.c_str(), timeout_s));
    }
    /// Lets commands address a batch an earlier process of this worker registered with the same
    /// agent (the client refuses, before the queue, a Transfer or QueryStatus for a batch it
    /// does not know: the agent would die of the first). Sends nothing.
    void adopt_batch(const std::string &batch_id) const {
        detail::check(etb_client_adopt_batch(client_.get(), batch_id.c_str()));
    }
    /// Lets register_tensors name a pair an earlier process of this worker matched with the same
    /// agent. Sends nothing.
    void adopt_pair(const std::string &pair_name) const {
        detail::check(etb_client_adopt_pair(client_.get(), pair_name.c_str()));
    }
    /// Whether commands may address the batch: registered or adopted by this client (and not
    /// cleaned up since), or the agent is shared (no check then).
    [[nodiscard]] bool batch_known(const std::string &batch_id) const {
        bool known = false;
        detail::check(etb_client_batch_known(client_.get(), batch_id.c_str(), &known));
        return known;
    }
    /// Whether register_tensors may name the pair: matched or adopted by this client, or the
    /// agent is shared (no check then).
    [[nodiscard]] bool pair_known(const std::string &pair_name) const {
        bool known = false;
        detail::check(etb_client_pair_known(client_.get(), pair_name.c_str(), &known));
        return known;
    }
    /// The CUcontext the client holds (the device's primary context); nullptr when unbound. Owned
    /// by the client: valid while it lives.
    void *cuda_context() const noexcept { return etb_client_cuda_context(client_.get()); }
    /// Makes the client's context current on the calling thread (ETB_ERR_CUDA when unbound).
    void bind_current_thread() const { detail::check(etb_client_bind_current_thread(client_.get())); }
    /// After the agent died and a new one started: use the new agent, keeping this handle.
    void reconnect(double timeout_s = 30.0) const { detail::check(etb_client_reconnect(client_.get(), timeout_s)); }
    /// Seconds since the agent's last heartbeat.
    [[nodiscard]] double heartbeat_age() const {
        double age = 0.0;
        detail::check(etb_client_heartbeat_age(client_.get(), &age));
        return age;
    }
    /// The client's event fd: readable (level-triggered) while a watched completion
    /// (Completion::watch) has its final outcome and its token was not taken. Owned by the
    /// client (never close it); valid while the client lives. Starts the client's one watcher
    /// thread.
    [[nodiscard]] int event_fd() const {
        int fd = -1;
        detail::check(etb_client_event_fd(client_.get(), &fd));
        return fd;
    }
    /// Takes up to `max` tokens of watched completions whose outcome is final, oldest first; the
    /// event fd stops being readable once none is left. Never blocks.
    [[nodiscard]] std::vector<uint64_t> take_resolved(std::size_t max = 64) const {
        std::vector<uint64_t> tokens(max);
        std::size_t n = 0;
        detail::check(etb_client_take_resolved(client_.get(), tokens.data(), tokens.size(), &n));
        tokens.resize(n);
        return tokens;
    }
    /// The C handle, still owned by this object (nullptr when moved from).
    EtbClient *get() const noexcept { return client_.get(); }

private:
    std::unique_ptr<EtbClient, detail::ClientDeleter> client_;
};

/// Maps an agent rank to (command_queue_path, state_path). Called at most once per bootstrap, on
/// the calling thread; an exception it throws reaches bootstrap_client's caller as itself.
using PathNamingFn = std::function<std::pair<std::string, std::string>(int64_t agent_rank)>;

namespace detail {
struct NamingContext {
    const PathNamingFn *fn;
    std::exception_ptr error;
};

inline bool copy_path(const std::string &path, char *buffer, std::size_t capacity) noexcept {
    if (path.find('\0') != std::string::npos || path.size() + 1 > capacity) return false;
    std::memcpy(buffer, path.c_str(), path.size() + 1);
    return true;
}

// Never lets an exception unwind into the library: it is kept and rethrown by bootstrap_client.
inline int32_t naming_trampoline(int64_t agent_rank, char *command_queue_path, std::size_t command_queue_capacity,
                                 char *state_path, std::size_t state_capacity, void *user_data) noexcept {
    NamingContext *ctx = static_cast<NamingContext *>(user_data);
    try {
        std::pair<std::string, std::string> paths = (*ctx->fn)(agent_rank);
        if (!copy_path(paths.first, command_queue_path, command_queue_capacity) ||
            !copy_path(paths.second, state_path, state_capacity)) {
            ctx->error = std::make_exception_ptr(
                Error(ETB_ERR_NAMING, "ETB_ERR_NAMING: etb::bootstrap_client: the path naming function returned a "
                                      "path with a NUL byte or longer than " +
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

/// When to bind the worker to its GPU (ETB_CUDA_*).
enum class CudaMode : EtbCudaMode { Auto = ETB_CUDA_AUTO, Require = ETB_CUDA_REQUIRE, Skip = ETB_CUDA_SKIP };

/// Whom bootstrap lets ptrace this worker (ETB_PTRACE_*): the agent's process only (default),
/// every process of this user, or nothing (authorize it yourself with setup_ptrace_pid).
enum class PtraceMode : EtbPtraceMode { Agent = ETB_PTRACE_AGENT, Any = ETB_PTRACE_ANY, None = ETB_PTRACE_NONE };

/// Every option of etb_bootstrap_client_ex (mapped onto an EtbBootstrapOptions filled by
/// etb_bootstrap_options_init). A plain value type; the defaults are the library's.
struct BootstrapOptions {
    /// Empty: the default names /tmp/agent_rank{N}_{command,state}.lmdb.
    PathNamingFn path_naming_fn = nullptr;
    /// Seconds to wait for the agent: finite >= 0, or INFINITY.
    double connection_timeout_s = 30.0;
    CudaMode cuda_mode = CudaMode::Auto;
    PtraceMode ptrace_mode = PtraceMode::Agent;
    /// The agent's files and semaphores may be writable by one of this process's groups.
    bool allow_shared_group = false;
    /// Other workers may attach to the same agent (each of them must allow it).
    bool allow_shared_agent = false;
    /// The CUDA device the client binds and makes its payloads on (0 and up, as the driver
    /// numbers devices). Empty: cuda:{LOCAL_RANK} for bootstrap_client, cuda:0 for
    /// connect_client. One process that drives several GPUs connects one client per local agent,
    /// each with its own device; past the driver's device count is etb::Error ETB_ERR_CUDA.
    std::optional<int32_t> device_index;
};

namespace detail {
/// `options` as the C struct, filled by etb_bootstrap_options_init first: the naming function
/// goes through the trampoline with `naming` as its user data (nullptr: no naming function).
inline EtbBootstrapOptions c_options(const BootstrapOptions &options, NamingContext *naming) noexcept {
    EtbBootstrapOptions c;
    etb_bootstrap_options_init(&c);
    c.path_naming_fn = naming ? &naming_trampoline : nullptr;
    c.user_data = naming;
    c.connection_timeout_s = options.connection_timeout_s;
    c.cuda_mode = static_cast<EtbCudaMode>(options.cuda_mode);
    c.ptrace_mode = static_cast<EtbPtraceMode>(options.ptrace_mode);
    c.allow_shared_group = options.allow_shared_group ? 1u : 0u;
    c.allow_shared_agent = options.allow_shared_agent ? 1u : 0u;
    if (options.device_index) c.device_index = *options.device_index;
    return c;
}
}  // namespace detail

/// Finds this worker's agent and attaches to it (etb_bootstrap_client_ex): reads AGENT_RANK (or
/// RANK + AGENT_RANK_OFFSET) and LOCAL_RANK, waits up to connection_timeout_s, binds the calling
/// thread to its GPU (options.device_index, else cuda:{LOCAL_RANK}) as cuda_mode says. Returns
/// the client and the info, owned by the caller and independent. Throws etb::Error; an exception
/// thrown by the naming function reaches the caller as itself. Thread-safe (but reads the
/// environment: no concurrent setenv).
[[nodiscard]] inline std::pair<Client, BootstrapInfo> bootstrap_client(const BootstrapOptions &options) {
    EtbClient *client = nullptr;
    EtbBootstrapInfo *info = nullptr;
    detail::NamingContext ctx{&options.path_naming_fn, nullptr};
    EtbBootstrapOptions c = detail::c_options(options, options.path_naming_fn ? &ctx : nullptr);
    EtbStatus status = etb_bootstrap_client_ex(&c, &client, &info);
    if (ctx.error) std::rethrow_exception(ctx.error);
    detail::check(status);
    return std::pair<Client, BootstrapInfo>(Client(client), BootstrapInfo(info));
}

/// bootstrap_client with the three most used options; the others take their defaults.
[[nodiscard]] inline std::pair<Client, BootstrapInfo> bootstrap_client(PathNamingFn path_naming_fn = nullptr,
                                                                       double connection_timeout_s = 30.0,
                                                                       CudaMode cuda_mode = CudaMode::Auto) {
    BootstrapOptions options;
    options.path_naming_fn = std::move(path_naming_fn);
    options.connection_timeout_s = connection_timeout_s;
    options.cuda_mode = cuda_mode;
    return bootstrap_client(options);
}

/// Connects to agent `agent_rank` at the two given paths, reading nothing of the environment
/// (etb_client_connect: the reference's TensorBusClient(agent_rank, lmdb_command_queue_path,
/// agent_state_lmdb_path)). Validates the agent, attaches its queue and authorizes it as
/// bootstrap_client does, with `options` (its path_naming_fn is not used: the paths are given).
/// The info's method is "direct", its global rank -1 and its device options.device_index's
/// (empty: cuda:0). One process connects once per local agent, each client on its own device
/// (see etb_client_connect for the ptrace rule of several agents). Paths are bytes, any but NUL
/// (a NUL is ETB_ERR_INVALID_ARGUMENT). Returns the client and the info, owned by the caller and
/// independent. Throws etb::Error. Thread-safe.
[[nodiscard]] inline std::pair<Client, BootstrapInfo> connect_client(int64_t agent_rank,
                                                                     const std::string &command_queue_path,
                                                                     const std::string &state_path,
                                                                     const BootstrapOptions &options = BootstrapOptions()) {
    const char *where = "etb::connect_client";
    if (command_queue_path.find('\0') != std::string::npos)
        detail::fail(ETB_ERR_INVALID_ARGUMENT, where, "command_queue_path has a NUL byte");
    if (state_path.find('\0') != std::string::npos)
        detail::fail(ETB_ERR_INVALID_ARGUMENT, where, "state_path has a NUL byte");
    EtbClient *client = nullptr;
    EtbBootstrapInfo *info = nullptr;
    EtbBootstrapOptions c = detail::c_options(options, nullptr);
    detail::check(etb_client_connect(agent_rank, command_queue_path.c_str(), state_path.c_str(), &c, &client, &info));
    return std::pair<Client, BootstrapInfo>(Client(client), BootstrapInfo(info));
}

/// The reference's setup_ptrace(): lets every process of this user ptrace this one. Affects the
/// whole process; thread-safe. Throws etb::Error (ETB_ERR_PTRACE).
inline void setup_ptrace() { detail::check(etb_setup_ptrace()); }

/// Lets exactly `tracer_pid` (and its descendants) ptrace this process, replacing any earlier
/// authorization. Throws etb::Error: ETB_ERR_INVALID_ARGUMENT for a pid <= 0, ETB_ERR_PTRACE.
/// Affects the whole process; thread-safe.
inline void setup_ptrace_pid(int tracer_pid) { detail::check(etb_setup_ptrace_pid(static_cast<int32_t>(tracer_pid))); }

/// The library's version, "MAJOR.MINOR.PATCH".
inline std::string version() { return etb_version(); }

/// Receives the library's log records: level (ETB_LOG_ERROR 1 .. ETB_LOG_TRACE 5), the Rust
/// module that wrote it, the message. The views are valid for the call only. An exception it
/// throws is swallowed (a log record must never unwind into the library).
using LogFn = std::function<void(int32_t level, std::string_view target, std::string_view message)>;

namespace detail {
inline void log_trampoline(int32_t level, const char *target, const char *message, void *user_data) noexcept {
    try {
        (*static_cast<LogFn *>(user_data))(level, target ? target : "", message ? message : "");
    } catch (...) {
    }
}
inline std::unique_ptr<LogFn> &log_slot() {
    static std::unique_ptr<LogFn> slot;  // the installed function, owned here for the process
    return slot;
}
inline std::mutex &log_mutex() {
    static std::mutex m;
    return m;
}
}  // namespace detail

/// Routes the library's log records to `fn` (an empty function restores stderr); ETB_LOG filters
/// first. Callable before or after bootstrap, from any thread: once it returns, the previous
/// function is never called again (and is destroyed). Throws etb::Error.
inline void set_log_callback(LogFn fn) {
    std::lock_guard<std::mutex> lock(detail::log_mutex());
    std::unique_ptr<LogFn> next = fn ? std::make_unique<LogFn>(std::move(fn)) : nullptr;
    detail::check(etb_set_log_callback(next ? &detail::log_trampoline : nullptr, next.get()));
    detail::log_slot() = std::move(next);
}

}  // namespace etb

#endif /* ETHA_TENSOR_BUS_HPP */
