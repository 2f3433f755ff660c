#include "runtime/core/device_tier.hpp"

#include "runtime/core/format.hpp"
#include "runtime/core/make_room.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace mcache {

namespace {

std::shared_ptr<const device_model> with_tensors(const std::shared_ptr<const device_model>& old, size_t n,
                                                 const host_model* host) {
  auto v = std::make_shared<device_model>();
  if (old)
    v->tensors = old->tensors;
  v->tensors.resize(n);
  if (host)
    for (size_t i = 0; i < n && i < host->tensors.size(); ++i)
      v->tensors[i].name = host->tensors[i].name;
  return v;
}

} // namespace

const char* to_string(device_residency state) {
  switch (state) {
    case device_residency::absent: return "absent";
    case device_residency::copying: return "copying";
    case device_residency::resident: return "resident";
  }
  return "?";
}

bytes_t pin_request::model_bytes() const {
  bytes_t sum = 0;
  for (auto b : tensor_bytes)
    sum += b;
  return sum;
}

bytes_t device_tier::entry::model_bytes() const {
  bytes_t sum = 0;
  for (const auto& t : tensors)
    sum += t.bytes;
  return sum;
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
  if (options.staging_slots < 2)
    return failure{errc::invalid_argument, name + ": streaming needs at least 2 staging slots"};
  return std::nullopt;
}

// The only place that changes a device entry's residency; it rejects moves the diagram does not draw.
void device_tier::transition(const model_id& model, device_residency to) {
  auto i = entries_.find(model);
  auto from = i == entries_.end() ? device_residency::absent : i->second.state;
  bool legal = (from == device_residency::absent && to == device_residency::copying)
               || (from == device_residency::copying && to == device_residency::resident)
               || (from == device_residency::copying && to == device_residency::absent)
               || (from == device_residency::resident && to == device_residency::absent)
               || (from == device_residency::resident && to == device_residency::copying);
  if (!legal)
    throw std::logic_error("device tier: illegal move of '" + model + "' from " + to_string(from) + " to "
                           + to_string(to));
  if (to == device_residency::absent) {
    used_ -= i->second.bytes;
    policy_->erase(model);
    if (i->second.view)
      released_.push_back(std::move(i->second.view));
    entries_.erase(i);
    return;
  }
  i->second.state = to;
  update_candidacy(model);
}

// A model is an eviction candidate exactly when it is resident, unpinned and holds device bytes.
void device_tier::update_candidacy(const model_id& model) {
  const auto& e = entries_.at(model);
  if (e.state == device_residency::resident && e.pins == 0 && e.bytes > 0) {
    if (!policy_->contains(model))
      policy_->insert(model);
  } else {
    policy_->erase(model);
  }
}

bytes_t device_tier::evictable_bytes() const {
  bytes_t sum = 0;
  for (const auto& v : policy_->victims())
    sum += entries_.at(v).bytes;
  return sum;
}

// Staging for a pin of `e`: slots x the largest tensor that will stream (neither resident, nor being
// copied, nor in `also_resident`).
bytes_t device_tier::staging_for(const entry& e, const std::vector<size_t>& also_resident) const {
  bytes_t largest = 0;
  for (size_t i = 0; i < e.tensors.size(); ++i) {
    const auto& t = e.tensors[i];
    if (t.resident || t.copying || std::find(also_resident.begin(), also_resident.end(), i) != also_resident.end())
      continue;
    largest = std::max(largest, t.bytes);
  }
  return largest * options_.staging_slots;
}

std::optional<device_tier::plan> device_tier::plan_for(const entry& e, bytes_t working, bytes_t room) const {
  plan whole;
  for (size_t i = 0; i < e.tensors.size(); ++i)
    if (!e.tensors[i].resident && !e.tensors[i].copying) {
      whole.copy.push_back(i);
      whole.copy_bytes += e.tensors[i].bytes;
    }
  if (whole.copy_bytes + working <= room)
    return whole;
  if (!options_.partial_loading)
    return std::nullopt;
  // Required tensors first, then others in execution order while they fit beside the staging buffers.
  plan p;
  bytes_t worst_staging = staging_for(e, {});
  for (auto i : whole.copy)
    if (e.tensors[i].required) {
      p.copy.push_back(i);
      p.copy_bytes += e.tensors[i].bytes;
    }
  if (p.copy_bytes + worst_staging + working > room)
    return std::nullopt;
  auto budget = room - working - worst_staging - p.copy_bytes;
  for (auto i : whole.copy) {
    if (e.tensors[i].required || e.tensors[i].bytes > budget)
      continue;
    p.copy.push_back(i);
    p.copy_bytes += e.tensors[i].bytes;
    budget -= e.tensors[i].bytes;
  }
  std::sort(p.copy.begin(), p.copy.end());
  p.staging_bytes = staging_for(e, p.copy);
  return p;
}

