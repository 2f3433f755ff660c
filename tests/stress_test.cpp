// Randomized stress with real threads: many sessions over several devices with budgets near a third of
// the working set, one device smaller than the largest model (partial residency and streaming). Every tier checks its invariants after every step (a broken one aborts); every reply
// must be a grant or one of the errors that contention explains; at the end every budget is back to zero.
// Half the sessions withdraw a third of their waits (a wait check, as Ctrl-C or a cancelled job does),
// and every load takes a few milliseconds, so withdrawals reach requests queued for room, requests
// waiting for a load or copy, and loads nobody waits for any more (Note [An abandoned load stops]).
// The operation sequence is reproducible from the printed seed (MCACHE_STRESS_SEED=N); the thread
// interleaving is not, which is the point.

#include "runtime/runtime.hpp"

#include "support/catch.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>

using namespace mcache;
using namespace std::chrono_literals;

namespace {

constexpr int sessions = 32;
constexpr int ops_per_session = 2000;
constexpr int models = 12;
constexpr int devices = 3;

uint64_t stress_seed() {
  if (const char* env = std::getenv("MCACHE_STRESS_SEED"))
    return std::strtoull(env, nullptr, 10);
  return std::random_device{}();
}

bool explained_by_contention(errc code) {
  return code == errc::budget_exhausted || code == errc::timed_out || code == errc::not_resident
         || code == errc::model_pinned || code == errc::cancelled;
}

struct tally {
  std::atomic<uint64_t> grants{0}, contention{0}, withdrawn{0}, violations{0}, mismatches{0}, partial_pins{0};
  std::mutex mutex;
  std::string first_violation;
  void violation(const std::string& what) {
    ++violations;
    std::lock_guard<std::mutex> guard{mutex};
    if (first_violation.empty())
      first_violation = what;
  }
};

void run_session(runtime& rt, uint64_t seed, int index, tally& t) {
  std::mt19937_64 rng{seed * 1000003 + static_cast<uint64_t>(index)};
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  auto s = rt.open_session();
  std::mt19937_64 withdraws{seed + static_cast<uint64_t>(index)};
  if (index % 2 == 0)
    s.set_wait_check([&withdraws] { return withdraws() % 3 == 0; }, 1ms);
  std::vector<lease> leases;
  std::vector<pin_handle> pins;
  std::vector<at::Tensor> expected;  // the host tensor each pin's first tensor must equal
  for (int op = 0; op < ops_per_session; ++op) {
    try {
      switch (pick(6)) {
        case 0:
          if (leases.empty() && pick(3) == 0) {
            auto first = pick(models);
            auto second = (first + 1 + pick(models - 1)) % models;
            for (auto& l : s.acquire_all({"m" + std::to_string(first), "m" + std::to_string(second)},
                                         std::chrono::milliseconds(pick(5))))
              leases.push_back(std::move(l));
            ++t.grants;
          } else if (leases.size() < 2) {
            leases.push_back(s.acquire("m" + std::to_string(pick(models)), std::chrono::milliseconds(pick(5))));
            ++t.grants;
          }
          break;
        case 1:
          if (!leases.empty() && pins.size() < 2) {
            auto& l = leases[pick(leases.size())];
            auto dev = static_cast<device_index>(pick(devices + 1)) - 1;  // -1 is the CPU
            pins.push_back(s.pin(l, dev, pick(4) * 4096, std::chrono::milliseconds(pick(5))));
            expected.push_back(l.host().tensors.front().tensor);
            ++t.grants;
          }
          break;
        case 2:
          if (!pins.empty()) {
            auto i = pick(pins.size());
            // Resident or streamed, the first tensor must be the host's.
            if (!pins[i].stream().get(0).equal(expected[i]))
              ++t.mismatches;
            t.partial_pins += pins[i].partial();
            pins[i].release();
            pins.erase(pins.begin() + static_cast<long>(i));
            expected.erase(expected.begin() + static_cast<long>(i));
          }
          break;
        case 3:
          if (!leases.empty()) {
            auto i = pick(leases.size());
            leases[i].release();
            leases.erase(leases.begin() + static_cast<long>(i));
          }
          break;
        case 4:
          s.offload(static_cast<device_index>(pick(devices)), pick(2) ? "" : "m" + std::to_string(pick(models)),
                    pick(3) * 64 * 1024);
          break;
        default:
          if (pick(4) == 0)
            s.trim_ram("", 64 * 1024);
          break;
      }
    } catch (const request_error& e) {
      if (e.code() == errc::cancelled)
        ++t.withdrawn;
      if (explained_by_contention(e.code()))
        ++t.contention;
      else
        t.violation(e.what());
    }
  }
}

} // namespace

