#include "runtime/core/policies/eviction_policy.hpp"

namespace mcache {

void lru_policy::insert(const model_id& model) {
  erase(model);
  order_.push_back(model);
  where_[model] = std::prev(order_.end());
}

void lru_policy::erase(const model_id& model) {
  auto i = where_.find(model);
  if (i == where_.end())
    return;
  order_.erase(i->second);
  where_.erase(i);
}

void lru_policy::touch(const model_id& model) {
  auto i = where_.find(model);
  if (i != where_.end())
    order_.splice(order_.end(), order_, i->second);
}

void eviction_policy::set_next_uses(const std::vector<model_id>& soonest_first) {
  next_uses_.clear();
  rank_.clear();
  for (const auto& m : soonest_first)
    if (rank_.emplace(m, next_uses_.size()).second)
      next_uses_.push_back(m);
}

void lru_policy::visit_victims(const std::function<bool(const model_id&)>& visit) const {
  // Candidates with no known next use, least recently used first; then those with one, latest use first.
  for (const auto& m : order_)
    if (!rank_.count(m) && !visit(m))
      return;
  for (auto m = next_uses_.rbegin(); m != next_uses_.rend(); ++m)
    if (where_.count(*m) && !visit(*m))
      return;
}

std::unique_ptr<eviction_policy> make_lru_policy() { return std::make_unique<lru_policy>(); }

} // namespace mcache
