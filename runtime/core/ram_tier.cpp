#include "runtime/core/ram_tier.hpp"

#include "runtime/core/format.hpp"
#include "runtime/core/make_room.hpp"

#include <algorithm>
#include <stdexcept>

namespace mcache {

const char* to_string(ram_residency state) {
  switch (state) {
    case ram_residency::absent: return "absent";
    case ram_residency::loading: return "loading";
    case ram_residency::resident: return "resident";
  }
  return "?";
}

ram_tier::ram_tier(ram_tier_options options, std::unique_ptr<eviction_policy> policy)
  : options_(options), policy_(std::move(policy)) {
  if (auto err = validate(options_))
    throw std::invalid_argument(err->detail);
  counters_.budget_bytes = options_.budget_bytes;
}

std::optional<failure> ram_tier::validate(const ram_tier_options& options) {
  if (options.budget_bytes == 0)
    return failure{errc::invalid_argument, "the RAM budget is 0 bytes; set ram_budget_bytes"};
  return std::nullopt;
}

// The only place that changes a RAM entry's residency; it rejects moves the diagram does not draw.
void ram_tier::transition(const model_id& model, ram_residency to) {
  auto i = entries_.find(model);
  auto from = i == entries_.end() ? ram_residency::absent : i->second.state;
  bool legal = (from == ram_residency::absent && to == ram_residency::loading)
               || (from == ram_residency::loading && to == ram_residency::resident)
               || (from == ram_residency::loading && to == ram_residency::absent)
               || (from == ram_residency::resident && to == ram_residency::absent);
  if (!legal)
    throw std::logic_error("ram tier: illegal move of '" + model + "' from " + to_string(from) + " to "
                           + to_string(to));
  if (to == ram_residency::absent) {
    used_ -= i->second.descriptor.bytes;
    policy_->erase(model);
    entries_.erase(i);
    return;
  }
  i->second.state = to;
  update_candidacy(model);
}

// A model is an eviction candidate exactly when it is resident and unleased.
void ram_tier::update_candidacy(const model_id& model) {
  const auto& e = entries_.at(model);
  if (e.state == ram_residency::resident && e.leases == 0) {
    if (!policy_->contains(model))
      policy_->insert(model);
  } else {
    policy_->erase(model);
  }
}

ram_lease ram_tier::grant(entry& e, holder_id holder) {
  auto id = next_lease_++;
  leases_.emplace(id, lease_record{e.descriptor.id, holder});
  by_holder_[holder].insert(id);
  ++e.leases;
  update_candidacy(e.descriptor.id);
  return ram_lease{id, e.descriptor.id, e.descriptor.bytes, e.payload};
}

bool ram_tier::make_room_for(bytes_t bytes) {
  return make_room(
    bytes, free_bytes(), *policy_, [this](const model_id& m) { return entries_.at(m).descriptor.bytes; },
    [this](const model_id& m, bytes_t) {
      auto freed = entries_.at(m).descriptor.bytes;
      evict(m);
      return freed;
    });
}

void ram_tier::evict(const model_id& model) {
  ++counters_.evictions;
  counters_.evicted_bytes += entries_.at(model).descriptor.bytes;
  transition(model, ram_residency::absent);
}

// Reserves room and starts a load for `model`, with `w` as its first waiter. False if no room.
bool ram_tier::admit(const model_descriptor& model, const waiter& w, ram_effects& out) {
  if (!make_room_for(model.bytes))
    return false;
  auto& e = entries_[model.id];
  e.descriptor = model;
  used_ += model.bytes;
  counters_.peak_used_bytes = std::max(counters_.peak_used_bytes, used_);
  transition(model.id, ram_residency::loading);
  e.waiters.push_back(w);
  ++counters_.loads;
  if (loaded_before_.count(model.id))
    ++counters_.reloads;
  out.loads.push_back(model);
  return true;
}

void ram_tier::acquire(request_id request, const model_descriptor& model, holder_id holder, bool may_wait,
                       ram_effects& out) {
  if (model.bytes > options_.budget_bytes) {
    out.replies.push_back({request, failure{errc::model_too_large,
                                            "model '" + model.id + "' needs " + format_bytes(model.bytes)
                                              + " but the whole RAM budget is "
                                              + format_bytes(options_.budget_bytes)
                                              + "; raise ram_budget_bytes"}});
    return;
  }
  auto i = entries_.find(model.id);
  if (i != entries_.end() && i->second.state == ram_residency::resident) {
    ++counters_.hits;
    out.replies.push_back({request, grant(i->second, holder)});
    return;
  }
  if (i != entries_.end() && i->second.state == ram_residency::loading) {
    ++counters_.shared_loads;
    i->second.waiters.push_back({request, holder});
    return;
  }
  // Strict FIFO: a new load does not overtake requests already waiting for room.
  if (queue_.empty() && admit(model, {request, holder}, out))
    return;
  if (!may_wait) {
    out.replies.push_back({request, no_room(model)});
    return;
  }
  ++counters_.waits;
  queue_.push_back({request, holder, model});
}

void ram_tier::serve_queue(ram_effects& out) {
  while (!queue_.empty()) {
    auto& q = queue_.front();
    auto i = entries_.find(q.descriptor.id);
    if (i != entries_.end() && i->second.state == ram_residency::resident) {
      ++counters_.hits;
      out.replies.push_back({q.request, grant(i->second, q.holder)});
    } else if (i != entries_.end() && i->second.state == ram_residency::loading) {
      ++counters_.shared_loads;
      i->second.waiters.push_back({q.request, q.holder});
    } else if (!admit(q.descriptor, {q.request, q.holder}, out)) {
      return;
    }
    queue_.pop_front();
  }
}

void ram_tier::load_finished(const model_id& model, outcome<std::shared_ptr<const host_model>> payload,
                             uint64_t load_ns, ram_effects& out) {
  auto i = entries_.find(model);
  if (i == entries_.end() || i->second.state != ram_residency::loading)
    throw std::logic_error("ram tier: load finished for '" + model + "', which is not loading");
  auto& e = i->second;
  if (succeeded(payload)) {
    auto& p = std::get<0>(payload);
    if (!p || p->total_bytes() != e.descriptor.bytes)
      payload = failure{errc::load_failed, "the loader of '" + model + "' produced "
                                             + format_bytes(p ? p->total_bytes() : 0)
                                             + " but the catalog declares "
                                             + format_bytes(e.descriptor.bytes)};
  }
  auto waiters = std::move(e.waiters);
  e.waiters.clear();
  if (!succeeded(payload)) {
    ++counters_.load_failures;
    transition(model, ram_residency::absent);
    for (const auto& w : waiters)
      out.replies.push_back({w.request, std::get<failure>(payload)});
  } else {
    e.payload = std::move(std::get<0>(payload));
    loaded_before_.insert(model);
    counters_.bytes_loaded += e.descriptor.bytes;
    counters_.load_ns += load_ns;
    transition(model, ram_residency::resident);
    for (const auto& w : waiters)
      out.replies.push_back({w.request, grant(e, w.holder)});
  }
  serve_queue(out);
}

std::optional<failure> ram_tier::release(lease_id lease, holder_id holder, ram_effects& out) {
  auto i = leases_.find(lease);
  if (i == leases_.end())
    return failure{errc::invalid_lease,
                   "lease " + std::to_string(lease) + " is not held: never issued or already released"};
  if (i->second.holder != holder)
    return failure{errc::foreign_lease, "lease " + std::to_string(lease) + " on '" + i->second.model
                                          + "' belongs to another holder"};
  auto model = i->second.model;
  by_holder_[holder].erase(lease);
  if (by_holder_[holder].empty())
    by_holder_.erase(holder);
  leases_.erase(i);
  --entries_.at(model).leases;
  update_candidacy(model);
  serve_queue(out);
  return std::nullopt;
}

outcome<ram_lease> ram_tier::share(lease_id lease, holder_id owner, holder_id borrower) {
  auto i = leases_.find(lease);
  if (i == leases_.end())
    return failure{errc::invalid_lease,
                   "lease " + std::to_string(lease) + " is not held: never issued or already released"};
  if (i->second.holder != owner)
    return failure{errc::foreign_lease, "lease " + std::to_string(lease) + " on '" + i->second.model
                                          + "' belongs to another holder"};
  return grant(entries_.at(i->second.model), borrower);
}

outcome<bytes_t> ram_tier::trim(const model_id& model, bytes_t bytes, ram_effects& out) {
  auto drop = [this](const model_id& m, bytes_t = 0) {
    auto bytes = entries_.at(m).descriptor.bytes;
    ++counters_.trims;
    transition(m, ram_residency::absent);
    return bytes;
  };
  bytes_t freed = 0;
  if (!model.empty()) {
    auto i = entries_.find(model);
    if (i == entries_.end() || i->second.state != ram_residency::resident)
      return failure{errc::not_resident,
                     "'" + model + "' is " + (i == entries_.end() ? "not in RAM" : "still loading")};
    if (i->second.leases > 0)
      return failure{errc::model_leased, "'" + model + "' is held by " + std::to_string(i->second.leases)
                                           + " lease(s); release them before trimming"};
    freed = drop(model);
  } else {
    freed = drop_candidates(bytes, *policy_, drop);
  }
  counters_.trimmed_bytes += freed;
  serve_queue(out);
  return freed;
}

void ram_tier::holder_down(holder_id holder, ram_effects& out) {
  // Withdraw its requests first, so that releasing its leases does not admit (and load for) a dead holder.
  failure gone{errc::shutting_down, "the holder went away"};
  for (auto q = queue_.begin(); q != queue_.end();) {
    if (q->holder == holder) {
      out.replies.push_back({q->request, gone});
      q = queue_.erase(q);
    } else {
      ++q;
    }
  }
  for (auto& kv : entries_) {
    auto& ws = kv.second.waiters;
    for (auto w = ws.begin(); w != ws.end();) {
      if (w->holder == holder) {
        out.replies.push_back({w->request, gone});
        w = ws.erase(w);
      } else {
        ++w;
      }
    }
  }
  auto h = by_holder_.find(holder);
  if (h != by_holder_.end())
    for (auto lease : std::set<lease_id>(h->second))
      release(lease, holder, out);
  serve_queue(out);
}

void ram_tier::expire(request_id request, ram_effects& out) {
  // Only a request still waiting for room can expire: once admitted, it is served when its load ends.
  for (auto q = queue_.begin(); q != queue_.end(); ++q) {
    if (q->request == request) {
      ++counters_.timeouts;
      out.replies.push_back({request, no_room(q->descriptor)});
      queue_.erase(q);
      serve_queue(out);  // the head may have been the one blocking the others
      return;
    }
  }
}

failure ram_tier::no_room(const model_descriptor& model) const {
  std::string held;
  for (const auto& kv : entries_) {
    if (kv.second.leases == 0 && kv.second.state != ram_residency::loading)
      continue;
    if (!held.empty())
      held += ", ";
    held += "'" + kv.first + "' " + format_bytes(kv.second.descriptor.bytes);
    held += kv.second.state == ram_residency::loading
              ? " (loading)"
              : " (" + std::to_string(kv.second.leases) + " lease" + (kv.second.leases == 1 ? ")" : "s)");
  }
  return failure{errc::budget_exhausted,
                 "no room in RAM for '" + model.id + "': wanted " + format_bytes(model.bytes) + ", free "
                   + format_bytes(free_bytes()) + " of " + format_bytes(options_.budget_bytes)
                   + "; held: " + (held.empty() ? "nothing" : held)
                   + ". Release leases, wait longer, or raise ram_budget_bytes"};
}

ram_residency ram_tier::residency(const model_id& model) const {
  auto i = entries_.find(model);
  return i == entries_.end() ? ram_residency::absent : i->second.state;
}

size_t ram_tier::leases_of(holder_id holder) const {
  auto h = by_holder_.find(holder);
  return h == by_holder_.end() ? 0 : h->second.size();
}

ram_stats ram_tier::stats() const {
  auto s = counters_;
  s.used_bytes = used_;
  s.leases_active = leases_.size();
  s.waiting_now = queue_.size();
  for (const auto& kv : entries_) {
    if (kv.second.state == ram_residency::resident)
      ++s.models_resident;
    else
      s.loading_bytes += kv.second.descriptor.bytes;
    if (kv.second.leases > 0)
      s.leased_bytes += kv.second.descriptor.bytes;
  }
  return s;
}

void ram_tier::check_invariants() const {
  auto fail = [](const std::string& what) { throw std::logic_error("ram tier invariant: " + what); };
  bytes_t sum = 0;
  size_t candidates = 0;
  std::map<model_id, size_t> lease_count;
  for (const auto& kv : leases_)
    ++lease_count[kv.second.model];
  for (const auto& kv : entries_) {
    const auto& e = kv.second;
    sum += e.descriptor.bytes;
    if (e.state == ram_residency::absent)
      fail("'" + kv.first + "' has an entry but is absent");
    if (lease_count[kv.first] != e.leases)
      fail("'" + kv.first + "' counts " + std::to_string(e.leases) + " leases, the table has "
           + std::to_string(lease_count[kv.first]));
    if (e.leases > 0 && e.state != ram_residency::resident)
      fail("leased '" + kv.first + "' is not resident");
    if (e.state == ram_residency::resident && !e.payload)
      fail("resident '" + kv.first + "' has no payload");
    if (!e.waiters.empty() && e.state != ram_residency::loading)
      fail("'" + kv.first + "' has waiters but is not loading");
    bool candidate = e.state == ram_residency::resident && e.leases == 0;
    if (candidate != policy_->contains(kv.first))
      fail("'" + kv.first + "' candidacy disagrees with the policy");
    candidates += candidate;
  }
  for (const auto& kv : lease_count)
    if (!entries_.count(kv.first))
      fail("a lease names '" + kv.first + "', which has no entry");
  if (sum != used_)
    fail("used " + std::to_string(used_) + " != sum of entries " + std::to_string(sum));
  if (used_ > options_.budget_bytes)
    fail("used " + std::to_string(used_) + " > budget " + std::to_string(options_.budget_bytes));
  if (candidates != policy_->size())
    fail("the policy holds entries that are not candidates");
  size_t by_holder_total = 0;
  for (const auto& kv : by_holder_)
    by_holder_total += kv.second.size();
  if (by_holder_total != leases_.size())
    fail("the per-holder index disagrees with the lease table");
}

} // namespace mcache
