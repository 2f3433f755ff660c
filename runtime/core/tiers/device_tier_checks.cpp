// What a device tier reports: its error texts, lookups, stats, and the invariants it checks.

#include "runtime/core/tiers/device_tier.hpp"

#include "runtime/core/admission/no_room.hpp"
#include "runtime/core/format.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>

#include <map>

namespace mcache {

failure device_tier::no_room(const pin_request& r, size_t queued_ahead) const {
  no_room_report report;
  report.tier = "device " + std::to_string(options_.device);
  report.subject = "'" + r.host.model + "'";
  for (const auto& kv : entries_) {
    if (!kv.second.held() && kv.second.state == device_residency::resident)
      continue;
    report.held.push_back("'" + kv.first + "' " + format_bytes(kv.second.bytes)
                          + (kv.second.state == device_residency::copying
                               ? " (copying)"
                               : " (" + std::to_string(kv.second.pins) + " pin" + (kv.second.pins == 1 ? ")" : "s)")));
  }
  // What admission would reserve now, parts named: the model's missing tensors, staging, working memory.
  auto i = entries_.find(r.host.model);
  bool present = i != entries_.end();
  entry fresh;
  if (!present)
    fresh.tensors = r.tensors();
  const entry& e = present ? i->second : fresh;
  // The plan admission would take with the room there is, or else with the whole usable budget (partial,
  // with staging, when the model could never fit whole).
  auto room = free_bytes() + evictable_bytes(r.host.model);
  auto leave = room_to_leave(r, true).leave;
  auto p = admission_plan(e, present, r.working_bytes, room > leave ? room - leave : 0);
  if (!p)
    p = admission_plan(e, present, r.working_bytes, usable_bytes());
  if (!p)
    p = admission_plan(e, present, r.working_bytes, std::numeric_limits<bytes_t>::max() / 2);
  if (!p->copy.empty() || !present)
    report.parts.push_back({"model", p->copy_bytes});
  if (p->staging_bytes > 0)
    report.parts.push_back({"staging", p->staging_bytes});
  report.parts.push_back({"working", r.working_bytes});
  if (leave > 0)
    report.parts.push_back({"left for the pins asked for with it", leave});
  report.wanted = p->need() + r.working_bytes + leave;
  report.free = free_bytes();
  report.usable = usable_bytes();
  report.evictable = evictable_bytes(r.host.model);
  report.also = "working memory reserved " + format_bytes(working_reserved_) + " (pins and pins being admitted)";
  report.queued_ahead = queued_ahead;
  report.advice = "Release pins, wait longer, or raise the device budget";
  return explain_no_room(report);
}

device_residency device_tier::residency(const model_id& model) const {
  auto i = entries_.find(model);
  return i == entries_.end() ? device_residency::absent : i->second.state;
}

bytes_t device_tier::resident_bytes(const model_id& model) const {
  auto i = entries_.find(model);
  return i == entries_.end() ? 0 : i->second.bytes;
}

placement_view device_tier::placement(const model_id& model) const {
  return placement_view{options_.device, free_bytes(), resident_bytes(model),
                        options_.budget_bytes - options_.reserve_bytes, options_.partial_loading,
                        options_.staging_slots};
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
  bytes_t evictable = 0;
  std::map<model_id, size_t> pin_count;
  std::map<model_id, size_t> kept_count;
  pins_.for_each([&](pin_id, const pin_record& p) {
    ++pin_count[p.model];
    working += p.working_bytes + p.reserved_after;
    for (const auto& m : p.kept_after)
      ++kept_count[m];
  });
  for (const auto& kv : entries_)
    for (const auto& w : kv.second.waiters)
      for (const auto& m : w.kept_after)
        ++kept_count[m];
  for (const auto& kv : entries_) {
    const auto& e = kv.second;
    auto name = "'" + kv.first + "'";
    bytes_t held = 0;
    bool any_copying = false;
    for (size_t k = 0; k < e.tensors.size(); ++k) {
      const auto& t = e.tensors[k];
      bool resident = t.state == tensor_residency::resident;
      if (t.state != tensor_residency::absent)
        held += t.bytes;
      any_copying |= t.state == tensor_residency::copying;
      bool on_device = e.view && k < e.view->tensors.size() && e.view->tensors[k].tensor.defined();
      if (resident != on_device)
        fail(name + " tensor " + std::to_string(k) + (resident ? " is resident without" : " has")
             + " a device copy" + (resident ? "" : " but is not resident"));
      if (e.pins > 0 && t.required && !resident)
        fail(name + " is pinned but its required tensor " + std::to_string(k) + " is not resident");
    }
    if (held != e.bytes)
      fail(name + " counts " + std::to_string(e.bytes) + " bytes, its tensors " + std::to_string(held));
    sum += e.bytes;
    for (const auto& w : e.waiters)
      working += w.working_bytes + w.reserved_after;
    if (e.state == device_residency::absent)
      fail(name + " has an entry but is absent");
    if ((e.state == device_residency::copying) != any_copying)
      fail(name + " is " + to_string(e.state) + (any_copying ? " with" : " without") + " tensors being copied");
    if (pin_count[kv.first] != e.pins)
      fail(name + " counts " + std::to_string(e.pins) + " pins, the table has " + std::to_string(pin_count[kv.first]));
    if (e.pins > 0 && e.state != device_residency::resident)
      fail("pinned " + name + " is not resident");
    if (e.only_copy && (e.state != device_residency::resident || held != e.model_bytes()))
      fail(name + " holds the only copy but is not resident whole");
    if (e.state == device_residency::resident && !e.held() && e.bytes == 0)
      fail(name + " is resident with nothing on the device and no pin");
    if (kept_count.count(kv.first) ? kept_count[kv.first] != e.kept : e.kept != 0)
      fail(name + " is kept " + std::to_string(e.kept) + " times, by " + std::to_string(kept_count[kv.first])
           + " earlier pins");
    if (!e.waiters.empty() && e.state != device_residency::copying)
      fail(name + " has waiters but is not copying");
    bool candidate = e.state == device_residency::resident && !e.held() && e.bytes > 0;
    if (candidate != policy_->contains(kv.first))
      fail(name + " candidacy disagrees with the policy");
    candidates += candidate;
    if (e.counted_evictable != (candidate ? e.bytes : 0))
      fail(name + " counts " + std::to_string(e.counted_evictable) + " evictable bytes");
    evictable += e.counted_evictable;
  }
  if (evictable != evictable_)
    fail("evictable bytes counted " + std::to_string(evictable_) + ", candidates hold " + std::to_string(evictable));
  try {
    pins_.check_invariants();
  } catch (const std::logic_error& e) {
    fail(e.what());
  }
  for (const auto& kv : pin_count)
    if (!entries_.count(kv.first))
      fail("a pin names '" + kv.first + "', which has no entry");
  for (const auto& kv : kept_count)
    if (!entries_.count(kv.first))
      fail("a pin keeps '" + kv.first + "' for a later pin, which has no entry");
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
