// Control-plane cost: one cycle = acquire + pin + release pin + release lease of a model that is already
// resident in RAM and on the device, so the cycle measures the protocol, not copies. Three ways, in the
// same run, with 1 and with 8 concurrent sessions:
//   baseline  a std::mutex-protected map doing the same bookkeeping (lease and pin records, counts)
//   actor     a session that is a CAF actor, chaining request().then()
//   blocking  the blocking `session` API (one thread per session)
// Prints median and p99 latency per cycle, aggregate cycles/s, and the ratios to the baseline.
//
//   control_plane_bench [--cycles N] [--policy sharing|stealing] [--threads T] [--json FILE]

#include "runtime/runtime.hpp"

#include <caf/all.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

using namespace mcache;
using clock_type = std::chrono::steady_clock;

namespace {

struct result {
  std::string name;
  int sessions;
  double median_ns, p99_ns, cycles_per_s;
};

result summarize(std::string name, int sessions, std::vector<double> ns, double wall_s) {
  std::sort(ns.begin(), ns.end());
  auto at = [&](double q) { return ns[std::min(ns.size() - 1, static_cast<size_t>(q * ns.size()))]; };
  return {std::move(name), sessions, at(0.5), at(0.99), ns.size() / wall_s};
}

// -- baseline: the same bookkeeping under one mutex ------------------------------------------------------

class mutex_cache {
public:
  struct entry {
    size_t leases = 0, pins = 0;
  };
  explicit mutex_cache(const std::vector<std::string>& ids) {
    for (auto& id : ids)
      entries_[id];
  }
  uint64_t acquire(const std::string& id, uint64_t holder) {
    std::lock_guard<std::mutex> g{m_};
    ++entries_.at(id).leases;
    auto l = next_++;
    leases_.emplace(l, std::make_pair(id, holder));
    return l;
  }
  uint64_t pin(uint64_t lease, uint64_t holder) {
    std::lock_guard<std::mutex> g{m_};
    auto& rec = leases_.at(lease);
    if (rec.second != holder)
      return 0;
    ++entries_.at(rec.first).pins;
    ++entries_.at(rec.first).leases;  // the pin's own lease, as the runtime does
    auto p = next_++;
    pins_.emplace(p, std::make_pair(rec.first, holder));
    return p;
  }
  void release_pin(uint64_t pin) {
    std::lock_guard<std::mutex> g{m_};
    auto i = pins_.find(pin);
    auto& e = entries_.at(i->second.first);
    --e.pins;
    --e.leases;
    pins_.erase(i);
  }
  void release_lease(uint64_t lease) {
    std::lock_guard<std::mutex> g{m_};
    auto i = leases_.find(lease);
    --entries_.at(i->second.first).leases;
    leases_.erase(i);
  }

private:
  std::mutex m_;
  uint64_t next_ = 1;
  std::unordered_map<std::string, entry> entries_;
  std::unordered_map<uint64_t, std::pair<std::string, uint64_t>> leases_, pins_;
};

template <class Cycle>
result run_threads(const std::string& name, int sessions, int cycles, Cycle cycle) {
  std::vector<std::vector<double>> lat(sessions);
  std::vector<std::thread> ts;
  std::atomic<int> ready{0};
  auto start = clock_type::now();
  for (int s = 0; s < sessions; ++s)
    ts.emplace_back([&, s] {
      auto state = cycle.make(s);
      ++ready;
      while (ready < sessions)
        std::this_thread::yield();
      lat[s].reserve(cycles);
      for (int i = 0; i < cycles; ++i) {
        auto t0 = clock_type::now();
        cycle.run(state, s);
        lat[s].push_back(std::chrono::duration<double, std::nano>(clock_type::now() - t0).count());
      }
    });
  for (auto& t : ts)
    t.join();
  double wall = std::chrono::duration<double>(clock_type::now() - start).count();
  std::vector<double> all;
  for (auto& v : lat)
    all.insert(all.end(), v.begin(), v.end());
  return summarize(name, sessions, std::move(all), wall);
}

struct baseline_cycle {
  mutex_cache* cache;
  int make(int) { return 0; }
  void run(int, int s) {
    auto holder = static_cast<uint64_t>(s + 1);
    auto l = cache->acquire("m" + std::to_string(s), holder);
    auto p = cache->pin(l, holder);
    cache->release_pin(p);
    cache->release_lease(l);
  }
};

struct blocking_cycle {
  runtime* rt;
  std::unique_ptr<session> make(int) { return std::make_unique<session>(*rt); }
  void run(std::unique_ptr<session>& s, int index) {
    auto l = s->acquire("m" + std::to_string(index));
    auto p = s->pin(l, 0);
    p.release();
    l.release();
  }
};

// -- an actor session: the cycle as a chain of request().then() ------------------------------------------

struct actor_run {
  std::vector<double> ns;
  std::promise<void> done;
};

void actor_cycle(caf::event_based_actor* self, ram_cache_actor ram, device_actor dev, model_id m,
                 std::shared_ptr<actor_run> run, int left) {
  if (left == 0) {
    run->done.set_value();
    self->quit();
    return;
  }
  auto t0 = clock_type::now();
  self->request(ram, caf::infinite, acquire_atom::value, m, caf::timespan{std::chrono::seconds(5)})
    .then([=](ram_lease& l) {
      auto lease = l.lease;
      self->request(dev, caf::infinite, pin_atom::value, lease, bytes_t{0}, caf::timespan{std::chrono::seconds(5)})
        .then([=](device_pin& p) {
          self->request(dev, caf::infinite, release_atom::value, p.pin).then([=] {
            self->request(ram, caf::infinite, release_atom::value, lease).then([=] {
              run->ns.push_back(std::chrono::duration<double, std::nano>(clock_type::now() - t0).count());
              actor_cycle(self, ram, dev, m, run, left - 1);
            });
          });
        });
    });
}

result run_actor_sessions(runtime& rt, int sessions, int cycles) {
  std::vector<std::shared_ptr<actor_run>> runs;
  std::vector<std::future<void>> futures;
  auto start = clock_type::now();
  for (int s = 0; s < sessions; ++s) {
    auto run = std::make_shared<actor_run>();
    run->ns.reserve(cycles);
    futures.push_back(run->done.get_future());
    runs.push_back(run);
    auto ram = rt.ram_cache();
    auto dev = rt.device(0);
    auto m = "m" + std::to_string(s);
    rt.system().spawn([=](caf::event_based_actor* self) { actor_cycle(self, ram, dev, m, run, cycles); });
  }
  for (auto& f : futures)
    f.wait();
  double wall = std::chrono::duration<double>(clock_type::now() - start).count();
  std::vector<double> all;
  for (auto& r : runs)
    all.insert(all.end(), r->ns.begin(), r->ns.end());
  return summarize("actor", sessions, std::move(all), wall);
}

} // namespace

