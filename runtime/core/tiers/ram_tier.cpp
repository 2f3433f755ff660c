#include "runtime/core/tiers/ram_tier.hpp"

#include "runtime/core/admission/make_room.hpp"
#include "runtime/core/admission/sizes.hpp"
#include "runtime/core/format.hpp"

#include <algorithm>
#include <chrono>
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
  if (options.budget_bytes > max_plausible_bytes)
    return failure{errc::invalid_argument, "the RAM budget of " + format_bytes(options.budget_bytes)
                                             + " is not a plausible size (at most "
                                             + format_bytes(max_plausible_bytes) + ")"};
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
    used_ -= i->second.descriptor->bytes;
    if (policy_->contains(model)) {
      evictable_ -= i->second.descriptor->bytes;
      policy_->erase(model);
    }
    if (i->second.payload)
      released_.push_back(std::move(i->second.payload));
    entries_.erase(i);
    return;
  }
  i->second.state = to;
  update_candidacy(model);
}

// A model is an eviction candidate exactly when it is resident and unleased.
void ram_tier::update_candidacy(const model_id& model) {
  auto& e = entries_.at(model);
  bool candidate = e.state == ram_residency::resident && e.leases == 0;
  if (candidate == policy_->contains(model))
    return;  // unchanged: keep its place in the eviction order
  if (candidate) {
    policy_->insert(model);
    evictable_ += e.descriptor->bytes;
    e.idle_since = now_of(options_.clock);
  } else {
    policy_->erase(model);
    evictable_ -= e.descriptor->bytes;
  }
}

ram_lease ram_tier::grant(entry& e, holder_id holder) {
  auto id = leases_.issue(lease_record{e.descriptor->id, holder});
  ++e.leases;
  update_candidacy(e.descriptor->id);
  return ram_lease{id, e.descriptor->id, e.descriptor->bytes, e.payload};
}

bool ram_tier::is_member(const group& g, const model_id& model) const {
  return std::any_of(g.models.begin(), g.models.end(), [&](const descriptor_ptr& m) { return m->id == model; });
}

// Makes room for `bytes` without evicting a member of `g` (its models are never evicted for each other).
bool ram_tier::make_room_for(const group& g, bytes_t bytes) {
  auto evictable = evictable_;
  for (const auto& m : g.models)
    if (policy_->contains(m->id))
      evictable -= m->bytes;
  return make_room(
    bytes, free_bytes(), evictable, *policy_, [this](const model_id& m) { return entries_.at(m).descriptor->bytes; },
    [this](const model_id& m, bytes_t) {
      auto freed = entries_.at(m).descriptor->bytes;
      evict(m);
      return freed;
    },
    [&](const model_id& m) { return is_member(g, m) || (g.prefetch && policy_->has_next_use(m)); });
}

void ram_tier::evict(const model_id& model) {
  ++counters_.evictions;
  counters_.evicted_bytes += entries_.at(model).descriptor->bytes;
  let_go(model);
}

// Drops a resident model's host copy; with keep_ram_copy = false a device that holds it whole keeps the
// only copy (Note [Copy back instead of a kept RAM copy]).
void ram_tier::let_go(const model_id& model) {
  auto whole = options_.keep_ram_copy ? whole_on_.end() : whole_on_.find(model);
  if (whole != whole_on_.end()) {
    const auto& e = entries_.at(model);
    auto skeleton = std::make_shared<host_model>();
    skeleton->id = model;
    skeleton->opaque = e.payload->opaque;
    skeleton->opaque_bytes = e.payload->opaque_bytes;
    auto device = *whole->second.begin();
    handed_[model] = handed_over{device, e.descriptor, std::move(skeleton)};
    hand_overs_.push_back({model, device});
    ++counters_.hand_overs;
  }
  transition(model, ram_residency::absent);
}

