#include "actors/event_loop.hpp"

#include <sched.h>
#include <sys/epoll.h>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <caf/policy/unprofiled.hpp>
#include <caf/resumable.hpp>
#include <caf/scheduler/coordinator.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace vfu::event_loop {

namespace {

VFU_HOT_TLS bool t_on_loop = false;
VFU_HOT_TLS caf::actor_system* t_loop_system = nullptr;  // the system whose loop this thread runs
VFU_HOT_TLS std::vector<std::shared_ptr<deferred_writer>>* t_deferred = nullptr;
VFU_HOT_TLS std::vector<std::shared_ptr<pollable>>* t_hot = nullptr;  // null: the loop never polls
// The loop's own set (watch()): sockets registered once, level-triggered. One epoll_wait(0)
// finds all the ready ones, and none needs an Asio wait of its own, which Asio re-arms with
// an epoll_ctl each time. A polling loop puts every socket there; one that does not, every
// socket from the second on (the first joins then). Loop thread only.
struct watch_table {
  int ep = -1;  ///< -1: no set (epoll_create1 failed)
  bool polls = false;
  /// A loop that does not poll: the sockets waiting in Asio's reactor by themselves, which
  /// join the set when another socket comes (at most one is live).
  std::vector<std::weak_ptr<pollable>> alone;
  std::unordered_map<uint64_t, std::weak_ptr<pollable>> watched;
  uint64_t next = 0;
  /// A socket that closed left the set but not the table: the expired entries go when the
  /// table has doubled since the last sweep (a weak_ptr holds its transport's memory).
  size_t sweep_at = 64;
  std::atomic<size_t> size{0};  ///< watched.size(), for stats()
};
VFU_HOT_TLS watch_table* t_watch = nullptr;

// Sockets read directly while the loop polls: the most recently active ones.
constexpr size_t max_hot = 4;
// While it has hot sockets, the polling loop also asks epoll (other sockets, timers, posted
// handlers) once in this many rounds.
constexpr int epoll_every = 4;

// Swaps with a spare that keeps its capacity: no allocation per flush.
void run_deferred(std::vector<std::shared_ptr<deferred_writer>>& v) {
  static VFU_HOT_TLS std::vector<std::shared_ptr<deferred_writer>> batch;
  while (!v.empty()) {
    batch.swap(v);
    for (auto& w : batch) w->flush_deferred();
    batch.clear();
  }
}

// A CAF scheduler policy (the interface of caf::policy::work_sharing) whose one worker
// waits in the io_context instead of on a condition variable.
class loop_policy : public caf::policy::unprofiled {
 public:
  struct coordinator_data {
    explicit coordinator_data(caf::scheduler::abstract_coordinator*) {}
    std::mutex lock;
    std::condition_variable cv;  ///< only once the io_context has stopped (shutdown)
    std::deque<caf::resumable*> queue;
    boost::asio::io_context* io = nullptr;
    bool sleeping = false;     ///< the loop is (about to be) blocked in the io_context
    bool wake_posted = false;  ///< a wake-up is on its way; no need for another
    int budget = poll_every;
    std::vector<std::shared_ptr<deferred_writer>> deferred;  ///< loop thread only
    adaptive_poll poll;                                      ///< loop thread only
    std::atomic<uint64_t> idle{0}, caught{0}, direct_reads{0}, blocked{0};  ///< stats()
    std::atomic<int64_t> window{0};  ///< poll.ns, for stats()
    std::vector<std::shared_ptr<pollable>> hot;              ///< loop thread only
    watch_table wt;                                                    ///< loop thread only
    std::unique_ptr<boost::asio::posix::stream_descriptor> ep_asio;  ///< wt.ep, to sleep in Asio
    std::shared_ptr<bool> ep_armed = std::make_shared<bool>(false);  ///< an Asio wait on it is pending
  };
  struct worker_data {
    explicit worker_data(caf::scheduler::abstract_coordinator*) {}
  };

