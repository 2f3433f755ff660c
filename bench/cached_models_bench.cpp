// Does a pin cost more when many models are cached? One cycle = acquire + pin + release pin + release lease
// of a model resident in RAM and on the device, measured with few (the baseline) and many other unpinned
// models cached on the same device, in the same run. Two levels:
//   tiers     the RAM and device tiers driven directly (no actors): the admission work alone
//   session   the blocking session API through the actors (what an embedding server sees)
// Prints the median cycle for each count and the ratio to the baseline count (target: <= 2x at 10,000).
//
//   cached_models_bench [--few N] [--many N] [--cycles N]

#include "runtime/core/tiers/device_tier.hpp"
#include "runtime/core/tiers/ram_tier.hpp"
#include "runtime/runtime.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

using namespace mcache;
using clock_type = std::chrono::steady_clock;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double ns_since(clock_type::time_point t) {
  return std::chrono::duration<double, std::nano>(clock_type::now() - t).count();
}

std::string name_of(size_t i) { return "cached/model-" + std::to_string(i); }

/// Median ns of a tier-level cycle with `cached` other models resident and unpinned on the device.
double tier_cycle_ns(size_t cached, size_t cycles) {
  constexpr bytes_t model_bytes = 64;
  ram_tier ram{{bytes_t{1} << 40}, make_lru_policy()};
  device_tier device{{0, bytes_t{1} << 40, 0, true, 2}, make_lru_policy()};
  // One 64-byte tensor per model; the device copy is a tensor of the same size.
  auto host = std::make_shared<host_model>();
  host->tensors.push_back({"w", at::zeros({16})});
  auto on_device = std::make_shared<device_model>();
  on_device->tensors.push_back({"w", at::zeros({16})});
  auto descriptor_of = [&](size_t i) {
    auto d = std::make_shared<model_descriptor>();
    d->id = name_of(i);
    d->bytes = model_bytes;
    return d;
  };
  request_id next = 1;
  holder_id session = 7;
  // Returns the lease and, when `pin`, the pin of model i (loads and copies finish at once).
  auto cycle = [&](size_t i, bool release) {
    ram_effects rfx;
    auto d = descriptor_of(i);
    ram.acquire(next++, d, session, false, rfx);
    if (!rfx.loads.empty()) {
      auto h = std::make_shared<host_model>(*host);
      h->id = d->id;
      ram.load_finished(d->id, std::shared_ptr<const host_model>(h), 0, rfx);
    }
    auto lease = std::get<ram_lease>(rfx.replies.back().result);
    device_effects dfx;
    pin_request r;
    r.request = next++;
    r.holder = session;
    r.host = lease;
    r.tensor_bytes = {model_bytes};
    device.pin(std::move(r), false, dfx);
    if (!dfx.copies.empty())
      device.copy_finished(d->id, std::shared_ptr<const device_model>(on_device), 0, dfx);
    auto pin = std::get<device_pin>(dfx.replies.back().result);
    if (release) {
      device.release(pin.pin, session, dfx);
      ram.release(lease.lease, session, rfx);
    }
    (void)device.take_released();
    (void)ram.take_released();
  };
  for (size_t i = 1; i <= cached; ++i)
    cycle(i, true);
  cycle(0, true);
  std::vector<double> ns;
  for (size_t k = 0; k < cycles; ++k) {
    auto t = clock_type::now();
    cycle(0, true);
    ns.push_back(ns_since(t));
  }
  return median(ns);
}

/// Median ns of a blocking-session cycle with `cached` other models cached on the device.
double session_cycle_ns(size_t cached, size_t cycles) {
  runtime_options o;
  o.ram_budget_bytes = bytes_t{1} << 30;
  o.devices = {{device_kind::simulated, bytes_t{1} << 30, 0, 0}};
  o.check_invariants = false;
  runtime rt{o};
  for (size_t i = 0; i <= cached; ++i)
    rt.models().add(synthetic_model(name_of(i), {16}));
  auto s = rt.open_session();
  for (size_t i = 1; i <= cached; ++i) {
    auto l = s.acquire(name_of(i));
    s.pin(l, 0);
  }
  auto one = [&] {
    auto l = s.acquire(name_of(0));
    auto p = s.pin(l, 0);
  };
  one();
  std::vector<double> ns;
  for (size_t k = 0; k < cycles; ++k) {
    auto t = clock_type::now();
    one();
    ns.push_back(ns_since(t));
  }
  return median(ns);
}

} // namespace

int main(int argc, char** argv) {
  size_t few = 10, many = 10000, cycles = 2000;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&] { return i + 1 < argc ? std::stoul(argv[++i]) : 0UL; };
    if (a == "--few")
      few = value();
    else if (a == "--many")
      many = value();
    else if (a == "--cycles")
      cycles = value();
    else {
      std::fprintf(stderr, "usage: %s [--few N] [--many N] [--cycles N]\n", argv[0]);
      return 2;
    }
  }
  std::printf("cycle = acquire + pin + release pin + release lease of a resident model; median of %zu\n", cycles);
  std::printf("%-8s %10s %14s %14s %8s\n", "level", "cached", "median_us", "baseline_us", "ratio");
  auto row = [&](const char* level, double base_ns, double many_ns) {
    std::printf("%-8s %10zu %14.2f %14s %8s\n", level, few, base_ns / 1e3, "-", "1.00");
    std::printf("%-8s %10zu %14.2f %14.2f %8.2f\n", level, many, many_ns / 1e3, base_ns / 1e3, many_ns / base_ns);
  };
  auto tier_few = tier_cycle_ns(few, cycles);
  auto tier_many = tier_cycle_ns(many, cycles);
  row("tiers", tier_few, tier_many);
  auto session_few = session_cycle_ns(few, cycles);
  auto session_many = session_cycle_ns(many, cycles);
  row("session", session_few, session_many);
  std::printf("target: session ratio <= 2.00 at %zu cached models: %s\n", many,
              session_many <= 2 * session_few ? "met" : "MISSED");
  return 0;
}