std::vector<model_id> ram_tier::resident_models() const {
  std::vector<model_id> resident;
  for (const auto& kv : entries_)
    if (kv.second.state == ram_residency::resident)
      resident.push_back(kv.first);
  return resident;
}

tier_report ram_tier::report() const {
  tier_report r;
  auto holders = leases_.holders_by_model();
  for (const auto& kv : entries_) {
    model_report m;
    m.model = kv.first;
    m.state = to_string(kv.second.state);
    m.bytes = m.model_bytes = kv.second.descriptor->bytes;
    if (auto h = holders.find(kv.first); h != holders.end())
      m.holders = std::move(h->second);
    r.models.push_back(std::move(m));
  }
  r.waiting = queue_.size();
  r.used_bytes = used_;
  return r;
}

// Note [Cheap to get back goes first] (eviction_policy.hpp): what a hand-over would save is a disk read.
void ram_tier::mark_restorable(const model_id& model) {
  if (!options_.keep_ram_copy)
    policy_->set_restorable(model, whole_on_.count(model) > 0);
}

void ram_tier::device_copy(const model_id& model, device_index device, bool whole) {
  if (gone_devices_.count(device) != 0)
    return;
  if (whole && retirements_.retired(model))
    return;  // a retired model is never handed over
  if (whole) {
    whole_on_[model].insert(device);
    mark_restorable(model);
    return;
  }
  auto w = whole_on_.find(model);
  if (w != whole_on_.end() && w->second.erase(device) && w->second.empty())
    whole_on_.erase(w);
  mark_restorable(model);
  // The device no longer has the only copy (it dropped it, or its copy back is already under way and
  // holds the bytes): a later acquire reads the disk unless a copy back is loading.
  auto h = handed_.find(model);
  if (h != handed_.end() && h->second.device == device && entries_.count(model) == 0)
    handed_.erase(h);
}

void ram_tier::device_gone(device_index device, ram_effects& out) {
  if (gone_devices_.count(device) != 0)
    return;
  for (auto w = whole_on_.begin(); w != whole_on_.end();) {
    auto model = w->first;
    w->second.erase(device);
    w = w->second.empty() ? whole_on_.erase(w) : std::next(w);
    mark_restorable(model);
  }
  std::vector<model_id> coming_back;
  for (auto h = handed_.begin(); h != handed_.end();) {
    if (h->second.device != device) {
      ++h;
    } else if (entries_.count(h->first) != 0) {  // loading: a fetch or a granted return, from this device
      coming_back.push_back(h->first);
      ++h;
    } else {
      h = handed_.erase(h);  // the only copy went with the device: the disk has the model
    }
  }
  for (const auto& model : coming_back)  // as a copy back that failed: waiters read the disk
    load_finished(model, failure{errc::load_failed, "device " + std::to_string(device) + " went away"}, 0, out,
                  load_source::device, device);
  gone_devices_.insert(device);  // after those: from now on, what comes from it is dropped
}

bool ram_tier::reserve_return(const model_id& model, device_index device) {
  auto h = handed_.find(model);
  if (h == handed_.end() || h->second.device != device || entries_.count(model) != 0)
    return false;  // not handed to this device (stale), or already coming back
  auto bytes = h->second.descriptor->bytes;
  // Room goes to requests in FIFO order: a copy back takes free room only when nobody waits for room, or
  // when the request at the head of the queue needs this model (its copy back is then part of serving it,
  // and saves it a disk read).
  bool head_needs_it = !queue_.empty() && is_member(groups_.at(queue_.front().request), model);
  if ((!queue_.empty() && !head_needs_it) || free_bytes() < bytes) {
    ++counters_.copy_backs_refused;
    handed_.erase(h);  // the device drops its copy: the disk has the only one now
    return false;
  }
  auto& e = entries_[model];
  e.descriptor = h->second.descriptor;
  used_ += bytes;
  transition(model, ram_residency::loading);
  ++counters_.copy_backs;
  counters_.peak_used_bytes = std::max(counters_.peak_used_bytes, used_);
  return true;
}