bytes_t device_tier::trim(const model_id& model, bytes_t wanted) {
  auto& e = entries_.at(model);
  bytes_t freed = 0;
  std::vector<size_t> dropped;
  for (size_t k = e.tensors.size(); k-- > 0 && freed < wanted;) {
    auto& t = e.tensors[k];
    if (!t.resident)
      continue;
    t.resident = false;
    freed += t.bytes;
    dropped.push_back(k);
  }
  e.bytes -= freed;
  used_ -= freed;
  if (e.bytes == 0) {
    transition(model, device_residency::absent);
    return freed;
  }
  auto v = std::const_pointer_cast<device_model>(with_tensors(e.view, e.tensors.size(), nullptr));
  for (auto k : dropped)
    v->tensors[k].tensor = at::Tensor();
  v->device_bytes = e.bytes;
  released_.push_back(std::move(e.view));
  e.view = v;
  update_candidacy(model);
  return freed;
}

bool device_tier::make_room_for(bytes_t need) {
  return make_room(
    need, free_bytes(), *policy_, [this](const model_id& m) { return entries_.at(m).bytes; },
    [this](const model_id& m, bytes_t wanted) {
      auto freed = trim(m, wanted);
      if (residency(m) == device_residency::absent)
        ++counters_.evictions;
      else
        ++counters_.trims;
      counters_.evicted_bytes += freed;
      return freed;
    });
}

device_pin device_tier::grant(const model_id& model, const admitted& a) {
  auto& e = entries_.at(model);
  auto id = next_pin_++;
  pins_.emplace(id, pin_record{model, a.holder, a.working_bytes, a.host.lease});
  by_holder_[a.holder].insert(id);
  ++e.pins;
  update_candidacy(model);
  device_pin p;
  p.pin = id;
  p.model = model;
  p.device = options_.device;
  p.resident_bytes = e.bytes;
  p.model_bytes = e.model_bytes();
  p.working_bytes = a.working_bytes;
  p.staging_bytes = a.staging_bytes;
  p.view = e.view ? e.view : with_tensors(nullptr, e.tensors.size(), a.host.payload.get());
  p.host = a.host.payload;
  p.staging_slots = options_.staging_slots;
  return p;
}

void device_tier::fail_request(const admitted& a, failure why, device_effects& out) {
  working_reserved_ -= a.working_bytes;
  used_ -= a.working_bytes;
  out.ram_leases_to_release.push_back(a.host.lease);
  out.replies.push_back({a.request, std::move(why)});
}

void device_tier::start_copy(const model_id& model, entry& e, const std::vector<size_t>& tensors,
                             std::shared_ptr<const host_model> host, device_effects& out) {
  for (auto i : tensors) {
    e.tensors[i].copying = true;
    e.bytes += e.tensors[i].bytes;
    used_ += e.tensors[i].bytes;
  }
  e.host = host;
  out.copies.push_back({model, std::move(host), tensors});
}

