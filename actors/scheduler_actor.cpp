#include "actors/scheduler_actor.hpp"

#include "messages/errors.hpp"
#include "messages/waits.hpp"
#include "runtime/core/outcome.hpp"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>

namespace mcache {

namespace {

using clock = std::chrono::steady_clock;

/// A job between being picked and ending (Note [Job lifecycle]). At most one step of it is outstanding at
/// any time (an acquire, the pins of a stage, or the stage's work), and it ends only when none is, so no
/// grant can arrive for a job that has ended.
struct running_job {
  enum class phase { acquiring, awaiting_pin_turn, pinning, working };
  std::shared_ptr<job_submission> job;
  device_index worker = 0;  // the device whose worker runs it (cpu_device for CPU jobs)
  std::size_t stage = 0;
  phase now = phase::acquiring;
  std::vector<ram_lease> leases;
  std::vector<device_pin> pins;
  bool trying_at_once = false;  // pins asked for without waiting, out of turn (Note [One stage pins ...])
  clock::time_point pins_until;  // the stage's pins, asked one after another, wait for room until then
  bool refused_at_once = false; // one of those needed room it could not have at once
  std::optional<failure> stop;  // why it ends after the current step (cancel, deadline, a failure)
  clock::time_point step_start = clock::now();
  int track = 0;  // its worker's timeline track
};

struct scheduler_state {
  static const char* name;
  scheduler_actor_config config;
  job_queue queue;
  std::map<job_id, std::shared_ptr<job_submission>> queued;
  std::map<job_id, running_job> running;
  std::map<device_index, std::size_t> idle;  // free workers per device
  std::map<device_index, std::vector<int>> free_tracks;  // timeline tracks of the free workers
  residency_view view;
  bool refreshing = false;  // a residency snapshot is being gathered
  bool refresh_again = false;
  bool stopping = false;
  std::vector<caf::typed_response_promise<bool>> shutdown_waiters;
  std::size_t releases_in_flight = 0;    // a shutdown is answered once the tiers have taken every release
  // A job's status says it ended only once the tiers have taken its releases (Note [Ended means
  // released]): the releases each job has in flight, and the status updates waiting for them.
  std::unordered_map<job_id, std::size_t> releases_of_job;
  std::unordered_map<job_id, std::function<void()>> ends_after_releases;
  std::size_t prefetches_in_flight = 0;  // and every prefetch has ended (what it leased released)
  std::vector<model_id> hinted;  // the next uses the tiers were last told (Note [Prefetch])
  // Note [One stage pins at a time per device]
  std::map<device_index, job_id> pinning_on;                // the job whose pin requests are out there
  std::map<device_index, std::deque<job_id>> pin_turns;     // jobs with their leases, waiting for their turn
  int ram_track = 0;

