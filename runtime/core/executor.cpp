#include "runtime/core/executor.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

namespace mcache {

namespace {
class thread_pool_executor final : public executor {
public:
  explicit thread_pool_executor(size_t threads) : pool_(threads == 0 ? 1 : threads) {}
  ~thread_pool_executor() override { pool_.join(); }
  void post(std::function<void()> task) override { boost::asio::post(pool_, std::move(task)); }
  void join() override { pool_.join(); }

private:
  boost::asio::thread_pool pool_;
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

size_t manual_executor::pending() const {
  std::lock_guard<std::mutex> guard{mutex_};
  return tasks_.size();
}

} // namespace mcache