// Reserves working memory and staging (and room for a copy when needed) for `r`. False (nothing
// changed) if there is no room.
bool device_tier::try_admit(const pin_request& r, device_effects& out) {
  const auto& model = r.host.model;
  auto i = entries_.find(model);
  bool present = i != entries_.end();
  // The model being pinned is not a candidate while its own room is made.
  if (present)
    policy_->erase(model);
  auto room = free_bytes() + evictable_bytes();
  entry fresh;
  if (!present)
    for (size_t k = 0; k < r.tensor_bytes.size(); ++k)
      fresh.tensors.push_back({r.tensor_bytes[k], k < r.required.size() && r.required[k], false, false});
  const entry& e = present ? i->second : fresh;
  std::optional<plan> p;
  if (present && (e.state == device_residency::copying || e.pins > 0)) {
    p = plan{};
    p->staging_bytes = staging_for(e, {});
  } else {
    p = plan_for(e, r.working_bytes, room);
  }
  bool admitted_now = p && p->need() + r.working_bytes <= room && make_room_for(p->need() + r.working_bytes);
  if (present)
    update_candidacy(model);
  if (!admitted_now)
    return false;
  auto reserve = r.working_bytes + p->staging_bytes;
  working_reserved_ += reserve;
  used_ += reserve;
  admitted a{r.request, r.holder, r.host, reserve, p->staging_bytes};
  if (!present) {
    auto& created = entries_[model];
    created.tensors = std::move(fresh.tensors);
    ++counters_.loads;
    if (p->copy_bytes < created.model_bytes())
      ++counters_.partial_loads;
    if (p->copy.empty()) {
      // Nothing fits beside the staging ring: every tensor streams, so there is nothing to wait for.
      transition(model, device_residency::copying);
      transition(model, device_residency::resident);
      out.replies.push_back({r.request, grant(model, a)});
    } else {
      start_copy(model, created, p->copy, r.host.payload, out);
      transition(model, device_residency::copying);
      created.waiters.push_back(a);
    }
  } else if (i->second.state == device_residency::copying) {
    ++counters_.shared_loads;
    i->second.waiters.push_back(a);
  } else if (!p->copy.empty()) {
    start_copy(model, i->second, p->copy, r.host.payload, out);
    transition(model, device_residency::copying);
    i->second.waiters.push_back(a);
    ++counters_.top_ups;
  } else {
    ++counters_.hits;
    out.replies.push_back({r.request, grant(model, a)});
  }
  counters_.peak_used_bytes = std::max(counters_.peak_used_bytes, used_);
  return true;
}

