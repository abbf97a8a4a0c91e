/*
 * C test of completions in an epoll loop: the client's event fd (etb_client_event_fd) in an
 * epoll set, several watched completions (etb_completion_watch), their tokens taken with
 * etb_client_take_resolved as the fd turns readable; an agent killed under a watched completion
 * makes the fd readable and the poll says ETB_ERR_AGENT_DIED. Against etb-dev-agent processes.
 * Compiled as C11 and as C++17 with -Wall -Wextra -Werror. Needs ETB_DEV_AGENT.
 */
#define _POSIX_C_SOURCE 200809L
#include "etha_tensor_bus.h"

#include "harness.h"

#include <sys/epoll.h>

static EtbClient *connect_to(long long rank) {
    EtbClient *client = NULL;
    EtbBootstrapInfo *info = NULL;
    set_direct(rank);
    if (etb_bootstrap_client(NULL, NULL, 5.0, &client, &info) != ETB_OK) return NULL;
    etb_info_free(info);
    return client;
}

/* Five transfers, each acknowledged 50 ms after the last: an epoll loop collects their tokens. */
static int t_epoll_loop_collects_every_completion(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, "--ack-delay", "0.05");
    EtbClient *c;
    EtbCompletion *done[5];
    int fd = -1, ep, got = 0, i, seen[5] = {0, 0, 0, 0, 0};
    struct epoll_event ev;
    bool finished = false;
    double until;
    CHECK(agent.pid > 0, "agent did not start");
    c = connect_to(rank);
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(register_batch(c, "epb"), ETB_OK);
    EXPECT(etb_client_event_fd(c, &fd), ETB_OK);
    EXPECT(etb_client_event_fd(c, NULL), ETB_ERR_NULL_ARGUMENT);
    ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0, "epoll_create1");
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll_ctl");
    for (i = 0; i < 5; i++) {
        EXPECT(etb_client_transfer_async(c, "epb", ETB_TRANSFER_SEND, 5.0, &done[i]), ETB_OK);
        EXPECT(etb_completion_watch(done[i], (uint64_t)(1000 + i)), ETB_OK);
    }
    CHECK(epoll_wait(ep, &ev, 1, 0) == 0, "nothing resolved at once: the fd is not readable");
    for (until = now_s() + 20.0; got < 5 && now_s() < until;) {
        uint64_t tokens[2];
        size_t n = 0, k;
        if (epoll_wait(ep, &ev, 1, 1000) != 1) continue;
        EXPECT(etb_client_take_resolved(c, tokens, 2, &n), ETB_OK);
        CHECK(n >= 1 && n <= 2, "readable: at least one token waits (got %zu)", n);
        for (k = 0; k < n; k++) {
            CHECK(tokens[k] >= 1000 && tokens[k] < 1005 && !seen[tokens[k] - 1000], "token %llu", (unsigned long long)tokens[k]);
            seen[tokens[k] - 1000] = 1;
            got++;
        }
    }
    CHECK(got == 5, "every completion resolved (got %d)", got);
    CHECK(epoll_wait(ep, &ev, 1, 0) == 0, "drained once every token was taken");
    for (i = 0; i < 5; i++) {
        EXPECT(etb_completion_poll(done[i], &finished), ETB_OK);
        CHECK(finished, "resolved means final: completion %d", i);
        etb_completion_free(done[i]);
    }
    {
        size_t n = 7;
        EXPECT(etb_client_take_resolved(c, NULL, 0, &n), ETB_OK);
        CHECK(n == 0, "nothing left");
        EXPECT(etb_client_take_resolved(c, NULL, 3, &n), ETB_ERR_NULL_ARGUMENT);
        EXPECT(etb_client_take_resolved(NULL, NULL, 0, &n), ETB_ERR_NULL_ARGUMENT);
        EXPECT(etb_completion_watch(NULL, 1), ETB_ERR_NULL_ARGUMENT);
    }
    close(ep);
    etb_client_close(c);
    stop_agent(&agent);
    return nothing_left(rank);
}

/* A watched completion whose agent is killed: the fd turns readable, the poll says AGENT_DIED. */
static int t_a_dead_agent_resolves_its_watched_completion(void) {
    long long rank = fresh_rank();
    Agent agent = start_agent(rank, 1, "--never-ack", "Transfer");
    EtbClient *c;
    EtbCompletion *done = NULL;
    int fd = -1, ep;
    struct epoll_event ev;
    uint64_t token = 0;
    size_t n = 0;
    bool finished = true;
    CHECK(agent.pid > 0, "agent did not start");
    c = connect_to(rank);
    CHECK(c != NULL, "bootstrap: %s", etb_last_error_message());
    EXPECT(register_batch(c, "epd"), ETB_OK);
    EXPECT(etb_client_transfer_async(c, "epd", ETB_TRANSFER_SEND, 5.0, &done), ETB_OK);
    EXPECT(etb_completion_watch(done, 42), ETB_OK);
    EXPECT(etb_client_event_fd(c, &fd), ETB_OK);
    ep = epoll_create1(EPOLL_CLOEXEC);
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll_ctl");
    CHECK(epoll_wait(ep, &ev, 1, 200) == 0, "never acknowledged: not readable");
    kill(agent.pid, SIGKILL);
    waitpid(agent.pid, NULL, 0);
    agent.pid = 0;
    CHECK(epoll_wait(ep, &ev, 1, 10000) == 1, "the death made the fd readable");
    EXPECT(etb_client_take_resolved(c, &token, 1, &n), ETB_OK);
    CHECK(n == 1 && token == 42, "the dead agent's completion (n %zu, token %llu)", n, (unsigned long long)token);
    EXPECT(etb_completion_poll(done, &finished), ETB_ERR_AGENT_DIED);
    etb_completion_free(done);
    close(ep);
    etb_client_close(c);
    remove_agent_files(rank);
    return nothing_left(rank);
}

int main(void) {
    g_next_rank = (long long)getpid() * 1000 + 200;
    signal(SIGPIPE, SIG_IGN);
    run_case("epoll_loop_collects_every_completion", t_epoll_loop_collects_every_completion);
    run_case("a_dead_agent_resolves_its_watched_completion", t_a_dead_agent_resolves_its_watched_completion);
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