  template <class Coordinator>
  void enqueue(Coordinator* c, caf::resumable* job) {
    auto& st = d(c);
    bool wake = false;
    {
      std::lock_guard<std::mutex> g(st.lock);
      st.queue.push_back(job);
      // On the loop thread (an io handler inside run_one sending to an actor) nothing needs
      // waking: the loop looks at the queue as soon as the handler returns.
      if (st.sleeping && !st.wake_posted && !t_on_loop) wake = st.wake_posted = true;
    }
    if (wake) {
      boost::asio::post(*st.io, [] {});
      st.cv.notify_one();
    }
  }
  template <class Coordinator>
  void central_enqueue(Coordinator* c, caf::resumable* job) {
    enqueue(c, job);
  }
  template <class Worker>
  void external_enqueue(Worker* w, caf::resumable* job) {
    enqueue(w->parent(), job);
  }
  template <class Worker>
  void internal_enqueue(Worker* w, caf::resumable* job) {
    enqueue(w->parent(), job);
  }
  template <class Worker>
  void resume_job_later(Worker* w, caf::resumable* job) {
    enqueue(w->parent(), job);
  }

  template <class Worker>
  caf::resumable* dequeue(Worker* w) {
    auto& st = d(w->parent());
    t_on_loop = true;
    t_loop_system = &w->system();
    t_deferred = &st.deferred;
    t_hot = st.poll.max_ns > 0 ? &st.hot : nullptr;
    t_watch = st.wt.ep >= 0 ? &st.wt : nullptr;
    for (;;) {
      bool idle;
      // Nothing to flush: an empty queue found below means the loop may sleep, and one look
      // under the lock decides both (one lock a request on an idle loop, not three).
      bool flushed = st.deferred.empty();
      {
        std::lock_guard<std::mutex> g(st.lock);
        st.sleeping = false;  // (awake: since the last sleep, or all along)
        st.wake_posted = false;
        if (!st.queue.empty() && st.budget > 0) {
          --st.budget;
          auto* job = st.queue.front();
          st.queue.pop_front();
          return job;
        }
        idle = st.queue.empty();
        if (idle && flushed) st.sleeping = true;  // from here on, an enqueue from another thread wakes us
      }
      st.budget = poll_every;
      if (!flushed) run_deferred(st.deferred);  // the replies of the jobs just run, one sendmsg per socket
      if (!idle) {
        // Actors are busy: let ready sockets in, without blocking. The sockets read directly
        // while polling have no wait armed (arm_later), so they are read here too.
        read_hot(st);
        read_watched(st);
        st.io->poll();
        continue;
      }
      if (!flushed) {  // (a flush may have queued work: an error for a socket actor)
        std::lock_guard<std::mutex> g(st.lock);
        if (!st.queue.empty()) continue;
        st.sleeping = true;
      }
      if (st.io->stopped()) {
        std::unique_lock<std::mutex> g(st.lock);
        st.cv.wait(g, [&] { return !st.queue.empty(); });
      } else {
        wait_for_io(st);
      }
    }
  }

  // The ready sockets of the loop's own set, each read (and flushed, if a write waits for
  // room) once; true if any received something.
  template <class Data>
  static bool read_watched(Data& st) {
    auto& wt = st.wt;
    if (wt.ep < 0 || wt.watched.empty()) return false;
    epoll_event evs[64];
    int n = ::epoll_wait(wt.ep, evs, 64, 0);
    bool got = false;
    for (int i = 0; i < n; ++i) {
      auto it = wt.watched.find(evs[i].data.u64);
      if (it == wt.watched.end()) continue;
      auto p = it->second.lock();
      if (!p) {
        wt.watched.erase(it);
        wt.size.store(wt.watched.size(), std::memory_order_relaxed);
        continue;
      }
      if (p->on_ready()) got = true;
    }
    return got;
  }