void device_tier::pin(pin_request r, bool may_wait, device_effects& out) {
  if (r.host.payload && r.tensor_bytes.size() != r.host.payload->tensors.size()) {
    // The caller must describe every tensor of the host copy, whether or not the model is here already:
    // a queued request may find it evicted by the time it is admitted.
    out.ram_leases_to_release.push_back(r.host.lease);
    out.replies.push_back({r.request, failure{errc::invalid_argument,
                                              "pin request for '" + r.host.model + "' describes "
                                                + std::to_string(r.tensor_bytes.size()) + " tensors, the model has "
                                                + std::to_string(r.host.payload->tensors.size())}});
    return;
  }
  // The least this pin could ever need: the whole model, or (partial) its required tensors and staging.
  entry shape;
  bytes_t required = 0;
  for (size_t k = 0; k < r.tensor_bytes.size(); ++k) {
    bool req = k < r.required.size() && r.required[k];
    shape.tensors.push_back({r.tensor_bytes[k], req, false, false});
    if (req)
      required += r.tensor_bytes[k];
  }
  auto least = r.model_bytes();
  if (options_.partial_loading)
    least = std::min(least, required + staging_for(shape, {}));
  if (least + r.working_bytes > usable_bytes()) {
    out.ram_leases_to_release.push_back(r.host.lease);
    out.replies.push_back(
      {r.request, failure{errc::model_too_large,
                          "pinning '" + r.host.model + "' on device " + std::to_string(options_.device)
                            + " needs " + format_bytes(least) + " for the model"
                            + (least < r.model_bytes() ? " (required tensors + staging)" : "") + " + "
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

// Gives back the reservation of every tensor still marked as being copied.
void device_tier::drop_copying(const model_id&, entry& e) {
  for (auto& t : e.tensors)
    if (t.copying) {
      t.copying = false;
      e.bytes -= t.bytes;
      used_ -= t.bytes;
    }
}

void device_tier::copy_finished(const model_id& model, outcome<std::shared_ptr<const device_model>> copy,
                                uint64_t copy_ns, device_effects& out) {
  auto i = entries_.find(model);
  if (i == entries_.end() || i->second.state != device_residency::copying)
    throw std::logic_error("device tier: copy finished for '" + model + "', which is not copying");
  auto& e = i->second;
  std::vector<size_t> copied;
  bytes_t copied_bytes = 0;
  for (size_t k = 0; k < e.tensors.size(); ++k)
    if (e.tensors[k].copying) {
      copied.push_back(k);
      copied_bytes += e.tensors[k].bytes;
    }
  if (succeeded(copy) && std::get<0>(copy)->tensors.size() != copied.size())
    copy = failure{errc::copy_failed, "the backend returned " + std::to_string(std::get<0>(copy)->tensors.size())
                                        + " tensors for a copy of " + std::to_string(copied.size())};
  if (!succeeded(copy) && std::get<failure>(copy).code == errc::device_oom && e.oom_attempts < 2) {
    ++e.oom_attempts;
    ++counters_.oom_retries;
    if (e.oom_attempts == 1) {
      // Rung 1: free every unpinned model (the allocator's view of free memory is not ours), retry.
      drop_candidates(0, *policy_, [this](const model_id& m, bytes_t wanted) {
        auto freed = trim(m, wanted);
        ++counters_.evictions;
        counters_.evicted_bytes += freed;
        return freed;
      });
      out.copies.push_back({model, e.host, copied});
      return;
    }
    if (options_.partial_loading) {
      // Rung 2: copy the required tensors only and stream the rest, if the waiters' staging fits.
      std::vector<size_t> keep;
      for (auto k : copied)
        if (e.tensors[k].required)
          keep.push_back(k);
      for (auto k : copied)
        if (!e.tensors[k].required) {
          e.tensors[k].copying = false;
          e.bytes -= e.tensors[k].bytes;
          used_ -= e.tensors[k].bytes;
        }
      auto staging = staging_for(e, {});
      bytes_t extra = 0;
      for (const auto& w : e.waiters)
        extra += staging > w.staging_bytes ? staging - w.staging_bytes : 0;
      if (extra <= free_bytes()) {
        for (auto& w : e.waiters)
          if (staging > w.staging_bytes) {
            auto delta = staging - w.staging_bytes;
            w.staging_bytes = staging;
            w.working_bytes += delta;
            working_reserved_ += delta;
            used_ += delta;
          }
        ++counters_.partial_loads;
        if (!keep.empty()) {
          out.copies.push_back({model, e.host, keep});
          return;
        }
        copy = std::make_shared<const device_model>();  // nothing left to copy: all of it streams
        copied.clear();
        copied_bytes = 0;
      } else {
        copy = failure{errc::device_oom, std::get<failure>(copy).detail};
      }
    }
  }
  for (auto lease : e.orphaned_leases)
    out.ram_leases_to_release.push_back(lease);
  e.orphaned_leases.clear();
  auto waiters = std::move(e.waiters);
  e.waiters.clear();
  auto source = std::move(e.host);
  e.host.reset();
  e.oom_attempts = 0;
  if (!succeeded(copy)) {
    ++counters_.copy_failures;
    auto why = std::get<failure>(copy);
    if (why.code == errc::device_oom)
      why.detail = "device " + std::to_string(options_.device) + " ran out of memory copying '" + model + "' ("
                   + format_bytes(copied_bytes) + ") after freeing every unpinned model"
                   + (options_.partial_loading ? " and falling back to its required tensors" : "") + "; used "
                   + format_bytes(used_) + " of " + format_bytes(usable_bytes())
                   + " usable. The device has less memory than the budget says: lower budget_bytes. ("
                   + why.detail + ")";
    drop_copying(model, e);
    bool keeps_some = e.bytes > 0;
    transition(model, keeps_some ? device_residency::resident : device_residency::absent);
    for (const auto& w : waiters)
      fail_request(w, why, out);
  } else {
    const auto& got = *std::get<0>(copy);
    auto v = std::const_pointer_cast<device_model>(with_tensors(e.view, e.tensors.size(), source.get()));
    for (size_t k = 0; k < copied.size(); ++k) {
      v->tensors[copied[k]] = got.tensors[k];
      e.tensors[copied[k]].copying = false;
      e.tensors[copied[k]].resident = true;
    }
    v->device_bytes = e.bytes;
    e.view = v;
    counters_.bytes_copied_in += copied_bytes;
    counters_.copy_ns += copy_ns;
    counters_.last_copy_bytes = copied_bytes;
    counters_.last_copy_ns = copy_ns;
    transition(model, device_residency::resident);
    for (const auto& w : waiters)
      out.replies.push_back({w.request, grant(model, w)});
    if (e.pins == 0 && e.bytes == 0)
      transition(model, device_residency::absent);  // every waiter went away and nothing is resident
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
  auto& e = entries_.at(rec.model);
  --e.pins;
  if (e.pins == 0 && e.bytes == 0 && e.state == device_residency::resident)
    transition(rec.model, device_residency::absent);  // it was streamed entirely: nothing to keep
  else
    update_candidacy(rec.model);
  out.ram_leases_to_release.push_back(rec.ram_lease);
  serve_queue(out);
  return std::nullopt;
}

outcome<bytes_t> device_tier::offload(const model_id& model, bytes_t bytes, device_effects& out) {
  const auto all = std::numeric_limits<bytes_t>::max();
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
    ++counters_.offloads;
    freed = trim(model, bytes == 0 ? all : bytes);
  } else {
    freed = drop_candidates(bytes, *policy_, [this](const model_id& m, bytes_t wanted) {
      ++counters_.offloads;
      return trim(m, wanted);
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
