#pragma once
// Drives a device_tier like its actor does, for the device tier's tests (device_tier_test.cpp,
// device_tier_admission_test.cpp), and checks its invariants after every step.

#include "runtime/core/tiers/device_tier.hpp"

#include "support/answer_book.hpp"
#include "support/catch.hpp"

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace mcache::test {

/// Drives a device_tier like its actor does; RAM leases are faked with increasing ids.
struct device_harness : test::answer_book<device_pin> {
  explicit device_harness(bytes_t budget, bytes_t reserve = 0, bool partial = true)
    : tier({0, budget, reserve, partial, 2}, make_lru_policy()) {}

  /// A pin request for model `m` made of `tensors` (bytes each; default: one tensor of `bytes`).
  pin_request request(const model_id& m, bytes_t bytes, holder_id h, bytes_t working = 0,
                      std::vector<bytes_t> tensors = {}, std::vector<bool> required = {}) {
    pin_request r;
    r.request = next_request++;
    r.holder = h;
    r.tensor_bytes = tensors.empty() ? std::vector<bytes_t>{bytes} : tensors;
    // The tier weighs tensors by tensor_bytes; the host copy only has to list as many.
    auto host = std::make_shared<host_model>();
    host->id = m;
    for (size_t k = 0; k < r.tensor_bytes.size(); ++k)
      host->tensors.push_back({"t" + std::to_string(k), at::zeros({1})});
    r.host = ram_lease{next_lease++, m, bytes, host};
    leases_out.insert(r.host.lease);
    lease_of[r.request] = r.host.lease;
    r.required = required;
    r.working_bytes = working;
    return r;
  }
  request_id submit(pin_request r, bool may_wait) {
    auto id = r.request;
    device_effects fx;
    tier.pin(std::move(r), may_wait, fx);
    absorb(fx);
    return id;
  }
  request_id pin(const model_id& m, bytes_t bytes, holder_id h, bytes_t working = 0, bool may_wait = true,
                 std::vector<bytes_t> tensors = {}, std::vector<bool> required = {}) {
    return submit(request(m, bytes, h, working, std::move(tensors), std::move(required)), may_wait);
  }
  /// A prefetch of `m` (it never waits), leaving room for the `sooner` uses.
  request_id prefetch(const model_id& m, bytes_t bytes, holder_id h, std::vector<std::pair<model_id, bytes_t>> sooner = {}) {
    auto r = request(m, bytes, h);
    r.prefetch = true;
    r.sooner = std::move(sooner);
    return submit(std::move(r), /*may_wait=*/false);
  }
  void finish_copy(const model_id& m) {
    device_effects fx;
    auto copy = std::make_shared<device_model>();
    for (size_t k = 0; k < last_order.at(m).size(); ++k)
      copy->tensors.push_back({"t", at::zeros({1})});
    tier.copy_finished(m, std::shared_ptr<const device_model>(copy), 1000, fx);
    absorb(fx);
  }
  void fail_copy(const model_id& m, errc code = errc::copy_failed) {
    device_effects fx;
    tier.copy_finished(m, failure{code, "injected"}, 0, fx);
    absorb(fx);
  }
  /// Pin and, when it starts a copy, finish it: the pin id.
  pin_id pinned(const model_id& m, bytes_t bytes, holder_id h, bytes_t working = 0) {
    auto r = pin(m, bytes, h, working);
    if (!answers.count(r))
      finish_copy(m);
    REQUIRE(granted(r));
    return std::get<device_pin>(answers.at(r)).pin;
  }
  /// Pins `m` (made of `tensors`), lets its copy land and releases the pin: resident and unpinned.
  void cached(const model_id& m, std::vector<bytes_t> tensors) {
    bytes_t bytes = 0;
    for (auto b : tensors)
      bytes += b;
    auto r = pin(m, bytes, alice, 0, true, tensors);
    finish_copy(m);
    REQUIRE(granted(r));
    release(std::get<device_pin>(answers.at(r)).pin, alice);
  }
  std::optional<failure> release(pin_id p, holder_id h) {
    device_effects fx;
    auto err = tier.release(p, h, fx);
    absorb(fx);
    return err;
  }
  outcome<bytes_t> offload(const model_id& m, bytes_t bytes) {
    device_effects fx;
    auto r = tier.offload(m, bytes, fx);
    absorb(fx);
    return r;
  }
  void expire(request_id r) {
    device_effects fx;
    tier.expire(r, fx);
    absorb(fx);
  }
  void retire(const model_id& m) {
    device_effects fx;
    tier.retire(m, fx);
    absorb(fx);
  }
  void withdraw(request_id r) {
    device_effects fx;
    tier.withdraw(r, failure{errc::cancelled, "withdrawn"}, fx);
    absorb(fx);
  }

  void absorb(device_effects& fx) {
    record(fx.replies);
    for (auto& c : fx.copies) {
      copies_started.push_back(c.model);
      last_order[c.model] = c.tensors;
    }
    for (auto l : fx.ram_leases_to_release) {
      REQUIRE(leases_out.count(l) == 1);  // every RAM lease comes back exactly once
      leases_out.erase(l);
    }
    tier.check_invariants();
  }

  device_tier tier;
  request_id next_request = 1;
  lease_id next_lease = 1000;
  std::set<lease_id> leases_out;  // RAM leases the tier still holds
  std::map<request_id, lease_id> lease_of;  // each pin request's RAM lease
  std::vector<model_id> copies_started;
  std::map<model_id, std::vector<size_t>> last_order;  // the tensors of each model's latest copy
};


} // namespace mcache::test
