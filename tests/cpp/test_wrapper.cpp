// The C++ wrapper: ownership (moves, destructors; run under AddressSanitizer, LeakSanitizer and
// UBSan by the test runner), exceptions, the command methods, the bootstrap options and the
// payload API, against etb-dev-agent (ETB_DEV_AGENT). The CUDA payload cases need the fake CUDA
// driver (tests/fake_cuda, ETB_CUDA_DRIVER_PATH; the fake has 2 devices, the cases bind
// LOCAL_RANK=1); without it they say they are skipped and the rest still runs.
#define _POSIX_C_SOURCE 200809L
#include "etha_tensor_bus.hpp"

#include <dlpack/dlpack.h>

#include "../c/harness.h"

#include <dirent.h>
#include <poll.h>
#include <dlfcn.h>

#include <algorithm>
#include <fstream>
#include <mutex>
#include <sstream>
#include <type_traits>

static_assert(!std::is_copy_constructible<etb::Client>::value, "Client is move-only");
static_assert(std::is_nothrow_move_constructible<etb::Client>::value, "Client moves");
static_assert(!std::is_copy_assignable<etb::BootstrapInfo>::value, "BootstrapInfo is move-only");
static_assert(std::is_nothrow_move_constructible<etb::Completion>::value, "Completion moves");
static_assert(!std::is_copy_constructible<etb::Payload>::value, "Payload is move-only");
static_assert(std::is_nothrow_move_constructible<etb::Payload>::value &&
                  std::is_nothrow_move_assignable<etb::Payload>::value, "Payload moves");
static_assert(!std::is_copy_constructible<etb::Batch>::value, "Batch is move-only");
static_assert(std::is_nothrow_move_constructible<etb::Batch>::value, "Batch moves");
static_assert(std::is_trivially_copyable<etb::Bytes>::value, "Bytes is a view");
static_assert(std::is_base_of<std::runtime_error, etb::Error>::value, "Error is a runtime_error");
static_assert(static_cast<int32_t>(etb::Dtype::Float8E5M2) == ETB_DTYPE_FLOAT8_E5M2, "dtypes mirror ETB_DTYPE_*");
static_assert(static_cast<int32_t>(etb::PtraceMode::None) == ETB_PTRACE_NONE, "ptrace modes mirror ETB_PTRACE_*");
// The enums are of the C types they stand for (their enumerators: tests/python/test_wrappers.py).
static_assert(std::is_same<std::underlying_type_t<etb::Dtype>, EtbDtype>::value, "Dtype is an EtbDtype");
static_assert(std::is_same<std::underlying_type_t<etb::TransferKind>, EtbTransferKind>::value, "an EtbTransferKind");
static_assert(std::is_same<std::underlying_type_t<etb::CudaMode>, EtbCudaMode>::value, "an EtbCudaMode");
static_assert(std::is_same<std::underlying_type_t<etb::PtraceMode>, EtbPtraceMode>::value, "an EtbPtraceMode");
static_assert(std::is_same<std::underlying_type_t<etb::Placement::Kind>, decltype(EtbPlacement::kind)>::value,
              "a placement kind is EtbPlacement::kind's type");

/* ---- the fake CUDA driver's control functions (the same library the etb library loads) ---- */

static unsigned long long (*fake_alloc)(int, unsigned long long, int);
static int (*fake_count)(const char *);
static int (*fake_live_events)(void);

template <typename Fn>
static Fn symbol(void *handle, const char *name) {
    void *p = dlsym(handle, name);
    Fn fn = nullptr;
    static_assert(sizeof fn == sizeof p, "function and object pointers have one size");
    std::memcpy(&fn, &p, sizeof fn);
    return fn;
}

/* 1: loaded; 0: ETB_CUDA_DRIVER_PATH unset; -1: set, but not the fake driver. */
static int load_fake() {
    static int state = 2;
    if (state != 2) return state;
    const char *path = getenv("ETB_CUDA_DRIVER_PATH");
    if (!path || !*path) return state = 0;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);  // kept loaded for the process's life
    if (!h) return state = -1;
    fake_alloc = symbol<decltype(fake_alloc)>(h, "fake_cuda_alloc");
    fake_count = symbol<decltype(fake_count)>(h, "fake_cuda_count");
    fake_live_events = symbol<decltype(fake_live_events)>(h, "fake_cuda_live_events");
    return state = (fake_alloc && fake_count && fake_live_events) ? 1 : -1;
}

/* Runs a CUDA case against the fake driver, or says it is skipped (neither passed nor failed). */
static void run_cuda_case(const char *name, int (*fn)(void)) {
    int fake = load_fake();
    if (fake == 0) {
        printf("ok - %s # SKIP ETB_CUDA_DRIVER_PATH is unset (build tests/fake_cuda/fake_cuda.c)\n", name);
        fflush(stdout);
        return;
    }
    if (fake < 0) {
        g_failed++;
        printf("not ok - %s: ETB_CUDA_DRIVER_PATH does not name the fake driver (fake_cuda_alloc)\n", name);
        fflush(stdout);
        return;
    }
    run_case(name, fn);
}

/* A GPU machine: the "no driver" checks do not apply there (tests/gpu/check.sh covers it). */
static bool have_cuda_driver() {
    if (getenv("ETB_CUDA_DRIVER_PATH")) return true;
    void *h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (h) dlclose(h);
    return h != nullptr;
}

/* No completion semaphore of this process is left in /dev/shm. */
static bool no_completion_semaphores() {
    const std::string tag = "_" + std::to_string(getpid()) + "_";
    DIR *d = opendir("/dev/shm");
    if (!d) return false;
    int left = 0;
    while (struct dirent *e = readdir(d))
        if (std::strncmp(e->d_name, "sem.command_", 12) == 0 && std::strstr(e->d_name, tag.c_str())) left++;
    closedir(d);
    if (left) snprintf(g_why, sizeof g_why, "%d completion semaphore(s) left in /dev/shm", left);
    return left == 0;
}

static bool starts_with(const std::string &s, const std::string &prefix) { return s.compare(0, prefix.size(), prefix) == 0; }
static bool contains(const std::string &s, const std::string &part) { return s.find(part) != std::string::npos; }

/* A library error: its status, a what() that is the library's message as it is (starting with
 * the status name once), and `part` in it. */
