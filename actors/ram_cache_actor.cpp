#include "actors/ram_cache_actor.hpp"

#include "actors/idle_ticks.hpp"
#include "actors/request_book.hpp"
#include "messages/waits.hpp"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <optional>
#include <utility>
#include <cstdio>

namespace mcache {

namespace {

struct ram_cache_state {
  static const char* name;
  std::unique_ptr<ram_tier> tier;
  ram_cache_config config;
  request_book<ram_lease> requests;               // single acquires
  request_book<std::vector<ram_lease>> groups;    // acquire_all
  request_id next_request = 1;
  std::set<holder_id> watched;
  std::map<device_index, caf::actor> devices;  // device actors that reported whole copies (keep_ram_copy = false)
  bool stopping = false;  // after `shutdown`: new acquires are refused, releases still work
  int track = 0;          // its timeline track
  idle_ticks ticks;       // Note [Keep-alive]
  withdraw_book tagged;  // tagged acquires still open, by tag, for `withdraw`
  // Note [An abandoned load stops]: each disk load in flight, and the flag it reads.
  std::map<model_id, std::shared_ptr<std::atomic<bool>>> abandoned;
};

const char* ram_cache_state::name = "mcache.ram_cache";

using self_ptr = ram_cache_actor::stateful_pointer<ram_cache_state>;

using released_copies = std::vector<std::shared_ptr<const host_model>>;

void start_load(self_ptr self, const descriptor_ptr& model, released_copies free_first) {
  auto reply_to = caf::actor_cast<ram_cache_actor>(self);
  auto abandoned = std::make_shared<std::atomic<bool>>(false);
  self->state.abandoned[model->id] = abandoned;
  self->state.config.loaders->post([model, reply_to, memory = self->state.config.memory,
                                    trace = self->state.config.trace, track = self->state.track,
                                    free_first = std::move(free_first), abandoned]() mutable {
    free_first.clear();
    host_memory::scope buffers_from{memory};
    detail::load_scope stops_when{abandoned.get()};
    loaded_model done;
    done.model = model->id;
    auto start = std::chrono::steady_clock::now();
    try {
      done.payload = model->loader(*model);
    } catch (const load_stopped& e) {
      done.stopped = true;
      done.error = e.what();
    } catch (const load_error& e) {
      done.error = e.what();
      done.code = e.code();
    } catch (const std::exception& e) {
      done.error = e.what();
    } catch (...) {
      done.error = "the loader threw a non-standard exception";
    }
    if (!done.payload && done.error.empty())
      done.error = "the loader returned nothing";
    done.load_ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                           std::chrono::steady_clock::now() - start)
                                           .count());
    if (trace)
      trace->span(track, "load " + model->id, "load", start, std::chrono::steady_clock::now(), model->bytes,
                  done.error);
    caf::anon_send(reply_to, loaded_atom::value, std::move(done));
  });
}

// Replies go out first: they are what a waiting session's latency is made of.
void apply(self_ptr self, ram_effects& fx) {
  for (const auto& r : fx.replies)
    self->state.tagged.answered(r.request);
  for (const auto& r : fx.group_replies)
    self->state.tagged.answered(r.request);
  self->state.requests.deliver(fx.replies);
  self->state.groups.deliver(fx.group_replies);
  // Evicted host copies are freed off this thread (gigabytes of frees would stall every request), by the
  // first load of the step before it reads (other loads of the step may overlap that free: host memory,
  // unlike a device's, does not fail an allocation that the budget allows).
  auto released = self->state.tier->take_released();
  if (auto& t = self->state.config.trace)
    for (const auto& m : released)
      t->instant(self->state.track, "evict " + m->id, "evict", m->total_bytes());
  for (const auto& model : fx.loads)
    start_load(self, model, std::exchange(released, {}));
  fx.loads.clear();
  if (!released.empty())
    self->state.config.loaders->post([released = std::move(released)]() mutable { released.clear(); });
  // Note [Copy back instead of a kept RAM copy]
  for (const auto& h : self->state.tier->take_hand_overs()) {
    auto d = self->state.devices.find(h.device);
    if (d != self->state.devices.end())
      caf::anon_send(d->second, hand_over_atom::value, h.model);  // typed to untyped: anon_send
  }
  for (const auto& f : fx.fetches) {
    auto d = self->state.devices.find(f.device);
    if (d != self->state.devices.end()) {
      caf::anon_send(d->second, fetch_atom::value, f.model);
      continue;
    }
    loaded_model gone;  // no such device: the tier falls back to the disk
    gone.model = f.model;
    gone.error = "device " + std::to_string(f.device) + " is unknown";
    gone.from_device = true;
    gone.device = f.device;
    self->send(caf::actor_cast<ram_cache_actor>(self), loaded_atom::value, std::move(gone));
  }
  fx.fetches.clear();
  // Note [An abandoned load stops]: after every step, each load's flag says whether anyone waits for it
  // now (a withdrawal may have left it alone; a join may have come back to it).
  for (auto& kv : self->state.abandoned)
    kv.second->store(!self->state.tier->awaited(kv.first), std::memory_order_relaxed);
  check_step(*self->state.tier, self->state.config.check_invariants_each_step);
}

