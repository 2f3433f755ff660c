#pragma once
// Where blocking work (loads, device copies) runs: never on an actor's thread. The actors post a task and
// receive a completion message. Tests use `manual_executor` to decide exactly when a load finishes.

#include <chrono>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>

namespace mcache {

class executor {
public:
  virtual ~executor() = default;
  virtual void post(std::function<void()> task) = 0;
  /// Finishes the tasks already posted and stops; later posts are dropped.
  virtual void join() = 0;
  /// Stops within a bounded time, for shutdown: tasks not started are dropped, tasks running get `grace`
  /// to return. False if one is still running then: it is abandoned (its thread finishes on its own and
  /// its completion message goes nowhere), so a hung loader cannot hold the runtime's shutdown.
  virtual bool stop(std::chrono::nanoseconds grace) = 0;
};

/// A fixed pool of worker threads (Boost.Asio). Joins on destruction after finishing queued tasks.
std::unique_ptr<executor> make_thread_pool_executor(size_t threads);

/// Runs nothing until told to. Thread-safe.
class manual_executor final : public executor {
public:
  void post(std::function<void()> task) override;
  /// Runs the oldest queued task; false if none was queued.
  bool run_one();
  /// Runs queued tasks (including ones they post) until none is left; returns how many ran.
  size_t run_all();
  size_t pending() const;
  void join() override { run_all(); }
  /// Drops the tasks not run (a manual executor has nothing running of its own).
  bool stop(std::chrono::nanoseconds) override;

private:
  mutable std::mutex mutex_;
  std::deque<std::function<void()>> tasks_;
};

} // namespace mcache