void ram_tier::acquire(request_id request, descriptor_ptr model, holder_id holder, bool may_wait,
                       ram_effects& out, bool checking) {
  start(request, group{holder, {std::move(model)}, /*single=*/true, may_wait, checking}, out);
}

void ram_tier::prefetch(request_id request, std::vector<descriptor_ptr> models, holder_id holder,
                        ram_effects& out, bool checking) {
  group g{holder, std::move(models), /*single=*/false, /*wait=*/false, checking};
  g.prefetch = true;
  start(request, std::move(g), out);
}

void ram_tier::acquire_all(request_id request, std::vector<descriptor_ptr> models, holder_id holder,
                           bool may_wait, ram_effects& out, bool checking) {
  start(request, group{holder, std::move(models), /*single=*/false, may_wait, checking}, out);
}

void ram_tier::start(request_id request, group g, ram_effects& out) {
  bytes_t total = 0;
  std::set<model_id> ids;
  for (const auto& m : g.models) {
    retirements_.asked_for(m->id);  // made before a retirement: its copy goes once unheld
    if (!ids.insert(m->id).second) {
      groups_.emplace(request, std::move(g));
      fail_group(request, failure{errc::invalid_argument, "model '" + m->id + "' is asked for twice"}, out);
      return;
    }
    if (!plausible_sum({total, m->bytes})) {
      groups_.emplace(request, std::move(g));
      fail_group(request, failure{errc::invalid_argument, "the models asked for add up to more than "
                                                            + format_bytes(max_plausible_bytes)
                                                            + ": a catalog size is wrong"},
                 out);
      return;
    }
    total += m->bytes;
  }
  g.granted.resize(g.models.size());
  auto single = g.single;
  groups_.emplace(request, std::move(g));
  if (ids.empty()) {
    fail_group(request, failure{errc::invalid_argument, "acquire_all needs at least one model"}, out);
    return;
  }
  if (total > options_.budget_bytes) {
    std::string names;
    for (const auto& m : groups_.at(request).models)
      append_quoted(names, m->id);
    fail_group(request, failure{errc::model_too_large, std::string{single ? "model " : "models "} + names + " need"
                                                         + (single ? "s " : " ") + format_bytes(total)
                                                         + " but the whole RAM budget is "
                                                         + format_bytes(options_.budget_bytes)
                                                         + "; raise ram_budget_bytes"},
               out);
    return;
  }
  // Note [Admission]: hits and joins of loads in flight need no room and never wait.
  const auto& queued = groups_.at(request);
  bool needs_room = false;
  for (const auto& m : queued.models)
    needs_room |= residency(m->id) == ram_residency::absent;
  waiting w{request, queued.holder};
  if (queued.checking) {
    // In line now, admissible once its precheck passes (see acquire). One that may not wait is refused
    // if others are ahead of it.
    if (!queued.may_wait && !queue_.empty()) {
      fail_group(request, no_room(queued, queue_.size()), out);
      return;
    }
    queue_.push(w);
    return;
  }
  switch (admit_or_wait(queue_, w, needs_room, queued.may_wait, [&](const waiting& x) { return try_admit(x.request, out); })) {
    case admission::admitted:
      return;
    case admission::queued:
      ++counters_.waits;
      return;
    case admission::refused:
      fail_group(request, no_room(groups_.at(request), queue_.size()), out);
      return;
  }
}