int main(int argc, char** argv) {
  int cycles = 20000;
  std::string json;
  runtime_options o;
  o.ram_budget_bytes = 64 << 20;
  o.devices = {{device_kind::simulated, 64 << 20, 0, 0}};
  o.check_invariants = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string{argv[++i]} : std::string{}; };
    if (a == "--cycles")
      cycles = std::stoi(next());
    else if (a == "--json")
      json = next();
    else if (a == "--threads")
      o.scheduler_threads = std::stoul(next());
    else if (a == "--policy")
      o.scheduler = next() == "stealing" ? scheduler_policy::stealing : scheduler_policy::sharing;
    else {
      std::fprintf(stderr, "usage: %s [--cycles N] [--policy sharing|stealing] [--threads T] [--json FILE]\n",
                   argv[0]);
      return 2;
    }
  }
  runtime rt{o};
  std::vector<std::string> ids;
  for (int s = 0; s < 8; ++s) {
    ids.push_back("m" + std::to_string(s));
    rt.models().add(synthetic_model(ids.back(), {1024}));
  }
  {  // warm: every model resident in RAM and on the device
    auto s = rt.open_session();
    for (auto& id : ids) {
      auto l = s.acquire(id);
      auto p = s.pin(l, 0);
    }
  }
  std::printf("control plane: one cycle = acquire + pin + release pin + release lease of a resident model\n");
  std::printf("scheduler: %s, %zu threads; %d cycles per session; hardware threads: %u\n",
              o.scheduler == scheduler_policy::sharing ? "sharing" : "stealing", rt.options().scheduler_threads,
              cycles, std::thread::hardware_concurrency());
  std::vector<result> results;
  for (int sessions : {1, 8}) {
    mutex_cache cache{ids};
    auto base = run_threads("baseline (mutex map)", sessions, cycles, baseline_cycle{&cache});
    auto actor = run_actor_sessions(rt, sessions, cycles);
    auto blocking = run_threads("blocking", sessions, std::max(1, cycles / 4), blocking_cycle{&rt});
    for (auto& r : {base, actor, blocking})
      results.push_back(r);
    std::printf("\n%d session(s)\n%-22s %12s %12s %14s %14s %14s\n", sessions, "", "median us", "p99 us",
                "cycles/s", "median/base", "thru base/x");
    for (auto& r : {base, actor, blocking})
      std::printf("%-22s %12.2f %12.2f %14.0f %14.1f %14.1f\n", r.name.c_str(), r.median_ns / 1e3,
                  r.p99_ns / 1e3, r.cycles_per_s, r.median_ns / base.median_ns, base.cycles_per_s / r.cycles_per_s);
  }
  auto find = [&](const char* name, int sessions) {
    for (auto& r : results)
      if (r.name == name && r.sessions == sessions)
        return r;
    return result{};
  };
  std::printf("\ntargets on a 2-core machine: actor median <= 10 us: %s (%.2f us); blocking median <= 40 us: %s "
              "(%.2f us); >= 100k cycles/s with 8 sessions (best way): %s (%.0f)\n",
              find("actor", 1).median_ns <= 10e3 ? "met" : "MISSED", find("actor", 1).median_ns / 1e3,
              find("blocking", 1).median_ns <= 40e3 ? "met" : "MISSED", find("blocking", 1).median_ns / 1e3,
              std::max(find("actor", 8).cycles_per_s, find("blocking", 8).cycles_per_s) >= 1e5 ? "met" : "MISSED",
              std::max(find("actor", 8).cycles_per_s, find("blocking", 8).cycles_per_s));
  if (!json.empty()) {
    std::ofstream out{json};
    out << "[";
    for (size_t i = 0; i < results.size(); ++i)
      out << (i ? "," : "") << "{\"name\":\"" << results[i].name << "\",\"sessions\":" << results[i].sessions
          << ",\"median_ns\":" << results[i].median_ns << ",\"p99_ns\":" << results[i].p99_ns
          << ",\"cycles_per_s\":" << results[i].cycles_per_s << "}";
    out << "]\n";
  }
  return 0;
}
