// The C++ wrapper: ownership (moves, destructors; run under AddressSanitizer, LeakSanitizer and
// UBSan by the test runner), exceptions, and the command methods, against etb-dev-agent.
#define _POSIX_C_SOURCE 200809L
#include "etha_tensor_bus.hpp"

#include "../c/harness.h"

#include <type_traits>

static_assert(!std::is_copy_constructible<etb::Client>::value, "Client is move-only");
static_assert(!std::is_copy_assignable<etb::BootstrapInfo>::value, "BootstrapInfo is move-only");
static_assert(std::is_nothrow_move_constructible<etb::Completion>::value, "Completion moves");
static_assert(std::is_base_of<std::runtime_error, etb::Error>::value, "Error is a runtime_error");

#include <dlfcn.h>

/* A GPU machine: the "no driver" checks do not apply there (tests/gpu/check.sh covers it). */
static bool have_cuda_driver() {
    void *h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (h) dlclose(h);
    return h != nullptr;
}

struct MyError {
    int code;
};

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
            try {
                client.bind_current_thread();
                CHECK(false, "binding an unbound client did not throw");
            } catch (const etb::Error &e) {
                CHECK(e.status() == ETB_ERR_CUDA, "status %d", e.status());
            }
        }
        etb::Client moved = std::move(client);
        CHECK(client.get() == nullptr && moved.get() != nullptr, "move leaves the source empty");
        etb::BootstrapInfo info2 = std::move(info);
        CHECK(info2.agent_rank() == rank && info.get() == nullptr, "info moves");
        CHECK(moved.heartbeat_age() < 5.0, "heartbeat");
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
    try {
        etb::bootstrap_client(nullptr, 0.0);
        CHECK(false, "no exception for a missing RANK");
    } catch (const etb::Error &e) {
        CHECK(e.status() == ETB_ERR_ENV, "status %d", e.status());
        CHECK(std::string(e.what()).find("RANK is not set") != std::string::npos, "%s", e.what());
    }
    set_env("0", "0", nullptr, nullptr);
    try {
        etb::bootstrap_client([](int64_t) -> std::pair<std::string, std::string> { throw MyError{42}; }, 0.0);
        CHECK(false, "the naming function's exception was lost");
    } catch (const MyError &e) {
        CHECK(e.code == 42, "the exception reaches the caller as itself");
    }
    try {
        etb::bootstrap_client([](int64_t) { return std::make_pair(std::string("/tmp/a\0b", 8), std::string("/tmp/s")); }, 0.0);
        CHECK(false, "a path with a NUL byte was accepted");
    } catch (const etb::Error &e) {
        CHECK(e.status() == ETB_ERR_NAMING, "status %d", e.status());
    }
    set_direct(fresh_rank());
    try {
        etb::bootstrap_client(nullptr, 0.05);
        CHECK(false, "no exception without an agent");
    } catch (const etb::Error &e) {
        CHECK(e.status() == ETB_ERR_AGENT_NOT_FOUND, "status %d", e.status());
    }
    return 1;
}

static int t_commands() {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, "--unmatched", nullptr);
    CHECK(agent.pid > 0, "agent did not start");
    set_direct(rank);
    {
        auto boot = etb::bootstrap_client(nullptr, 5.0, etb::CudaMode::Skip);
        etb::Client &c = boot.first;
        try {
            c.init_pair("p", "a", "b", 2);
            CHECK(false, "an unmatched pair did not throw");
        } catch (const etb::Error &e) {
            CHECK(e.status() == ETB_ERR_PAIR_NOT_MATCHED, "status %d", e.status());
        }
        // Payloads must look like pickles: pickle.dumps(b"\x01\x02", 3) and pickle.dumps(None, 4).
        const uint8_t data[] = {0x80, 0x03, 'C', 0x02, 0x01, 0x02, 'q', 0x00, '.'};
        const uint8_t none[] = {0x80, 0x04, 'N', '.'};
        c.register_tensors("b", {{"p", data, sizeof data}, {"p", none, sizeof none}}, int64_t{1} << 20);
        c.transfer("b", etb::TransferKind::Send);
        CHECK(c.query_transfer_signal("b"), "signal after send");
        etb::Completion done = c.transfer_async("b", etb::TransferKind::Recv);
        done.wait(5.0);
        CHECK(done.poll(), "poll after wait");
        etb::Completion moved = std::move(done);
        CHECK(done.get() == nullptr, "completion moves");
        c.transfer_detached("b2", etb::TransferKind::Send);
        c.cleanup_batch("b");
        try {
            c.transfer("b", static_cast<etb::TransferKind>(7));
            CHECK(false, "a bad kind did not throw");
        } catch (const etb::Error &e) {
            CHECK(e.status() == ETB_ERR_INVALID_ARGUMENT, "status %d", e.status());
        }
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
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