  /// The actor ends, and its state with it. After a shutdown every job has ended by then. If the actor
  /// ended any other way (a bug: an exception escaped a handler), no job may wait for ever on an end that
  /// would never come: each one not ended yet ends here. What they held, the tiers release themselves
  /// (they watch their holders).
  ~scheduler_state();
};

const char* scheduler_state::name = "mcache.scheduler";

scheduler_state::~scheduler_state() {
  for (auto& kv : ends_after_releases)
    kv.second();  // their releases went out; their answers will not come
  auto ended = [](const std::shared_ptr<job_submission>& job, const char* when) {
    job->shared->stop_flag->store(true);  // work still running reads it
    job->shared->update([&](job_status& s) {
      if (s.ended())
        return;
      s.state = job_state::failed;
      s.error = failure{errc::shutting_down, std::string{"the scheduler ended "} + when};
    });
  };
  for (auto& kv : running)
    ended(kv.second.job, "while the job ran");
  for (auto& kv : queued)
    ended(kv.second, "before the job ran");
  if (!running.empty() || !queued.empty())
    spdlog::error("mcache: the scheduler ended with {} job(s) running and {} queued: they failed", running.size(),
                  queued.size());
}

using self_ptr = scheduler_actor::stateful_pointer<scheduler_state>;

void dispatch(self_ptr self);
void begin_stage(self_ptr self, job_id id);
void send_next_uses(self_ptr self);

device_actor device_for(self_ptr self, device_index device) {
  if (device == cpu_device)
    return self->state.config.cpu;
  return self->state.config.devices.at(static_cast<std::size_t>(device));
}

/// The device a stage's models are pinned on, for a job run by a worker of `worker`.
device_index stage_device(const stage_spec& stage, device_index worker) {
  switch (stage.target.where) {
    case stage_target::kind::device: return stage.target.device;
    case stage_target::kind::any_gpu: return worker;
    case stage_target::kind::cpu: return cpu_device;
  }
  return worker;
}

void trace_span(self_ptr self, int track, std::string name, const char* category, clock::time_point start,
                bytes_t bytes = 0, std::string detail = {}) {
  if (auto& t = self->state.config.trace)
    t->span(track, std::move(name), category, start, clock::now(), bytes, std::move(detail));
}

std::string stage_name(const running_job& run) {
  const auto& s = run.job->spec.stages[run.stage];
  auto name = s.name.empty() ? "stage " + std::to_string(run.stage) : s.name;
  return run.job->spec.name.empty() ? name : run.job->spec.name + ": " + name;
}

void check(self_ptr self) {
  if (self->state.config.options.check_invariants.value_or(false))
    self->state.queue.check_invariants(self->state.config.options.order);
}

void answer_shutdown_if_idle(self_ptr self);

// Note [Ended means released]: when a job's status says it ended (and `wait` returns, and `on_end`
// runs), the tiers have taken every release of what it held: a caller that then asks for the room finds
// it free, even without waiting. A pin's release is answered after the device has sent back the RAM lease
// it borrowed, so that lease is gone from the RAM-cache actor's mailbox's point of view too. The worker
// itself is free at once; only the status waits for the answers. One exception: a job stopped while an
// acquire or pin of it waited for a load or copy under way is answered at once (Note [Admission] rule 6),
// and that load or copy ends on its own: a disk load nobody else waits for stops at its next chunk (Note
// [An abandoned load stops]); a copy to a device runs to its end, holding the pin's borrowed RAM lease
// until then. Their bytes are counted until they end.

/// A release of job `job` (0: of no job) was answered.
void released(self_ptr self, job_id job) {
  if (job == 0)
    return;
  auto i = self->state.releases_of_job.find(job);
  if (i == self->state.releases_of_job.end() || --i->second > 0)
    return;
  self->state.releases_of_job.erase(i);
  auto end = self->state.ends_after_releases.find(job);
  if (end != self->state.ends_after_releases.end()) {
    auto update = std::move(end->second);
    self->state.ends_after_releases.erase(end);
    update();
  }
}

/// Sends a release to a tier. Nothing waits for the answer but a shutdown (answered once every release
/// was taken, so that whoever closed the scheduler finds nothing it held still counted) and the status of
/// the job it belongs to (Note [Ended means released]).
template <class Tier, class Id>
void release(self_ptr self, const Tier& tier, Id id, const char* what, job_id job = 0) {
  ++self->state.releases_in_flight;
  if (job != 0)
    ++self->state.releases_of_job[job];
  self->request(tier, caf::infinite, release_atom::value, id)
    .then(
      [self, job] {
        --self->state.releases_in_flight;
        released(self, job);
        answer_shutdown_if_idle(self);
      },
      [self, what, job](caf::error& e) {
        --self->state.releases_in_flight;
        if (what)
          spdlog::warn("mcache: scheduler: a {} release failed: {}", what, to_failure(e).detail);
        released(self, job);
        answer_shutdown_if_idle(self);
      });
}

/// Ends the pins and leases the current stage holds (asynchronously: nothing waits for the answers).
void release_pins(self_ptr self, running_job& run) {
  for (const auto& pin : run.pins)
    if (pin.pin != 0)
      release(self, device_for(self, pin.device), pin.pin, "pin", run.job->shared->id);
  run.pins.clear();
}

void release_held(self_ptr self, running_job& run) {
  release_pins(self, run);
  for (const auto& lease : run.leases)
    if (lease.lease != 0)
      release(self, self->state.config.ram, lease.lease, "lease", run.job->shared->id);
  run.leases.clear();
}

void answer_shutdown_if_idle(self_ptr self) {
  if (!self->state.stopping || !self->state.running.empty() || self->state.releases_in_flight > 0
      || self->state.prefetches_in_flight > 0)
    return;
  for (auto& p : self->state.shutdown_waiters)
    p.deliver(true);
  self->state.shutdown_waiters.clear();
}

/// A running job ends: its worker is free again.
void finish(self_ptr self, job_id id, std::optional<failure> why) {
  auto i = self->state.running.find(id);
  auto run = std::move(i->second);
  self->state.running.erase(i);
  release_held(self, run);
  auto stages_done = run.stage;
  auto end = [shared = run.job->shared, stages_done, why = std::move(why)]() mutable {
    shared->update([&](job_status& s) {
      s.stage = stages_done;
      if (!why) {
        s.state = job_state::done;
      } else {
        s.state = why->code == errc::cancelled ? job_state::cancelled : job_state::failed;
        s.error = std::move(why);
      }
    });
  };
  if (self->state.releases_of_job.count(id) != 0)
    self->state.ends_after_releases[id] = std::move(end);  // Note [Ended means released]
  else
    end();
  ++self->state.idle[run.worker];
  self->state.free_tracks[run.worker].push_back(run.track);
  dispatch(self);
  send_next_uses(self);
  answer_shutdown_if_idle(self);
}

/// A queued job ends without running.
void finish_queued(self_ptr self, job_id id, failure why) {
  auto i = self->state.queued.find(id);
  if (i == self->state.queued.end())
    return;
  auto job = i->second;
  self->state.queued.erase(i);
  self->state.queue.remove(id);
  job->shared->update([&](job_status& s) {
    s.state = why.code == errc::cancelled ? job_state::cancelled : job_state::failed;
    s.error = std::move(why);
  });
  check(self);
}

/// "job 7", or "job 7 ('sdxl-42')" when the job has a name (a fleet node names it by its key).
std::string job_label(self_ptr self, job_id id) {
  const job_submission* job = nullptr;
  if (auto q = self->state.queued.find(id); q != self->state.queued.end())
    job = q->second.get();
  else if (auto r = self->state.running.find(id); r != self->state.running.end())
    job = r->second.job.get();
  auto label = "job " + std::to_string(id);
  return job && !job->spec.name.empty() ? label + " ('" + job->spec.name + "')" : label;
}

/// Stops a job: a queued one at once, a running one when its current step ends.
void stop_job(self_ptr self, job_id id, failure why) {
  if (self->state.queued.count(id)) {
    finish_queued(self, id, std::move(why));
    return;
  }
  auto r = self->state.running.find(id);
  if (r == self->state.running.end())
    return;  // ended already
  if (!r->second.stop)
    r->second.stop = std::move(why);
  r->second.job->shared->stop_flag->store(true);
  auto& run = r->second;
  auto device = stage_device(run.job->spec.stages[run.stage], run.worker);
  switch (run.now) {
    case running_job::phase::awaiting_pin_turn: {
      // Nothing of it is outstanding: it ends now, and leaves the line for its device's pin turn.
      auto& turns = self->state.pin_turns[device];
      turns.erase(std::remove(turns.begin(), turns.end(), id), turns.end());
      finish(self, id, run.stop);
      break;
    }
    case running_job::phase::acquiring:
      // Withdrawn: answered `cancelled` at once (which ends the job), whether it is queued for room (the
      // requests behind it then do not wait for its deadline) or waits for a load (Note [Admission] rule 6).
      self->send(self->state.config.ram, withdraw_atom::value, std::uint64_t{id});
      break;
    case running_job::phase::pinning:
      for (std::size_t k = 0; k < run.pins.size(); ++k)
        if (run.pins[k].pin == 0)  // not answered yet
          self->send(device_for(self, device), withdraw_atom::value, run.leases[k].lease);
      break;
    case running_job::phase::working:
      break;  // the work sees the stop flag; what the stage holds is released when it returns
  }
}

/// The id the tiers know a model by: its generation (Note [Remove and replace]), "unet#2" once "unet"
/// was replaced.
model_id generation_of(self_ptr self, const model_id& model) {
  if (self->state.config.models)
    if (auto d = self->state.config.models->find(model))
      return d->id;
  return model;
}

/// Note [Prefetch]: the models every running and queued job will use, soonest first, to the tiers.
void send_next_uses(self_ptr self) {
  auto& st = self->state;
  if (!st.config.options.prefetch)
    return;
  std::vector<model_id> soon;
  auto add_stages = [&](const job_spec& spec, std::size_t from) {
    for (auto k = from; k < spec.stages.size(); ++k)
      soon.insert(soon.end(), spec.stages[k].models.begin(), spec.stages[k].models.end());
  };
  for (const auto& kv : st.running)
    add_stages(kv.second.job->spec, kv.second.stage);
  constexpr std::size_t looked_at = 64;  // the queue's head decides what is needed soon
  for (std::size_t k = 0; k < st.queue.jobs().size() && k < looked_at; ++k)
    add_stages(st.queued.at(st.queue.jobs()[k].id)->spec, 0);
  for (auto& m : soon)
    m = generation_of(self, m);
  if (soon == st.hinted)
    return;
  st.hinted = soon;
  self->send(st.config.ram, hint_atom::value, soon);
  for (auto& d : st.config.devices)
    self->send(d, hint_atom::value, soon);
}

/// Note [Prefetch]: the sooner uses a prefetch for the next job must leave room for on a device: the
/// models of the running job's later stages there (each once, by generation, with its bytes) and the
/// most working memory one of those stages asks for. The device counts what it holds of them already.
struct sooner_uses {
  std::vector<std::pair<model_id, bytes_t>> models;
  bytes_t working = 0;
};

sooner_uses still_needed(self_ptr self, const running_job& run, device_index device) {
  const auto& stages = run.job->spec.stages;
  sooner_uses out;
  for (auto k = run.stage + 1; k < stages.size(); ++k) {
    if (stage_device(stages[k], run.worker) != device)
      continue;
    out.working = std::max(out.working, stages[k].working_bytes);
    for (const auto& m : stages[k].models) {
      bytes_t size = 0;
      for (const auto& [model, bytes] : run.job->order.models)
        if (model == m)
          size = std::max(size, bytes);
      auto id = generation_of(self, m);
      if (std::none_of(out.models.begin(), out.models.end(), [&](const auto& x) { return x.first == id; }))
        out.models.emplace_back(id, size);
    }
  }
  return out;
}

/// A prefetch request went out (or its answer came): a shutdown waits until none is in flight, so that
/// what a prefetch leased is released before the scheduler's destructor returns.
void prefetch_done(self_ptr self) {
  --self->state.prefetches_in_flight;
  answer_shutdown_if_idle(self);
}

/// Note [Prefetch]: brings `models` into RAM, then onto `device` (a GPU), as ordinary cache.
void prefetch(self_ptr self, std::vector<model_id> models, device_index device, int track, sooner_uses sooner = {}) {
  if (models.empty() || self->state.stopping)
    return;
  auto start = clock::now();
  auto ram = self->state.config.ram;
  auto release_lease = [self, ram](lease_id lease) { release(self, ram, lease, nullptr); };
  ++self->state.prefetches_in_flight;
  self->request(ram, caf::infinite, prefetch_atom::value, models)
    .then(
      [self, device, track, start, release_lease, sooner](std::vector<ram_lease>& leases) {
        if (device == cpu_device || self->state.stopping) {
          for (const auto& l : leases)
            release_lease(l.lease);
          prefetch_done(self);
          return;
        }
        auto target = device_for(self, device);
        for (const auto& l : leases) {
          ++self->state.prefetches_in_flight;
          self->request(target, caf::infinite, prefetch_atom::value, l.lease, sooner.models, sooner.working)
            .then(
              [self, target, lease = l.lease, model = l.model, track, start, release_lease](device_pin& pin) {
                trace_span(self, track, "prefetch " + model, "prefetch", start, pin.resident_bytes);
                release(self, target, pin.pin, nullptr);
                release_lease(lease);
                prefetch_done(self);
              },
              [self, lease = l.lease, release_lease](caf::error&) {
                release_lease(lease);
                prefetch_done(self);
              });
        }
        prefetch_done(self);
      },
      [self](caf::error&) { prefetch_done(self); });  // no room without evicting what is needed soon
}

/// Note [Prefetch]: what the worker of `run` will need after its current stage: the job's later stages,
/// then the stages of the job the order would give this worker next. Sooner uses are asked for first, and
/// a tier never evicts a model needed sooner than the one it prefetches.
void prefetch_after(self_ptr self, const running_job& run) {
  auto& st = self->state;
  if (!st.config.options.prefetch)
    return;
  const auto& stages = run.job->spec.stages;
  for (auto k = run.stage + 1; k < stages.size(); ++k)
    prefetch(self, stages[k].models, stage_device(stages[k], run.worker), run.track);
  if (const auto* next = st.queue.peek(run.worker, st.view, st.config.options.order))
    for (const auto& s : st.queued.at(next->id)->spec.stages) {
      auto device = stage_device(s, run.worker);
      prefetch(self, s.models, device, run.track, still_needed(self, run, device));
    }
}

void start_work(self_ptr self, job_id id) {
  auto& run = self->state.running.at(id);
  prefetch_after(self, run);
  run.now = running_job::phase::working;
  run.step_start = clock::now();
  auto stage = run.stage;
  auto work = run.job->spec.stages[stage].work;
  auto device = stage_device(run.job->spec.stages[stage], run.worker);
  auto torch_device = device == cpu_device ? c10::Device(c10::DeviceType::CPU)
                                            : self->state.config.torch_devices.at(static_cast<std::size_t>(device));
  auto leases = run.leases;
  auto pins = run.pins;
  auto stop_flag = run.job->shared->stop_flag;
  auto reply_to = caf::actor_cast<scheduler_actor>(self);
  self->state.config.workers.at(run.worker)->post([=]() mutable {
    std::string error;
    bool told_to_stop = false;
    {
      // Built inside the try: making the stage's device current can fail (a CUDA error left by an
      // earlier kernel), and that must fail the stage, not escape the worker thread.
      std::optional<stage_context> ctx;
      try {
        ctx.emplace(id, stage, device, torch_device, std::move(leases), std::move(pins), stop_flag);
        work(*ctx);
        told_to_stop = ctx->told_to_stop();
      } catch (const std::exception& e) {
        error = e.what();
        if (error.empty())
          error = "the work threw an exception without a message";
      } catch (...) {
        error = "the work threw a non-standard exception";
      }
    }  // the context ends its use of the pins before the scheduler releases them
    caf::anon_send(reply_to, stage_done_atom::value, id, static_cast<std::uint64_t>(stage), std::move(error),
                   told_to_stop);
  });
}

// Note [One stage pins at a time per device]: a stage's leases are all-or-none (acquire_all), but its pins
// are separate requests. Were two stages to pin on one device at once, each could get some of its pins and
// wait for room the other holds, until both time out. So on each device one stage at a time has pin
// requests out; the others wait here, holding their leases. The stage whose turn it is waits only for
// room held by stages that already have all their pins and are working: they release without waiting
// for anything on that device, so no two jobs ever wait on each other.
// A stage that needs no new room (its models resident, no working memory) must not wait behind that turn:
// out of turn, a stage without working memory asks for its pins without waiting. A pin that needs no room,
// or room free at once, is granted; one that would have to wait is refused at once, and then the stage
// lets go of what it got and waits for its turn. A request that never waits cannot be part of a cycle.
void request_pins(self_ptr self, job_id id, bool at_once = false);

void next_pin_turn(self_ptr self, device_index device) {
  auto& st = self->state;
  st.pinning_on.erase(device);
  auto& turns = st.pin_turns[device];
  while (!turns.empty()) {
    auto id = turns.front();
    turns.pop_front();
    auto& run = st.running.at(id);
    if (run.stop) {  // stopped while waiting for its turn: nothing of it is outstanding
      finish(self, id, run.stop);
      continue;
    }
    request_pins(self, id);
    return;
  }
}

void request_pin(self_ptr self, job_id id, std::size_t k);

void on_pinned(self_ptr self, job_id id, std::size_t k, outcome<device_pin> result) {
  auto& run = self->state.running.at(id);
  if (succeeded(result))
    run.pins[k] = std::move(std::get<device_pin>(result));
  else if (run.trying_at_once && std::get<failure>(result).code == errc::budget_exhausted)
    run.refused_at_once = true;
  else if (!run.stop)
    run.stop = std::move(std::get<failure>(result));
  if (succeeded(result) && !run.stop && k + 1 < run.leases.size()) {
    request_pin(self, id, k + 1);  // Note [A stage's pins leave room for the ones after]
    return;
  }
  auto device = stage_device(run.job->spec.stages[run.stage], run.worker);
  bool had_turn = !run.trying_at_once;
  if (run.trying_at_once && run.refused_at_once && !run.stop) {
    // It needed room after all: it lets go of what it got and waits for its turn, leases kept.
    run.trying_at_once = run.refused_at_once = false;
    release_pins(self, run);
    if (self->state.pinning_on.count(device)) {
      run.now = running_job::phase::awaiting_pin_turn;
      self->state.pin_turns[device].push_back(id);
    } else {
      request_pins(self, id);
    }
    return;
  }
  run.trying_at_once = run.refused_at_once = false;
  trace_span(self, run.track, "pin " + stage_name(run), "wait", run.step_start);
  if (run.stop)
    finish(self, id, run.stop);
  else
    start_work(self, id);
  if (had_turn)
    next_pin_turn(self, device);
}

// Note [A stage's pins leave room for the ones after]: a stage pins its models together, and the device
// admits each pin on its own. Were the first pin planned alone, it could take all the room there is (a
// whole copy of its model, where the stage was accepted because each model fits in part) and leave the
// next pin of the same stage waiting for room its own stage holds: until `wait_for_room`, holding the
// device's pin turn, as found by a probe (two 10 MiB models on an 11 MiB device). And two stages of two
// holders (two schedulers, or a stage and a session) could each get a first pin and wait for the room
// the other's holds. So the stage's pins go one after another, in the stage's order: each carries the
// leases of the models after it, and the device admits it only with room beside it for what those could
// still need, and reserves that room for them, held by this pin (device_tier::room_to_leave: a model
// here is counted as it is, what its pin would add, and kept so, never evicted or dropped, until its pin
// comes; where that leaves no room, one here unpinned is counted as if absent instead, which this pin may
// evict: the least a pin of it could need, the whole model or its required tensors and a ring, which no
// eviction can raise; the submit check made sure they fit together). The next pin names it
// (`stage_pins::earlier`) and takes the room: it needs no new room (Note [Admission] rule 1), so it goes
// ahead of any queue, and reserves in turn for the pins after it. A stage of models all here needs
// nothing new at all. So a stage holds, from its first pin, the room for all of its pins, or waits
// holding none; the reservation goes back when the next pin takes it or the pin holding it ends. Only a
// later model counted as it is while being copied can come to need more (its copy fails, or falls back
// to its required tensors after the device ran out of memory): its pin then waits for room like any, at
// worst until `wait_for_room`. Together the stage's pins wait no longer than `wait_for_room`.
void request_pins(self_ptr self, job_id id, bool at_once) {
  auto& run = self->state.running.at(id);
  const auto& stage = run.job->spec.stages[run.stage];
  auto device = stage_device(stage, run.worker);
  if (!at_once)
    self->state.pinning_on[device] = id;
  run.trying_at_once = at_once;
  run.now = running_job::phase::pinning;
  run.pins.assign(run.leases.size(), device_pin{});
  auto wait = self->state.config.options.wait_for_room;
  run.pins_until = waits_forever(wait) ? clock::time_point::max() : clock::now() + wait;
  request_pin(self, id, 0);
}

void request_pin(self_ptr self, job_id id, std::size_t k) {
  auto& run = self->state.running.at(id);
  const auto& stage = run.job->spec.stages[run.stage];
  auto target = device_for(self, stage_device(stage, run.worker));
  // Together the stage's pins wait for room no longer than `wait_for_room`.
  auto wait = caf::timespan{self->state.config.options.wait_for_room};
  if (run.trying_at_once)
    wait = caf::timespan::zero();
  else if (run.pins_until != clock::time_point::max())
    wait = std::max(caf::timespan::zero(), caf::timespan{run.pins_until - clock::now()});
  auto working = k == 0 ? stage.working_bytes : 0;
  stage_pins others;
  others.later.assign(run.leases.begin() + static_cast<std::ptrdiff_t>(k + 1), run.leases.end());
  others.earlier = k > 0 ? run.pins[k - 1].pin : 0;
  self->request(target, caf::infinite, pin_atom::value, run.leases[k].lease, working, wait, std::move(others))
    .then([self, id, k](device_pin& pin) { on_pinned(self, id, k, std::move(pin)); },
          [self, id, k](caf::error& e) { on_pinned(self, id, k, to_failure(e)); });
}

void on_leased(self_ptr self, job_id id, outcome<std::vector<ram_lease>> result) {
  auto& run = self->state.running.at(id);
  trace_span(self, run.track, "acquire " + stage_name(run), "wait", run.step_start);
  if (!succeeded(result)) {
    finish(self, id, run.stop ? run.stop : std::get<failure>(result));
    return;
  }
  run.leases = std::move(std::get<std::vector<ram_lease>>(result));
  if (run.stop) {
    finish(self, id, run.stop);
    return;
  }
  auto device = stage_device(run.job->spec.stages[run.stage], run.worker);
  run.step_start = clock::now();
  if (self->state.pinning_on.count(device)) {
    if (run.job->spec.stages[run.stage].working_bytes == 0) {
      request_pins(self, id, /*at_once=*/true);  // it may need no room: it does not wait behind the turn
      return;
    }
    run.now = running_job::phase::awaiting_pin_turn;
    self->state.pin_turns[device].push_back(id);
    return;
  }
  request_pins(self, id);
}

void begin_stage(self_ptr self, job_id id) {
  auto& run = self->state.running.at(id);
  if (run.stop) {
    finish(self, id, run.stop);
    return;
  }
  auto stage = run.stage;
  run.job->shared->update([&](job_status& s) {
    s.state = job_state::running;
    s.stage = stage;
    s.device = run.worker;
  });
  run.now = running_job::phase::acquiring;
  run.step_start = clock::now();
  send_next_uses(self);
  const auto& models = run.job->spec.stages[stage].models;
  if (models.empty()) {
    start_work(self, id);
    return;
  }
  auto wait = caf::timespan{self->state.config.options.wait_for_room};
  // Tagged with the job's id: a cancel withdraws it from the RAM tier's queue (see stop_job).
  self->request(self->state.config.ram, caf::infinite, acquire_atom::value, models, wait, std::uint64_t{id})
    .then([self, id](std::vector<ram_lease>& leases) { on_leased(self, id, std::move(leases)); },
          [self, id](caf::error& e) { on_leased(self, id, to_failure(e)); });
}

void start_job(self_ptr self, queued_job picked, device_index worker) {
  auto i = self->state.queued.find(picked.id);
  auto job = i->second;
  self->state.queued.erase(i);
  --self->state.idle[worker];
  auto& tracks = self->state.free_tracks[worker];
  running_job run;
  run.job = job;
  run.worker = worker;
  run.track = tracks.back();
  tracks.pop_back();
  auto passed = picked.passed_over;
  job->shared->update([&](job_status& s) { s.passed_over = passed; });
  self->state.running.emplace(picked.id, std::move(run));
  begin_stage(self, picked.id);
}

/// Hands queued jobs to free workers, in the order's choice (Note [Scheduling order]).
void pick_for_free_workers(self_ptr self) {
  auto& st = self->state;
  bool started = true;
  while (started && !st.stopping) {
    started = false;
    for (auto& [device, free] : st.idle) {
      if (free == 0 || !st.queue.has_work_for(device))
        continue;
      if (auto picked = st.queue.pick(device, st.view, st.config.options.order)) {
        check(self);
        start_job(self, std::move(*picked), device);
        started = true;
      }
    }
  }
}

bool has_free_worker_with_work(self_ptr self) {
  for (const auto& [device, free] : self->state.idle)
    if (free > 0 && self->state.queue.has_work_for(device))
      return true;
  return false;
}

/// Gathers where models are now (RAM and every device), then picks. One gathering at a time; a dispatch
/// asked for meanwhile runs after it.
void refresh_then_pick(self_ptr self) {
  auto& st = self->state;
  if (st.refreshing) {
    st.refresh_again = true;
    return;
  }
  st.refreshing = true;
  auto fresh = std::make_shared<residency_view>();
  auto pending = std::make_shared<std::size_t>(1 + st.config.devices.size());
  auto done = [self, fresh, pending] {
    if (--*pending > 0)
      return;
    self->state.view = std::move(*fresh);
    self->state.refreshing = false;
    pick_for_free_workers(self);
    if (std::exchange(self->state.refresh_again, false))
      dispatch(self);
  };
  // The tiers report generations; jobs name registered ids. A retired generation is no one's warm copy.
  auto registered = [models = st.config.models](const model_id& generation) -> std::optional<model_id> {
    return models ? models->registered_id(generation) : std::optional<model_id>{generation};
  };
  self->request(st.config.ram, caf::infinite, residency_atom::value)
    .then([fresh, done, registered](std::vector<model_id>& models) {
            for (const auto& m : models)
              if (auto id = registered(m))
                fresh->in_ram.insert(*id);
            done();
          },
          [done](caf::error&) { done(); });
  for (auto& d : st.config.devices)
    self->request(d, caf::infinite, residency_atom::value)
      .then([fresh, done, registered](residency_report& r) {
              auto& on = fresh->on_device[r.device];
              for (auto& [m, b] : r.models)
                if (auto id = registered(m))
                  on[*id] = b;
              done();
            },
            [done](caf::error&) { done(); });
}

void dispatch(self_ptr self) {
  if (self->state.stopping || !has_free_worker_with_work(self))
    return;
  if (self->state.config.options.order.order == order_options::policy::warm_first)
    refresh_then_pick(self);
  else
    pick_for_free_workers(self);
}

scheduler_actor::behavior_type scheduler_impl(self_ptr self, scheduler_actor_config config) {
  self->state.config = std::move(config);
  for (const auto& [device, count] : self->state.config.worker_count) {
    self->state.idle[device] = count;
    for (std::size_t k = count; k-- > 0;) {
      int track = 0;
      if (auto& t = self->state.config.trace)
        track = t->track((device == cpu_device ? std::string{"cpu"} : "device " + std::to_string(device))
                         + " worker " + std::to_string(k));
      self->state.free_tracks[device].push_back(track);
    }
  }
  return {
    [self](submit_atom, std::shared_ptr<job_submission>& job) {
      auto id = job->order.id;
      if (self->state.stopping) {
        job->shared->update([](job_status& s) {
          s.state = job_state::failed;
          s.error = failure{errc::shutting_down, "the scheduler is shutting down"};
        });
        return;
      }
      auto deadline = job->order.deadline;
      self->state.queued.emplace(id, job);
      self->state.queue.push(job->order);
      check(self);
      send_next_uses(self);
      if (deadline != clock::time_point::max()) {
        auto in = std::max(clock::duration::zero(), deadline - clock::now());
        self->delayed_send(caf::actor_cast<scheduler_actor>(self), in, expire_atom::value, id);
      }
      dispatch(self);
    },
    [self](cancel_atom, std::uint64_t id) {
      stop_job(self, id, failure{errc::cancelled, job_label(self, id) + " was cancelled"});
    },
    [self](expire_atom, std::uint64_t id) {
      stop_job(self, id, failure{errc::deadline_exceeded, job_label(self, id) + " did not end before its deadline"});
    },
    [self](stage_done_atom, std::uint64_t id, std::uint64_t stage, std::string& error, bool told_to_stop) {
      auto& run = self->state.running.at(id);
      trace_span(self, run.track, stage_name(run), "work", run.step_start);
      release_held(self, run);
      if (!error.empty() && !run.stop)
        run.stop = failure{errc::work_failed, "stage " + std::to_string(stage) + " of job " + std::to_string(id)
                                                + " threw: " + error};
      if (error.empty() && !told_to_stop)
        run.stage = stage + 1;  // how many stages finished
      if (run.stage == run.job->spec.stages.size()) {
        // Its last stage finished: the job did all it was asked, so it is done, even if a stop came
        // while that work ran without its knowing (Note [Job lifecycle]).
        finish(self, id, std::nullopt);
        return;
      }
      if (run.stop) {
        finish(self, id, run.stop);
        return;
      }
      begin_stage(self, id);
    },
    [self](shutdown_atom) -> caf::result<bool> {
      self->state.stopping = true;
      std::vector<job_id> queued;
      for (const auto& kv : self->state.queued)
        queued.push_back(kv.first);
      for (auto id : queued)
        finish_queued(self, id, failure{errc::cancelled, "the scheduler is shutting down"});
      std::vector<job_id> running;  // stop_job may end a job (and erase it) at once
      for (const auto& kv : self->state.running)
        running.push_back(kv.first);
      for (auto id : running)
        stop_job(self, id, failure{errc::cancelled, "the scheduler is shutting down"});
      if (self->state.running.empty() && self->state.releases_in_flight == 0 && self->state.prefetches_in_flight == 0)
        return true;
      auto promise = self->make_response_promise<bool>();
      self->state.shutdown_waiters.push_back(promise);
      return promise;
    },
  };
}

} // namespace

scheduler_actor spawn_scheduler(caf::actor_system& sys, scheduler_actor_config config) {
  if (config.torch_devices.size() != config.devices.size())
    throw std::invalid_argument("scheduler: " + std::to_string(config.torch_devices.size()) + " LibTorch devices for "
                                + std::to_string(config.devices.size()) + " device actors");
  return sys.spawn(scheduler_impl, std::move(config));
}

} // namespace mcache