static bool error_is(const etb::Error &e, EtbStatus status, const char *part) {
    std::string what = e.what(), name = etb_status_name(status);
    if (e.status() != status || std::string(e.status_name()) != name) return false;
    if (!starts_with(what, name + ": ") || starts_with(what, name + ": " + name)) return false;
    return part == nullptr || contains(what, part);
}

/* A payload that looks like a protocol-3 pickle: 0x80 0x03 ... '.'. */
static bool pickle_shaped(const etb::Payload &p) {
    return p.size() > 3 && p.data()[0] == 0x80 && p.data()[1] == 0x03 && p.data()[p.size() - 1] == '.';
}

/* Whether the payload's bytes contain `part` (e.g. a pickled tuple: '(' 'K' 1 'K' 4 't'). */
static bool has_bytes(const etb::Payload &p, const std::vector<uint8_t> &part) {
    const std::vector<uint8_t> all = p.to_vector();
    return std::search(all.begin(), all.end(), part.begin(), part.end()) != all.end();
}
static bool has_text(const etb::Payload &p, const std::string &text) {
    return has_bytes(p, std::vector<uint8_t>(text.begin(), text.end()));
}

struct MyError {
    int code;
};

#define EXPECT_THROW(stmt, status, part)                                                                   \
    do {                                                                                                  \
        bool threw_ = false;                                                                              \
        try {                                                                                             \
            stmt;                                                                                         \
        } catch (const etb::Error &e_) {                                                                  \
            threw_ = true;                                                                                \
            CHECK(error_is(e_, (status), (part)), "%s: got %s \"%s\", want %s with \"%s\"", #stmt,        \
                  e_.status_name(), e_.what(), etb_status_name(status), (part) ? (part) : "");           \
        }                                                                                                 \
        CHECK(threw_, "%s did not throw", #stmt);                                                         \
    } while (0)

static int t_bootstrap_and_ownership() {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, nullptr, nullptr);
    CHECK(agent.pid > 0, "agent did not start");
    set_env(std::to_string(rank).c_str(), "3", nullptr, "1");
    {
        auto [client, info] = etb::bootstrap_client(nullptr, 5.0);
        CHECK(info.agent_rank() == rank && info.global_rank() == 3, "ranks");
        CHECK(!info.rank_offset().has_value(), "direct method has no offset");
        CHECK(info.device() == "cuda:1" && info.device_index() == 1 && info.method() == "direct", "device/method");
        CHECK(info.agent_pid() && *info.agent_pid() == agent.pid, "agent pid");
        CHECK(info.state_path() == "/tmp/agent_rank" + std::to_string(rank) + "_state.lmdb", "state path");
        if (!have_cuda_driver()) {
            CHECK(!info.cuda_bound() && !info.device_uuid() && info.cuda_driver_version() == 0, "no driver here");
            CHECK(client.cuda_context() == nullptr, "unbound");
            EXPECT_THROW(client.bind_current_thread(), ETB_ERR_CUDA, nullptr);
        } else if (load_fake() == 1) {
            CHECK(info.cuda_bound() && info.device_name() == std::string("Fake GPU 1"), "bound to the fake cuda:1");
            CHECK(info.device_uuid() && starts_with(*info.device_uuid(), "GPU-"), "uuid");
            CHECK(client.cuda_context() != nullptr, "bound");
            client.bind_current_thread();
        }
        etb::Client moved = std::move(client);
        CHECK(client.get() == nullptr && moved.get() != nullptr, "move leaves the source empty");
        etb::BootstrapInfo info2 = std::move(info);
        CHECK(info2.agent_rank() == rank && info.get() == nullptr, "info moves");
        CHECK(info.agent_rank() == -1 && info.device().empty() && !info.agent_pid(), "a moved-from info answers");
        CHECK(moved.heartbeat_age() < 5.0, "heartbeat");
        EXPECT_THROW((void)client.heartbeat_age(), ETB_ERR_NULL_ARGUMENT, nullptr);
        long long rank2 = fresh_rank();
        Agent agent2 = start_agent(rank2, 1, nullptr, nullptr);
        set_direct(rank2);
        etb::Client other = etb::bootstrap_client(nullptr, 5.0).first;
        other = std::move(moved);  // closes `other`'s own client, takes `moved`'s
        CHECK(other.heartbeat_age() < 5.0, "the moved-in client works");
        stop_agent(&agent2);
        CHECK(nothing_left(rank2), "second agent's files");
    }
    stop_agent(&agent);
    return nothing_left(rank);
}

static int t_exceptions() {
    unsetenv("RANK");
    set_env("0", nullptr, nullptr, nullptr);
    EXPECT_THROW((void)etb::bootstrap_client(nullptr, 0.0), ETB_ERR_ENV, "RANK is not set");
    set_env("0", "0", nullptr, nullptr);
    try {
        (void)etb::bootstrap_client([](int64_t) -> std::pair<std::string, std::string> { throw MyError{42}; }, 0.0);
        CHECK(false, "the naming function's exception was lost");
    } catch (const MyError &e) {
        CHECK(e.code == 42, "the exception reaches the caller as itself");
    }
    {
        etb::BootstrapOptions o;
        o.path_naming_fn = [](int64_t) -> std::pair<std::string, std::string> { throw std::out_of_range("rank 0"); };
        o.connection_timeout_s = 0.0;
        try {
            (void)etb::bootstrap_client(o);
            CHECK(false, "the naming function's exception was lost (options)");
        } catch (const std::out_of_range &e) {
            CHECK(std::string(e.what()) == "rank 0", "as itself: %s", e.what());
        }
    }
    EXPECT_THROW(
        (void)etb::bootstrap_client(
            [](int64_t) { return std::make_pair(std::string("/tmp/a\0b", 8), std::string("/tmp/s")); }, 0.0),
        ETB_ERR_NAMING, "NUL byte");
    set_direct(fresh_rank());
    EXPECT_THROW((void)etb::bootstrap_client(nullptr, 0.05), ETB_ERR_AGENT_NOT_FOUND, nullptr);
    {
        etb::BootstrapOptions o;
        o.connection_timeout_s = -1.0;
        EXPECT_THROW((void)etb::bootstrap_client(o), ETB_ERR_INVALID_ARGUMENT, nullptr);
        o.connection_timeout_s = 0.0;
        o.ptrace_mode = static_cast<etb::PtraceMode>(7);
        EXPECT_THROW((void)etb::bootstrap_client(o), ETB_ERR_INVALID_ARGUMENT, nullptr);
    }
    EXPECT_THROW(etb::setup_ptrace_pid(0), ETB_ERR_INVALID_ARGUMENT, nullptr);
    // An Error made by hand keeps its message as it is.
    etb::Error e(ETB_ERR_TIMEOUT, "ETB_ERR_TIMEOUT: somewhere: late");
    CHECK(std::string(e.what()) == "ETB_ERR_TIMEOUT: somewhere: late" && e.status() == ETB_ERR_TIMEOUT, "Error");
    return 1;
}