void start_idle_ticks(self_ptr self, std::chrono::nanoseconds keep_alive) {
  if (self->state.ticks.use(keep_alive))
    self->delayed_send(caf::actor_cast<ram_cache_actor>(self), self->state.ticks.period(), tick_atom::value);
}

// A request that may not wait has no deadline: the tier answers it at once, or when its precheck ends (a
// zero-delay expiry would fail it before its precheck could run).
void arm_deadline(self_ptr self, request_id id, caf::timespan wait) {
  bool open = self->state.requests.is_open(id) || self->state.groups.is_open(id);
  if (open && wait > caf::timespan::zero() && !waits_forever(wait))
    self->delayed_send(caf::actor_cast<ram_cache_actor>(self), wait, expire_atom::value, id);
}

// Hands an acquire to the tier: grants, loads (new or shared), a wait for room, or a refusal. Models that
// must be loaded and can be prechecked are checked first, off this thread, so that a load bound to fail
// evicts nothing; meanwhile the request holds its place in the tier's FIFO, and its deadline runs from now.
void begin_acquire(self_ptr self, request_id id, std::vector<descriptor_ptr> models, holder_id holder,
                   caf::timespan wait, bool single, bool prefetch = false) {
  std::vector<descriptor_ptr> to_check;
  for (const auto& m : models) {
    if (m->precheck && self->state.tier->residency(m->id) == ram_residency::absent)
      to_check.push_back(m);
    if (m->keep_alive)
      start_idle_ticks(self, *m->keep_alive);
  }
  ram_effects fx;
  auto may_wait = wait > caf::timespan::zero();
  bool checking = !to_check.empty();
  if (prefetch)
    self->state.tier->prefetch(id, models, holder, fx, checking);
  else if (single)
    self->state.tier->acquire(id, models.front(), holder, may_wait, fx, checking);
  else
    self->state.tier->acquire_all(id, models, holder, may_wait, fx, checking);
  apply(self, fx);
  arm_deadline(self, id, wait);
  bool open = self->state.requests.is_open(id) || self->state.groups.is_open(id);
  if (!checking || !open)
    return;
  auto reply_to = caf::actor_cast<ram_cache_actor>(self);
  self->state.config.loaders->post([to_check, id, reply_to] {
    checked_model done;
    done.check = id;
    try {
      for (const auto& m : to_check)
        if (auto err = m->precheck(*m)) {
          done.ok = false;
          done.code = err->code;
          done.error = "loading '" + m->id + "' failed: " + err->detail;
          break;
        }
    } catch (const std::exception& e) {
      done.ok = false;
      done.error = e.what();
    }
    caf::anon_send(reply_to, checked_atom::value, std::move(done));
  });
}

// acquire, tagged where its sender may withdraw it.
caf::result<ram_lease> acquire_one(self_ptr self, const model_id& model, caf::timespan wait,
                                   std::optional<std::uint64_t> tag = std::nullopt) {
  if (self->state.stopping)
    return make_error(errc::shutting_down, "the runtime is shutting down: no new acquires");
  auto descriptor = self->state.config.models->find(model);
  if (!descriptor)
    return make_error(errc::unknown_model, "no model '" + model + "' in the catalog");
  auto holder = watch_sender(self, self->state.watched);
  if (holder == 0)
    return make_error(errc::invalid_argument, "acquire needs a sender to hold the lease");
  // The holder is read before the promise: making it takes the sender out of the current message.
  auto promise = self->make_response_promise<ram_lease>();
  auto id = self->state.next_request++;
  self->state.requests.open(id, promise);
  if (tag)
    self->state.tagged.remember(holder, *tag, id);
  begin_acquire(self, id, {std::move(descriptor)}, holder, wait, true);
  return promise;
}