  // One direct read of each recently active socket; true if any received something. (By
  // index: a read may add the socket it read to the list, never another.)
  template <class Data>
  static bool read_hot(Data& st) {
    bool got = false;
    for (size_t i = 0; i < st.hot.size(); ++i)
      if (st.hot[i]->poll_read()) got = true;
    return got;
  }

  // Idle: poll the io_context for up to poll.ns (adaptive), then block in it. Called with
  // st.sleeping set; while polling the loop is awake, so other threads' enqueues are
  // noticed here instead of posting a wake-up.
  template <class Data>
  static void wait_for_io(Data& st) {
    using clock = std::chrono::steady_clock;
    if (st.poll.max_ns == 0) {
      st.idle.fetch_add(1, std::memory_order_relaxed);
      st.blocked.fetch_add(1, std::memory_order_relaxed);
      block(st);
      return;
    }
    auto start = clock::now();
    bool got = false;
    if (st.poll.ns > 0) {
      {
        std::lock_guard<std::mutex> g(st.lock);
        st.sleeping = false;
      }
      auto deadline = start + std::chrono::nanoseconds(st.poll.ns);
      int round = 0;
      do {
        // The sockets that were just active are read directly: a request that arrives costs
        // one recvmsg, as for a blocking server, not an epoll_wait and a recvmsg. Their
        // readiness waits stay armed, so nothing that arrives is missed when the loop
        // blocks (and a stale readiness event then costs one read that finds nothing).
        got = read_hot(st);
        if (got) st.direct_reads.fetch_add(1, std::memory_order_relaxed);
        if (!got && (st.hot.empty() || ++round % epoll_every == 0)) {
          if (read_watched(st)) got = true;  // another socket (one epoll_wait for all)
          if (st.io->poll() > 0) got = true;  // a timer, a posted handler (epoll_wait, timeout 0)
        }
        // Nothing yet: the core goes to any other thread that wants it (sched_yield returns
        // at once when none does). One woken on this core would otherwise wait for this
        // spinner's time slice to end: milliseconds, not microseconds (docs/performance.md).
        if (!got) ::sched_yield();
        std::lock_guard<std::mutex> g(st.lock);
        if (!st.queue.empty()) got = true;  // a message from another thread
        if (!got && clock::now() >= deadline) st.sleeping = true;  // under the lock: see enqueue
        if (got || st.sleeping) break;
      } while (true);
    }
    st.idle.fetch_add(1, std::memory_order_relaxed);
    if (got) {
      st.caught.fetch_add(1, std::memory_order_relaxed);
    } else {
      st.blocked.fetch_add(1, std::memory_order_relaxed);
      // Blocking: every socket read directly must be watched again (arm_later), and whoever
      // wakes the loop is hot next.
      for (auto& h : st.hot) h->arm_wait();
      st.hot.clear();
      block(st);
    }
    st.poll.adjust(std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - start).count());
    st.window.store(st.poll.ns, std::memory_order_relaxed);
  }

  // Blocks in the io_context. The loop's own set wakes it through one Asio wait (its
  // epoll_ctl once a sleep, not once a request), whose handler only marks it fired.
  template <class Data>
  static void block(Data& st) {
    bool waits_ep = false;
    if (st.wt.ep >= 0 && !st.wt.watched.empty()) {
      if (!*st.ep_armed) {
        *st.ep_armed = true;
        st.ep_asio->async_wait(boost::asio::posix::descriptor_base::wait_read,
                               [armed = st.ep_armed](const boost::system::error_code&) { *armed = false; });
      }
      waits_ep = true;
    }
    st.io->run_one();
    if (waits_ep && !*st.ep_armed) read_watched(st);
  }

