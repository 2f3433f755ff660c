#pragma once
// One device's tier: a byte budget minus a working-memory reserve, the models resident on the device
// (tensor by tensor), pins with their per-pin working memory, shared copies and a FIFO of pin requests
// waiting for room. CAF-free and single-threaded: the device actor owns one and is its only caller.
//
// Residency of a model on a device (one home for the state machine; `transition()` rejects other moves):
//
//     absent ──admit──▶ copying ──copy ok──▶ resident ──evict / offload (last tensor)──▶ absent
//                        │   ▲                  │
//          copy failed ──┘   └──── top up ──────┘   (an unpinned, partly resident model copies more)
//     (to absent, or back to resident when a top-up fails)
//
//   absent:   nothing on the device.
//   copying:  device bytes are reserved for the tensors being copied on a copy thread; pins join it.
//   resident: some or all of its tensors are on the device. With pins it is locked; without, it is an
//             eviction candidate (lazy offload), trimmed tensor by tensor from the end of its execution
//             order when room is needed.
//
// Who waits and who goes first is Note [Admission] (admission/wait_queue.hpp); how room is made is Note
// [Making room] (admission/make_room.hpp).
//
// Partial residency: when a model does not fit in what the device can free, the tier copies its required
// tensors and then as many others as fit, in execution order (the host model's tensor order), and each pin
// reserves staging buffers (`staging_slots` × the largest tensor that may stream; required tensors never
// stream) as working memory, so the rest
// can be streamed from the RAM copy through them (see `tensor_stream`). `partial_loading = false` turns
// this off: a model that does not fit whole waits or fails.
//
// Device out-of-memory during a copy (the allocator failed although the budget had room: fragmentation,
// another process): the tier frees every unpinned model and retries once, then falls back to the required
// tensors alone (streaming the rest), then fails with the numbers. A failed copy never leaves tensors or
// bytes behind.
//
// The RAM copy is kept while a model is on a device, so dropping device tensors costs no copy back, unless
// the runtime runs with keep_ram_copy = false (Note [Copy back instead of a kept RAM copy], ram_tier.hpp):
// then the RAM tier may hand a model that this tier holds whole over to it (`hand_over`), and this copy
// is the only one. Such a copy is never trimmed in part: evicting or offloading it drops it whole and
// hands it to the actor to copy back (`take_copy_backs`). Every
// pin carries its own RAM lease (taken by the device actor from the RAM tier), which this tier hands back
// through `device_effects::ram_leases_to_release` when the pin, or the request, ends.

