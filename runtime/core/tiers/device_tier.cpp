#include "runtime/core/tiers/device_tier.hpp"

#include "runtime/core/admission/make_room.hpp"
#include "runtime/core/admission/sizes.hpp"
#include "runtime/core/format.hpp"

#include <algorithm>
#include <chrono>
#include <limits>
#include <stdexcept>

namespace mcache {

std::shared_ptr<const device_model> device_tier::with_tensors(const std::shared_ptr<const device_model>& old, size_t n,
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
  auto name = options.device == cpu_device ? std::string{"the CPU pin tier"} : "device " + std::to_string(options.device);
  if (options.budget_bytes == 0)
    return failure{errc::invalid_argument, name + ": the budget is 0 bytes"};
  if (options.budget_bytes > max_plausible_bytes)
    return failure{errc::invalid_argument, name + ": a budget of " + format_bytes(options.budget_bytes)
                                             + " is not a plausible size (at most "
                                             + format_bytes(max_plausible_bytes) + ")"};
  if (options.reserve_bytes >= options.budget_bytes)
    return failure{errc::invalid_argument, name + ": the working-memory reserve ("
                                             + format_bytes(options.reserve_bytes)
                                             + ") leaves nothing of the budget ("
                                             + format_bytes(options.budget_bytes) + ")"};
  if (options.staging_slots < 2 || options.staging_slots > max_staging_slots)
    return failure{errc::invalid_argument, name + ": staging_slots is " + std::to_string(options.staging_slots)
                                             + "; streaming needs 2 to " + std::to_string(max_staging_slots)
                                             + " (each slot holds the largest streamed tensor)"};
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
    let_go_ += i->second.bytes;
    evictable_ -= i->second.counted_evictable;
    policy_->erase(model);
    if (i->second.view)
      released_.push_back(std::move(i->second.view));
    entries_.erase(i);
    return;
  }
  i->second.state = to;
  update_candidacy(model);
}

// A model is an eviction candidate exactly when it is resident, unpinned and holds device bytes. Called
// after every change of an entry's state, pins or bytes, so that evictable_ stays exact.
void device_tier::update_candidacy(const model_id& model) {
  auto& e = entries_.at(model);
  bool candidate = e.state == device_residency::resident && !e.held() && e.bytes > 0;
  evictable_ -= e.counted_evictable;
  e.counted_evictable = candidate ? e.bytes : 0;
  evictable_ += e.counted_evictable;
  if (candidate == policy_->contains(model))
    return;  // unchanged: keep its place in the eviction order
  if (candidate) {
    policy_->insert(model);
    e.idle_since = now_of(options_.clock);
  } else {
    policy_->erase(model);
  }
}

size_t device_tier::drop_idle(device_effects& out) {
  auto idle = idle_candidates(
    *policy_, now_of(options_.clock),
    [&](const model_id& m) { return entries_.at(m).keep_alive.value_or(options_.keep_alive); },
    [&](const model_id& m) { return entries_.at(m).idle_since; });
  for (const auto& m : idle) {
    ++counters_.idle_drops;
    discard(m);  // unused past its keep-alive: not copied back to RAM, where it would idle again
  }
  if (!idle.empty())
    serve_queue(out);
  return idle.size();
}

void device_tier::discard(const model_id& model) {
  entries_.at(model).only_copy = false;  // even an only copy: the caller has decided nobody needs it back
  trim(model, std::numeric_limits<bytes_t>::max());
}

bytes_t device_tier::evictable_bytes(const model_id& excluded) const {
  auto i = excluded.empty() ? entries_.end() : entries_.find(excluded);
  return evictable_ - (i == entries_.end() ? 0 : i->second.counted_evictable);
}

bytes_t device_tier::evictable_without_next_use(const model_id& excluded) const {
  bytes_t total = 0;
  for (const auto& [m, e] : entries_)
    if (m != excluded && !policy_->has_next_use(m))
      total += e.counted_evictable;
  return total;
}

bytes_t device_tier::staging_for(const entry& e, const std::vector<size_t>& also_resident) const {
  return mcache::staging_for(e.tensors, also_resident, options_.staging_slots);
}

