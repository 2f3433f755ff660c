#include "runtime/core/device_tier.hpp"

#include "runtime/core/format.hpp"
#include "runtime/core/make_room.hpp"

#include <algorithm>
#include <stdexcept>

namespace mcache {

const char* to_string(device_residency state) {
  switch (state) {
    case device_residency::absent: return "absent";
    case device_residency::copying: return "copying";
    case device_residency::resident: return "resident";
  }
  return "?";
}

device_tier::device_tier(device_tier_options options, std::unique_ptr<eviction_policy> policy)
  : options_(options), policy_(std::move(policy)) {
  if (auto err = validate(options_))
    throw std::invalid_argument(err->detail);
  counters_.device = options_.device;
  counters_.budget_bytes = options_.budget_bytes;
  counters_.reserve_bytes = options_.reserve_bytes;
}

std::optional<failure> device_tier::validate(const device_tier_options& options) {
  auto name = "device " + std::to_string(options.device);
  if (options.budget_bytes == 0)
    return failure{errc::invalid_argument, name + ": the budget is 0 bytes"};
  if (options.reserve_bytes >= options.budget_bytes)
    return failure{errc::invalid_argument, name + ": the working-memory reserve ("
                                             + format_bytes(options.reserve_bytes)
                                             + ") leaves nothing of the budget ("
                                             + format_bytes(options.budget_bytes) + ")"};
  return std::nullopt;
}

// The only place that changes a device entry's residency; it rejects moves the diagram does not draw.
void device_tier::transition(const model_id& model, device_residency to) {
  auto i = entries_.find(model);
  auto from = i == entries_.end() ? device_residency::absent : i->second.state;
  bool legal = (from == device_residency::absent && to == device_residency::copying)
               || (from == device_residency::copying && to == device_residency::resident)
               || (from == device_residency::copying && to == device_residency::absent)
               || (from == device_residency::resident && to == device_residency::absent);
  if (!legal)
    throw std::logic_error("device tier: illegal move of '" + model + "' from " + to_string(from) + " to "
                           + to_string(to));
  if (to == device_residency::absent) {
    used_ -= i->second.bytes;
    policy_->erase(model);
    entries_.erase(i);
    return;
  }
  i->second.state = to;
  update_candidacy(model);
}

// A model is an eviction candidate exactly when it is resident and unpinned.
void device_tier::update_candidacy(const model_id& model) {
  const auto& e = entries_.at(model);
  if (e.state == device_residency::resident && e.pins == 0) {
    if (!policy_->contains(model))
      policy_->insert(model);
  } else {
    policy_->erase(model);
  }
}

void device_tier::drop(const model_id& model) { transition(model, device_residency::absent); }

device_pin device_tier::grant(const model_id& model, const admitted& a) {
  auto& e = entries_.at(model);
  auto id = next_pin_++;
  pins_.emplace(id, pin_record{model, a.holder, a.working_bytes, a.host.lease});
  by_holder_[a.holder].insert(id);
  ++e.pins;
  update_candidacy(model);
  return device_pin{id, model, options_.device, e.bytes, a.working_bytes, e.view, a.host.payload};
}

void device_tier::fail_request(const admitted& a, failure why, device_effects& out) {
  working_reserved_ -= a.working_bytes;
  used_ -= a.working_bytes;
  out.ram_leases_to_release.push_back(a.host.lease);
  out.replies.push_back({a.request, std::move(why)});
}

// Reserves working memory (and room for a copy when absent) for `r`. False (nothing changed) if no room.
bool device_tier::try_admit(const pin_request& r, device_effects& out) {
  const auto& model = r.host.model;
  auto i = entries_.find(model);
  bool present = i != entries_.end();
  bytes_t need = r.working_bytes + (present ? 0 : r.device_bytes);
  // The model being pinned must not be evicted to make room for its own working memory.
  if (present)
    policy_->erase(model);
  bool room = make_room(
    need, free_bytes(), *policy_, [this](const model_id& m) { return entries_.at(m).bytes; },
    [this](const model_id& m) {
      ++counters_.evictions;
      counters_.evicted_bytes += entries_.at(m).bytes;
      drop(m);
    });
  if (present)
    update_candidacy(model);
  if (!room)
    return false;
  working_reserved_ += r.working_bytes;
  used_ += r.working_bytes;
  admitted a{r.request, r.holder, r.host, r.working_bytes};
  if (!present) {
    auto& e = entries_[model];
    e.bytes = r.device_bytes;
    used_ += r.device_bytes;
    transition(model, device_residency::copying);
    e.waiters.push_back(a);
    ++counters_.loads;
    out.copies.push_back({model, r.host.payload});
  } else if (i->second.state == device_residency::copying) {
    ++counters_.shared_loads;
    i->second.waiters.push_back(a);
  } else {
    ++counters_.hits;
    out.replies.push_back({r.request, grant(model, a)});
  }
  counters_.peak_used_bytes = std::max(counters_.peak_used_bytes, used_);
  return true;
}

void device_tier::pin(pin_request r, bool may_wait, device_effects& out) {
  if (r.device_bytes + r.working_bytes > usable_bytes()) {
    out.ram_leases_to_release.push_back(r.host.lease);
    out.replies.push_back(
      {r.request, failure{errc::model_too_large,
                          "pinning '" + r.host.model + "' on device " + std::to_string(options_.device)
                            + " needs " + format_bytes(r.device_bytes) + " for the model + "
                            + format_bytes(r.working_bytes) + " working memory, but only "
                            + format_bytes(usable_bytes()) + " of the budget "
                            + format_bytes(options_.budget_bytes) + " is usable after the reserve "
                            + format_bytes(options_.reserve_bytes)
                            + "; ask for less working memory, lower the reserve or use a larger device"}});
    return;
  }
  // Strict FIFO: nothing overtakes requests already waiting for room.
  if (queue_.empty() && try_admit(r, out))
    return;
  if (!may_wait) {
    out.ram_leases_to_release.push_back(r.host.lease);
    out.replies.push_back({r.request, no_room(r)});
    return;
  }
  ++counters_.waits;
  queue_.push_back(std::move(r));
}

void device_tier::serve_queue(device_effects& out) {
  while (!queue_.empty() && try_admit(queue_.front(), out))
    queue_.pop_front();
}

void device_tier::copy_finished(const model_id& model, outcome<std::shared_ptr<const device_model>> copy,
                                uint64_t copy_ns, device_effects& out) {
  auto i = entries_.find(model);
  if (i == entries_.end() || i->second.state != device_residency::copying)
    throw std::logic_error("device tier: copy finished for '" + model + "', which is not copying");
  auto& e = i->second;
  auto waiters = std::move(e.waiters);
  e.waiters.clear();
  for (auto lease : e.orphaned_leases)
    out.ram_leases_to_release.push_back(lease);
  e.orphaned_leases.clear();
  if (!succeeded(copy)) {
    ++counters_.copy_failures;
    transition(model, device_residency::absent);
    for (const auto& w : waiters)
      fail_request(w, std::get<failure>(copy), out);
  } else {
    e.view = std::move(std::get<0>(copy));
    counters_.bytes_copied_in += e.bytes;
    counters_.copy_ns += copy_ns;
    transition(model, device_residency::resident);
    for (const auto& w : waiters)
      out.replies.push_back({w.request, grant(model, w)});
  }
  serve_queue(out);
}

std::optional<failure> device_tier::release(pin_id pin, holder_id holder, device_effects& out) {
  auto i = pins_.find(pin);
  if (i == pins_.end())
    return failure{errc::invalid_pin,
                   "pin " + std::to_string(pin) + " is not held: never issued or already released"};
  if (i->second.holder != holder)
    return failure{errc::foreign_pin,
                   "pin " + std::to_string(pin) + " on '" + i->second.model + "' belongs to another holder"};
  auto rec = i->second;
  pins_.erase(i);
  by_holder_[holder].erase(pin);
  if (by_holder_[holder].empty())
    by_holder_.erase(holder);
  working_reserved_ -= rec.working_bytes;
  used_ -= rec.working_bytes;
  --entries_.at(rec.model).pins;
  update_candidacy(rec.model);
  out.ram_leases_to_release.push_back(rec.ram_lease);
  serve_queue(out);
  return std::nullopt;
}

outcome<bytes_t> device_tier::offload(const model_id& model, bytes_t bytes, device_effects& out) {
  bytes_t freed = 0;
  if (!model.empty()) {
    auto i = entries_.find(model);
    if (i == entries_.end() || i->second.state != device_residency::resident)
      return failure{errc::not_resident,
                     "'" + model + "' is " + (i == entries_.end() ? "not on" : "still being copied to")
                       + " device " + std::to_string(options_.device)};
    if (i->second.pins > 0)
      return failure{errc::model_pinned, "'" + model + "' is pinned on device "
                                           + std::to_string(options_.device) + " by "
                                           + std::to_string(i->second.pins)
                                           + " pin(s); release them before offloading"};
    freed = i->second.bytes;
    ++counters_.offloads;
    drop(model);
  } else {
    freed = drop_candidates(
      bytes, *policy_, [this](const model_id& m) { return entries_.at(m).bytes; },
      [this](const model_id& m) {
        ++counters_.offloads;
        drop(m);
      });
  }
  counters_.offloaded_bytes += freed;
  serve_queue(out);
  return freed;
}

void device_tier::holder_down(holder_id holder, device_effects& out) {
  // Withdraw its requests first, so that releasing its pins does not admit (and copy for) a dead holder.
  failure gone{errc::shutting_down, "the holder went away"};
  for (auto q = queue_.begin(); q != queue_.end();) {
    if (q->holder != holder) {
      ++q;
      continue;
    }
    out.ram_leases_to_release.push_back(q->host.lease);
    out.replies.push_back({q->request, gone});
    q = queue_.erase(q);
  }
  for (auto& kv : entries_) {
    auto& ws = kv.second.waiters;
    for (auto w = ws.begin(); w != ws.end();) {
      if (w->holder != holder) {
        ++w;
        continue;
      }
      // The copy in flight still reads the host copy: keep its lease until the copy ends.
      working_reserved_ -= w->working_bytes;
      used_ -= w->working_bytes;
      kv.second.orphaned_leases.push_back(w->host.lease);
      out.replies.push_back({w->request, gone});
      w = ws.erase(w);
    }
  }
  auto h = by_holder_.find(holder);
  if (h != by_holder_.end())
    for (auto pin : std::set<pin_id>(h->second))
      release(pin, holder, out);
  serve_queue(out);
}

void device_tier::expire(request_id request, device_effects& out) {
  // Only a request still waiting for room can expire: once admitted, it is served when its copy ends.
  for (auto q = queue_.begin(); q != queue_.end(); ++q) {
    if (q->request != request)
      continue;
    ++counters_.timeouts;
    out.ram_leases_to_release.push_back(q->host.lease);
    out.replies.push_back({request, no_room(*q)});
    queue_.erase(q);
    serve_queue(out);
    return;
  }
}

failure device_tier::no_room(const pin_request& r) const {
  std::string held;
  for (const auto& kv : entries_) {
    if (kv.second.pins == 0 && kv.second.state == device_residency::resident)
      continue;
    if (!held.empty())
      held += ", ";
    held += "'" + kv.first + "' " + format_bytes(kv.second.bytes)
            + (kv.second.state == device_residency::copying
                 ? " (copying)"
                 : " (" + std::to_string(kv.second.pins) + " pin" + (kv.second.pins == 1 ? ")" : "s)"));
  }
  bool present = entries_.count(r.host.model) > 0;
  return failure{errc::budget_exhausted,
                 "no room on device " + std::to_string(options_.device) + " for '" + r.host.model
                   + "': wanted " + format_bytes((present ? 0 : r.device_bytes) + r.working_bytes)
                   + " (model " + format_bytes(r.device_bytes) + ", working "
                   + format_bytes(r.working_bytes) + "), free " + format_bytes(free_bytes()) + " of "
                   + format_bytes(usable_bytes()) + " usable; working memory reserved "
                   + format_bytes(working_reserved_) + "; held: " + (held.empty() ? "nothing" : held)
                   + ". Release pins, wait longer, or raise the device budget"};
}

device_residency device_tier::residency(const model_id& model) const {
  auto i = entries_.find(model);
  return i == entries_.end() ? device_residency::absent : i->second.state;
}

size_t device_tier::pins_of(holder_id holder) const {
  auto h = by_holder_.find(holder);
  return h == by_holder_.end() ? 0 : h->second.size();
}

device_stats device_tier::stats() const {
  auto s = counters_;
  s.used_bytes = used_;
  s.working_bytes = working_reserved_;
  s.pins_active = pins_.size();
  s.waiting_now = queue_.size();
  for (const auto& kv : entries_) {
    s.resident_bytes += kv.second.bytes;
    if (kv.second.state == device_residency::resident)
      ++s.models_resident;
    if (kv.second.pins > 0)
      s.pinned_bytes += kv.second.bytes;
  }
  return s;
}

void device_tier::check_invariants() const {
  auto fail = [this](const std::string& what) {
    throw std::logic_error("device " + std::to_string(options_.device) + " tier invariant: " + what);
  };
  bytes_t sum = 0;
  bytes_t working = 0;
  size_t candidates = 0;
  std::map<model_id, size_t> pin_count;
  for (const auto& kv : pins_) {
    ++pin_count[kv.second.model];
    working += kv.second.working_bytes;
  }
  for (const auto& kv : entries_) {
    const auto& e = kv.second;
    sum += e.bytes;
    for (const auto& w : e.waiters)
      working += w.working_bytes;
    if (e.state == device_residency::absent)
      fail("'" + kv.first + "' has an entry but is absent");
    if (pin_count[kv.first] != e.pins)
      fail("'" + kv.first + "' counts " + std::to_string(e.pins) + " pins, the table has "
           + std::to_string(pin_count[kv.first]));
    if (e.pins > 0 && e.state != device_residency::resident)
      fail("pinned '" + kv.first + "' is not resident");
    if (e.state == device_residency::resident && !e.view)
      fail("resident '" + kv.first + "' has no device copy");
    if (!e.waiters.empty() && e.state != device_residency::copying)
      fail("'" + kv.first + "' has waiters but is not copying");
    bool candidate = e.state == device_residency::resident && e.pins == 0;
    if (candidate != policy_->contains(kv.first))
      fail("'" + kv.first + "' candidacy disagrees with the policy");
    candidates += candidate;
  }
  for (const auto& kv : pin_count)
    if (!entries_.count(kv.first))
      fail("a pin names '" + kv.first + "', which has no entry");
  if (working != working_reserved_)
    fail("working memory reserved " + std::to_string(working_reserved_) + " != sum over pins and waiters "
         + std::to_string(working));
  if (sum + working_reserved_ != used_)
    fail("used " + std::to_string(used_) + " != entries " + std::to_string(sum) + " + working "
         + std::to_string(working_reserved_));
  if (used_ > usable_bytes())
    fail("used " + std::to_string(used_) + " > usable " + std::to_string(usable_bytes()));
  if (candidates != policy_->size())
    fail("the policy holds entries that are not candidates");
}

} // namespace mcache
