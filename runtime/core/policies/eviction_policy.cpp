#include "runtime/core/policies/eviction_policy.hpp"

namespace mcache {

void lru_policy::insert(const model_id& model) {
  erase(model);
  auto& l = list_for(model);
  l.push_back({model, ++uses_});
  where_[model] = place{&l, std::prev(l.end())};
}

void lru_policy::erase(const model_id& model) {
  auto i = where_.find(model);
  if (i == where_.end())
    return;
  i->second.in->erase(i->second.at);
  where_.erase(i);
}

void lru_policy::touch(const model_id& model) {
  auto i = where_.find(model);
  if (i == where_.end())
    return;
  auto& p = i->second;
  p.in->splice(p.in->end(), *p.in, p.at);
  p.at->used = ++uses_;
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

void lru_policy::set_restorable(const model_id& model, bool restorable) {
  eviction_policy::set_restorable(model, restorable);
  auto i = where_.find(model);
  if (i == where_.end())
    return;
  auto& p = i->second;
  auto& to = list_for(model);
  if (p.in == &to)
    return;
  // Its place in the other list is by last use, found from the newest end.
  auto before = to.end();
  while (before != to.begin() && std::prev(before)->used > p.at->used)
    --before;
  to.splice(before, *p.in, p.at);  // the iterator stays valid, now into `to`
  p.in = &to;
}

void lru_policy::visit_victims(const std::function<bool(const model_id&)>& visit) const {
  // Candidates with no known next use, least recently used first, the restorable ones before the others
  // (Note [Cheap to get back goes first]); then those with a next use, latest use first.
  for (const auto* l : {&cheap_, &costly_})
    for (const auto& e : *l)
      if (!rank_.count(e.model) && !visit(e.model))
        return;
  for (auto m = next_uses_.rbegin(); m != next_uses_.rend(); ++m)
    if (where_.count(*m) && !visit(*m))
      return;
}

std::unique_ptr<eviction_policy> make_lru_policy() { return std::make_unique<lru_policy>(); }

} // namespace mcache