static int t_commands() {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, "--unmatched", nullptr);
    CHECK(agent.pid > 0, "agent did not start");
    set_direct(rank);
    {
        auto boot = etb::bootstrap_client(nullptr, 5.0, etb::CudaMode::Skip);
        EXPECT_THROW(boot.first.init_pair("p", "a", "b", 2), ETB_ERR_PAIR_NOT_MATCHED, nullptr);
    }
    stop_agent(&agent);
    // An agent that matches: the pair first, then its batches (what the real agent needs).
    agent = start_agent(rank, 1, nullptr, nullptr);
    CHECK(agent.pid > 0, "agent did not start");
    {
        auto boot = etb::bootstrap_client(nullptr, 5.0, etb::CudaMode::Skip);
        const etb::Client &c = boot.first;
        c.init_pair("p", "a", "b", 2);
        // Payloads must look like pickles: pickle.dumps(b"\x01\x02", 3) and pickle.dumps(None, 4).
        const uint8_t data[] = {0x80, 0x03, 'C', 0x02, 0x01, 0x02, 'q', 0x00, '.'};
        const uint8_t none[] = {0x80, 0x04, 'N', '.'};
        c.register_tensors("b", {{"p", data, sizeof data}, {"p", none, sizeof none}}, int64_t{1} << 20);
        const std::vector<uint8_t> as_vector(data, data + sizeof data);
        c.register_tensors("b3", {{"p", as_vector}, {"p", etb::Bytes(none, sizeof none)}});
        EXPECT_THROW(c.register_tensors("b4", {{"p", std::vector<uint8_t>{1, 2, 3}}}), ETB_ERR_INVALID_ARGUMENT,
                     "etb_client_register_tensors");
        c.transfer("b", etb::TransferKind::Send);
        CHECK(c.query_transfer_signal("b"), "signal after send");
        etb::Completion done = c.transfer_async("b", etb::TransferKind::Recv);
        done.wait(5.0);
        CHECK(done.poll(), "poll after wait");
        etb::Completion moved = std::move(done);
        CHECK(done.get() == nullptr && moved.get() != nullptr, "completion moves");
        CHECK(moved.poll(), "the moved-in completion");
        c.transfer_detached("b3", etb::TransferKind::Send);
        c.cleanup_batch("b");
        // The guard: what would kill the agent is refused before the queue; adopt lets through.
        CHECK(!c.batch_known("b") && c.batch_known("b3") && c.pair_known("p"), "known batches and pairs");
        EXPECT_THROW(c.transfer("b", etb::TransferKind::Send), ETB_ERR_INVALID_ARGUMENT, "Transfer for batch \"b\"");
        EXPECT_THROW((void)c.query_transfer_signal("never"), ETB_ERR_INVALID_ARGUMENT, "answers nothing");
        EXPECT_THROW(c.register_tensors("b5", {{"unmatched", data, sizeof data}}), ETB_ERR_INVALID_ARGUMENT,
                     "names pair \"unmatched\"");
        c.adopt_batch("b3");
        c.adopt_pair("p");
        c.cleanup_batch_detached("b3");
        CHECK(!c.batch_known("b3"), "a detached CleanupBatch forgets the batch too");
        EXPECT_THROW(c.transfer("b", static_cast<etb::TransferKind>(7)), ETB_ERR_INVALID_ARGUMENT, nullptr);
    }
    stop_agent(&agent);
    return nothing_left(rank);
}

static int t_bootstrap_options() {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, nullptr, nullptr);
    CHECK(agent.pid > 0, "agent did not start");
    set_direct(rank);
    {
        int calls = 0;
        etb::BootstrapOptions o;
        o.path_naming_fn = [&calls](int64_t r) {
            calls++;
            std::string base = "/tmp/agent_rank" + std::to_string(r);
            return std::make_pair(base + "_command.lmdb", base + "_state.lmdb");
        };
        o.connection_timeout_s = 5.0;
        o.cuda_mode = etb::CudaMode::Skip;
        o.ptrace_mode = etb::PtraceMode::None;
        o.allow_shared_agent = true;
        auto first = etb::bootstrap_client(o);
        CHECK(calls == 1, "the naming function was called %d times", calls);
        CHECK(!first.second.cuda_bound() && first.second.cuda_driver_version() == 0, "skip: no driver touched");
        auto second = etb::bootstrap_client(o);
        CHECK(second.second.agent_pid() == first.second.agent_pid(), "two workers share the agent");
        etb::BootstrapOptions exclusive;  // allow_shared_agent = false
        exclusive.connection_timeout_s = 5.0;
        exclusive.cuda_mode = etb::CudaMode::Skip;
        EXPECT_THROW((void)etb::bootstrap_client(exclusive), ETB_ERR_AGENT_BUSY, "AGENT_RANK_OFFSET");
        // PtraceMode::None: authorize the agent ourselves.
        try {
            etb::setup_ptrace_pid(agent.pid);
        } catch (const etb::Error &e) {
            CHECK(e.status() == ETB_ERR_PTRACE, "setup_ptrace_pid: %s", e.what());  // Yama 2 or 3
        }
        CHECK(first.first.heartbeat_age() < 5.0 && second.first.heartbeat_age() < 5.0, "both work");
    }
    stop_agent(&agent);
    return nothing_left(rank);
}