// acquire_all, or a prefetch (Note [Eviction with known next uses]).
caf::result<std::vector<ram_lease>> acquire_group(self_ptr self, const std::vector<model_id>& models,
                                                  caf::timespan wait, bool prefetch,
                                                  std::optional<std::uint64_t> tag = std::nullopt) {
  if (self->state.stopping)
    return make_error(errc::shutting_down, "the runtime is shutting down: no new acquires");
  std::vector<descriptor_ptr> descriptors;
  for (const auto& model : models) {
    auto descriptor = self->state.config.models->find(model);
    if (!descriptor)
      return make_error(errc::unknown_model, "no model '" + model + "' in the catalog");
    descriptors.push_back(std::move(descriptor));
  }
  auto holder = watch_sender(self, self->state.watched);
  if (holder == 0)
    return make_error(errc::invalid_argument, "acquire needs a sender to hold the leases");
  auto promise = self->make_response_promise<std::vector<ram_lease>>();
  auto id = self->state.next_request++;
  self->state.groups.open(id, promise);
  if (tag)
    self->state.tagged.remember(holder, *tag, id);
  begin_acquire(self, id, std::move(descriptors), holder, wait, false, prefetch);
  return promise;
}

ram_cache_actor::behavior_type ram_cache_impl(self_ptr self, ram_cache_config config) {
  self->state.tier = std::make_unique<ram_tier>(config.tier, config.policy());
  self->state.config = std::move(config);
  if (self->state.config.trace)
    self->state.track = self->state.config.trace->track("RAM");
  start_idle_ticks(self, self->state.config.tier.keep_alive);
  self->set_down_handler([self](caf::down_msg& dm) {
    auto id = dm.source.id();
    self->state.watched.erase(id);
    ram_effects fx;
    // Note [Copy back instead of a kept RAM copy]: a device actor that ends (a bug, or a shutdown) takes
    // its only copies with it; acquires waiting for one must not wait for a copy back that never comes.
    // First, so that what its leases' release evicts is never handed to it.
    auto& devices = self->state.devices;
    auto gone = std::find_if(devices.begin(), devices.end(), [&](const auto& d) { return d.second.id() == id; });
    if (gone != devices.end()) {
      if (!self->state.stopping)
        spdlog::error("mcache: device {}'s actor ended ({}); models only it held come from disk again",
                      gone->first, caf::to_string(dm.reason));
      self->state.tier->device_gone(gone->first, fx);
      devices.erase(gone);
    }
    self->state.tier->holder_down(id, fx);
    apply(self, fx);
  });
  return {
    [self](acquire_atom, const model_id& model, caf::timespan wait) -> caf::result<ram_lease> {
      return acquire_one(self, model, wait);
    },
    [self](acquire_atom, const model_id& model, caf::timespan wait, std::uint64_t tag) -> caf::result<ram_lease> {
      return acquire_one(self, model, wait, tag);
    },
    [self](acquire_atom, const std::vector<model_id>& models,
           caf::timespan wait) -> caf::result<std::vector<ram_lease>> {
      return acquire_group(self, models, wait, false);
    },
    [self](acquire_atom, const std::vector<model_id>& models, caf::timespan wait,
           std::uint64_t tag) -> caf::result<std::vector<ram_lease>> {
      return acquire_group(self, models, wait, false, tag);
    },
    [self](retire_atom, const model_id& model) {
      ram_effects fx;
      self->state.tier->retire(model, fx);
      apply(self, fx);
    },
    [self](withdraw_atom, std::uint64_t tag) {
      auto holder = self->current_sender() ? self->current_sender()->id() : 0;
      auto id = self->state.tagged.take(holder, tag);
      if (!id)
        return;
      ram_effects fx;
      self->state.tier->withdraw(*id, failure{errc::cancelled, "the acquire was withdrawn by its holder"}, fx);
      apply(self, fx);
    },
    [self](prefetch_atom, const std::vector<model_id>& models) -> caf::result<std::vector<ram_lease>> {
      return acquire_group(self, models, caf::timespan::zero(), true);
    },
    [self](hint_atom, const std::vector<model_id>& soonest_first) {
      self->state.tier->set_next_uses(soonest_first);
    },
    [self](release_atom, lease_id lease) -> caf::result<void> {
      ram_effects fx;
      auto holder = self->current_sender() ? self->current_sender()->id() : 0;
      auto err = self->state.tier->release(lease, holder, fx);
      apply(self, fx);
      if (err)
        return make_error(*err);
      return caf::unit;
    },
    [self](give_back_atom, lease_id lease) {
      ram_effects fx;
      auto holder = self->current_sender() ? self->current_sender()->id() : 0;
      if (auto err = self->state.tier->release(lease, holder, fx))
        std::fprintf(stderr, "mcache: a device gave back a lease it does not hold: %s\n", err->detail.c_str());
      apply(self, fx);
    },
    [self](share_atom, lease_id lease, const caf::actor_addr& owner) -> caf::result<ram_lease> {
      if (!owner)
        return make_error(errc::invalid_lease, "share needs the address of the lease's owner");
      auto borrower = watch_sender(self, self->state.watched);
      auto granted = self->state.tier->share(lease, owner.id(), borrower);
      check_step(*self->state.tier, self->state.config.check_invariants_each_step);
      if (!succeeded(granted))
        return make_error(std::get<failure>(granted));
      return std::get<ram_lease>(std::move(granted));
    },
    [self](trim_atom, const model_id& model, bytes_t bytes) -> caf::result<bytes_t> {
      ram_effects fx;
      auto freed = self->state.tier->trim(model, bytes, fx);
      apply(self, fx);
      if (!succeeded(freed))
        return make_error(std::get<failure>(freed));
      return std::get<bytes_t>(freed);
    },
    [self](stats_atom) -> ram_stats {
      auto s = self->state.tier->stats();
      if (self->state.config.memory) {
        auto m = self->state.config.memory->stats();
        s.pinned_budget_bytes = m.pinned_budget_bytes;
        s.pinned_bytes = m.pinned_bytes;
        s.pinned_peak_bytes = m.pinned_peak_bytes;
        s.pageable_fallbacks = m.pageable_fallbacks;
        s.pageable_fallback_bytes = m.pageable_fallback_bytes;
        s.host_cached_bytes = m.cached_bytes;
        s.host_overflow_bytes = m.overflow_bytes;
        s.host_overflows = m.overflows;
      }
      return s;
    },
    [self](shutdown_atom) -> caf::result<void> {
      self->state.stopping = true;
      ram_effects fx;
      self->state.tier->shutdown(fx);
      apply(self, fx);
      return caf::unit;
    },
    [self](check_atom) -> caf::result<void> { return check_now(*self->state.tier); },
    [self](checked_atom, checked_model& done) {
      ram_effects fx;
      std::optional<failure> failed;
      if (!done.ok)
        failed = failure{done.code, done.error};
      self->state.tier->precheck_finished(done.check, std::move(failed), fx);
      apply(self, fx);
    },
    [self](loaded_atom, loaded_model& done) {
      ram_effects fx;
      if (!done.from_device)
        self->state.abandoned.erase(done.model);
      if (done.stopped) {
        self->state.tier->load_stopped(done.model, fx);
        apply(self, fx);
        return;
      }
      outcome<std::shared_ptr<const host_model>> result = std::move(done.payload);
      if (!done.error.empty()) {
        result = failure{done.code, "loading '" + done.model + "' failed: " + done.error};
        if (done.from_device)  // not an error: the model is read from disk instead
          spdlog::info("mcache: copying '{}' back from a device failed ({}); it comes from disk", done.model, done.error);
        else
          spdlog::warn("mcache: {} ({})", std::get<failure>(result).detail, to_string(done.code));
      }
      self->state.tier->load_finished(done.model, std::move(result), done.load_ns, fx,
                                      done.from_device ? load_source::device : load_source::disk, done.device);
      apply(self, fx);
    },
    [self](whole_atom, const model_id& model, device_index device, bool whole) {
      if (self->current_sender()) {
        watch_sender(self, self->state.watched);  // its down message ends what it holds (device_gone)
        self->state.devices[device] = caf::actor_cast<caf::actor>(self->current_sender());
      }
      self->state.tier->device_copy(model, device, whole);
      check_step(*self->state.tier, self->state.config.check_invariants_each_step);
    },
    [self](residency_atom) -> std::vector<model_id> { return self->state.tier->resident_models(); },
    [self](status_atom) -> tier_report { return self->state.tier->report(); },
    [self](return_atom, const model_id& model, device_index device) -> bool {
      auto granted = self->state.tier->reserve_return(model, device);
      check_step(*self->state.tier, self->state.config.check_invariants_each_step);
      return granted;
    },
    [self](expire_atom, request_id id) {
      ram_effects fx;
      self->state.tier->expire(id, fx);
      apply(self, fx);
    },
    [self](tick_atom) {
      ram_effects fx;
      self->state.tier->drop_idle(fx);
      apply(self, fx);
      self->delayed_send(caf::actor_cast<ram_cache_actor>(self), self->state.ticks.period(), tick_atom::value);
    },
  };
}

} // namespace

ram_cache_actor spawn_ram_cache(caf::actor_system& sys, ram_cache_config config) {
  return sys.spawn(ram_cache_impl, std::move(config));
}

} // namespace mcache
