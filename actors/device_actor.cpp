#include "actors/device_actor.hpp"

#include "actors/idle_ticks.hpp"
#include "actors/request_book.hpp"
#include "messages/waits.hpp"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <future>
#include <iterator>
#include <tuple>
#include <utility>

namespace mcache {

namespace {

/// A pin request between its arrival and the RAM lease it borrows: other messages run in between (the
/// `share` round trip), so its holder may go away before the lease arrives.
struct borrowing {
  holder_id holder;
  bool holder_gone = false;
  bool prefetch = false;
  std::vector<std::pair<model_id, bytes_t>> sooner;  // a prefetch's sooner uses (pin_request::sooner)
  bytes_t sooner_working = 0;
  stage_pins stage;  // of a scheduler stage's pin: its later pins (pin_request::pins_after)
  bool withdrawn = false;  // its holder withdrew it before the lease arrived
};

struct device_state {
  static const char* name;
  std::unique_ptr<device_tier> tier;
  device_actor_config config;
  request_book<device_pin> requests;
  request_id next_request = 1;
  std::unordered_map<model_id, std::vector<bool>> required_of;  // per model: which tensors are required
  std::set<holder_id> watched;
  std::unordered_map<request_id, borrowing> borrowing_;
  withdraw_book by_lease;  // pin requests still open, by their caller's lease, for `withdraw`
  std::shared_ptr<std::atomic<uint64_t>> streamed_bytes = std::make_shared<std::atomic<uint64_t>>(0);
  bool stopping = false;  // after `shutdown`: new pins are refused, releases still work
  std::vector<model_id> reported_whole;  // what the RAM-cache actor was last told (report_whole_copies)
  int track = 0;                         // its timeline track
  idle_ticks ticks;                      // Note [Keep-alive]
  // Note [Grants wait for the frees before them]
  std::uint64_t frees_posted = 0;        // tickets posted to the copy queue behind frees
  std::uint64_t frees_done = 0;          // the last ticket the copy queue reached
  std::deque<std::pair<std::uint64_t, bytes_t>> let_go_behind;  // per ticket posted, the bytes its frees give back
  bytes_t not_freed_yet = 0;             // their sum, for the tickets the copy queue has not reached
  std::unordered_map<request_id, std::uint64_t> admitted_behind;  // admitted requests, the ticket of their step
  std::vector<std::pair<std::uint64_t, reply<device_pin>>> held_grants;  // with the ticket each waits for
};

const char* device_state::name = "mcache.device";

using self_ptr = device_actor::stateful_pointer<device_state>;

void give_back_lease(self_ptr self, lease_id lease) {
  self->send(self->state.config.ram, give_back_atom::value, lease);
}

// A copy runs on this device's own copy queue, after the frees posted before it (see apply).
void start_copy(self_ptr self, const copy_order& order) {
  auto reply_to = caf::actor_cast<device_actor>(self);
  auto backend = self->state.config.backend;
  self->state.config.copiers->post([order, backend, reply_to, trace = self->state.config.trace,
                                    track = self->state.track]() mutable {
    copied_model done;
    done.model = order.model;
    auto start = std::chrono::steady_clock::now();
    try {
      done.copy = backend->copy_in(*order.host, order.tensors);
    } catch (const device_oom_error& e) {
      done.error = e.what();
      done.code = errc::device_oom;
    } catch (const std::exception& e) {
      done.error = e.what();
    }
    if (!done.copy && done.error.empty())
      done.error = "the backend returned no copy";
    done.copy_ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                           std::chrono::steady_clock::now() - start)
                                           .count());
    if (trace)
      trace->span(track, "copy " + order.model, "copy", start, std::chrono::steady_clock::now(),
                  done.copy ? done.copy->device_bytes : 0, done.error);
    caf::anon_send(reply_to, copied_atom::value, std::move(done));
  });
}