static int t_layout_payloads() {
    CHECK(etb::dtype_size(etb::Dtype::BFloat16) == 2 && std::string(etb::dtype_name(etb::Dtype::BFloat16)) == "bfloat16",
          "bf16");
    CHECK(etb::dtype_size(etb::Dtype::Float8E4M3FN) == 1 && etb::dtype_size(etb::Dtype::Int64) == 8, "sizes");
    CHECK(etb::dtype_name(static_cast<etb::Dtype>(12)) == nullptr, "unknown dtype");

    etb::Payload mesh = etb::mesh_shape_payload({2, 4});
    CHECK(mesh && pickle_shaped(mesh), "the mesh shape is a protocol-3 pickle");
    CHECK(!mesh.in_use(), "a mesh shape holds no memory");
    etb::Bytes view = mesh.view(), from_payload = mesh;
    CHECK(view.data() == mesh.data() && view.size() == mesh.size() && !view.absent(), "view");
    CHECK(from_payload.data() == mesh.data() && from_payload.size() == mesh.size(), "Bytes from a Payload");
    CHECK(mesh.to_vector() == std::vector<uint8_t>(mesh.data(), mesh.data() + mesh.size()), "to_vector");

    etb::Payload placements = etb::placements_payload(
        {etb::Placement::shard(-1), etb::Placement::replicate(), etb::Placement::partial("avg"),
         etb::Placement::partial()});
    CHECK(pickle_shaped(placements) && !placements.in_use(), "the placements are a protocol-3 pickle");
    CHECK(etb::Placement::partial().reduce_op() == "sum" && etb::Placement::shard(1).dim() == 1 &&
              etb::Placement::replicate().kind() == etb::Placement::Kind::Replicate,
          "placement accessors");
    CHECK(etb::Placement::shard(0) == etb::Placement::shard(0) && etb::Placement::shard(0) != etb::Placement::shard(1),
          "placement equality");
    etb::Payload empty = etb::placements_payload({});
    CHECK(pickle_shaped(empty), "the empty tuple");
    CHECK(etb::placements_payload({etb::Placement::shard(0)}).to_vector() !=
              etb::placements_payload({etb::Placement::replicate()}).to_vector(),
          "different placements, different bytes");

    EXPECT_THROW((void)etb::mesh_shape_payload({}), ETB_ERR_INVALID_ARGUMENT, "etb_mesh_shape_payload");
    EXPECT_THROW((void)etb::mesh_shape_payload({2, 0}), ETB_ERR_INVALID_ARGUMENT, nullptr);
    EXPECT_THROW((void)etb::placements_payload({etb::Placement::replicate(), etb::Placement::partial("")}),
                 ETB_ERR_INVALID_ARGUMENT, "reduce_op is empty");

    // Moves: the source holds nothing afterwards.
    const uint8_t *bytes = mesh.data();
    std::size_t size = mesh.size();
    etb::Payload moved = std::move(mesh);
    CHECK(moved.data() == bytes && moved.size() == size, "the bytes move with the payload");
    CHECK(!mesh && mesh.get() == nullptr && mesh.data() == nullptr && mesh.size() == 0 && mesh.view().absent(),
          "a moved-from payload holds nothing");
    EXPECT_THROW((void)mesh.in_use(), ETB_ERR_NULL_ARGUMENT, nullptr);
    moved = std::move(placements);  // frees the mesh shape's payload
    CHECK(pickle_shaped(moved) && !placements, "move assignment");
    etb::Payload adopted(moved.release());
    CHECK(!moved && pickle_shaped(adopted), "release and adopt");

    // Bytes: absent (nil) and empty (present, no bytes) are told apart.
    CHECK(etb::Bytes().absent() && etb::Bytes(std::nullopt).absent() && etb::Bytes(nullptr, 0).absent(), "absent");
    std::vector<uint8_t> none;
    CHECK(!etb::Bytes(none).absent() && etb::Bytes(none).size() == 0 && etb::Bytes(none).data() != nullptr, "empty");
    std::optional<std::vector<uint8_t>> opt = std::vector<uint8_t>{1, 2};
    CHECK(etb::Bytes(opt).size() == 2 && etb::Bytes(opt).data() == opt->data(), "from an optional vector");
    return 1;
}

static int t_init_pair_payloads() {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, nullptr, nullptr);
    CHECK(agent.pid > 0, "agent did not start");
    set_direct(rank);
    {
        auto [c, info] = etb::bootstrap_client(nullptr, 5.0, etb::CudaMode::Skip);
        c.init_pair("p1", "a", "b", 2, {2, 4}, {etb::Placement::shard(0), etb::Placement::replicate()});
        c.init_pair("p2", "a", "b", 2, {8}, {});
        etb::Payload mesh = etb::mesh_shape_payload({1, 2});
        etb::Payload placements = etb::placements_payload({etb::Placement::partial()});
        c.init_pair("p3", "a", "b", 2, mesh, placements);
        c.init_pair("p4", "a", "b", 2, mesh.view(), etb::Bytes(), 5.0);
        c.init_pair("p5", "a", "b", 2, std::nullopt, std::nullopt, 5.0);
        EXPECT_THROW(c.init_pair("p6", "a", "b", 2, std::vector<uint8_t>{0x80}), ETB_ERR_INVALID_ARGUMENT,
                     "etb_client_init_pair");
        EXPECT_THROW(c.init_pair("p7", "a", "b", 2, {0}, {}), ETB_ERR_INVALID_ARGUMENT, "etb_mesh_shape_payload");
        CHECK(c.heartbeat_age() < 5.0, "the agent survived");
    }
    stop_agent(&agent);
    return nothing_left(rank);
}

