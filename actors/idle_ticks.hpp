#pragma once
// Note [Keep-alive] (runtime/core/admission/keep_alive.hpp): the timer that has a tier drop what sat unused past its keep-alive.
// Both tier actors use it. It ticks only once some keep-alive is in use (no timer at all otherwise), every
// quarter of the shortest keep-alive seen, between 10 ms and 1 s, so a model goes at most a quarter late.

#include <algorithm>
#include <chrono>
#include <utility>

namespace mcache {

class idle_ticks {
public:
  /// A keep-alive is in use. True when the caller must schedule the first tick now.
  bool use(std::chrono::nanoseconds keep_alive) {
    using namespace std::chrono_literals;
    if (keep_alive <= std::chrono::nanoseconds::zero())
      return false;
    auto p = std::clamp<std::chrono::nanoseconds>(keep_alive / 4, 10ms, 1s);
    if (period_ == std::chrono::nanoseconds::zero() || p < period_)
      period_ = p;
    return !std::exchange(running_, true);
  }
  std::chrono::nanoseconds period() const { return period_; }

private:
  std::chrono::nanoseconds period_{0};
  bool running_ = false;
};

} // namespace mcache
