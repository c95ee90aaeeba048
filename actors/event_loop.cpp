#include "actors/event_loop.hpp"

#include <boost/asio/post.hpp>
#include <caf/policy/unprofiled.hpp>
#include <caf/resumable.hpp>
#include <caf/scheduler/coordinator.hpp>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <vector>

namespace vfu::event_loop {

namespace {

thread_local bool t_on_loop = false;
thread_local std::vector<std::shared_ptr<deferred_writer>>* t_deferred = nullptr;

// Swaps with a spare that keeps its capacity: no allocation per flush.
void run_deferred(std::vector<std::shared_ptr<deferred_writer>>& v) {
  static thread_local std::vector<std::shared_ptr<deferred_writer>> batch;
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
    t_deferred = &st.deferred;
    for (;;) {
      bool idle;
      {
        std::lock_guard<std::mutex> g(st.lock);
        if (!st.queue.empty() && st.budget > 0) {
          --st.budget;
          auto* job = st.queue.front();
          st.queue.pop_front();
          return job;
        }
        idle = st.queue.empty();
      }
      st.budget = poll_every;
      run_deferred(st.deferred);  // the replies of the jobs just run, one sendmsg per socket
      if (!idle) {
        st.io->poll();  // actors are busy: let ready sockets in, without blocking
        continue;
      }
      {
        std::lock_guard<std::mutex> g(st.lock);
        if (!st.queue.empty()) continue;
        st.sleeping = true;  // from here on, an enqueue from another thread wakes us
      }
      if (st.io->stopped()) {
        std::unique_lock<std::mutex> g(st.lock);
        st.cv.wait(g, [&] { return !st.queue.empty(); });
      } else {
        st.io->run_one();
      }
      std::lock_guard<std::mutex> g(st.lock);
      st.sleeping = false;
      st.wake_posted = false;
    }
  }

  template <class Worker>
  void before_shutdown(Worker* w) {
    run_deferred(d(w->parent()).deferred);
    t_deferred = nullptr;
    t_on_loop = false;
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

class loop_coordinator : public caf::scheduler::coordinator<loop_policy> {
 public:
  loop_coordinator(caf::actor_system& sys, boost::asio::io_context& io) : coordinator(sys) { data().io = &io; }
  void init(caf::actor_system_config& cfg) override {
    coordinator::init(cfg);
    num_workers_ = 1;  // the loop is one thread by construction
  }
};

}  // namespace

bool on_loop_thread() noexcept { return t_on_loop; }

void defer_flush(std::shared_ptr<deferred_writer> w) {
  if (t_deferred) t_deferred->push_back(std::move(w));
  else w->flush_deferred();
}

void install(caf::actor_system_config& cfg, boost::asio::io_context& io) {
  cfg.module_factories.push_back(
      [&io](caf::actor_system& sys) -> caf::actor_system::module* { return new loop_coordinator(sys, io); });
}

}  // namespace vfu::event_loop
