#pragma once
// The host (RAM) tier: a byte-exact budget over loaded models, leases, shared loads and a FIFO of requests
// waiting for room. CAF-free and single-threaded: the RAM-cache actor owns one and is its only caller.
//
// Residency of a model in RAM (one home for the state machine; `transition()` rejects any other move):
//
//     absent ──admit──▶ loading ──load ok──▶ resident ──evict──▶ absent
//                          │
//                          └──load failed──▶ absent
//
//   absent:   no entry; the model costs nothing.
//   loading:  its bytes are reserved and a load runs on a loader thread; acquires join it (one load each).
//   resident: its host copy is in RAM. With leases it is held; without, it is an eviction candidate.
//
// Who waits and who goes first is Note [Admission] (admission/wait_queue.hpp); how room is made is Note
// [Making room] (admission/make_room.hpp).
//
// A lease is held by one holder (a session). A device pin borrows its own lease (see `share`), so a
// model stays in RAM while a device uses it even if the session's lease is released first.
//
// Note [Copy back instead of a kept RAM copy]: with `keep_ram_copy = false` (for machines whose RAM is
// tighter than their VRAM) a model that a device holds whole is not lost when the RAM tier evicts it:
//   - devices report which models they hold whole (`device_copy`);
//   - evicting such a model from RAM hands it over to one of them (`take_hand_overs`): that device's
//     copy becomes the only one, and the tier keeps the model's non-tensor part (the "skeleton");
//   - so eviction takes such models before the others that have no known next use (Note [Cheap to get
//     back goes first], eviction_policy.hpp);
//   - an acquire of a handed-over model copies it back from that device (`ram_effects::fetches`) instead
//     of reading the disk; if the device no longer has it, the tier falls back to the disk;
//   - when the device evicts or offloads its copy, it first asks for room here (`reserve_return`) and, if
//     granted, copies the model back into RAM on its copy stream before freeing it; if refused (no free
//     room, or requests are waiting for room and the first of them does not need this model) the copy is
//     dropped and the next acquire reads the disk.
//   - the skeleton keeps the model's non-tensor payload (`host_model::opaque`, a tokenizer say) in RAM
//     while the device holds the tensors: that memory is outside the budget (the budget counts models
//     in RAM), and the stats say how much it is (`ram_stats::skeleton_bytes`);
//   - a device whose actor goes away (`device_gone`) takes its copies with it: its hand-overs are
//     forgotten, and acquires waiting for a copy back from it read the disk; a copy back from it that
//     still arrives is dropped.
// A copy back is a load like any other (state `loading`, its bytes reserved): acquires join it. Every
// race between the tiers' messages ends in a disk read at worst, never in a lost or doubled byte.

#include "messages/grants.hpp"
#include "messages/stats.hpp"
#include "runtime/core/admission/holder_book.hpp"
#include "runtime/core/admission/keep_alive.hpp"
#include "runtime/core/admission/retirements.hpp"
#include "runtime/core/admission/wait_queue.hpp"
#include "runtime/core/models/catalog.hpp"
#include "runtime/core/policies/eviction_policy.hpp"
#include "runtime/core/outcome.hpp"

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <unordered_map>
#include <vector>

namespace mcache {

struct ram_tier_options {
  bytes_t budget_bytes = 0;  // RAM budget for model host copies, in bytes; must be > 0
  bool keep_ram_copy = true; // false: Note [Copy back instead of a kept RAM copy]
  std::chrono::nanoseconds keep_alive{0};  // Note [Keep-alive]: the default for models without their own
  tier_clock clock;                        // null: std::chrono::steady_clock::now
};

/// A model and a device that holds it (Note [Copy back instead of a kept RAM copy]).
struct device_copy_ref {
  model_id model;
  device_index device = 0;
};

/// Where a finished load's bytes came from.
enum class load_source { disk, device };

/// What a step of the tier asks its actor to do.
struct ram_effects {
  std::vector<reply<ram_lease>> replies;                     // answer these single acquires
  std::vector<reply<std::vector<ram_lease>>> group_replies;  // answer these acquire_all requests
  std::vector<descriptor_ptr> loads;                         // start these loads off the actor thread
  std::vector<device_copy_ref> fetches;                      // copy these back from a device instead
};

enum class ram_residency { absent, loading, resident };
const char* to_string(ram_residency state);

class ram_tier {
public:
  ram_tier(ram_tier_options options, std::unique_ptr<eviction_policy> policy);

  /// Options are usable: a budget of at least one byte.
  static std::optional<failure> validate(const ram_tier_options& options);

