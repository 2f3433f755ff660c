// What the RAM tier reports: its "no room" text, lookups, stats, and the invariants it checks.

#include "runtime/core/tiers/ram_tier.hpp"

#include "runtime/core/admission/no_room.hpp"
#include "runtime/core/format.hpp"

#include <algorithm>
#include <map>
#include <stdexcept>

namespace mcache {

failure ram_tier::no_room(const group& g, size_t queued_ahead) const {
  no_room_report r;
  r.tier = "RAM";
  for (const auto& kv : entries_) {
    if (kv.second.leases == 0 && kv.second.state != ram_residency::loading)
      continue;
    r.held.push_back("'" + kv.first + "' " + format_bytes(kv.second.descriptor->bytes)
                     + (kv.second.state == ram_residency::loading
                          ? " (loading)"
                          : " (" + std::to_string(kv.second.leases) + " lease" + (kv.second.leases == 1 ? ")" : "s)")));
  }
  for (const auto& m : g.models) {
    append_quoted(r.subject, m->id);
    if (residency(m->id) == ram_residency::absent)
      r.wanted += m->bytes;
  }
  r.free = free_bytes();
  r.usable = options_.budget_bytes;
  r.evictable = evictable_;
  r.queued_ahead = queued_ahead;
  if (g.checking)
    r.also = "its files were still being checked before loading";
  r.advice = "Release leases, wait longer, or raise ram_budget_bytes";
  return explain_no_room(r);
}

ram_residency ram_tier::residency(const model_id& model) const {
  auto i = entries_.find(model);
  return i == entries_.end() ? ram_residency::absent : i->second.state;
}

size_t ram_tier::leases_of(holder_id holder) const { return leases_.count_of(holder); }

ram_stats ram_tier::stats() const {
  auto s = counters_;
  s.used_bytes = used_;
  s.leases_active = leases_.size();
  s.waiting_now = queue_.size();
  for (const auto& kv : entries_) {
    if (kv.second.state == ram_residency::resident)
      ++s.models_resident;
    else
      s.loading_bytes += kv.second.descriptor->bytes;
    if (kv.second.leases > 0)
      s.leased_bytes += kv.second.descriptor->bytes;
  }
  for (const auto& kv : handed_)  // (while one is copied back, its entry's reservation counts the payload)
    if (kv.second.skeleton && kv.second.skeleton->opaque && entries_.count(kv.first) == 0)
      s.skeleton_bytes += kv.second.skeleton->opaque_bytes;
  return s;
}

void ram_tier::check_invariants() const {
  auto fail = [](const std::string& what) { throw std::logic_error("ram tier invariant: " + what); };
  bytes_t sum = 0;
  size_t candidates = 0;
  bytes_t evictable = 0;
  std::map<model_id, size_t> lease_count;
  leases_.for_each([&](lease_id, const lease_record& l) { ++lease_count[l.model]; });
  for (const auto& kv : entries_) {
    const auto& e = kv.second;
    sum += e.descriptor->bytes;
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
    for (auto request : e.waiters)
      if (!groups_.count(request) || !groups_.at(request).admitted)
        fail("'" + kv.first + "' has a waiter that is not an admitted request");
    bool candidate = e.state == ram_residency::resident && e.leases == 0;
    if (candidate != policy_->contains(kv.first))
      fail("'" + kv.first + "' candidacy disagrees with the policy");
    candidates += candidate;
    if (candidate)
      evictable += e.descriptor->bytes;
  }
  if (evictable != evictable_)
    fail("evictable bytes counted " + std::to_string(evictable_) + ", candidates hold " + std::to_string(evictable));
  for (const auto& kv : lease_count)
    if (!entries_.count(kv.first))
      fail("a lease names '" + kv.first + "', which has no entry");
  if (sum != used_)
    fail("used " + std::to_string(used_) + " != sum of entries " + std::to_string(sum));
  for (const auto& kv : handed_) {
    auto i = entries_.find(kv.first);
    if (i != entries_.end() && i->second.state != ram_residency::loading)
      fail("'" + kv.first + "' is handed over to device " + std::to_string(kv.second.device) + " but "
           + to_string(i->second.state) + " here");
    if (options_.keep_ram_copy)
      fail("'" + kv.first + "' is handed over although RAM copies are kept");
    if (gone_devices_.count(kv.second.device) != 0)
      fail("'" + kv.first + "' is handed over to device " + std::to_string(kv.second.device) + ", which is gone");
    if (!kv.second.descriptor || !kv.second.skeleton)
      fail("'" + kv.first + "' is handed over without its descriptor or its skeleton");
  }
  for (const auto& kv : whole_on_)
    for (auto device : kv.second)
      if (gone_devices_.count(device) != 0)
        fail("'" + kv.first + "' is held whole by device " + std::to_string(device) + ", which is gone");
  for (const auto& kv : groups_) {
    size_t waiting = 0;
    for (const auto& m : kv.second.models) {
      auto i = entries_.find(m->id);
      if (i != entries_.end())
        waiting += std::count(i->second.waiters.begin(), i->second.waiters.end(), kv.first);
    }
    bool queued = queue_.contains(kv.first);
    if (kv.second.admitted == queued)
      fail("request " + std::to_string(kv.first) + " is " + (queued ? "queued and admitted" : "neither queued nor admitted"));
    if (kv.second.admitted && (waiting != kv.second.pending || waiting == 0))
      fail("request " + std::to_string(kv.first) + " waits for " + std::to_string(waiting) + " loads, counts "
           + std::to_string(kv.second.pending));
  }
  if (used_ > options_.budget_bytes)
    fail("used " + std::to_string(used_) + " > budget " + std::to_string(options_.budget_bytes));
  if (candidates != policy_->size())
    fail("the policy holds entries that are not candidates");
  // Note [Cheap to get back goes first]: the policy's marks are exactly the models a device holds whole.
  const auto marked = options_.keep_ram_copy ? 0 : whole_on_.size();
  if (policy_->restorable_count() != marked)
    fail("the policy marks " + std::to_string(policy_->restorable_count()) + " models restorable; "
         + std::to_string(marked) + " should be (held whole by a device, RAM copies not kept)");
  if (!options_.keep_ram_copy)  // (with kept RAM copies the count above is 0: no mark at all)
    for (const auto& kv : whole_on_)
      if (!policy_->restorable(kv.first))
        fail("'" + kv.first + "' is held whole by a device, but the policy does not mark it restorable");
  try {
    leases_.check_invariants();
  } catch (const std::logic_error& e) {
    fail(e.what());
  }
}

} // namespace mcache
