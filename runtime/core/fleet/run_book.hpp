#pragma once
// Note [Node jobs] (runtime/fleet/node.hpp): a node's runs by job key. A key is running (with everyone
// waiting for it) or ended (with its outcome, kept for the last `keep` keys that ended), so a job sent
// twice joins the first run or gets its outcome, and never runs twice while the node remembers it. Each
// run keeps a digest of what was asked (pipeline, models, parameters): a key sent again for a different
// job is a conflict, not a join, so a reused key never gets another job's result.
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

  enum class seen { new_key, running, ended, conflict };

  /// Where `key` stands. For `running`, `waiter` joins the run; for `ended`, `*kept` is its outcome;
  /// `conflict`: the key belongs to a run with another digest (nothing changes).
  seen look_up(const std::string& key, const std::string& digest, Waiter& waiter, const outcome<Result>** kept) {
    if (auto r = running_.find(key); r != running_.end()) {
      if (r->second.digest != digest)
        return seen::conflict;
      r->second.waiters.push_back(std::move(waiter));
      return seen::running;
    }
    if (auto e = ended_.find(key); e != ended_.end()) {
      if (e->second.digest != digest)
        return seen::conflict;
      *kept = &e->second.result;
      return seen::ended;
    }
    return seen::new_key;
  }

  /// A new run of `key` started, for `waiter`.
  void start(const std::string& key, std::string digest, Waiter waiter) {
    auto& r = running_[key];
    r.digest = std::move(digest);
    r.waiters.push_back(std::move(waiter));
  }

  /// The run of `key` ended: returns its waiters (to answer) and keeps the outcome.
  std::vector<Waiter> end(const std::string& key, outcome<Result> result) {
    std::vector<Waiter> waiters;
    std::string digest;
    if (auto r = running_.find(key); r != running_.end()) {
      waiters = std::move(r->second.waiters);
      digest = std::move(r->second.digest);
      running_.erase(r);
    }
    if (keep_ == 0)
      return waiters;
    if (ended_.emplace(key, kept_run{std::move(digest), std::move(result)}).second)
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
    for (auto& [key, r] : running_)
      for (auto& w : r.waiters)
        out.push_back(std::move(w));
    running_.clear();
    return out;
  }

  std::size_t running() const { return running_.size(); }
  std::size_t kept() const { return ended_.size(); }

  /// Throws std::logic_error on a broken invariant: a key both running and ended, a running key with
  /// nobody waiting, more kept outcomes than `keep`.
  void check() const {
    for (const auto& [key, r] : running_) {
      if (r.waiters.empty())
        throw std::logic_error("run_book: '" + key + "' runs for nobody");
      if (ended_.count(key) > 0)
        throw std::logic_error("run_book: '" + key + "' is running and ended");
    }
    if (ended_.size() > keep_ || ended_.size() != order_.size())
      throw std::logic_error("run_book: kept outcomes and their order disagree");
  }

private:
  struct run {
    std::string digest;
    std::vector<Waiter> waiters;
  };
  struct kept_run {
    std::string digest;
    outcome<Result> result;
  };
  std::size_t keep_;
  std::map<std::string, run> running_;
  std::map<std::string, kept_run> ended_;
  std::deque<std::string> order_;  // ended keys, oldest first
};

} // namespace mcache::fleet
