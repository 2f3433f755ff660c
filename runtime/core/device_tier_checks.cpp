// What a device tier reports: its error texts, lookups, stats, and the invariants it checks.

#include "runtime/core/device_tier.hpp"

#include "runtime/core/format.hpp"
#include "runtime/core/make_room.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>

#include <map>

namespace mcache {

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
                   + "': wanted " + format_bytes((present ? 0 : r.model_bytes()) + r.working_bytes)
                   + " (model " + format_bytes(r.model_bytes()) + ", working "
                   + format_bytes(r.working_bytes) + "), free " + format_bytes(free_bytes()) + " of "
                   + format_bytes(usable_bytes()) + " usable; working memory reserved "
                   + format_bytes(working_reserved_) + "; held: " + (held.empty() ? "nothing" : held)
                   + ". Release pins, wait longer, or raise the device budget"};
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
  return placement_view{options_.device, free_bytes(), resident_bytes(model)};
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
    auto name = "'" + kv.first + "'";
    bytes_t held = 0;
    bool any_copying = false;
    for (size_t k = 0; k < e.tensors.size(); ++k) {
      const auto& t = e.tensors[k];
      if (t.resident && t.copying)
        fail(name + " tensor " + std::to_string(k) + " is both resident and being copied");
      if (t.resident || t.copying)
        held += t.bytes;
      any_copying |= t.copying;
      bool on_device = e.view && k < e.view->tensors.size() && e.view->tensors[k].tensor.defined();
      if (t.resident != on_device)
        fail(name + " tensor " + std::to_string(k) + (t.resident ? " is resident without" : " has")
             + " a device copy" + (t.resident ? "" : " but is not resident"));
      if (e.pins > 0 && t.required && !t.resident)
        fail(name + " is pinned but its required tensor " + std::to_string(k) + " is not resident");
    }
    if (held != e.bytes)
      fail(name + " counts " + std::to_string(e.bytes) + " bytes, its tensors " + std::to_string(held));
    sum += e.bytes;
    for (const auto& w : e.waiters)
      working += w.working_bytes;
    if (e.state == device_residency::absent)
      fail(name + " has an entry but is absent");
    if ((e.state == device_residency::copying) != any_copying)
      fail(name + " is " + to_string(e.state) + (any_copying ? " with" : " without") + " tensors being copied");
    if (pin_count[kv.first] != e.pins)
      fail(name + " counts " + std::to_string(e.pins) + " pins, the table has " + std::to_string(pin_count[kv.first]));
    if (e.pins > 0 && e.state != device_residency::resident)
      fail("pinned " + name + " is not resident");
    if (e.state == device_residency::resident && e.pins == 0 && e.bytes == 0)
      fail(name + " is resident with nothing on the device and no pin");
    if (!e.waiters.empty() && e.state != device_residency::copying)
      fail(name + " has waiters but is not copying");
    bool candidate = e.state == device_residency::resident && e.pins == 0 && e.bytes > 0;
    if (candidate != policy_->contains(kv.first))
      fail(name + " candidacy disagrees with the policy");
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