#include "messages/grants.hpp"
#include "messages/stats.hpp"
#include "runtime/core/admission/holder_book.hpp"
#include "runtime/core/admission/retirements.hpp"
#include "runtime/core/admission/wait_queue.hpp"
#include "runtime/core/policies/eviction_policy.hpp"
#include "runtime/core/tiers/residency_plan.hpp"
#include "runtime/core/models/host_model.hpp"
#include "runtime/core/outcome.hpp"
#include "runtime/core/tiers/ram_tier.hpp"

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mcache {

class device_backend;

/// More staging slots than this buy no overlap (one slot in use, the rest filling on one copy stream),
/// and their product with a tensor's size must not wrap.
constexpr size_t max_staging_slots = 64;

struct device_tier_options {
  device_index device = 0;
  bytes_t budget_bytes = 0;     // device memory this tier may use, in bytes; must be > 0
  bytes_t reserve_bytes = 0;    // of the budget, kept free for work outside pins, in bytes; < budget
  bool partial_loading = true;  // load what fits and stream the rest when a model does not fit whole
  size_t staging_slots = 2;     // staging buffers per streaming pin (2..max_staging_slots: copies overlap use)
  std::chrono::nanoseconds keep_alive{0};  // Note [Keep-alive] (admission/keep_alive.hpp): for models without their own
  tier_clock clock;                        // null: std::chrono::steady_clock::now
};

/// A pin request as the device actor hands it to the tier, after borrowing a RAM lease for it.
struct pin_request {
  request_id request = 0;
  holder_id holder = 0;
  ram_lease host;                     // the pin's own lease on the host copy
  std::vector<bytes_t> tensor_bytes;  // device bytes of each host tensor, in execution order
  std::vector<bool> required;         // per tensor: must be resident (norms, embeddings)
  bytes_t working_bytes = 0;          // working memory the caller needs on the device while pinned
  std::optional<std::chrono::nanoseconds> keep_alive;  // the model's own (Note [Keep-alive])
  bool prefetch = false;              // never evicts a model with a known next use (Note [Eviction with
                                      // known next uses]); the caller does not let it wait
  // A prefetch: the sooner uses whose room it must leave (the running job's later stages on this device):
  // their models with their bytes, and the most working memory one of them asks for. What of those
  // models is here already needs no room; room is counted only from what could be freed without
  // evicting a model with a known next use.
  std::vector<std::pair<model_id, bytes_t>> sooner;
  bytes_t sooner_working = 0;
  // Note [A stage's pins leave room for the ones after]: the models its caller pins next (a scheduler
  // stage's other models), each with the least a pin of it could need were it absent from the device.
  std::vector<std::pair<model_id, bytes_t>> pins_after;
  pin_id earlier = 0;  // stage_pins::earlier: the holder's pin whose reserved room this one takes
  bytes_t model_bytes() const;
  /// Every tensor as the plan sees it, none on the device yet.
  std::vector<tensor_slot> tensors() const;
};

struct copy_order {
  model_id model;
  std::shared_ptr<const host_model> host;
  std::vector<size_t> tensors;  // indices into host->tensors to copy
};

/// What a step of the tier asks its actor to do.
struct device_effects {
  std::vector<reply<device_pin>> replies;       // answer these requests
  std::vector<copy_order> copies;               // start these copies off the actor thread
  std::vector<lease_id> ram_leases_to_release;  // hand these RAM leases back to the RAM tier
  std::vector<request_id> admitted;             // requests admitted this step (granted now, or when their copy
                                                // lands): Note [Grants wait for the frees before them]
};

enum class device_residency { absent, copying, resident };
const char* to_string(device_residency state);

class device_tier {
public:
  device_tier(device_tier_options options, std::unique_ptr<eviction_policy> policy);

  static std::optional<failure> validate(const device_tier_options& options);

  /// Asks for a pin. Answers at once (hit, too large, no room and `may_wait` false), or joins/starts a
  /// copy, or queues FIFO for room.
  void pin(pin_request request, bool may_wait, device_effects& out);
  /// A copy started by this tier finished: `copy` holds the copied tensors in the order's order, or the
  /// failure (`device_oom` triggers the retry ladder).
  void copy_finished(const model_id& model, outcome<std::shared_ptr<const device_model>> copy,
                     uint64_t copy_ns, device_effects& out);
  /// Ends a pin. Fails (state unchanged) on an unknown pin or another holder's pin.
  std::optional<failure> release(pin_id pin, holder_id holder, device_effects& out);
  /// Frees device memory of unpinned models: from `model` alone (empty: any, in policy order), at least
  /// `bytes`, tensor by tensor from the end of execution order (0: everything). Returns the bytes freed.
  outcome<bytes_t> offload(const model_id& model, bytes_t bytes, device_effects& out);
  void holder_down(holder_id holder, device_effects& out);
  /// The runtime stops: every pin request not answered yet (queued, or waiting for a copy) fails with
  /// `shutting_down` and its RAM lease is handed back (once its copy ends, for a copy in flight). Pins
  /// stay valid until released.
  void shutdown(device_effects& out);
  /// A request's deadline for room passed: if it is still queued it fails with `budget_exhausted` and its
  /// RAM lease is handed back. An admitted request (copy in flight) is served when the copy ends.
  void expire(request_id request, device_effects& out);
  /// Its holder no longer wants the request (a cancelled job): it is answered `why` at once (see
  /// ram_tier::withdraw). Queued for room, it leaves the queue and its RAM lease is handed back. Waiting
  /// for a copy, it gives back its working memory and reservations at once and its RAM lease when the
  /// copy (which reads the host copy) ends; the copy goes on for its other waiters or lands as an
  /// unpinned model. No-op if it was answered already.
  void withdraw(request_id request, failure why, device_effects& out);
  /// Note [Remove and replace] (catalog.hpp): `model` (a generation's id) no longer names a registered
  /// model. Its device copy stays, valid and counted, while pins hold it or a copy for requests made
  /// before is in flight, and is dropped (never copied back to RAM) as soon as nothing does.
  void retire(const model_id& model, device_effects& out);

  /// Note [Keep-alive]: drops (whole) the candidates unused for at least their keep-alive. Returns how many.
  size_t drop_idle(device_effects& out);
  /// Device copies this tier let go of since the last call. Freeing a large copy can take milliseconds
  /// (unmapping memory), so the actor frees them on a worker thread instead of its own.
  std::vector<std::shared_ptr<const device_model>> take_released() { return std::move(released_); }

  // Note [Copy back instead of a kept RAM copy]
  /// The RAM tier dropped its copy of `model`: this tier's copy is the only one. False (nothing changes)
  /// unless the model is resident here whole.
  bool hand_over(const model_id& model);
  /// The RAM tier copies `model` back: the copy to read from, or null unless it is resident here whole.
  /// The RAM will hold it again, so this copy is no longer the only one.
  std::shared_ptr<const device_model> fetch(const model_id& model);
  /// Every model here, with its state, bytes and pins (for operators).
  tier_report report() const;
  /// Models resident here (in part or whole), with their device bytes, sorted.
  std::vector<std::pair<model_id, bytes_t>> resident_models() const;
  /// Models resident here whole (every tensor on the device), sorted.
  std::vector<model_id> whole_models() const;
  /// Only copies this tier let go of since the last call: copy them back to RAM (if it has room) before
  /// freeing them.
  struct copy_back {
    model_id model;
    std::shared_ptr<const device_model> copy;
  };
  std::vector<copy_back> take_copy_backs() { return std::move(copy_backs_); }
  /// Device bytes of the copies let go of since the last call (those `take_released` and
  /// `take_copy_backs` hand out): counted free here already, really free only once the actor frees them.
  bytes_t take_let_go_bytes() { return std::exchange(let_go_, 0); }
  /// What this tier counts free now: its usable bytes less models, copies and reservations.
  bytes_t free_bytes() const { return usable_bytes() - used_; }

  /// Note [Eviction with known next uses]: the models the scheduler will use next, soonest first.
  void set_next_uses(const std::vector<model_id>& soonest_first) { policy_->set_next_uses(soonest_first); }

  device_residency residency(const model_id& model) const;
  /// Device bytes of `model`'s resident tensors (0 when absent).
  bytes_t resident_bytes(const model_id& model) const;
  placement_view placement(const model_id& model) const;
  device_stats stats() const;
  void check_invariants() const;

private:
  struct admitted {
    request_id request;
    holder_id holder;
    ram_lease host;
    bytes_t working_bytes;  // the caller's working memory + staging
    bytes_t staging_bytes;
    bytes_t reserved_after = 0;  // room reserved for the pins after it (Note [A stage's pins leave room ...])
    std::vector<model_id> kept_after;  // models of those pins kept as they are (entry::kept)
  };
  struct entry {
    device_residency state = device_residency::absent;
    std::vector<tensor_slot> tensors;
    bytes_t bytes = 0;  // device bytes of resident + copying tensors
    bytes_t counted_evictable = 0;  // what this entry adds to evictable_ (its bytes while a candidate)
    size_t pins = 0;
    size_t kept = 0;  // kept for a stage's next pin of it, by an earlier pin (Note [A stage's pins ...])
    bool held() const { return pins > 0 || kept > 0; }  // neither evicted nor dropped
    std::shared_ptr<const device_model> view;
    std::shared_ptr<const host_model> host;  // while copying: the source, for an OOM retry
    int oom_attempts = 0;
    bool only_copy = false;  // handed over by the RAM tier: never trimmed in part, copied back when dropped
    std::optional<std::chrono::nanoseconds> keep_alive;  // the model's own (Note [Keep-alive])
    std::chrono::steady_clock::time_point idle_since;    // when it last became a candidate
    std::vector<admitted> waiters;          // pins waiting for the copy in flight
    std::vector<lease_id> orphaned_leases;  // leases of waiters withdrawn mid-copy (or whose holder died):
                                            // the copy still reads the host copy, so they are returned when
                                            // it ends
    bytes_t model_bytes() const;
  };
  struct pin_record {
    model_id model;
    holder_id holder;
    bytes_t working_bytes;
    lease_id ram_lease;
    bytes_t reserved_after = 0;  // room reserved for the stage's next pin, until it takes it or this ends
    std::vector<model_id> kept_after;  // and the later models kept as they are (entry::kept)
  };

  /// A copy of `old` listing `n` tensors (names from `host` when given); tensors past old's end undefined.
  static std::shared_ptr<const device_model> with_tensors(const std::shared_ptr<const device_model>& old, size_t n,
                                                          const host_model* host);
  void transition(const model_id& model, device_residency to);
  void update_candidacy(const model_id& model);
  std::optional<residency_plan> plan_for(const entry& e, bytes_t working, bytes_t room) const;
  bytes_t staging_for(const entry& e, const std::vector<size_t>& also_resident) const;
  std::optional<residency_plan> admission_plan(const entry& e, bool present, bytes_t working, bytes_t room) const;
  bool needs_room(const pin_request& r) const;
  /// Note [A stage's pins leave room for the ones after]: the room `r` leaves for the pins after it, with
  /// the later models it keeps as they are (all of those here, or only those pinned or being copied, the
  /// others counted as if absent) and their evictable bytes; and the room its earlier pin reserved for it.
  struct later_pins {
    bytes_t leave = 0;
    std::vector<model_id> kept;
    bytes_t kept_evictable = 0;
  };
  later_pins room_to_leave(const pin_request& r, bool all_as_they_are) const;
  /// Whether `r` names an earlier pin of its holder (not ended) whose reservation it takes.
  bool has_earlier(const pin_request& r) const;
  bytes_t reserved_for(const pin_request& r) const;
  /// Gives back reserved working memory (and room reserved for later pins).
  void unreserve(bytes_t bytes);
  /// Ends the keeping of `models` (entry::kept) for a stage's later pins.
  void unkeep(const std::vector<model_id>& models);
  /// After a pin or a keep of `model` ended: a resident entry no longer held with nothing on the device
  /// goes; any other is an eviction candidate or not as it now is.
  void settle(const model_id& model);
  bool try_admit(const pin_request& r, device_effects& out);
  device_pin grant(const model_id& model, const admitted& a);
  void start_copy(const model_id& model, entry& e, const std::vector<size_t>& tensors,
                  std::shared_ptr<const host_model> host, device_effects& out);
  void serve_queue(device_effects& out);
  /// Drops an unpinned resident model whole and never copies it back to RAM (idle past its keep-alive, or
  /// retired), unlike an eviction of an only copy.
  void discard(const model_id& model);
  /// Drops the watched retired models nothing pins any more (see retirements).
  void drop_retired();
  bytes_t trim(const model_id& model, bytes_t wanted);
  /// Drops the resident tensors `dropped` of `model`, leaving it resident (with 0 bytes, if those were all).
  bytes_t drop_tensors(const model_id& model, const std::vector<size_t>& dropped);
  bool make_room_for(bytes_t need, const model_id& excluded, bool prefetch = false);
  void drop_copying(entry& e);
  void fail_request(const admitted& a, failure why, device_effects& out);
  template <class Which>
  void withdraw(const failure& why, Which which, device_effects& out);
  failure no_room(const pin_request& r, size_t queued_ahead) const;
  bytes_t usable_bytes() const { return options_.budget_bytes - options_.reserve_bytes; }
  /// Candidates' bytes, without those of `excluded` (the model being admitted is never its own victim).
  bytes_t evictable_bytes(const model_id& excluded = {}) const;
  /// What a prefetch could free: evictable bytes of models with no known next use, `excluded` aside.
  bytes_t evictable_without_next_use(const model_id& excluded) const;

  device_tier_options options_;
  std::unique_ptr<eviction_policy> policy_;
  std::map<model_id, entry> entries_;
  holder_book<pin_record> pins_{"pin", errc::invalid_pin, errc::foreign_pin};
  wait_queue<pin_request> queue_;  // pin requests waiting for room (Note [Admission])
  bytes_t used_ = 0;              // entry bytes + working_reserved_
  bytes_t evictable_ = 0;         // bytes of the eviction candidates: a running sum
  bytes_t working_reserved_ = 0;  // working memory of pins and of admitted requests
  retirements retirements_;  // Note [Remove and replace]
  device_stats counters_;
  std::vector<std::shared_ptr<const device_model>> released_;  // see take_released()
  std::vector<copy_back> copy_backs_;                            // see take_copy_backs()
  bytes_t let_go_ = 0;                                           // see take_let_go_bytes()
};

} // namespace mcache