// Copies `copy` back to host memory on this device's copy queue and hands it to the RAM-cache actor as a
// load from a device (Note [Copy back instead of a kept RAM copy]); `granted` says whether RAM has room
// for it (false: it is only freed). Runs in queue order, so later copies find the memory free.
void post_copy_back(self_ptr self, model_id model, std::shared_ptr<const device_model> copy,
                    std::shared_future<bool> granted) {
  auto ram = self->state.config.ram;
  auto backend = self->state.config.backend;
  auto memory = self->state.config.memory;
  auto trace = self->state.config.trace;
  auto track = self->state.track;
  auto device = self->state.config.tier.device;
  self->state.config.copiers->post([=]() mutable {
    bool ok = false;
    try {
      ok = granted.get();  // the RAM-cache actor answers at once; a copy thread may wait, an actor may not
    } catch (const std::future_error&) {
    }
    if (!ok)
      return;  // `copy` is freed here, in queue order
    host_memory::scope buffers_from{memory};
    loaded_model done;
    done.model = model;
    done.from_device = true;
    done.device = device;
    auto start = std::chrono::steady_clock::now();
    try {
      done.payload = backend->copy_out(*copy);
    } catch (const std::exception& e) {
      done.error = e.what();
    }
    copy.reset();
    if (trace)
      trace->span(track, "copy back " + model, "copy", start, std::chrono::steady_clock::now(),
                  done.payload ? done.payload->tensor_bytes() : 0, done.error);
    done.load_ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                           std::chrono::steady_clock::now() - start)
                                           .count());
    caf::anon_send(ram, loaded_atom::value, std::move(done));
  });
}

// The only copy of a model is being dropped: ask the RAM-cache actor for room, and copy it back if granted.
void copy_back(self_ptr self, device_tier::copy_back cb) {
  // Set exactly once: by the answer, by an error, or (if this actor goes first) when the handlers die.
  struct answer_once {
    std::promise<bool> promise;
    bool set = false;
    void give(bool ok) {
      if (!std::exchange(set, true))
        promise.set_value(ok);
    }
    ~answer_once() { give(false); }
  };
  auto answer = std::make_shared<answer_once>();
  post_copy_back(self, cb.model, std::move(cb.copy), answer->promise.get_future().share());
  self->request(self->state.config.ram, caf::infinite, return_atom::value, cb.model, self->state.config.tier.device)
    .then([answer](bool ok) { answer->give(ok); }, [answer](caf::error&) { answer->give(false); });
}

// Tells the RAM-cache actor which models this device now holds whole, or no longer does.
void report_whole(self_ptr self) {
  auto now = self->state.tier->whole_models();
  auto& before = self->state.reported_whole;
  if (now == before)
    return;
  auto device = self->state.config.tier.device;
  std::vector<model_id> gone, added;
  std::set_difference(before.begin(), before.end(), now.begin(), now.end(), std::back_inserter(gone));
  std::set_difference(now.begin(), now.end(), before.begin(), before.end(), std::back_inserter(added));
  for (const auto& m : gone)
    self->send(self->state.config.ram, whole_atom::value, m, device, false);
  for (const auto& m : added)
    self->send(self->state.config.ram, whole_atom::value, m, device, true);
  before = std::move(now);
}

// Note [Grants wait for the frees before them]: the tier counts a model's device memory as free the moment
// it lets the model go, but the memory is really freed later, on the device's copy queue: after the copies
// already queued there and, for an only copy (Note [Copy back instead of a kept RAM copy]), after its copy
// back to RAM. A copy this step makes room for is queued behind those frees, so it finds the memory free.
// But a pin's working memory (and staging) is the caller's to allocate as soon as it has the grant: a hit
// granted at once, or a pin that joined a copy already queued ahead of those frees, could allocate in
// memory a queued free has not given back yet, and on a real GPU run out of memory although the budget
// had room. So each step that lets memory go posts a ticket behind its frees, with the bytes they give
// back, and each request admitted in a step remembers the last ticket posted by then (`admitted_behind`):
// every free that could have made its room is ahead of that ticket. A grant that reserves working memory
// is held until the copy queue reaches its ticket (`freed`), unless the bytes not freed yet fit in what
// the tier counts free (then the device holds no more than the budget even before those frees run: a
// grant with room to spare does not wait behind an unrelated copy and the free queued after it). A
// grant that reserves none (a hit without working memory), one whose frees have run (a copy admitted
// with them lands after them) and every failure go out at once. After shutdown the copy queue stops:
// frees run on the actor's thread, and grants are no longer held.
void post_free_ticket(self_ptr self, bytes_t let_go) {
  auto ticket = ++self->state.frees_posted;
  self->state.let_go_behind.emplace_back(ticket, let_go);
  self->state.not_freed_yet += let_go;
  self->state.config.copiers->post([reply_to = caf::actor_cast<device_actor>(self), ticket] {
    caf::anon_send(reply_to, freed_atom::value, ticket);
  });
}

