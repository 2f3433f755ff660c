#pragma once
// Drives a ram_tier like its actor does, for the RAM tier's tests (ram_tier_test.cpp,
// ram_tier_copy_back_test.cpp), and checks its invariants after every step.

#include "runtime/core/tiers/ram_tier.hpp"

#include "support/answer_book.hpp"
#include "support/catch.hpp"

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mcache::test {

/// One tier, its answers, and what it asked its actor to do.
struct ram_harness : test::answer_book<ram_lease> {
  explicit ram_harness(bytes_t budget, bool keep_ram_copy = true)
    : tier({budget, keep_ram_copy}, make_lru_policy()) {}

  request_id acquire(const model_descriptor& d, holder_id h, bool may_wait = true) {
    auto id = next++;
    descriptors[d.id] = d;
    ram_effects fx;
    tier.acquire(id, std::make_shared<const model_descriptor>(d), h, may_wait, fx);
    absorb(fx);
    return id;
  }
  void finish_load(const model_id& m) {
    ram_effects fx;
    tier.load_finished(m, descriptors.at(m).loader(descriptors.at(m)), 1000, fx);
    absorb(fx);
  }
  void fail_load(const model_id& m, std::string why) {
    ram_effects fx;
    tier.load_finished(m, failure{errc::load_failed, std::move(why)}, 0, fx);
    absorb(fx);
  }
  /// Its loader stopped: nobody waited for it (Note [An abandoned load stops]).
  void stop_load(const model_id& m) {
    ram_effects fx;
    tier.load_stopped(m, fx);
    absorb(fx);
  }
  /// Acquire and, when it starts a load, finish it: the lease id.
  lease_id lease(const model_descriptor& d, holder_id h) {
    auto r = acquire(d, h);
    if (!answers.count(r))
      finish_load(d.id);
    REQUIRE(answers.count(r));
    REQUIRE(succeeded(answers.at(r)));
    return std::get<ram_lease>(answers.at(r)).lease;
  }
  std::optional<failure> release(lease_id l, holder_id h) {
    ram_effects fx;
    auto err = tier.release(l, h, fx);
    absorb(fx);
    return err;
  }
  void expire(request_id r) {
    ram_effects fx;
    tier.expire(r, fx);
    absorb(fx);
  }
  void retire(const model_id& m) {
    ram_effects fx;
    tier.retire(m, fx);
    absorb(fx);
  }
  void withdraw(request_id r) {
    ram_effects fx;
    tier.withdraw(r, failure{errc::cancelled, "withdrawn"}, fx);
    absorb(fx);
  }

  /// A copy back from a device ends: the device's copy (tensors only) or a failure.
  void finish_copy_back(const model_id& m, bool ok = true) {
    ram_effects fx;
    outcome<std::shared_ptr<const host_model>> copy = failure{errc::load_failed, "no longer on the device"};
    if (ok)
      copy = std::shared_ptr<const host_model>(std::make_shared<host_model>());  // fake models: opaque only
    tier.load_finished(m, std::move(copy), 1000, fx, load_source::device, /*from=*/0);
    absorb(fx);
  }
  void device_gone(device_index d) {
    ram_effects fx;
    tier.device_gone(d, fx);
    absorb(fx);
  }
  /// Leases `d`, releases it, and reports that device 0 holds it whole.
  void resident_on_device(const model_descriptor& d) {
    REQUIRE_FALSE(release(lease(d, alice), alice));
    tier.device_copy(d.id, 0, true);
  }
  /// `d` leaves RAM while device 0 holds it whole (`other`, as large, takes its place and is released), and
  /// alice acquires `d` again: the request, waiting for the copy back from device 0.
  request_id acquire_handed_over(const model_descriptor& d, const model_descriptor& other) {
    resident_on_device(d);
    REQUIRE_FALSE(release(lease(other, bob), bob));
    return acquire(d, alice);
  }
  /// After `acquire_handed_over(d, other)` saw its copy back fail: the acquire `r` is not failed but waits
  /// for `d` read from the disk again, and is granted when that load ends.
  void expect_served_from_disk(request_id r, const model_descriptor& d, const model_descriptor& other) {
    CHECK_FALSE(answered(r));
    CHECK(loads_started == std::vector<model_id>{d.id, other.id, d.id});
    finish_load(d.id);
    CHECK(granted(r));
    CHECK(tier.stats().load_failures == 0);
  }
  /// `d` leaves RAM while device 0 holds it whole (`other`, as large, takes its place), then `other` is
  /// trimmed: RAM is free, and device 0 has the only copy of `d`.
  void handed_over_with_free_room(const model_descriptor& d, const model_descriptor& other) {
    resident_on_device(d);
    REQUIRE_FALSE(release(lease(other, bob), bob));
    ram_effects fx;
    REQUIRE(succeeded(tier.trim(other.id, 0, fx)));
    absorb(fx);
  }

  void absorb(ram_effects& fx) {
    record(fx.replies);
    for (auto& d : fx.loads)
      loads_started.push_back(d->id);
    for (auto& f : fx.fetches)
      fetches_started.push_back(f.model);
    for (auto& h : tier.take_hand_overs())
      hand_overs.push_back(h.model);
    tier.check_invariants();
  }

  ram_tier tier;
  request_id next = 1;
  std::map<model_id, model_descriptor> descriptors;
  std::vector<model_id> loads_started;
  std::vector<model_id> fetches_started;  // copies back from a device
  std::vector<model_id> hand_overs;
};

/// The same for acquire_all, whose answers it records apart from the single acquires'.
struct group_harness : ram_harness, test::answer_book<std::vector<ram_lease>> {
  using ram_harness::ram_harness;
  using test_answers = test::answer_book<std::vector<ram_lease>>;
  request_id acquire_all(const std::vector<model_descriptor>& ds, holder_id h, bool may_wait = true) {
    auto id = next++;
    for (const auto& d : ds)
      descriptors[d.id] = d;
    ram_effects fx;
    std::vector<descriptor_ptr> shared;
    for (const auto& d : ds)
      shared.push_back(std::make_shared<const model_descriptor>(d));
    tier.acquire_all(id, shared, h, may_wait, fx);
    test_answers::record(fx.group_replies);
    absorb(fx);
    return id;
  }
  void finish(const model_id& m) {
    ram_effects fx;
    tier.load_finished(m, descriptors.at(m).loader(descriptors.at(m)), 1000, fx);
    test_answers::record(fx.group_replies);
    absorb(fx);
  }
  std::optional<failure> release(lease_id l, holder_id h) {
    ram_effects fx;
    auto err = tier.release(l, h, fx);
    test_answers::record(fx.group_replies);
    absorb(fx);
    return err;
  }
  void withdraw(request_id r) {
    ram_effects fx;
    tier.withdraw(r, failure{errc::cancelled, "withdrawn"}, fx);
    test_answers::record(fx.group_replies);
    absorb(fx);
  }
  bool group_granted(request_id r) const { return test_answers::granted(r); }
  bool group_answered(request_id r) const { return test_answers::answered(r); }
};

} // namespace mcache::test