// Admits a group if room for all of its absent models can be made at once: grants what is resident, joins
// loads in flight, starts the others. False (nothing changed) if there is no room.
bool ram_tier::try_admit(request_id request, ram_effects& out) {
  auto& g = groups_.at(request);
  if (g.checking)
    return false;  // its precheck has not passed: it holds its place in line
  bytes_t need = 0;
  for (const auto& m : g.models)
    if (residency(m->id) == ram_residency::absent)
      need += m->bytes;
  if (!make_room_for(g, need))
    return false;
  for (size_t k = 0; k < g.models.size(); ++k) {
    const auto& m = g.models[k];
    auto i = entries_.find(m->id);
    if (i != entries_.end() && i->second.state == ram_residency::resident) {
      ++counters_.hits;
      g.granted[k] = grant(i->second, g.holder);
      continue;
    }
    if (i != entries_.end()) {
      ++counters_.shared_loads;
    } else {
      auto& e = entries_[m->id];
      e.descriptor = m;
      used_ += m->bytes;
      transition(m->id, ram_residency::loading);
      auto h = handed_.find(m->id);
      if (h != handed_.end()) {
        ++counters_.device_fetches;
        out.fetches.push_back({m->id, h->second.device});
      } else {
        ++counters_.loads;
        if (loaded_before_.count(m->id))
          ++counters_.reloads;
        out.loads.push_back(m);
      }
      i = entries_.find(m->id);
    }
    i->second.waiters.push_back(request);
    ++g.pending;
  }
  counters_.peak_used_bytes = std::max(counters_.peak_used_bytes, used_);
  g.admitted = true;
  if (g.pending == 0)
    answer(request, out);
  return true;
}

void ram_tier::answer(request_id request, ram_effects& out) {
  auto g = std::move(groups_.at(request));
  groups_.erase(request);
  if (g.single)
    out.replies.push_back({request, std::move(g.granted.front())});
  else
    out.group_replies.push_back({request, std::move(g.granted)});
}

// Fails a request: gives back the leases it was granted and leaves the loads it waits for.
void ram_tier::fail_group(request_id request, failure why, ram_effects& out) {
  auto g = std::move(groups_.at(request));
  groups_.erase(request);
  for (const auto& l : g.granted)
    if (l.lease != 0)
      drop_lease(l.lease);
  for (const auto& m : g.models) {
    auto i = entries_.find(m->id);
    if (i == entries_.end())
      continue;
    auto& ws = i->second.waiters;
    ws.erase(std::remove(ws.begin(), ws.end(), request), ws.end());
  }
  queue_.take(request);
  if (g.single)
    out.replies.push_back({request, std::move(why)});
  else
    out.group_replies.push_back({request, std::move(why)});
}

void ram_tier::serve_queue(ram_effects& out) {
  if (retirements_.watching())
    drop_retired();  // every step that may let go of a lease or finish a load ends here
  queue_.serve([&](const waiting& w) { return try_admit(w.request, out); });
}

void ram_tier::retire(const model_id& model, ram_effects& out) {
  retirements_.retire(model);
  whole_on_.erase(model);  // never a hand-over target again; the devices retire their own copies
  mark_restorable(model);
  auto h = handed_.find(model);
  auto e = entries_.find(model);
  if (h != handed_.end() && (e == entries_.end() || e->second.state != ram_residency::loading))
    handed_.erase(h);  // (a copy back in flight still needs it: it ends in load_finished)
  serve_queue(out);
}

void ram_tier::drop_retired() {
  retirements_.sweep([&](const model_id& model) {
    auto e = entries_.find(model);
    if (e != entries_.end()) {
      if (e->second.state != ram_residency::resident || e->second.leases > 0)
        return retired_copy::held;
      ++counters_.retired_drops;
      let_go(model);  // (whole_on_ forgot it: never handed over)
      return retired_copy::dropped;
    }
    // A request made before the retirement (queued, or waiting for a copy back) may still load it.
    bool asked = handed_.count(model) > 0;
    for (const auto& g : groups_)
      asked = asked || is_member(g.second, model);
    return asked ? retired_copy::awaited : retired_copy::gone;
  });
}