void deliver_grants(self_ptr self, std::vector<reply<device_pin>>& replies) {
  auto& st = self->state;
  std::vector<reply<device_pin>> now;
  for (auto& r : replies) {
    st.by_lease.answered(r.request);
    std::uint64_t ticket = 0;
    if (auto a = st.admitted_behind.find(r.request); a != st.admitted_behind.end()) {
      ticket = a->second;
      st.admitted_behind.erase(a);
    }
    if (succeeded(r.result)) {
      auto& grant = std::get<device_pin>(r.result);
      grant.backend = st.config.backend;
      grant.streamed_bytes = st.streamed_bytes;
      if (grant.working_bytes > 0 && ticket > st.frees_done && st.not_freed_yet > st.tier->free_bytes()) {
        st.held_grants.emplace_back(ticket, std::move(r));
        continue;
      }
    }
    now.push_back(std::move(r));
  }
  replies.clear();
  st.requests.deliver(now);
}

void deliver_held_grants(self_ptr self) {
  auto& held = self->state.held_grants;
  auto fits = self->state.not_freed_yet <= self->state.tier->free_bytes();
  auto reached = std::stable_partition(held.begin(), held.end(), [&](const auto& h) {
    return h.first <= self->state.frees_done || self->state.stopping || fits;
  });
  std::vector<reply<device_pin>> now;
  for (auto h = held.begin(); h != reached; ++h)
    now.push_back(std::move(h->second));
  held.erase(held.begin(), reached);
  self->state.requests.deliver(now);
}

void apply(self_ptr self, device_effects& fx) {
  // Only copies being dropped go back to RAM first, on the copy queue, before any copy this step makes
  // room for (a copy posted ahead of them would find their memory still taken). Their room requests reach
  // the RAM-cache actor before the reports below. Then the other frees, and a ticket behind them.
  auto copy_backs = self->state.tier->take_copy_backs();
  auto released = self->state.tier->take_released();
  auto let_go = self->state.tier->take_let_go_bytes();
  if (self->state.stopping) {
    // The copy queue stops after the shutdown: what is let go now is freed here, and an only copy is
    // dropped (no acquire will ask for it; the RAM tier hears it is no longer held whole, below).
    copy_backs.clear();
    released.clear();
  }
  bool frees = !copy_backs.empty() || !released.empty();
  for (auto& cb : copy_backs)
    copy_back(self, std::move(cb));
  if (!released.empty())
    self->state.config.copiers->post([released = std::move(released)]() mutable { released.clear(); });
  if (frees)
    post_free_ticket(self, let_go);
  if (self->state.frees_done < self->state.frees_posted && !self->state.stopping)
    for (auto request : fx.admitted)
      self->state.admitted_behind[request] = self->state.frees_posted;
  fx.admitted.clear();
  // Borrowed leases go back before the replies go out: a caller told its pin was refused (or ended)
  // that then releases its own lease and asks the RAM tier anything finds this pin's lease gone (it
  // reaches the RAM-cache actor's mailbox first).
  for (auto lease : fx.ram_leases_to_release)
    give_back_lease(self, lease);
  fx.ram_leases_to_release.clear();
  deliver_grants(self, fx.replies);
  if (!self->state.held_grants.empty())  // a step that let go of a reservation may make them fit
    deliver_held_grants(self);
  for (const auto& order : fx.copies)
    start_copy(self, order);
  fx.copies.clear();
  if (self->state.config.report_whole_copies)
    report_whole(self);
  check_step(*self->state.tier, self->state.config.check_invariants_each_step);
}

void start_idle_ticks(self_ptr self, std::chrono::nanoseconds keep_alive) {
  if (self->state.ticks.use(keep_alive))
    self->delayed_send(caf::actor_cast<device_actor>(self), self->state.ticks.period(), tick_atom::value);
}

