// event_loop.hpp: one thread runs both the Asio io_context and every scheduled actor.
//
// Why (docs/performance.md): on these machines a cross-thread wake-up costs 5-20 us, while
// an actor hop on the same thread costs about 1 us. With a separate io thread, every
// request a server receives crosses threads twice (io thread -> CAF worker, and the worker
// back to sleep), so the broker could never get near a raw socket's round trip. Here the
// CAF scheduler's only worker *is* the io thread:
//  - an io handler that sends to an actor enqueues it on its own thread: nobody is woken;
//  - when no actor has work, the thread blocks in the io_context (epoll), not on a condvar;
//  - a message from any other thread (a caller, CAF's clock thread) wakes it by posting a
//    no-op to the io_context, and only when it is asleep;
//  - while actors are busy, ready io handlers still run every `poll_every` jobs;
//  - writes that actors queue on the loop thread are flushed when the actor queue drains
//    (defer_flush), so the replies to one read batch leave in one sendmsg.
//
// Everything on the loop thread must be non-blocking. Hosts whose device handlers block
// use runtime_options::single_loop = false (a separate io thread and N CAF workers).
#pragma once

#include <boost/asio/io_context.hpp>
#include <caf/actor_system_config.hpp>

#include <memory>

namespace vfu {

/// Something with writes to flush when the loop goes idle (stream_transport).
class deferred_writer {
 public:
  virtual ~deferred_writer() = default;
  virtual void flush_deferred() = 0;
};

namespace event_loop {

/// Jobs the loop runs between two looks at the io_context while actors are busy.
inline constexpr int poll_every = 64;

/// True on the thread that runs the event loop (of any runtime in this process).
bool on_loop_thread() noexcept;

/// Loop thread only: calls w->flush_deferred() before the loop next waits for or polls io.
void defer_flush(std::shared_ptr<deferred_writer> w);

/// Makes the actor system built from `cfg` schedule every actor on one worker thread that
/// also runs `io`. `io` must outlive the actor system.
void install(caf::actor_system_config& cfg, boost::asio::io_context& io);

}  // namespace event_loop
}  // namespace vfu