  template <class Worker>
  void before_shutdown(Worker* w) {
    run_deferred(d(w->parent()).deferred);
    d(w->parent()).hot.clear();  // (the io_context is stopping: nothing to arm for)
    d(w->parent()).wt.watched.clear();
    d(w->parent()).wt.alone.clear();
    t_hot = nullptr;
    t_watch = nullptr;
    t_deferred = nullptr;
    t_on_loop = false;
    t_loop_system = nullptr;
  }

  template <class Worker, class UnaryFunction>
  void foreach_resumable(Worker*, UnaryFunction) {}

  template <class Coordinator, class UnaryFunction>
  void foreach_central_resumable(Coordinator* c, UnaryFunction f) {
    auto& st = d(c);
    std::unique_lock<std::mutex> g(st.lock);
    while (!st.queue.empty()) {
      auto* job = st.queue.front();
      st.queue.pop_front();
      f(job);
    }
  }
};

}  // namespace
}  // namespace vfu::event_loop

// CAF's worker loop (caf/scheduler/worker.hpp), for the event loop's policy, minus a cost
// CAF pays for every job it runs: it tags the thread with the job's actor id for the
// logger (CAF_PUSH_AID_FROM_PTR), which takes a dynamic_cast across CAF's actor hierarchy
// (type names compared with strcmp, the types live in another shared object) and two
// lookups in the logger's thread table: more than the rest of a request's work
// (docs/performance.md, point 16). Here
// the tag is set only while something is being logged (the logger's verbosity is above
// quiet), so log lines keep their actor ids.
// It copies CAF 0.17.6's worker<Policy>::run() and relies on that version's internals: a
// different CAF must fail to build here, not change the loop's behaviour unseen. (Compare
// the new caf/scheduler/worker.hpp with this copy, then change the version below.)
static_assert(CAF_VERSION == 1706, "event_loop.cpp specialises CAF 0.17.6's worker<Policy>::run(): check it against "
                                   "this CAF's caf/scheduler/worker.hpp");
template <>
void caf::scheduler::worker<vfu::event_loop::loop_policy>::run() {
  CAF_SET_LOGGER_SYS(&system());
  auto* lg = caf::logger::current_logger();
  for (;;) {
    auto job = policy_.dequeue(this);
    CAF_ASSERT(job != nullptr);
    caf::actor_id prev = 0;
    bool tag = lg && lg->verbosity() > CAF_LOG_LEVEL_QUIET;
    if (tag) {
      auto* a = dynamic_cast<caf::abstract_actor*>(job);
      prev = lg->thread_local_aid(a ? a->id() : 0);
    }
    policy_.before_resume(this, job);
    auto res = job->resume(this, max_throughput_);
    policy_.after_resume(this, job);
    if (tag) lg->thread_local_aid(prev);
    switch (res) {
      case resumable::resume_later:
        policy_.resume_job_later(this, job);  // it stays in the loop
        break;
      case resumable::done:
        policy_.after_completion(this, job);
        intrusive_ptr_release(job);
        break;
      case resumable::awaiting_message:
        intrusive_ptr_release(job);  // enqueued again with its next message
        break;
      case resumable::shutdown_execution_unit:
        policy_.after_completion(this, job);
        policy_.before_shutdown(this);
        return;
    }
  }
}