void ram_tier::precheck_finished(request_id request, std::optional<failure> failed, ram_effects& out) {
  auto i = groups_.find(request);
  if (i == groups_.end() || !i->second.checking)
    return;
  if (failed) {
    fail_group(request, std::move(*failed), out);
    serve_queue(out);  // it may have been the head, holding the others
    return;
  }
  i->second.checking = false;
  serve_queue(out);
  auto still = groups_.find(request);
  if (still == groups_.end() || still->second.admitted)
    return;
  // Not admitted in its turn: it waits for room like any other request, or fails if it may not wait.
  if (!still->second.may_wait) {
    fail_group(request, no_room(still->second, queue_.ahead_of(request)), out);
    serve_queue(out);
    return;
  }
  ++counters_.waits;
}

void ram_tier::load_finished(const model_id& model, outcome<std::shared_ptr<const host_model>> payload,
                             uint64_t load_ns, ram_effects& out, load_source source, device_index from) {
  if (source == load_source::device && gone_devices_.count(from) != 0)
    return;  // a copy back that device_gone gave up on: the disk serves its acquires
  auto i = entries_.find(model);
  if (i == entries_.end() || i->second.state != ram_residency::loading)
    throw std::logic_error("ram tier: load finished for '" + model + "', which is not loading");
  auto& e = i->second;
  if (source == load_source::device) {
    auto h = handed_.find(model);
    if (h == handed_.end())
      throw std::logic_error("ram tier: a copy back of '" + model + "' that was not handed over");
    auto skeleton = std::move(h->second.skeleton);
    handed_.erase(h);
    std::shared_ptr<const host_model> copied;
    if (succeeded(payload) && std::get<0>(payload)) {
      // The device holds tensors only: the model's non-tensor part stayed here.
      auto whole = std::make_shared<host_model>(*std::get<0>(payload));
      whole->id = model;
      whole->opaque = skeleton->opaque;
      whole->opaque_bytes = skeleton->opaque_bytes;
      if (whole->total_bytes() == e.descriptor->bytes)  // else as a failed copy back: the disk's is right
        copied = std::move(whole);
    }
    if (copied) {
      payload = std::move(copied);
    } else if (!e.waiters.empty()) {
      // The device no longer had it (or its copy failed): acquires wait for it, so read the disk.
      ++counters_.loads;
      ++counters_.reloads;
      out.loads.push_back(e.descriptor);
      return;
    } else {
      // A copy back nobody waits for did not arrive: nothing failed, the disk has the model.
      transition(model, ram_residency::absent);
      serve_queue(out);
      return;
    }
  }
  if (succeeded(payload)) {
    auto& p = std::get<0>(payload);
    if (!p || p->total_bytes() != e.descriptor->bytes)
      payload = failure{errc::load_failed, "the loader of '" + model + "' produced "
                                             + format_bytes(p ? p->total_bytes() : 0)
                                             + " but the catalog declares "
                                             + format_bytes(e.descriptor->bytes)};
  }
  auto waiters = std::move(e.waiters);
  e.waiters.clear();
  if (!succeeded(payload)) {
    ++counters_.load_failures;
    transition(model, ram_residency::absent);
    for (auto request : waiters)
      fail_group(request, std::get<failure>(payload), out);
  } else {
    e.payload = std::move(std::get<0>(payload));
    loaded_before_.insert(model);
    counters_.bytes_loaded += e.descriptor->bytes;
    if (source == load_source::device)
      counters_.bytes_from_devices += e.descriptor->bytes;  // after the size check, as bytes_loaded
    counters_.load_ns += load_ns;
    transition(model, ram_residency::resident);
    for (auto request : waiters) {
      auto& g = groups_.at(request);
      for (size_t k = 0; k < g.models.size(); ++k)
        if (g.models[k]->id == model)
          g.granted[k] = grant(e, g.holder);
      if (--g.pending == 0)
        answer(request, out);
    }
  }
  serve_queue(out);
}