TEST_CASE("random sessions over three devices keep every invariant and give every byte back") {
  auto seed = stress_seed();
  std::printf("stress seed: %llu (rerun with MCACHE_STRESS_SEED=%llu)\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  INFO("seed " << seed);
  std::mt19937_64 rng{seed};
  runtime_options o;
  o.check_invariants = true;
  o.default_wait = 5ms;
  bytes_t working_set = 0;
  std::vector<model_descriptor> ds;
  for (int i = 0; i < models; ++i) {
    std::vector<int64_t> numels;
    for (int k = 0; k < 4; ++k)
      numels.push_back(static_cast<int64_t>(4 * 1024 + rng() % (12 * 1024)));
    ds.push_back(synthetic_model("m" + std::to_string(i), numels, static_cast<uint64_t>(i)));
    // A load of 1 to 4 ms, in steps that stop once nobody waits for it.
    ds.back().loader = [inner = ds.back().loader, steps = 1 + static_cast<int>(rng() % 4)](const model_descriptor& d) {
      for (int k = 0; k < steps; ++k) {
        stop_if_abandoned();
        std::this_thread::sleep_for(1ms);
      }
      return inner(d);
    };
    working_set += ds.back().bytes;
  }
  bytes_t largest = 0;
  for (auto& d : ds)
    largest = std::max(largest, d.bytes);
  // A third of the working set, but never less than the largest model plus the most working memory.
  auto third = std::max(working_set / 3, largest + 4 * 4096);
  o.ram_budget_bytes = third;
  // The last device is smaller than the largest model: pins there are often partly resident and stream.
  for (int i = 0; i < devices; ++i)
    o.devices.push_back({device_kind::simulated, i + 1 < devices ? third : largest * 3 / 4 + 4 * 4096, 0, 0});
  runtime rt{o};
  for (auto& d : ds)
    REQUIRE_FALSE(rt.models().add(d));

  tally t;
  std::vector<std::thread> threads;
  for (int i = 0; i < sessions; ++i)
    threads.emplace_back([&, i] { run_session(rt, seed, i, t); });
  for (auto& th : threads)
    th.join();

  INFO("first violation: " << t.first_violation);
  CHECK(t.violations == 0);
  CHECK(t.mismatches == 0);
  CHECK(t.grants > 1000);
  CHECK(t.partial_pins > 0);
  // Loads that every waiter left may still run (or be stopping): they end on their own.
  for (int i = 0; i < 5000 && rt.stats().ram.loading_bytes > 0; ++i)
    std::this_thread::sleep_for(1ms);
  auto ram = rt.stats().ram;
  CHECK(ram.load_failures == 0);
  std::printf("stress: %llu grants, %llu refusals explained by contention (%llu withdrawals), %llu partly "
              "resident pins checked, %llu loads, %llu of them stopped with nobody waiting\n",
              static_cast<unsigned long long>(t.grants.load()), static_cast<unsigned long long>(t.contention.load()),
              static_cast<unsigned long long>(t.withdrawn.load()), static_cast<unsigned long long>(t.partial_pins.load()),
              static_cast<unsigned long long>(ram.loads),
              static_cast<unsigned long long>(ram.loads_stopped));

  auto s = rt.open_session();
  for (int i = 0; i < devices; ++i)
    s.offload(i);
  s.trim_ram();
  auto st = rt.stats();
  CHECK(st.ram.leases_active == 0);
  CHECK(st.ram.used_bytes == 0);
  CHECK(st.ram.waiting_now == 0);
  for (auto& d : st.devices) {
    CHECK(d.pins_active == 0);
    CHECK(d.used_bytes == 0);
    CHECK(d.working_bytes == 0);
    CHECK(d.waiting_now == 0);
  }
  CHECK(st.cpu.pins_active == 0);
  CHECK(st.cpu.used_bytes == 0);
}