/* The completion-returning forms of InitPair, QueryStatus and CleanupBatch, and the signal read. */
static int t_async_commands() {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, nullptr, nullptr);
    CHECK(agent.pid > 0, "agent did not start");
    set_direct(rank);
    {
        auto [c, info] = etb::bootstrap_client(nullptr, 5.0, etb::CudaMode::Skip);
        etb::Completion pair = c.init_pair_async("ap", "a", "b", 2);
        pair.wait(5.0);
        CHECK(pair.poll(), "the matched pair is done");
        etb::Completion shaped = c.init_pair_async("ap2", "a", "b", 2, {2, 4}, {etb::Placement::shard(0)}, 5.0);
        shaped.wait(5.0);
        CHECK(!c.read_transfer_signal("ab"), "an absent signal reads false");
        const uint8_t tensor[] = {0x80, 0x03, 'C', 0x02, 0x01, 0x02, 'q', 0x00, '.'};  // a whole pickle
        c.register_tensors("ab", {{"ap", tensor, sizeof tensor}});  // what the agent needs before a transfer
        c.transfer("ab", etb::TransferKind::Send);
        etb::Completion query = c.query_transfer_signal_async("ab", 5.0);
        for (double until = now_s() + 5.0; !query.poll();) CHECK(now_s() < until, "the query was not acknowledged");
        CHECK(c.read_transfer_signal("ab"), "the signal the agent recorded");
        etb::Completion cleanup = c.cleanup_batch_async("ab", 5.0);
        cleanup.wait(5.0);
        { etb::Completion unwaited = c.cleanup_batch_async("ab2"); }  // dropped unwaited: its semaphore goes
        EXPECT_THROW((void)c.init_pair_async("ap", "a", "b", 0), ETB_ERR_INVALID_ARGUMENT, "etb_client_init_pair_async");
        EXPECT_THROW((void)c.init_pair_async("ap", "a", "b", 2, std::vector<uint8_t>{0x80}), ETB_ERR_INVALID_ARGUMENT,
                     "etb_client_init_pair_async");
        EXPECT_THROW((void)c.init_pair_async("ap", "a", "b", 2, {0}, {}), ETB_ERR_INVALID_ARGUMENT,
                     "etb_mesh_shape_payload");
        etb::Client moved = std::move(c);
        EXPECT_THROW((void)c.query_transfer_signal_async("ab"), ETB_ERR_NULL_ARGUMENT, nullptr);
        EXPECT_THROW((void)c.cleanup_batch_async("ab"), ETB_ERR_NULL_ARGUMENT, nullptr);
        EXPECT_THROW((void)c.read_transfer_signal("ab"), ETB_ERR_NULL_ARGUMENT, "etb_client_read_transfer_signal");
        CHECK(moved.heartbeat_age() < 5.0, "the moved-in client works");
    }
    stop_agent(&agent);
    // An agent that does not match: the completion says so once the agent survived the InitPair.
    agent = start_agent(rank, 1, "--unmatched", nullptr);
    CHECK(agent.pid > 0, "agent did not start");
    {
        auto [c, info] = etb::bootstrap_client(nullptr, 5.0, etb::CudaMode::Skip);
        etb::Completion pair = c.init_pair_async("np", "a", "b", 2);
        EXPECT_THROW(pair.wait(5.0), ETB_ERR_PAIR_NOT_MATCHED, "InitPair \"np\" completed but");
    }
    stop_agent(&agent);
    return nothing_left(rank) && no_completion_semaphores();
}

/* Completions for an event loop: Completion::wait_for, watch, and the client's event fd with
 * take_resolved, against an agent that delays each Transfer's acknowledgement by 0.1 s. */
static int t_event_fd_and_wait_for() {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, "--ack-delay", "0.1");
    CHECK(agent.pid > 0, "agent did not start");
    set_direct(rank);
    {
        auto [c, info] = etb::bootstrap_client(nullptr, 5.0, etb::CudaMode::Skip);
        c.init_pair("ep", "a", "b", 1);
        const uint8_t tensor[] = {0x80, 0x03, 'C', 0x02, 0x01, 0x02, 'q', 0x00, '.'};
        c.register_tensors("eb", {{"ep", tensor, sizeof tensor}});
        etb::Completion slow = c.transfer_async("eb", etb::TransferKind::Send);
        CHECK(!slow.wait_for(std::chrono::milliseconds(10)), "0.1 s to the post: not done in 10 ms");
        CHECK(slow.wait_for(std::chrono::seconds(5)), "done within 5 s");
        const int fd = c.event_fd();
        CHECK(fd >= 0, "an fd");
        etb::Completion a = c.transfer_async("eb", etb::TransferKind::Send);
        etb::Completion b = c.transfer_async("eb", etb::TransferKind::Send);
        a.watch(11);
        b.watch(12);
        std::vector<uint64_t> got;
        for (double until = now_s() + 10.0; got.size() < 2 && now_s() < until;) {
            struct pollfd p = {fd, POLLIN, 0};
            if (poll(&p, 1, 1000) == 1)
                for (uint64_t t : c.take_resolved()) got.push_back(t);
        }
        CHECK(got == (std::vector<uint64_t>{11, 12}), "both resolved, in issue order (got %zu)", got.size());
        CHECK(a.poll() && b.poll(), "resolved means final");
        struct pollfd p = {fd, POLLIN, 0};
        CHECK(poll(&p, 1, 0) == 0, "drained");
    }
    stop_agent(&agent);
    return nothing_left(rank) && no_completion_semaphores();
}

/* etb::connect_client: an explicit agent rank and paths, nothing of the environment read. */
static int t_connect_client() {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, nullptr, nullptr);
    CHECK(agent.pid > 0, "agent did not start");
    const std::string base = "/tmp/agent_rank" + std::to_string(rank);
    const std::string cq = base + "_command.lmdb", st = base + "_state.lmdb";
    set_env(nullptr, nullptr, nullptr, nullptr);
    {
        etb::BootstrapOptions o;
        o.connection_timeout_s = 5.0;
        o.cuda_mode = etb::CudaMode::Skip;
        int calls = 0;
        o.path_naming_fn = [&calls](int64_t) {
            calls++;
            return std::make_pair(std::string("/nowhere/cq"), std::string("/nowhere/st"));
        };
        auto [client, info] = etb::connect_client(rank, cq, st, o);
        CHECK(calls == 0, "the naming function is not used");
        CHECK(info.method() == "direct" && info.global_rank() == -1 && info.agent_rank() == rank, "method %s",
              info.method().c_str());
        CHECK(info.command_queue_path() == cq && info.state_path() == st && info.device() == "cuda:0", "paths");
        CHECK(info.agent_pid() && *info.agent_pid() == agent.pid, "agent pid");
        CHECK(register_batch(client.get(), "cx") == ETB_OK, "register: %s", etb_last_error_message());
        client.transfer("cx", etb::TransferKind::Send);
        CHECK(client.query_transfer_signal("cx"), "commands work");
        EXPECT_THROW((void)etb::connect_client(rank, cq, cq, o), ETB_ERR_NAMING, "etb_client_connect");
        EXPECT_THROW((void)etb::connect_client(rank, std::string("/tmp/a\0b", 8), st, o), ETB_ERR_INVALID_ARGUMENT,
                     "etb::connect_client: command_queue_path has a NUL byte");
        EXPECT_THROW((void)etb::connect_client(rank, cq, std::string("/tmp/s\0", 7), o), ETB_ERR_INVALID_ARGUMENT,
                     "etb::connect_client: state_path has a NUL byte");
    }
    {
        // The defaults: an exclusive worker; a second one is refused while the first is attached.
        auto first = etb::connect_client(rank, cq, st);
        EXPECT_THROW((void)etb::connect_client(rank, cq, st), ETB_ERR_AGENT_BUSY, nullptr);
        CHECK(first.first.heartbeat_age() < 5.0, "the first client works");
    }
    etb::BootstrapOptions quick;
    quick.connection_timeout_s = 0.05;
    EXPECT_THROW((void)etb::connect_client(rank + 1, base + "0_command.lmdb", base + "0_state.lmdb", quick),
                 ETB_ERR_AGENT_NOT_FOUND, nullptr);
    stop_agent(&agent);
    return nothing_left(rank);
}