/// The device bytes of each tensor of a leased host copy, and which must stay resident when pinned.
std::pair<std::vector<bytes_t>, std::vector<bool>> device_tensors(self_ptr self, const ram_lease& host) {
  // Which tensors must stay resident is looked up once per model (ids are never registered twice).
  auto& required = self->state.required_of[host.model];
  if (required.empty()) {
    descriptor_ptr descriptor;
    if (self->state.config.models)
      descriptor = self->state.config.models->find_generation(host.model);
    for (const auto& t : host.payload->tensors)
      required.push_back(descriptor
                         && std::find(descriptor->required_tensors.begin(), descriptor->required_tensors.end(),
                                      t.name)
                              != descriptor->required_tensors.end());
  }
  std::vector<bytes_t> bytes;
  for (const auto& t : host.payload->tensors)
    bytes.push_back(self->state.config.backend->footprint(tensor_bytes(t.tensor)));
  return {std::move(bytes), required};
}

// Note [A stage's pins leave room for the ones after]: each model of `later` with the least a pin of it
// could need on this device were it absent, from its leased host copy's tensors (whatever the catalog
// knows of it).
std::vector<std::pair<model_id, bytes_t>> least_of(self_ptr self, const std::vector<ram_lease>& later) {
  std::vector<std::pair<model_id, bytes_t>> out;
  const auto& options = self->state.config.tier;
  for (const auto& lease : later) {
    if (!lease.payload)
      continue;
    auto [bytes, required] = device_tensors(self, lease);
    out.emplace_back(lease.model,
                     least_pin_bytes(absent_tensors(bytes, required), options.partial_loading, options.staging_slots));
  }
  return out;
}

void on_borrowed(self_ptr self, request_id id, ram_lease host, bytes_t working, caf::timespan wait) {
  auto b = self->state.borrowing_.find(id);
  bool gone = b == self->state.borrowing_.end() || b->second.holder_gone;
  bool withdrawn = b != self->state.borrowing_.end() && b->second.withdrawn;
  auto holder = b == self->state.borrowing_.end() ? 0 : b->second.holder;
  bool prefetch = b != self->state.borrowing_.end() && b->second.prefetch;
  std::vector<std::pair<model_id, bytes_t>> sooner;
  bytes_t sooner_working = 0;
  stage_pins stage;
  if (b != self->state.borrowing_.end()) {
    sooner = std::move(b->second.sooner);
    sooner_working = b->second.sooner_working;
    stage = std::move(b->second.stage);
  }
  if (b != self->state.borrowing_.end())
    self->state.borrowing_.erase(b);
  device_effects fx;
  if (gone || withdrawn) {
    fx.ram_leases_to_release.push_back(host.lease);
    fx.replies.push_back({id, gone ? failure{errc::shutting_down, "the holder went away"}
                                   : failure{errc::cancelled, "the pin was withdrawn by its holder"}});
    apply(self, fx);
    return;
  }
  pin_request r;
  r.request = id;
  r.holder = holder;
  if (host.payload)
    std::tie(r.tensor_bytes, r.required) = device_tensors(self, host);
  r.host = std::move(host);
  r.working_bytes = working;
  r.prefetch = prefetch;
  r.sooner = std::move(sooner);
  r.sooner_working = sooner_working;
  r.pins_after = least_of(self, stage.later);
  r.earlier = stage.earlier;
  if (self->state.config.models)
    if (auto d = self->state.config.models->find_generation(r.host.model)) {
      r.keep_alive = d->keep_alive;
      if (d->keep_alive)
        start_idle_ticks(self, *d->keep_alive);
    }
  self->state.tier->pin(std::move(r), wait > caf::timespan::zero(), fx);
  apply(self, fx);
  if (self->state.requests.is_open(id) && !waits_forever(wait))
    self->delayed_send(caf::actor_cast<device_actor>(self), wait, expire_atom::value, id);
}

