#include "runtime/core/policies/eviction_policy.hpp"

#include <algorithm>

namespace mcache {

void lru_policy::insert(const model_id& model) {
  erase(model);
  order_.push_back(model);
  where_[model] = place{std::prev(order_.end()), ++uses_};
}

void lru_policy::erase(const model_id& model) {
  auto i = where_.find(model);
  if (i == where_.end())
    return;
  order_.erase(i->second.at);
  where_.erase(i);
}

void lru_policy::touch(const model_id& model) {
  auto i = where_.find(model);
  if (i == where_.end())
    return;
  order_.splice(order_.end(), order_, i->second.at);
  i->second.used = ++uses_;
}

void eviction_policy::set_next_uses(const std::vector<model_id>& soonest_first) {
  next_uses_.clear();
  rank_.clear();
  for (const auto& m : soonest_first)
    if (rank_.emplace(m, next_uses_.size()).second)
      next_uses_.push_back(m);
}

void eviction_policy::set_restorable(const model_id& model, bool restorable) {
  if (restorable)
    restorable_.insert(model);
  else
    restorable_.erase(model);
}

void lru_policy::visit_victims(const std::function<bool(const model_id&)>& visit) const {
  // Candidates with no known next use, least recently used first, the restorable ones before the others
  // (Note [Cheap to get back goes first]); then those with a next use, latest use first. The restorable
  // ones are few (what devices hold whole), so they are found through their own set and sorted here,
  // rather than by a scan of every candidate.
  if (!restorable_.empty()) {
    std::vector<std::pair<std::uint64_t, const model_id*>> cheap;
    for (const auto& m : restorable_) {
      auto w = where_.find(m);
      if (w != where_.end() && !rank_.count(m))
        cheap.emplace_back(w->second.used, &w->first);
    }
    std::sort(cheap.begin(), cheap.end());
    for (const auto& c : cheap)
      if (!visit(*c.second))
        return;
  }
  for (const auto& m : order_)
    if (!rank_.count(m) && !restorable_.count(m) && !visit(m))
      return;
  for (auto m = next_uses_.rbegin(); m != next_uses_.rend(); ++m)
    if (where_.count(*m) && !visit(*m))
      return;
}

std::unique_ptr<eviction_policy> make_lru_policy() { return std::make_unique<lru_policy>(); }

} // namespace mcache