/* ---- against the fake CUDA driver ---- */

static std::optional<std::pair<etb::Client, etb::BootstrapInfo>> boot_cuda(long long rank, etb::CudaMode mode) {
    set_env(std::to_string(rank).c_str(), "0", nullptr, "1");
    etb::BootstrapOptions o;
    o.connection_timeout_s = 5.0;
    o.cuda_mode = mode;
    return etb::bootstrap_client(o);
}

static std::string read_file(const std::string &path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

static int t_cuda_payloads() {
    long long rank = fresh_rank();
    char record[] = "/tmp/etb_test_wrapper_record_XXXXXX";
    int fd = mkstemp(record);
    CHECK(fd >= 0, "mkstemp");
    close(fd);
    Agent agent = start_agent(rank, 1, "--record", record);
    CHECK(agent.pid > 0, "agent did not start");
    int ok = [&]() -> int {
        auto boot = boot_cuda(rank, etb::CudaMode::Require);
        etb::Client &c = boot->first;
        CHECK(boot->second.cuda_bound() && boot->second.device_index() == 1, "bound to cuda:1");
        const uint64_t base = fake_alloc(1, 1 << 20, 0);
        CHECK(base != 0, "fake_cuda_alloc");
        c.init_pair("pair", "a", "b", 1);

        // One payload: a protocol-3 pickle, in use until a consumer releases its slot.
        int handles = fake_count("cuIpcGetMemHandle");
        etb::Payload one = c.cuda_tensor_payload(etb::CudaTensorView(base, etb::Dtype::BFloat16, {16, 16}));
        CHECK(pickle_shaped(one), "a tensor payload is a protocol-3 pickle");
        CHECK(has_text(one, "rebuild_cuda_tensor") && has_text(one, "bfloat16"), "a bfloat16 CUDA tensor");
        CHECK(has_bytes(one, {'(', 'K', 16, 'K', 16, 't'}), "shape (16, 16)");
        CHECK(one.in_use(), "the slot reads 1 until a consumer releases it");
        // A pointer, strides, and an offset into the same allocation: the same IPC handle.
        const void *ptr = reinterpret_cast<const void *>(static_cast<std::uintptr_t>(base + 4096));
        etb::Payload strided = c.cuda_tensor_payload(
            etb::CudaTensorView(ptr, etb::Dtype::Float32, {4, 8}, std::vector<int64_t>{1, 4}));
        CHECK(pickle_shaped(strided) && has_text(strided, "float32"), "strided payload");
        CHECK(has_bytes(strided, {'(', 'K', 4, 'K', 8, 't'}) && has_bytes(strided, {'(', 'K', 1, 'K', 4, 't'}),
              "shape (4, 8), strides (1, 4)");
        CHECK(has_bytes(one, {'(', 'K', 16, 'K', 1, 't'}), "contiguous strides (16, 1) without strides");
        CHECK(fake_count("cuIpcGetMemHandle") == handles + 1, "one IPC handle per allocation");
        // With a stream: an interprocess event that lives as long as the payload.
        int events = fake_live_events();
        {
            etb::CudaTensorView v(base, etb::Dtype::Int64, {128});
            v.stream = reinterpret_cast<void *>(std::uintptr_t{2});  // CU_STREAM_PER_THREAD
            etb::Payload waited = c.cuda_tensor_payload(v);
            CHECK(fake_live_events() == events + 1, "the event lives with the payload");
            etb::Payload moved = std::move(waited);
            CHECK(fake_live_events() == events + 1 && !waited, "moving does not release");
        }
        CHECK(fake_live_events() == events, "the event died with the payload");
        // A tensor with no elements holds nothing.
        CHECK(!c.cuda_tensor_payload(etb::CudaTensorView(0, etb::Dtype::Int64, {4, 0})).in_use(), "empty tensor");

        // register_tensors with views: a Batch that keeps the payloads.
        const uint64_t second = fake_alloc(1, 1 << 16, 0);
        etb::Batch batch = c.register_tensors(
            "batch0", {{etb::CudaTensorView(base, etb::Dtype::BFloat16, {512, 512}), "pair"},
                       {etb::CudaTensorView(second, etb::Dtype::UInt8, {1 << 16}), "pair"}});
        CHECK(batch.id() == "batch0" && batch.size() == 2 && batch.pair_names()[1] == "pair", "batch");
        CHECK(batch.in_use(), "nobody released the slots");
        for (const etb::Payload &p : batch.payloads()) CHECK(pickle_shaped(p) && p.in_use(), "batch payload");
        c.transfer("batch0", etb::TransferKind::Send);
        CHECK(c.query_transfer_signal("batch0"), "signal after send");
        // Two steps: make the batch, then send it.
        etb::Batch made = c.make_batch("batch1", {{etb::CudaTensorView(second, etb::Dtype::Int32, {16}), "pair"}});
        c.register_batch(made, int64_t{1} << 20);
        // The byte overload takes payloads too.
        c.register_tensors("batch2", {{"pair", one}, {"pair", strided.view()}});
        // Batches move, and outlive the client.
        etb::Batch kept = std::move(batch);
        CHECK(batch.size() == 0 && !batch.in_use(), "a moved-from batch holds nothing");
        CHECK(kept.id() == "batch0" && kept.in_use(), "the moved-in batch");
        c.cleanup_batch("batch0");
        CHECK(kept.in_use(), "the dev agent holds no torch tensor: the slot stays 1");
        boot.reset();  // closes the client
        CHECK(kept.in_use() && pickle_shaped(kept.payloads()[0]), "the batch outlives its client");

        std::string log = read_file(record);
        CHECK(contains(log, "RegisterTensors") && contains(log, "batch0") && contains(log, "batch1") &&
                  contains(log, "batch2"),
              "the agent got the batches: %s", log.c_str());
        return 1;
    }();
    stop_agent(&agent);
    unlink(record);
    return ok && nothing_left(rank);
}

static int t_cuda_errors() {
    long long rank = fresh_rank(), rank2 = fresh_rank();
    char record[] = "/tmp/etb_test_wrapper_record_XXXXXX";
    int fd = mkstemp(record);
    CHECK(fd >= 0, "mkstemp");
    close(fd);
    Agent agent = start_agent(rank, 1, "--record", record);
    Agent agent2 = start_agent(rank2, 1, nullptr, nullptr);
    CHECK(agent.pid > 0 && agent2.pid > 0, "agents did not start");
    int ok = [&]() -> int {
        auto boot = boot_cuda(rank, etb::CudaMode::Require);
        const etb::Client &c = boot->first;
        const uint64_t dev = fake_alloc(1, 4096, 0), host = fake_alloc(1, 4096, 1), other = fake_alloc(0, 4096, 0);
        EXPECT_THROW((void)c.cuda_tensor_payload(etb::CudaTensorView(0x1234, etb::Dtype::Float32, {16})),
                     ETB_ERR_INVALID_ARGUMENT, "unknown to the CUDA driver");
        EXPECT_THROW((void)c.cuda_tensor_payload(etb::CudaTensorView(host, etb::Dtype::Float32, {16})),
                     ETB_ERR_INVALID_ARGUMENT, "host memory");
        EXPECT_THROW((void)c.cuda_tensor_payload(etb::CudaTensorView(other, etb::Dtype::Float32, {16})),
                     ETB_ERR_INVALID_ARGUMENT, "another device (cuda:0)");
        EXPECT_THROW((void)c.cuda_tensor_payload(etb::CudaTensorView(dev, etb::Dtype::Float32, {4096})),
                     ETB_ERR_INVALID_ARGUMENT, "past the end of its allocation");
        EXPECT_THROW((void)c.cuda_tensor_payload(etb::CudaTensorView(dev, static_cast<etb::Dtype>(12), {16})),
                     ETB_ERR_INVALID_ARGUMENT, "etb_client_cuda_tensor_payload: ");
        // DLPack: a refusal leaves the tensor the caller's; a payload owns it (no elements: its
        // deleter runs with the Payload's destructor).
        {
            static int deleted = 0;
            int64_t shape[1] = {0};
            DLManagedTensorVersioned m{};
            m.version.major = DLPACK_MAJOR_VERSION;
            m.deleter = [](DLManagedTensorVersioned *) { deleted++; };
            m.dl_tensor.device = DLDevice{kDLCPU, 0};
            m.dl_tensor.ndim = 1;
            m.dl_tensor.shape = shape;
            m.dl_tensor.dtype = DLDataType{kDLFloat, 32, 1};
            EXPECT_THROW((void)c.dlpack_payload(&m), ETB_ERR_INVALID_ARGUMENT, "kDLCPU");
            DLManagedTensor l{};
            l.dl_tensor = m.dl_tensor;
            l.deleter = [](DLManagedTensor *) { deleted++; };
            EXPECT_THROW((void)c.dlpack_legacy_payload(&l), ETB_ERR_INVALID_ARGUMENT, "kDLCPU");
            CHECK(deleted == 0, "a refusal ran the deleter");
            m.dl_tensor.device = DLDevice{kDLCUDA, 1};
            l.dl_tensor.device = DLDevice{kDLCUDA, 1};
            {
                etb::Payload p = c.dlpack_payload(&m, nullptr);
                etb::Payload q = c.dlpack_legacy_payload(&l);
                CHECK(!p.in_use() && deleted == 0, "no elements: not in use, nothing run yet");
            }
            CHECK(deleted == 2, "each deleter once, with the Payload (%d)", deleted);
        }
        EXPECT_THROW(
            (void)c.cuda_tensor_payload(etb::CudaTensorView(dev, etb::Dtype::Float32, {4, 4}, std::vector<int64_t>{1})),
            ETB_ERR_INVALID_ARGUMENT, "etb::Client::cuda_tensor_payload: strides has 1 entries, shape 2");
        // All or nothing: a bad second tensor sends nothing.
        EXPECT_THROW((void)c.register_tensors("bad", {{etb::CudaTensorView(dev, etb::Dtype::Float32, {16}), "p"},
                                                      {etb::CudaTensorView(host, etb::Dtype::Float32, {16}), "p"}}),
                     ETB_ERR_INVALID_ARGUMENT, "host memory");
        CHECK(c.heartbeat_age() < 5.0, "the agent is alive");
        CHECK(!contains(read_file(record), "RegisterTensors"), "nothing was enqueued: %s", read_file(record).c_str());
        // An unbound client.
        auto unbound = boot_cuda(rank2, etb::CudaMode::Skip);
        EXPECT_THROW((void)unbound->first.cuda_tensor_payload(etb::CudaTensorView(dev, etb::Dtype::Float32, {16})),
                     ETB_ERR_CUDA, "not bound to a GPU");
        // A moved-from client.
        etb::Client gone = std::move(unbound->first);
        EXPECT_THROW((void)unbound->first.cuda_tensor_payload(etb::CudaTensorView(dev, etb::Dtype::Float32, {16})),
                     ETB_ERR_NULL_ARGUMENT, nullptr);
        return 1;
    }();
    stop_agent(&agent);
    stop_agent(&agent2);
    unlink(record);
    return ok && nothing_left(rank) && nothing_left(rank2);
}

// BootstrapOptions::device_index: one process, two agents, each client on its own device (the
// fake driver has two); empty is the default (cuda:0 for connect_client); a device the driver
// does not have throws ETB_ERR_CUDA naming both.
static int t_cuda_device_index() {
    long long r0 = fresh_rank(), r1 = fresh_rank();
    Agent a0 = start_agent(r0, 1, nullptr, nullptr), a1 = start_agent(r1, 1, nullptr, nullptr);
    CHECK(a0.pid > 0 && a1.pid > 0, "agents did not start");
    auto paths = [](long long rank) {
        const std::string base = "/tmp/agent_rank" + std::to_string(rank);
        return std::make_pair(base + "_command.lmdb", base + "_state.lmdb");
    };
    int ok = [&]() -> int {
        etb::BootstrapOptions o;
        o.connection_timeout_s = 5.0;
        o.cuda_mode = etb::CudaMode::Require;
        CHECK(!o.device_index && etb::detail::c_options(o, nullptr).device_index == -1, "empty: the C default, -1");
        {
            auto [client, info] = etb::connect_client(r0, paths(r0).first, paths(r0).second, o);
            CHECK(info.device() == "cuda:0" && info.device_index() == 0, "connect's default: %s",
                  info.device().c_str());
        }
        etb::BootstrapOptions o0 = o, o1 = o;
        o0.device_index = 0;
        o1.device_index = 1;
        CHECK(etb::detail::c_options(o1, nullptr).device_index == 1, "c_options carries the choice");
        {
            auto [c0, i0] = etb::connect_client(r0, paths(r0).first, paths(r0).second, o0);
            auto [c1, i1] = etb::connect_client(r1, paths(r1).first, paths(r1).second, o1);
            CHECK(i0.device() == "cuda:0" && i0.device_name() == std::optional<std::string>("Fake GPU 0"),
                  "client 0");
            CHECK(i1.device() == "cuda:1" && i1.device_index() == 1 &&
                      i1.device_name() == std::optional<std::string>("Fake GPU 1"),
                  "client 1: %s", i1.device().c_str());
            CHECK(c0.cuda_context() != c1.cuda_context(), "two primary contexts");
            const uint64_t m0 = fake_alloc(0, 4096, 0), m1 = fake_alloc(1, 4096, 0);
            etb::Payload p0 = c0.cuda_tensor_payload(etb::CudaTensorView(m0, etb::Dtype::Float32, {16}));
            etb::Payload p1 = c1.cuda_tensor_payload(etb::CudaTensorView(m1, etb::Dtype::Float32, {16}));
            CHECK(has_text(p0, std::string("float32\nK\0", 10)) && has_text(p1, "float32\nK\x01"),
                  "each payload names its device");
            EXPECT_THROW((void)c1.cuda_tensor_payload(etb::CudaTensorView(m0, etb::Dtype::Float32, {16})),
                         ETB_ERR_INVALID_ARGUMENT, "another device (cuda:0) than the client's (cuda:1)");
        }
        etb::BootstrapOptions missing = o;
        missing.device_index = 5;
        missing.cuda_mode = etb::CudaMode::Auto;
        EXPECT_THROW((void)etb::connect_client(r0, paths(r0).first, paths(r0).second, missing), ETB_ERR_CUDA,
                     "device_index 5 is past the 2 device(s) the driver reports");
        return 1;
    }();
    stop_agent(&a0);
    stop_agent(&a1);
    return ok && nothing_left(r0) && nothing_left(r1);
}

// etb::set_log_callback: records arrive with level and target (ctest sets
// ETB_LOG=warn,etb_core::bootstrap=info), a throwing function is contained by the noexcept
// trampoline, an empty function restores stderr and the previous one is never called again.
static int t_log_callback() {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, nullptr, nullptr);
    CHECK(agent.pid > 0, "agent did not start");
    set_direct(rank);
    std::mutex m;
    std::vector<std::pair<int32_t, std::string>> seen;
    etb::set_log_callback([&](int32_t level, std::string_view target, std::string_view message) {
        std::lock_guard<std::mutex> lock(m);
        seen.emplace_back(level, std::string(target) + "|" + std::string(message));
    });
    { auto [client, info] = etb::bootstrap_client(nullptr, 5.0, etb::CudaMode::Skip); }
    size_t after_first;
    {
        std::lock_guard<std::mutex> lock(m);
        after_first = seen.size();
        bool found = std::any_of(seen.begin(), seen.end(), [](const std::pair<int32_t, std::string> &r) {
            return r.first == ETB_LOG_INFO && starts_with(r.second, "etb_core::bootstrap|bootstrapped:");
        });
        CHECK(found, "no INFO record from etb_core::bootstrap among %zu", seen.size());
        CHECK(std::none_of(seen.begin(), seen.end(), [](const std::pair<int32_t, std::string> &r) {
                  return r.first > ETB_LOG_INFO;
              }), "ETB_LOG let a DEBUG or TRACE record through");
    }
    int thrown = 0;
    etb::set_log_callback([&](int32_t, std::string_view, std::string_view) {
        thrown++;
        throw std::runtime_error("a log function that throws");
    });
    { auto [client, info] = etb::bootstrap_client(nullptr, 5.0, etb::CudaMode::Skip); }
    CHECK(thrown > 0, "the throwing function got no record");
    etb::set_log_callback({});
    { auto [client, info] = etb::bootstrap_client(nullptr, 5.0, etb::CudaMode::Skip); }
    {
        std::lock_guard<std::mutex> lock(m);
        CHECK(seen.size() == after_first, "a replaced function got %zu more records", seen.size() - after_first);
    }
    stop_agent(&agent);
    return nothing_left(rank);
}

int main() {
    g_next_rank = (long long)getpid() * 1000 + 700;
    signal(SIGPIPE, SIG_IGN);
    run_case("bootstrap_and_ownership", t_bootstrap_and_ownership);
    run_case("exceptions", t_exceptions);
    run_case("commands", t_commands);
    run_case("bootstrap_options", t_bootstrap_options);
    run_case("layout_payloads", t_layout_payloads);
    run_case("init_pair_payloads", t_init_pair_payloads);
    run_case("log_callback", t_log_callback);
    run_case("async_commands", t_async_commands);
    run_case("connect_client", t_connect_client);
    run_case("event_fd_and_wait_for", t_event_fd_and_wait_for);
    run_cuda_case("cuda_payloads", t_cuda_payloads);
    run_cuda_case("cuda_errors", t_cuda_errors);
    run_cuda_case("cuda_device_index", t_cuda_device_index);
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