bool ram_tier::awaited(const model_id& model) const {
  auto i = entries_.find(model);
  if (i == entries_.end() || i->second.state != ram_residency::loading)
    return false;
  if (!i->second.waiters.empty())
    return true;
  // A request queued for room that needs it will join it once admitted: stopping it would read it twice.
  return std::any_of(queue_.begin(), queue_.end(),
                     [&](const waiting& w) { return is_member(groups_.at(w.request), model); });
}

void ram_tier::load_stopped(const model_id& model, ram_effects& out) {
  auto i = entries_.find(model);
  if (i == entries_.end() || i->second.state != ram_residency::loading)
    throw std::logic_error("ram tier: load stopped for '" + model + "', which is not loading");
  if (!i->second.waiters.empty()) {  // joined after its loader saw the flag: load it after all
    ++counters_.loads;
    out.loads.push_back(i->second.descriptor);
    return;
  }
  ++counters_.loads_stopped;
  transition(model, ram_residency::absent);
  serve_queue(out);
}

std::optional<failure> ram_tier::release(lease_id lease, holder_id holder, ram_effects& out) {
  if (auto err = leases_.check(lease, holder))
    return err;
  drop_lease(lease);
  serve_queue(out);
  return std::nullopt;
}

// Forgets a lease that exists; the caller serves the queue afterwards.
void ram_tier::drop_lease(lease_id lease) {
  auto record = leases_.take(lease);
  --entries_.at(record.model).leases;
  update_candidacy(record.model);
}

outcome<ram_lease> ram_tier::share(lease_id lease, holder_id owner, holder_id borrower) {
  if (auto err = leases_.check(lease, owner))
    return *err;
  return grant(entries_.at(leases_.find(lease)->model), borrower);
}

size_t ram_tier::drop_idle(ram_effects& out) {
  auto idle = idle_candidates(
    *policy_, now_of(options_.clock),
    [&](const model_id& m) { return entries_.at(m).descriptor->keep_alive.value_or(options_.keep_alive); },
    [&](const model_id& m) { return entries_.at(m).idle_since; });
  for (const auto& m : idle) {
    ++counters_.idle_drops;
    let_go(m);
  }
  if (!idle.empty())
    serve_queue(out);
  return idle.size();
}

outcome<bytes_t> ram_tier::trim(const model_id& model, bytes_t bytes, ram_effects& out) {
  auto drop = [this](const model_id& m, bytes_t = 0) {
    auto bytes = entries_.at(m).descriptor->bytes;
    ++counters_.trims;
    let_go(m);
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
  // Withdraw its requests first (giving back what they were granted), so that releasing its leases does
  // not admit, and load for, a dead holder.
  std::vector<request_id> mine;
  for (const auto& kv : groups_)
    if (kv.second.holder == holder)
      mine.push_back(kv.first);
  for (auto request : mine)
    fail_group(request, failure{errc::shutting_down, "the holder went away"}, out);
  for (auto lease : leases_.held_by(holder))
    drop_lease(lease);
  serve_queue(out);
}

void ram_tier::withdraw(request_id request, failure why, ram_effects& out) {
  if (groups_.count(request) == 0)
    return;  // answered already
  // Queued: it leaves the queue. Admitted: it gives back what it was granted and leaves the loads it
  // waits for, which go on for their other waiters or land as cached models (Note [Admission] rule 6).
  fail_group(request, std::move(why), out);
  serve_queue(out);  // it may have been the head, holding the others
}

void ram_tier::shutdown(ram_effects& out) {
  std::vector<request_id> open;
  for (const auto& kv : groups_)
    open.push_back(kv.first);
  for (auto request : open)
    fail_group(request, failure{errc::shutting_down, "the runtime is shutting down"}, out);
}

void ram_tier::expire(request_id request, ram_effects& out) {
  // Only a request still waiting for room can expire: once admitted, it is served when its loads end.
  if (!queue_.contains(request))
    return;
  ++counters_.timeouts;
  withdraw(request, no_room(groups_.at(request), queue_.ahead_of(request)), out);
}

} // namespace mcache