  /// Asks for a lease on `model` for `holder`. Answers at once (hit, too large, or no room and `may_wait`
  /// is false), or joins/starts a load, or queues FIFO for room. A held request is answered by a later
  /// step, or by `expire`.
  ///
  /// `checking`: the caller is prechecking the request's absent models off the actor thread (a file that
  /// changed would fail its load, and a doomed load must evict nothing). The request then takes its place
  /// in the FIFO at once, as it arrived, but is not admitted before `precheck_finished` says the check
  /// passed; its deadline runs from its arrival.
  void acquire(request_id request, descriptor_ptr model, holder_id holder, bool may_wait,
               ram_effects& out, bool checking = false);
  /// Leases every model of `models` together, or none: the request is admitted only when room for all
  /// of its absent models can be made at once (its members are never evicted for each other), so a
  /// pipeline that needs several models never holds some while waiting for room for the others, and two
  /// such pipelines cannot deadlock. Answered in `group_replies`, leases in the order of `models`.
  void acquire_all(request_id request, std::vector<descriptor_ptr> models, holder_id holder,
                   bool may_wait, ram_effects& out, bool checking = false);
  /// A prefetch: acquire_all that never waits and never evicts a model with a known next use (Note
  /// [Eviction with known next uses]); refused when that leaves no room.
  void prefetch(request_id request, std::vector<descriptor_ptr> models, holder_id holder, ram_effects& out,
                bool checking = false);
  /// Note [Eviction with known next uses]: the models the scheduler will use next, soonest first.
  void set_next_uses(const std::vector<model_id>& soonest_first) { policy_->set_next_uses(soonest_first); }
  /// The precheck of a `checking` request ended: `failed` fails it (nothing was evicted for it); else it
  /// may be admitted in its turn. No-op if the request was answered meanwhile (expired, holder gone).
  void precheck_finished(request_id request, std::optional<failure> failed, ram_effects& out);
  /// A load started by this tier finished (`payload` is the model or the loader's failure). A copy back
  /// from a device (`source` device, device `from`) carries the tensors only; the tier adds the model's
  /// non-tensor part. A failed copy back falls back to a disk load when acquires wait for it.
  void load_finished(const model_id& model, outcome<std::shared_ptr<const host_model>> payload,
                     uint64_t load_ns, ram_effects& out, load_source source = load_source::disk,
                     device_index from = 0);
  /// Note [An abandoned load stops] (catalog.hpp): is an acquire waiting for the load of `model` in flight,
  /// or queued for room and in need of it? False for a model not loading.
  bool awaited(const model_id& model) const;
  /// The disk load of `model` stopped because nobody waited for it. If an acquire joined it since, it is
  /// started again (its bytes stay reserved); else the model is absent again and its bytes are free.
  void load_stopped(const model_id& model, ram_effects& out);
  /// A device reports whether it holds all of `model`'s tensors (only with keep_ram_copy = false).
  void device_copy(const model_id& model, device_index device, bool whole);
  /// `device` is about to drop the only copy of `model`: true reserves room (the model is then loading,
  /// and the copy back ends in `load_finished`); false means drop it. Granted only from free room, when no
  /// request is waiting for room or the one at the head of the queue needs `model` (a copy back never goes
  /// ahead of a request that does not need it, and never evicts anything).
  bool reserve_return(const model_id& model, device_index device);
  /// `device`'s actor went away: it holds nothing any more (see the Note). Acquires waiting for a copy back
  /// from it are served from the disk; a late copy back from it (`load_finished` from `device`) is dropped.
  void device_gone(device_index device, ram_effects& out);
  /// Models this tier evicted whose only copy is now on a device: the actor tells those devices.
  std::vector<device_copy_ref> take_hand_overs() { return std::move(hand_overs_); }
  /// Ends a lease. Fails (state unchanged) on an unknown lease or another holder's lease.
  std::optional<failure> release(lease_id lease, holder_id holder, ram_effects& out);
  /// Issues a second lease on the model of `lease` (held by `owner`) to `borrower`: a device pin uses it to
  /// keep the host copy alive for as long as the pin lasts.
  outcome<ram_lease> share(lease_id lease, holder_id owner, holder_id borrower);
  /// Note [Keep-alive]: drops the candidates unused for at least their keep-alive. Returns how many.
  size_t drop_idle(ram_effects& out);
  /// Drops unleased resident models: `model` alone (empty: any, in policy order) until at least `bytes` are
  /// freed (0: all it can). Returns the bytes freed; requests waiting for room are served after.
  outcome<bytes_t> trim(const model_id& model, bytes_t bytes, ram_effects& out);
  /// A holder went away: its leases are released and its held requests answered with `shutting_down`.
  void holder_down(holder_id holder, ram_effects& out);
  /// A request's deadline for room passed: if it is still queued for room it fails with
  /// `budget_exhausted`. A request already admitted (its load in flight) is served when the load ends, so
  /// a deadline bounds the wait for room, never a load. No-op if it was answered already.
  void expire(request_id request, ram_effects& out);
  /// Its holder no longer wants the request (a cancelled job): it is answered `why` at once. Queued for
  /// room, it leaves the queue, so the requests behind it are served without waiting for its deadline
  /// (the queue is FIFO: a cancelled request at its head would hold up everyone). Admitted and waiting
  /// for loads, it gives back the leases it was granted and leaves those loads, which go on for their
  /// other waiters or land as unleased models. No-op if it was answered already.
  void withdraw(request_id request, failure why, ram_effects& out);
  /// The runtime stops: every request not answered yet (queued, or waiting for a load) fails with
  /// `shutting_down`. Leases stay valid until released; loads in flight, which nobody waits for now, stop
  /// if their loaders ask (Note [An abandoned load stops]) or land unleased.
  void shutdown(ram_effects& out);
  /// Note [Remove and replace] (catalog.hpp): `model` (a generation's id) no longer names a registered
  /// model. Its host copy stays, valid and counted, while leases hold it or a load for requests made
  /// before is in flight, and is dropped as soon as nothing does; it is never handed over to a device.
  void retire(const model_id& model, ram_effects& out);