namespace vfu::event_loop {
namespace {

class loop_coordinator : public caf::scheduler::coordinator<loop_policy> {
 public:
  loop_coordinator(caf::actor_system& sys, boost::asio::io_context& io, int64_t poll_max_ns) : coordinator(sys) {
    data().io = &io;
    data().poll.max_ns = poll_max_ns > 0 ? poll_max_ns : 0;
    data().wt.polls = poll_max_ns > 0;
    int ep = ::epoll_create1(EPOLL_CLOEXEC);
    if (ep >= 0) {  // (without it, sockets keep Asio waits of their own)
      data().wt.ep = ep;
      data().ep_asio = std::make_unique<boost::asio::posix::stream_descriptor>(io, ep);  // (owns it)
    }
  }
  void init(caf::actor_system_config& cfg) override {
    coordinator::init(cfg);
    num_workers_ = 1;  // the loop is one thread by construction
  }
};

}  // namespace

bool on_loop_thread() noexcept { return t_on_loop; }

bool on_loop_of(const caf::actor_system& sys) noexcept { return t_loop_system == &sys; }

void defer_flush(std::shared_ptr<deferred_writer> w) {
  if (t_deferred) t_deferred->push_back(std::move(w));
  else w->flush_deferred();
}

void note_active(pollable& p) {
  auto* hot = t_hot;
  if (!hot) return;
  for (auto& h : *hot)
    if (h.get() == &p) return;
  if (hot->size() == max_hot) {
    auto out = std::move(hot->front());
    hot->erase(hot->begin());
    out->arm_wait();  // no longer read directly: its wait must be pending
  }
  hot->push_back(p.pollable_ref());
}

int watch(pollable& p, int fd, uint32_t events, uint64_t& id, bool alone_ok) {
  auto* wt = t_watch;
  if (!wt) return -1;
  if (!wt->polls) {
    if (!alone_ok) return -1;
    auto& a = wt->alone;
    a.erase(std::remove_if(a.begin(), a.end(), [](const std::weak_ptr<pollable>& w) { return w.expired(); }), a.end());
    bool set_reads = std::any_of(wt->watched.begin(), wt->watched.end(), [](const auto& e) { return !e.second.expired(); });
    if (a.empty() && !set_reads) {  // the only one: it waits in Asio's reactor
      a.push_back(p.pollable_ref());
      return -1;
    }
  }
  int ep = add_to_watch(p, fd, events, id);
  if (wt->polls) return ep;
  if (ep < 0) {  // (it waits in the reactor; the next socket tries again for both)
    wt->alone.push_back(p.pollable_ref());
    return -1;
  }
  for (auto& w : std::exchange(wt->alone, {}))
    if (auto q = w.lock()) q->join_watch();
  return ep;
}

int add_to_watch(pollable& p, int fd, uint32_t events, uint64_t& id) {
  auto* wt = t_watch;
  if (!wt) return -1;
  id = ++wt->next;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = id;
  if (::epoll_ctl(wt->ep, EPOLL_CTL_ADD, fd, &ev) != 0) return -1;
  if (wt->watched.size() >= wt->sweep_at) {
    for (auto it = wt->watched.begin(); it != wt->watched.end();)
      it = it->second.expired() ? wt->watched.erase(it) : std::next(it);
    wt->sweep_at = std::max<size_t>(64, 2 * wt->watched.size());
  }
  wt->watched.emplace(id, p.pollable_ref());
  wt->size.store(wt->watched.size(), std::memory_order_relaxed);
  return wt->ep;
}

bool arm_later(pollable& p) {
  if (!t_hot) return false;
  note_active(p);
  return true;
}

std::optional<loop_stats> stats(caf::actor_system& sys) {
  auto* c = dynamic_cast<loop_coordinator*>(&sys.scheduler());
  if (!c) return std::nullopt;
  auto& st = c->data();
  loop_stats r;
  r.idle = st.idle.load(std::memory_order_relaxed);
  r.caught = st.caught.load(std::memory_order_relaxed);
  r.direct_reads = st.direct_reads.load(std::memory_order_relaxed);
  r.blocked = st.blocked.load(std::memory_order_relaxed);
  r.poll_ns = st.window.load(std::memory_order_relaxed);
  r.watched = st.wt.size.load(std::memory_order_relaxed);
  return r;
}

void install(caf::actor_system_config& cfg, boost::asio::io_context& io, int64_t poll_max_ns) {
  cfg.module_factories.push_back([&io, poll_max_ns](caf::actor_system& sys) -> caf::actor_system::module* {
    return new loop_coordinator(sys, io, poll_max_ns);
  });
}

}  // namespace vfu::event_loop
