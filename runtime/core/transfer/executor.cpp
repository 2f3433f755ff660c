#include "runtime/core/transfer/executor.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <future>
#include <thread>

namespace mcache {

namespace {
class thread_pool_executor final : public executor {
public:
  explicit thread_pool_executor(size_t threads)
    : pool_(std::make_shared<boost::asio::thread_pool>(threads == 0 ? 1 : threads)) {}
  ~thread_pool_executor() override {
    if (!abandoned_)
      pool_->join();
  }
  void post(std::function<void()> task) override { boost::asio::post(*pool_, std::move(task)); }
  void join() override {
    if (!abandoned_)
      pool_->join();
  }
  bool stop(std::chrono::nanoseconds grace) override {
    if (abandoned_)
      return false;
    pool_->stop();
    // Join on a helper thread, which owns the pool too: if a task hangs past the grace, the helper is
    // left to finish the join (and free the pool) whenever the task returns.
    auto joined = std::make_shared<std::promise<void>>();
    auto done = joined->get_future();
    std::thread joiner{[pool = pool_, joined] {
      pool->join();
      joined->set_value();
    }};
    if (done.wait_for(grace) == std::future_status::ready) {
      joiner.join();
      return true;
    }
    joiner.detach();
    abandoned_ = true;
    return false;
  }

private:
  std::shared_ptr<boost::asio::thread_pool> pool_;
  bool abandoned_ = false;
};
} // namespace

std::unique_ptr<executor> make_thread_pool_executor(size_t threads) {
  return std::make_unique<thread_pool_executor>(threads);
}

void manual_executor::post(std::function<void()> task) {
  std::lock_guard<std::mutex> guard{mutex_};
  tasks_.push_back(std::move(task));
}

bool manual_executor::run_one() {
  std::function<void()> task;
  {
    std::lock_guard<std::mutex> guard{mutex_};
    if (tasks_.empty())
      return false;
    task = std::move(tasks_.front());
    tasks_.pop_front();
  }
  task();
  return true;
}

size_t manual_executor::run_all() {
  size_t n = 0;
  while (run_one())
    ++n;
  return n;
}

bool manual_executor::stop(std::chrono::nanoseconds) {
  std::lock_guard<std::mutex> guard{mutex_};
  tasks_.clear();
  return true;
}

size_t manual_executor::pending() const {
  std::lock_guard<std::mutex> guard{mutex_};
  return tasks_.size();
}

} // namespace mcache