  /// Host copies this tier let go of since the last call (evicted or trimmed). Freeing gigabytes takes
  /// milliseconds, so the actor frees them on a worker thread instead of its own.
  std::vector<std::shared_ptr<const host_model>> take_released() { return std::move(released_); }

  ram_residency residency(const model_id& model) const;
  /// Models resident now (not loading), sorted.
  std::vector<model_id> resident_models() const;
  /// Every model here, with its state, bytes and leases (for operators).
  tier_report report() const;
  size_t leases_of(holder_id holder) const;
  ram_stats stats() const;
  /// Throws std::logic_error naming the first broken invariant.
  void check_invariants() const;

private:
  /// An acquire not answered yet: queued for room (not admitted), or admitted and waiting for loads.
  struct group {
    group(holder_id h, std::vector<descriptor_ptr> ms, bool one, bool wait, bool check)
      : holder(h), models(std::move(ms)), single(one), may_wait(wait), checking(check) {}
    holder_id holder = 0;
    std::vector<descriptor_ptr> models;
    bool single = true;               // answered in `replies` with one lease, else in `group_replies`
    bool may_wait = true;
    bool checking = false;            // queued, but its precheck has not passed yet: not admissible
    bool prefetch = false;            // evicts no model with a known next use
    bool admitted = false;
    std::vector<ram_lease> granted;   // per model, once admitted (lease 0: still loading)
    size_t pending = 0;               // loads still to finish before it is answered
  };
  struct entry {
    descriptor_ptr descriptor;
    ram_residency state = ram_residency::absent;
    std::shared_ptr<const host_model> payload;
    size_t leases = 0;
    std::vector<request_id> waiters;  // admitted groups sharing the load in flight
    std::chrono::steady_clock::time_point idle_since;  // when it last became a candidate
  };
  struct lease_record {
    model_id model;
    holder_id holder;
  };
  struct waiting {
    request_id request;
    holder_id holder;
  };

  void transition(const model_id& model, ram_residency to);
  void update_candidacy(const model_id& model);
  void start(request_id request, group g, ram_effects& out);
  bool try_admit(request_id request, ram_effects& out);
  bool is_member(const group& g, const model_id& model) const;
  void answer(request_id request, ram_effects& out);
  void fail_group(request_id request, failure why, ram_effects& out);
  ram_lease grant(entry& e, holder_id holder);
  void drop_lease(lease_id lease);
  void serve_queue(ram_effects& out);
  void evict(const model_id& model);
  void let_go(const model_id& model);
  void mark_restorable(const model_id& model);
  /// Drops the watched retired models nothing holds any more (see retirements).
  void drop_retired();
  bool make_room_for(const group& g, bytes_t bytes);
  failure no_room(const group& g, size_t queued_ahead) const;
  bytes_t free_bytes() const { return options_.budget_bytes - used_; }

  ram_tier_options options_;
  std::unique_ptr<eviction_policy> policy_;
  std::map<model_id, entry> entries_;
  holder_book<lease_record> leases_{"lease", errc::invalid_lease, errc::foreign_lease};
  std::map<request_id, group> groups_;  // every acquire not answered yet
  wait_queue<waiting> queue_;           // of those, the ones waiting for room (Note [Admission])
  std::set<model_id> loaded_before_;  // models loaded at least once, to count reloads after eviction
  retirements retirements_;  // Note [Remove and replace]
  bytes_t used_ = 0;
  bytes_t evictable_ = 0;  // bytes of the eviction candidates (resident, unleased): a running sum
  std::vector<std::shared_ptr<const host_model>> released_;  // see take_released()
  // Note [Copy back instead of a kept RAM copy]
  struct handed_over {
    device_index device = 0;
    descriptor_ptr descriptor;
    std::shared_ptr<const host_model> skeleton;  // the model without its tensors (its opaque part)
  };
  std::map<model_id, std::set<device_index>> whole_on_;  // devices that reported holding a model whole
  std::map<model_id, handed_over> handed_;               // evicted here, its only copy on a device
  std::vector<device_copy_ref> hand_overs_;              // see take_hand_overs()
  std::set<device_index> gone_devices_;                  // see device_gone()
  ram_stats counters_;  // the cumulative counters; levels are computed in stats()
};

} // namespace mcache