// A pin, or a prefetch (Note [Eviction with known next uses]): borrows a RAM lease, then asks the tier.
caf::result<device_pin> begin_pin(self_ptr self, lease_id lease, bytes_t working, caf::timespan wait, bool prefetch,
                                  std::vector<std::pair<model_id, bytes_t>> sooner = {}, bytes_t sooner_working = 0,
                                  stage_pins stage = {}) {
  if (self->state.stopping)
    return make_error(errc::shutting_down, "the runtime is shutting down: no new pins");
  auto holder = watch_sender(self, self->state.watched);
  if (holder == 0)
    return make_error(errc::invalid_argument, "pin needs a sender to hold the pin");
  // Before the promise: making it takes the sender out of the current message.
  auto owner = caf::actor_cast<caf::actor_addr>(self->current_sender());
  auto promise = self->make_response_promise<device_pin>();
  auto id = self->state.next_request++;
  self->state.requests.open(id, promise);
  self->state.borrowing_.emplace(
    id, borrowing{holder, false, prefetch, std::move(sooner), sooner_working, std::move(stage)});
  self->state.by_lease.remember(holder, lease, id);
  // Waits on the RAM-cache actor: other messages run before the lease arrives. The state it resumes
  // in is `borrowing_[id]`, which the down handler marks if the holder goes away meanwhile.
  self->request(self->state.config.ram, caf::infinite, share_atom::value, lease, owner)
    .then([self, id, working, wait](ram_lease& host) { on_borrowed(self, id, std::move(host), working, wait); },
          [self, id](caf::error& err) {
            self->state.borrowing_.erase(id);
            device_effects fx;
            fx.replies.push_back({id, to_failure(err)});
            apply(self, fx);
          });
  return promise;
}

