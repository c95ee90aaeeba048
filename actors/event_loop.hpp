// event_loop.hpp: one thread runs both the Asio io_context and every scheduled actor.
//
// Why (docs/performance.md): a cross-thread wake-up costs many times an actor hop on the
// same thread. With a separate io thread, every
// request a server receives crosses threads twice (io thread -> CAF worker, and the worker
// back to sleep), so the broker could never get near a raw socket's round trip. Here the
// CAF scheduler's only worker *is* the io thread:
//  - an io handler that sends to an actor enqueues it on its own thread: nobody is woken;
//  - when no actor has work, the thread blocks in the io_context (epoll), not on a condvar;
//  - a message from any other thread (a caller, CAF's clock thread) wakes it by posting a
//    no-op to the io_context, and only when it is asleep;
//  - while actors are busy, ready io handlers still run every `poll_every` jobs;
//  - writes that actors queue on the loop thread are flushed when the actor queue drains
//    (defer_flush), so the replies to one read batch leave in one sendmsg;
//  - optionally (poll_max_ns), the idle loop polls for a while before it blocks, as QEMU's
//    iothreads do: a request that arrives within the window costs no wake-up.
//
// Everything on the loop thread must be non-blocking. Hosts whose device handlers block
// use runtime_options::single_loop = false (a separate io thread and N CAF workers).
#pragma once

#include <boost/asio/io_context.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>

/// For thread-locals read several times a request: the initial-exec model reads them at an
/// offset from the thread pointer, not through a __tls_get_addr call each (the default in a
/// shared library). They take a few words of static TLS, which glibc reserves room for
/// even if the library is loaded with dlopen.
#define VFU_HOT_TLS thread_local __attribute__((tls_model("initial-exec")))

namespace vfu {

/// Something with writes to flush when the loop goes idle (stream_transport).
class deferred_writer {
 public:
  virtual ~deferred_writer() = default;
  virtual void flush_deferred() = 0;
};

/// A socket the idle loop may read directly while it polls (stream_transport).
class pollable {
 public:
  virtual ~pollable() = default;
  /// Loop thread: one non-blocking read pass. True if it received anything (bytes, EOF or
  /// an error), i.e. the loop has work again.
  virtual bool poll_read() = 0;
  /// Shared ownership of this object (taken only when the loop starts keeping it).
  virtual std::shared_ptr<pollable> pollable_ref() = 0;
  /// Loop thread: make sure a readiness wait is pending (called before the loop blocks, for
  /// a socket whose wait was left unarmed while the loop polled it: arm_later).
  virtual void arm_wait() = 0;
  /// Loop thread: the loop's own set (watch()) reports it ready: what a readiness wait's
  /// event does (a write waiting for room, then a read pass). True if it received anything.
  virtual bool on_ready() = 0;
  /// Loop thread: a loop that does not poll takes this socket, which waits in Asio's
  /// reactor by itself, into its own set (with add_to_watch()): another socket came (watch()).
  virtual void join_watch() {}
};

namespace event_loop {

/// Jobs the loop runs between two looks at the io_context while actors are busy.
inline constexpr int poll_every = 64;

/// True on the thread that runs the event loop (of any runtime in this process).
bool on_loop_thread() noexcept;

/// True on the thread that runs `sys`'s event loop: there, no actor of `sys` runs unless
/// this thread runs it.
bool on_loop_of(const caf::actor_system& sys) noexcept;

/// QEMU's adaptive polling (util/aio-posix.c, adjust_polling_time; an iothread's
/// poll-max-ns): how long to poll before blocking. A wait that ended within the window
/// needs no change; one that would have needed more than max_ns resets the window to 0
/// (QEMU's default shrink); one shorter than max_ns grows it (4 us, then doubling). Used by
/// the idle loop and by a caller waiting for its reply (endpoint_config::caller_poll_max_ns).
struct adaptive_poll {
  int64_t max_ns = 0;  ///< 0: never poll
  int64_t ns = 0;      ///< the current window
  void adjust(int64_t wait_ns) {
    if (wait_ns <= ns) return;
    if (wait_ns > max_ns) ns = 0;
    else if (ns < max_ns) ns = std::min(max_ns, ns ? ns * 2 : int64_t{4000});
  }
};

/// Loop thread only: calls w->flush_deferred() before the loop next waits for or polls io.
void defer_flush(std::shared_ptr<deferred_writer> w);

/// Loop thread: `p` just received data, so while the loop polls it reads `p` directly
/// (a recvmsg) instead of asking epoll. The loop keeps the few most recently active
/// sockets, until it next blocks. A no-op unless the loop polls (poll_max_ns > 0).
void note_active(pollable& p);

/// Loop thread: `p`'s readiness wait just fired. If the loop polls, it keeps reading `p`
/// directly and re-arms the wait only before it blocks (or when `p` leaves its hot list):
/// true, and the caller must not arm now. Asio re-arms a wait with an epoll_ctl each time,
/// and while the loop polls, a wait that fires only duplicates what a direct read finds.
/// False: the loop does not poll; arm now.
bool arm_later(pollable& p);

/// Loop thread: the loop watches `p` itself from now on, in a level-triggered epoll set of
/// its own where `fd` is registered with `events`: `p` then needs no readiness wait of its
/// own, ever, and the loop finds every ready socket with one epoll_wait. Returns that set's
/// fd, with `id` the data its events for `fd` must carry (for `p` to change them with
/// EPOLL_CTL_MOD, to take `fd` out while it waits for nothing, since epoll reports a
/// hang-up whatever the events, and out for good when it stops reading, before `fd`
/// closes), or -1: use a wait of its own.
/// A polling loop takes every socket. One that does not poll takes only sockets that could
/// wait in Asio's reactor by themselves (`alone_ok`), and only once it reads more than one:
/// a lone socket waits in the reactor (one readiness layer, not two), and the loop moves it
/// into the set (pollable::join_watch) when a second one comes; sockets stay in the set for
/// good (docs/architecture.md).
int watch(pollable& p, int fd, uint32_t events, uint64_t& id, bool alone_ok);
/// Loop thread: what watch() does once it has decided to take `p` (join_watch() calls it).
int add_to_watch(pollable& p, int fd, uint32_t events, uint64_t& id);

/// What the loop did when it ran out of work (inspection).
struct loop_stats {
  uint64_t idle = 0;         ///< times the loop ran out of work
  uint64_t caught = 0;       ///< ... and found new work while polling, without blocking
  uint64_t direct_reads = 0; ///< ... of those, by reading a recently active socket directly
  uint64_t blocked = 0;      ///< ... and blocked in epoll
  int64_t poll_ns = 0;       ///< the current adaptive window
  uint64_t watched = 0;      ///< sockets in the loop's own set (watch()), closed ones not yet swept
};
/// The loop's counters, or nullopt if `sys` does not run on an event loop (single_loop off).
std::optional<loop_stats> stats(caf::actor_system& sys);

/// Makes the actor system built from `cfg` schedule every actor on one worker thread that
/// also runs `io`. `io` must outlive the actor system. With `poll_max_ns` > 0 the idle loop
/// polls adaptively for up to that long before it blocks (runtime_options::poll_max_ns).
void install(caf::actor_system_config& cfg, boost::asio::io_context& io, int64_t poll_max_ns = 0);

}  // namespace event_loop
}  // namespace vfu
