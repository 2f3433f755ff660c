#pragma once
// Note [Node jobs] (runtime/fleet/node.hpp): a node's runs by job key. A key is running (with everyone
// waiting for it) or ended (with its outcome, kept for the last `keep` keys that ended), so a job sent
// twice joins the first run or gets its outcome, and never runs twice while the node remembers it.
// `Waiter` is whatever answers a caller (a response promise in the node actor, an int in tests).

#include "runtime/core/outcome.hpp"

#include <cstddef>
#include <deque>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace mcache::fleet {

template <class Result, class Waiter>
class run_book {
public:
  explicit run_book(std::size_t keep) : keep_(keep) {}

  enum class seen { new_key, running, ended };

  /// Where `key` stands. For `running`, `waiter` joins the run; for `ended`, `*kept` is its outcome.
  seen look_up(const std::string& key, Waiter& waiter, const outcome<Result>** kept) {
    if (auto r = running_.find(key); r != running_.end()) {
      r->second.push_back(std::move(waiter));
      return seen::running;
    }
    if (auto e = ended_.find(key); e != ended_.end()) {
      *kept = &e->second;
      return seen::ended;
    }
    return seen::new_key;
  }

  /// A new run of `key` started, for `waiter`.
  void start(const std::string& key, Waiter waiter) { running_[key].push_back(std::move(waiter)); }

  /// The run of `key` ended: returns its waiters (to answer) and keeps the outcome.
  std::vector<Waiter> end(const std::string& key, outcome<Result> result) {
    std::vector<Waiter> waiters;
    if (auto r = running_.find(key); r != running_.end()) {
      waiters = std::move(r->second);
      running_.erase(r);
    }
    if (keep_ == 0)
      return waiters;
    if (ended_.emplace(key, std::move(result)).second)
      order_.push_back(key);
    while (order_.size() > keep_) {
      ended_.erase(order_.front());
      order_.pop_front();
    }
    return waiters;
  }

  /// Every running key's waiters (the node stops), forgetting the runs.
  std::vector<Waiter> abandon_all() {
    std::vector<Waiter> out;
    for (auto& [key, ws] : running_)
      for (auto& w : ws)
        out.push_back(std::move(w));
    running_.clear();
    return out;
  }

  std::size_t running() const { return running_.size(); }
  std::size_t kept() const { return ended_.size(); }

  /// Throws std::logic_error on a broken invariant: a key both running and ended, a running key with
  /// nobody waiting, more kept outcomes than `keep`.
  void check() const {
    for (const auto& [key, ws] : running_) {
      if (ws.empty())
        throw std::logic_error("run_book: '" + key + "' runs for nobody");
      if (ended_.count(key) > 0)
        throw std::logic_error("run_book: '" + key + "' is running and ended");
    }
    if (ended_.size() > keep_ || ended_.size() != order_.size())
      throw std::logic_error("run_book: kept outcomes and their order disagree");
  }

private:
  std::size_t keep_;
  std::map<std::string, std::vector<Waiter>> running_;
  std::map<std::string, outcome<Result>> ended_;
  std::deque<std::string> order_;  // ended keys, oldest first
};

} // namespace mcache::fleet
