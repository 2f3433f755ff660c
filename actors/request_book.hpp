#pragma once
// What both actors do with the requests their tier holds: keep each one's response promise under a
// request id, deliver the tier's replies, and remember which holders are monitored.

#include "messages/errors.hpp"
#include "runtime/core/outcome.hpp"

#include <caf/typed_response_promise.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>
#include <vector>

namespace mcache {

template <class T>
class request_book {
public:
  /// Keeps `promise` under `id` (ids come from the actor, unique across its books).
  void open(request_id id, caf::typed_response_promise<T> promise) { open_.emplace(id, std::move(promise)); }

  bool is_open(request_id id) const { return open_.count(id) > 0; }

  /// Answers every reply's request and forgets it.
  void deliver(std::vector<reply<T>>& replies) {
    for (auto& r : replies) {
      auto i = open_.find(r.request);
      if (i == open_.end())
        continue;
      if (succeeded(r.result))
        i->second.deliver(std::move(std::get<0>(r.result)));
      else
        i->second.deliver(make_error(std::get<failure>(r.result)));
      open_.erase(i);
    }
    replies.clear();
  }

private:
  std::unordered_map<request_id, caf::typed_response_promise<T>> open_;
};

/// Open requests by what their holder knows them by (the RAM tier: a tag such as a job id; a device: the
/// holder's lease), so that the holder can withdraw one (Note [Admission], rule 6). An answer forgets it;
/// a key used again belongs to the newest request.
class withdraw_book {
public:
  void remember(holder_id holder, std::uint64_t key, request_id request) {
    auto [i, fresh] = by_key_.try_emplace({holder, key}, request);
    if (!fresh) {
      key_of_.erase(i->second);
      i->second = request;
    }
    key_of_[request] = {holder, key};
  }
  /// The request was answered.
  void answered(request_id request) {
    auto k = key_of_.find(request);
    if (k == key_of_.end())
      return;
    by_key_.erase(k->second);
    key_of_.erase(k);
  }
  /// The holder's request of `key`, now forgotten; none if it was answered already.
  std::optional<request_id> take(holder_id holder, std::uint64_t key) {
    auto i = by_key_.find({holder, key});
    if (i == by_key_.end())
      return std::nullopt;
    auto request = i->second;
    key_of_.erase(request);
    by_key_.erase(i);
    return request;
  }

private:
  std::map<std::pair<holder_id, std::uint64_t>, request_id> by_key_;
  std::map<request_id, std::pair<holder_id, std::uint64_t>> key_of_;
};

/// Monitors the sender of the current message once, so its leases or pins end when it terminates.
template <class Self>
holder_id watch_sender(Self* self, std::set<holder_id>& watched) {
  auto& sender = self->current_sender();
  if (!sender)
    return 0;  // an anonymous sender cannot hold anything: its requests are refused by the caller
  auto id = sender->id();
  if (watched.insert(id).second)
    self->monitor(caf::actor_cast<caf::actor>(sender));
  return id;
}

/// Runs `tier.check_invariants()` when asked to after every step; a broken invariant ends the process
/// (limping on with wrong byte counts would make every later decision wrong).
template <class Tier>
void check_step(const Tier& tier, bool enabled) {
  if (!enabled)
    return;
  try {
    tier.check_invariants();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mcache: %s\n", e.what());
    std::abort();
  }
}

/// The `check` message's answer: the first broken invariant as an error value.
template <class Tier>
caf::result<void> check_now(const Tier& tier) {
  try {
    tier.check_invariants();
    return caf::unit;
  } catch (const std::exception& e) {
    return make_error(errc::invalid_argument, e.what());
  }
}

} // namespace mcache