std::optional<residency_plan> device_tier::plan_for(const entry& e, bytes_t working, bytes_t room) const {
  return plan_residency(e.tensors, working, room, options_.partial_loading, options_.staging_slots);
}

bytes_t device_tier::trim(const model_id& model, bytes_t wanted) {
  auto& e = entries_.at(model);
  if (e.only_copy) {
    // Trimming part of the only copy would lose those tensors: it goes whole, to be copied back first.
    auto freed = e.bytes;
    copy_backs_.push_back({model, std::move(e.view)});
    e.bytes = 0;
    used_ -= freed;
    let_go_ += freed;
    transition(model, device_residency::absent);
    return freed;
  }
  bytes_t freed = 0;
  std::vector<size_t> dropped;
  for (size_t k = e.tensors.size(); k-- > 0 && freed < wanted;) {
    if (e.tensors[k].state != tensor_residency::resident)
      continue;
    freed += e.tensors[k].bytes;
    dropped.push_back(k);
  }
  if (freed == e.bytes) {
    e.bytes = 0;
    used_ -= freed;
    let_go_ += freed;
    transition(model, device_residency::absent);
    return freed;
  }
  drop_tensors(model, dropped);
  return freed;
}

bytes_t device_tier::drop_tensors(const model_id& model, const std::vector<size_t>& dropped) {
  auto& e = entries_.at(model);
  auto v = std::const_pointer_cast<device_model>(with_tensors(e.view, e.tensors.size(), nullptr));
  bytes_t freed = 0;
  for (auto k : dropped) {
    e.tensors[k].state = tensor_residency::absent;
    freed += e.tensors[k].bytes;
    v->tensors[k].tensor = at::Tensor();
  }
  e.bytes -= freed;
  used_ -= freed;
  let_go_ += freed;
  v->device_bytes = e.bytes;
  released_.push_back(std::move(e.view));
  e.view = v;
  update_candidacy(model);
  return freed;
}

static bool is_whole(const std::vector<tensor_slot>& tensors) {
  return std::all_of(tensors.begin(), tensors.end(),
                     [](const tensor_slot& t) { return t.state == tensor_residency::resident; });
}

bool device_tier::hand_over(const model_id& model) {
  auto i = entries_.find(model);
  if (i == entries_.end() || i->second.state != device_residency::resident || !is_whole(i->second.tensors))
    return false;
  i->second.only_copy = true;
  return true;
}

std::shared_ptr<const device_model> device_tier::fetch(const model_id& model) {
  auto i = entries_.find(model);
  if (i == entries_.end() || i->second.state != device_residency::resident || !is_whole(i->second.tensors))
    return nullptr;
  i->second.only_copy = false;
  return i->second.view;
}

tier_report device_tier::report() const {
  tier_report r;
  auto holders = pins_.holders_by_model();
  for (const auto& kv : entries_) {
    const auto& e = kv.second;
    model_report m;
    m.model = kv.first;
    m.bytes = e.bytes;
    m.model_bytes = e.model_bytes();
    m.state = e.state == device_residency::copying ? "copying" : is_whole(e.tensors) ? "resident" : "partial";
    if (auto h = holders.find(kv.first); h != holders.end())
      m.holders = std::move(h->second);
    r.models.push_back(std::move(m));
  }
  r.waiting = queue_.size();
  r.used_bytes = used_;
  r.working_bytes = working_reserved_;
  return r;
}

std::vector<std::pair<model_id, bytes_t>> device_tier::resident_models() const {
  std::vector<std::pair<model_id, bytes_t>> resident;
  for (const auto& kv : entries_)
    if (kv.second.state == device_residency::resident)
      resident.emplace_back(kv.first, kv.second.bytes);
  return resident;
}

std::vector<model_id> device_tier::whole_models() const {
  std::vector<model_id> whole;
  for (const auto& kv : entries_)
    if (kv.second.state == device_residency::resident && is_whole(kv.second.tensors))
      whole.push_back(kv.first);
  return whole;  // sorted: entries_ is a std::map
}