device_actor::behavior_type device_impl(self_ptr self, device_actor_config config) {
  self->state.tier = std::make_unique<device_tier>(config.tier, config.policy());
  self->state.config = std::move(config);
  start_idle_ticks(self, self->state.config.tier.keep_alive);
  if (self->state.config.trace) {
    auto d = self->state.config.tier.device;
    self->state.track = self->state.config.trace->track(d == cpu_device ? "cpu" : "device " + std::to_string(d));
  }
  self->set_down_handler([self](caf::down_msg& dm) {
    auto id = dm.source.id();
    self->state.watched.erase(id);
    for (auto& kv : self->state.borrowing_)
      if (kv.second.holder == id)
        kv.second.holder_gone = true;
    device_effects fx;
    self->state.tier->holder_down(id, fx);
    apply(self, fx);
  });
  return {
    [self](pin_atom, lease_id lease, bytes_t working, caf::timespan wait) -> caf::result<device_pin> {
      return begin_pin(self, lease, working, wait, false);
    },
    [self](pin_atom, lease_id lease, bytes_t working, caf::timespan wait,
           stage_pins& stage) -> caf::result<device_pin> {
      return begin_pin(self, lease, working, wait, false, {}, 0, std::move(stage));
    },
    [self](retire_atom, const model_id& model) {
      self->state.required_of.erase(model);
      device_effects fx;
      self->state.tier->retire(model, fx);
      apply(self, fx);
    },
    [self](withdraw_atom, lease_id lease) {
      auto holder = self->current_sender() ? self->current_sender()->id() : 0;
      auto id = self->state.by_lease.take(holder, lease);
      if (!id)
        return;
      auto b = self->state.borrowing_.find(*id);
      if (b != self->state.borrowing_.end()) {  // its own lease has not arrived: answered when it does
        b->second.withdrawn = true;
        return;
      }
      device_effects fx;
      self->state.tier->withdraw(*id, failure{errc::cancelled, "the pin was withdrawn by its holder"}, fx);
      apply(self, fx);
    },
    [self](prefetch_atom, lease_id lease, std::vector<std::pair<model_id, bytes_t>>& sooner,
           bytes_t sooner_working) -> caf::result<device_pin> {
      return begin_pin(self, lease, 0, caf::timespan::zero(), true, std::move(sooner), sooner_working);
    },
    [self](hint_atom, const std::vector<model_id>& soonest_first) {
      self->state.tier->set_next_uses(soonest_first);
    },
    [self](release_atom, pin_id pin) -> caf::result<void> {
      device_effects fx;
      auto holder = self->current_sender() ? self->current_sender()->id() : 0;
      if (auto err = self->state.tier->release(pin, holder, fx))
        return make_error(*err);
      apply(self, fx);
      return caf::unit;
    },
    [self](offload_atom, const model_id& model, bytes_t bytes) -> caf::result<bytes_t> {
      device_effects fx;
      auto freed = self->state.tier->offload(model, bytes, fx);
      apply(self, fx);
      if (!succeeded(freed))
        return make_error(std::get<failure>(freed));
      return std::get<bytes_t>(freed);
    },
    [self](stats_atom) -> device_stats {
      auto s = self->state.tier->stats();
      s.streamed_bytes = self->state.streamed_bytes->load();
      s.allocator_cached_bytes = self->state.config.backend->cached_bytes();
      s.allocator_overflow_bytes = self->state.config.backend->overflow_bytes();
      s.allocator_overflows = self->state.config.backend->overflows();
      return s;
    },
    [self](shutdown_atom) -> caf::result<void> {
      self->state.stopping = true;
      device_effects fx;
      // Requests still borrowing their lease are answered now; the lease is given back when it arrives.
      for (auto& kv : self->state.borrowing_) {
        kv.second.holder_gone = true;
        fx.replies.push_back({kv.first, failure{errc::shutting_down, "the runtime is shutting down"}});
      }
      self->state.tier->shutdown(fx);
      apply(self, fx);
      // Grants held for frees behind the copy queue go out now: the queue may stop before it reaches
      // their tickets, and a granted pin stays valid until released.
      self->state.admitted_behind.clear();
      deliver_held_grants(self);
      return caf::unit;
    },
    [self](check_atom) -> caf::result<void> { return check_now(*self->state.tier); },
    [self](place_atom, const model_id& model) -> placement_view { return self->state.tier->placement(model); },
    [self](freed_atom, std::uint64_t ticket) {
      self->state.frees_done = std::max(self->state.frees_done, ticket);
      auto& behind = self->state.let_go_behind;
      while (!behind.empty() && behind.front().first <= ticket) {
        self->state.not_freed_yet -= behind.front().second;
        behind.pop_front();
      }
      deliver_held_grants(self);
    },
    [self](copied_atom, copied_model& done) {
      device_effects fx;
      outcome<std::shared_ptr<const device_model>> result = std::move(done.copy);
      if (!done.error.empty()) {
        result = failure{done.code, "copying '" + done.model + "' to device "
                                      + std::to_string(self->state.config.tier.device) + " failed: " + done.error};
        spdlog::warn("mcache: {}{}", std::get<failure>(result).detail,
                     done.code == errc::device_oom ? " (freeing memory and retrying)" : "");
      }
      self->state.tier->copy_finished(done.model, std::move(result), done.copy_ns, fx);
      apply(self, fx);
    },
    [self](expire_atom, request_id id) {
      device_effects fx;
      self->state.tier->expire(id, fx);
      apply(self, fx);
    },
    [self](status_atom) -> tier_report { return self->state.tier->report(); },
    [self](residency_atom) -> residency_report {
      return residency_report{self->state.config.tier.device, self->state.tier->resident_models()};
    },
    [self](tick_atom) {
      device_effects fx;
      self->state.tier->drop_idle(fx);
      apply(self, fx);
      self->delayed_send(caf::actor_cast<device_actor>(self), self->state.ticks.period(), tick_atom::value);
    },
    [self](hand_over_atom, const model_id& model) {
      self->state.tier->hand_over(model);  // false: no longer whole here, and the RAM has been told so
      check_step(*self->state.tier, self->state.config.check_invariants_each_step);
    },
    [self](fetch_atom, const model_id& model) {
      auto copy = self->state.tier->fetch(model);
      check_step(*self->state.tier, self->state.config.check_invariants_each_step);
      std::promise<bool> granted;
      granted.set_value(copy != nullptr);
      if (copy) {
        post_copy_back(self, model, std::move(copy), granted.get_future().share());
        return;
      }
      loaded_model gone;  // the RAM-cache actor falls back to the disk
      gone.model = model;
      gone.from_device = true;
      gone.device = self->state.config.tier.device;
      gone.error = "device " + std::to_string(self->state.config.tier.device) + " no longer holds it whole";
      self->send(self->state.config.ram, loaded_atom::value, std::move(gone));
    },
  };
}

} // namespace

device_actor spawn_device(caf::actor_system& sys, device_actor_config config) {
  return sys.spawn(device_impl, std::move(config));
}

} // namespace mcache