bool device_tier::make_room_for(bytes_t need, const model_id& excluded, bool prefetch) {
  return make_room(
    need, free_bytes(), evictable_bytes(excluded), *policy_, [this](const model_id& m) { return entries_.at(m).bytes; },
    [this](const model_id& m, bytes_t wanted) {
      auto freed = trim(m, wanted);
      if (residency(m) == device_residency::absent)
        ++counters_.evictions;
      else
        ++counters_.partial_evictions;
      counters_.evicted_bytes += freed;
      return freed;
    },
    [&](const model_id& m) { return m == excluded || (prefetch && policy_->has_next_use(m)); });
}

device_pin device_tier::grant(const model_id& model, const admitted& a) {
  auto& e = entries_.at(model);
  auto id = pins_.issue(pin_record{model, a.holder, a.working_bytes, a.host.lease, a.reserved_after, a.kept_after});
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

void device_tier::unreserve(bytes_t bytes) {
  working_reserved_ -= bytes;
  used_ -= bytes;
}

void device_tier::settle(const model_id& model) {
  auto& e = entries_.at(model);
  if (!e.held() && e.bytes == 0 && e.state == device_residency::resident)
    transition(model, device_residency::absent);  // streamed entirely: nothing to keep
  else
    update_candidacy(model);
}

void device_tier::unkeep(const std::vector<model_id>& models) {
  for (const auto& m : models) {
    --entries_.at(m).kept;  // a kept entry is never dropped (nor evicted) until unkept
    settle(m);
  }
}

void device_tier::fail_request(const admitted& a, failure why, device_effects& out) {
  unreserve(a.working_bytes + a.reserved_after);
  unkeep(a.kept_after);
  out.ram_leases_to_release.push_back(a.host.lease);
  out.replies.push_back({a.request, std::move(why)});
}

void device_tier::start_copy(const model_id& model, entry& e, const std::vector<size_t>& tensors,
                             std::shared_ptr<const host_model> host, device_effects& out) {
  for (auto i : tensors) {
    e.tensors[i].state = tensor_residency::copying;
    e.bytes += e.tensors[i].bytes;
    used_ += e.tensors[i].bytes;
  }
  e.host = host;
  out.copies.push_back({model, std::move(host), tensors});
}

// What admitting a pin of `e` would copy and reserve when `room` bytes can be had; nothing if it cannot
// fit. A model being copied, or pinned already, is not topped up: the pin takes it as it is.
std::optional<residency_plan> device_tier::admission_plan(const entry& e, bool present, bytes_t working,
                                                             bytes_t room) const {
  if (present && (e.state == device_residency::copying || e.pins > 0)) {
    residency_plan p;
    p.staging_bytes = staging_for(e, {});
    return p;
  }
  return plan_for(e, working, room);
}

std::vector<tensor_slot> pin_request::tensors() const { return absent_tensors(tensor_bytes, required); }

// Note [Admission] rule 1: a pin needs no new room when the model is here (or arriving), or costs this
// device nothing (the CPU pin tier: its tensors take no device bytes), and the pin asks for no working
// memory and no staging.
// A stage's later pin needs no new room when the room its stage's earlier pin reserved for it holds a
// plan for it and the room it reserves in turn (Note [A stage's pins leave room for the ones after]).
bool device_tier::needs_room(const pin_request& r) const {
  auto reserved = reserved_for(r);
  auto leave = room_to_leave(r, true).leave;
  if (leave > reserved)
    return true;
  auto i = entries_.find(r.host.model);
  bool present = i != entries_.end();
  entry fresh;
  if (!present)
    fresh.tensors = r.tensors();
  auto room = reserved - leave;
  auto p = admission_plan(present ? i->second : fresh, present, r.working_bytes, room);
  return !p || p->need() + r.working_bytes > room;
}

// Note [A stage's pins leave room for the ones after], on the device: a later model pinned (or being copied)
// here is taken as it is, so its pin needs at most its staging ring. Any other needs at most the least a
// pin of it could need were it absent: whatever this pin evicts of it, a pin of what is left of it never
// needs more (fewer absent tensors, a ring no larger). So this pin may evict it, and what it leaves is
// enough; this pin reserves it, and the next pin of the stage takes it (`reserved_for`). A model counted as
// it is, this pin keeps so (entry::kept: not evicted, not dropped) until that pin comes or this one ends.
// Only a copy of such a model that fails, or falls back to its required tensors after an out-of-memory,
// can leave its pin needing more than was reserved; that pin then waits for room, as any pin does.
bool device_tier::has_earlier(const pin_request& r) const {
  return r.earlier != 0 && !pins_.check(r.earlier, r.holder);  // not another holder's, nor ended
}

bytes_t device_tier::reserved_for(const pin_request& r) const {
  return has_earlier(r) ? pins_.find(r.earlier)->reserved_after : 0;
}

device_tier::later_pins device_tier::room_to_leave(const pin_request& r, bool all_as_they_are) const {
  later_pins later;
  for (const auto& [model, least_if_absent] : r.pins_after) {
    auto i = entries_.find(model);
    if (i == entries_.end()) {
      later.leave = saturating_add(later.leave, least_if_absent);
      continue;
    }
    const auto& e = i->second;
    if (e.state == device_residency::copying || e.pins > 0) {
      later.leave = saturating_add(later.leave, staging_for(e, {}));  // its pin takes it as it is
    } else if (all_as_they_are || e.kept > 0) {  // its pin plans from what is here (admission_plan)
      later.leave = saturating_add(later.leave, least_pin_bytes(e.tensors, options_.partial_loading,
                                                                options_.staging_slots));
      later.kept_evictable += e.counted_evictable;
    } else {
      later.leave = saturating_add(later.leave, least_if_absent);  // this pin may evict it
      continue;
    }
    later.kept.push_back(model);
  }
  return later;
}

// Reserves working memory and staging (and room for a copy when needed) for `r`. False (nothing
// changed, the eviction order included) if there is no room.
bool device_tier::try_admit(const pin_request& r, device_effects& out) {
  const auto& model = r.host.model;
  auto i = entries_.find(model);
  bool present = i != entries_.end();
  auto reserved = reserved_for(r);  // room its stage's earlier pin holds for it
  // Admitted ahead of others waiting (rule 1), it takes only that room.
  bool ahead = reserved > 0 && !queue_.empty() && queue_.front().request != r.request;
  auto room = (ahead ? 0 : free_bytes() + evictable_bytes(model)) + reserved;
  if (r.prefetch) {
    // A prefetch takes only room that neither a model with a known next use nor the sooner uses it was
    // told of would need: otherwise the running job's next stage evicts it again.
    auto keep = r.sooner_working;
    for (const auto& [m, bytes] : r.sooner) {
      auto s = entries_.find(m);
      keep += bytes - std::min(bytes, s == entries_.end() ? bytes_t{0} : s->second.bytes);
    }
    auto usable = free_bytes();
    if (usable < keep + r.model_bytes())  // only then is the O(models) count worth it
      usable += evictable_without_next_use(model);
    room = usable > keep ? usable - keep : 0;
  }
  // The later models are counted as they are and kept so, where that leaves the room; else those not
  // held are counted as if absent, and this pin may evict them (Note [A stage's pins leave room ...]).
  const auto base_room = room;
  later_pins later;
  std::optional<residency_plan> p;
  std::optional<own_trim> own;  // Note [A pin may trim its own model]
  entry fresh;
  if (!present)
    fresh.tensors = r.tensors();
  const entry& e = present ? i->second : fresh;
  for (bool all_as_they_are : {true, false}) {
    later = room_to_leave(r, all_as_they_are);
    room = base_room;
    if (!ahead)
      room -= std::min(room, later.kept_evictable);  // they will not be evicted
    if (later.leave > room)
      continue;  // the room its stage's later pins need is not there
    room -= later.leave;
    p = admission_plan(e, present, r.working_bytes, room);
    own.reset();
    if (present && !r.prefetch && (!p || p->need() + r.working_bytes > room) && options_.partial_loading
        && e.state == device_residency::resident && !e.held() && !e.only_copy) {
      own = plan_own_trim(e.tensors, r.working_bytes, room, options_.staging_slots);
      if (own) {
        p = own->plan;
        room += own->freed;
      }
    }
    if (p && p->need() + r.working_bytes <= room)
      break;
    p.reset();
    if (r.pins_after.empty())
      break;  // nothing to count otherwise
  }
  if (!p)
    return false;
  // From here on it is admitted: nothing below can fail.
  const auto leave = later.leave;
  std::vector<model_id> kept;  // the later models it keeps as they are
  if (has_earlier(r)) {
    // Taken: the room is this pin's now, and the kept models are its own or its to keep.
    auto& before = *pins_.find(r.earlier);
    before.reserved_after = 0;
    unreserve(reserved);
    for (auto& m : std::exchange(before.kept_after, {}))
      if (m == model) {
        --i->second.kept;  // this pin holds it now (it stays, even with nothing on the device)
        update_candidacy(m);
      } else {
        kept.push_back(m);
      }
  }
  for (const auto& m : later.kept)
    if (std::find(kept.begin(), kept.end(), m) == kept.end()) {
      ++entries_.at(m).kept;  // before making room: never evicted for it
      update_candidacy(m);
      kept.push_back(m);
    }
  if (own) {
    drop_tensors(model, own->drop);
    ++counters_.partial_evictions;
    counters_.evicted_bytes += own->freed;
  }
  if (!make_room_for(p->need() + r.working_bytes + leave, model, r.prefetch))
    throw std::logic_error("device tier: no room made for '" + model + "' after its admission was decided");
  auto reserve = r.working_bytes + p->staging_bytes;
  working_reserved_ += reserve + leave;
  used_ += reserve + leave;
  admitted a{r.request, r.holder, r.host, reserve, p->staging_bytes, leave, std::move(kept)};
  if (!present) {
    auto& created = entries_[model];
    created.tensors = std::move(fresh.tensors);
    created.keep_alive = r.keep_alive;
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
  out.admitted.push_back(r.request);
  return true;
}

void device_tier::pin(pin_request r, bool may_wait, device_effects& out) {
  retirements_.asked_for(r.host.model);  // from a lease taken before a retirement: dropped once unpinned
  auto refuse = [&](failure why) {
    out.ram_leases_to_release.push_back(r.host.lease);
    out.replies.push_back({r.request, std::move(why)});
  };
  if (r.host.payload && r.tensor_bytes.size() != r.host.payload->tensors.size()) {
    // The caller must describe every tensor of the host copy, whether or not the model is here already:
    // a queued request may find it evicted by the time it is admitted.
    refuse(failure{errc::invalid_argument, "pin request for '" + r.host.model + "' describes "
                                             + std::to_string(r.tensor_bytes.size()) + " tensors, the model has "
                                             + std::to_string(r.host.payload->tensors.size())});
    return;
  }
  // Sizes from the caller are checked before anything adds them up (see admission/sizes.hpp).
  bytes_t model_bytes = 0;
  for (auto b : r.tensor_bytes)
    model_bytes = saturating_add(model_bytes, b);
  auto leave = room_to_leave(r, true).leave;
  if (!plausible_sum({model_bytes, r.working_bytes, leave})) {
    refuse(failure{errc::invalid_argument, "pinning '" + r.host.model + "' asks for "
                                             + format_bytes(r.working_bytes) + " of working memory beside "
                                             + format_bytes(model_bytes)
                                             + " of model: not a plausible size (at most "
                                             + format_bytes(max_plausible_bytes) + " together)"});
    return;
  }
  // The least this pin could ever need: the whole model, or (partial) its required tensors and staging.
  auto tensors = r.tensors();
  auto least = least_pin_bytes(tensors, options_.partial_loading, options_.staging_slots);
  if (least + r.working_bytes + leave > usable_bytes()) {
    bytes_t required = 0;
    for (const auto& t : tensors)
      if (t.required)
        required += t.bytes;
    refuse(failure{errc::model_too_large,
                   "pinning '" + r.host.model + "' on device " + std::to_string(options_.device) + " needs "
                     + format_bytes(least) + " for the model"
                     + (least < model_bytes ? " (required tensors " + format_bytes(required) + " + staging "
                                                + format_bytes(least - required) + ")"
                                            : std::string{})
                     + " + " + format_bytes(r.working_bytes) + " working memory"
                     + (leave > 0 ? " + " + format_bytes(leave) + " for the pins asked for with it"
                                          : std::string{})
                     + ", but only "
                     + format_bytes(usable_bytes()) + " of the budget " + format_bytes(options_.budget_bytes)
                     + " is usable after the reserve " + format_bytes(options_.reserve_bytes)
                     + "; ask for less working memory, lower the reserve or use a larger device"});
    return;
  }
  auto verdict = admit_or_wait(queue_, r, needs_room(r), may_wait,
                               [&](const pin_request& x) { return try_admit(x, out); });
  if (verdict == admission::queued)
    ++counters_.waits;
  else if (verdict == admission::refused)
    refuse(no_room(r, queue_.size()));
}

void device_tier::serve_queue(device_effects& out) {
  if (retirements_.watching())
    drop_retired();  // every step that may end a pin or a copy ends here
  queue_.serve([&](const pin_request& r) { return try_admit(r, out); });
}

void device_tier::retire(const model_id& model, device_effects& out) {
  retirements_.retire(model);
  serve_queue(out);
}

void device_tier::drop_retired() {
  retirements_.sweep([&](const model_id& model) {
    auto e = entries_.find(model);
    if (e != entries_.end()) {
      if (e->second.state != device_residency::resident || e->second.held())
        return retired_copy::held;
      ++counters_.retired_drops;
      discard(model);  // not copied back: no catalog entry would ever read it
      return retired_copy::dropped;
    }
    // A pin request made before the retirement may still copy it.
    bool asked = false;
    for (const auto& q : queue_)
      asked = asked || q.host.model == model;
    return asked ? retired_copy::awaited : retired_copy::gone;
  });
}

std::optional<failure> device_tier::release(pin_id pin, holder_id holder, device_effects& out) {
  if (auto err = pins_.check(pin, holder))
    return err;
  auto rec = pins_.take(pin);
  unreserve(rec.working_bytes + rec.reserved_after);
  unkeep(rec.kept_after);
  --entries_.at(rec.model).pins;
  settle(rec.model);
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
    if (i->second.held())
      return failure{errc::model_pinned, "'" + model + "' is "
                                           + (i->second.pins > 0 ? "pinned by " + std::to_string(i->second.pins)
                                                                     + " pin(s)"
                                                                 : std::string{"kept for a stage's next pin"})
                                           + " on device " + std::to_string(options_.device)
                                           + "; release them before offloading"};
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
  withdraw(gone, [&](request_id, holder_id h) { return h == holder; }, out);
  for (auto pin : pins_.held_by(holder))
    release(pin, holder, out);
  serve_queue(out);
}

void device_tier::withdraw(request_id request, failure why, device_effects& out) {
  withdraw(why, [&](request_id r, holder_id) { return r == request; }, out);
  serve_queue(out);  // it may have been the head, holding the others
}

void device_tier::shutdown(device_effects& out) {
  withdraw(failure{errc::shutting_down, "the runtime is shutting down"}, [](request_id, holder_id) { return true; },
           out);
}

// Answers `why` to every request `which` picks (Note [Admission] rule 6): queued ones at once, with their
// lease; those waiting for a copy at once too, their lease kept until the copy (which reads the host copy)
// ends. The copy goes on for its other waiters, or lands as an unpinned model.
template <class Which>
void device_tier::withdraw(const failure& why, Which which, device_effects& out) {
  for (const auto& q : queue_.take_if(which)) {
    out.ram_leases_to_release.push_back(q.host.lease);
    out.replies.push_back({q.request, why});
  }
  for (auto& kv : entries_) {
    auto& ws = kv.second.waiters;
    for (auto w = ws.begin(); w != ws.end();) {
      if (!which(w->request, w->holder)) {
        ++w;
        continue;
      }
      // The copy in flight still reads the host copy: keep its lease until the copy ends.
      unreserve(w->working_bytes + w->reserved_after);
      unkeep(w->kept_after);
      kv.second.orphaned_leases.push_back(w->host.lease);
      out.replies.push_back({w->request, why});
      w = ws.erase(w);
    }
  }
}

void device_tier::expire(request_id request, device_effects& out) {
  // Only a request still waiting for room can expire: once admitted, it is served when its copy ends.
  const auto* q = queue_.find(request);
  if (!q)
    return;
  ++counters_.timeouts;
  withdraw(request, no_room(*q, queue_.ahead_of(request)), out);
}

} // namespace mcache
