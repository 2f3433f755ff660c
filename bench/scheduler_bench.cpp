// The scheduler's orders on the mixed pipeline workload (samples/pipeline_workload.hpp), measured in one
// run, and the scheduler's own cost per stage.
//
// Targets (issue 9): warm_first W = 16 moves <= 0.8x FIFO's bytes to the devices and <= 0.6x FIFO's bytes
// from disk (RAM holds about one FLUX pipeline, a device about a third of the models); prefetch cuts the
// makespan to <= 0.8x warm_first's when copies take about as long as compute; no job is passed over more
// than K times; the scheduler's overhead per stage <= 50 us median.
//
//   scheduler_bench [--sessions N] [--jobs J] [--speedup X] [--compute-scale C] [--k K]
//                   [--copy-compute-scale C] [--tight-ram-gb G] [--tight-device-gb G]
//   scheduler_bench --overhead N   (only the overhead per stage, N times)

#include "samples/pipeline_workload.hpp"

#include <algorithm>
#include <cstdio>
#include <string>

using namespace mcache;
using clock_type = std::chrono::steady_clock;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

/// Between two stages of one job on a resident model: the time from the end of one stage's work to the
/// start of the next's (release, acquire and pin through the actors), in microseconds, median.
/// A runtime with room for everything, for the latency measurements.
runtime_options roomy() {
  runtime_options o;
  o.ram_budget_bytes = 64 << 20;
  o.devices = {{device_kind::simulated, 64 << 20, 0, 0}};
  o.check_invariants = false;
  return o;
}

double stage_gap_us(std::size_t jobs) {
  runtime rt{roomy()};
  rt.models().add(synthetic_model("m", {1024}));
  scheduler sched{rt};
  std::vector<double> gaps;
  for (std::size_t j = 0; j < jobs; ++j) {
    clock_type::time_point ended, started;
    job_spec spec;
    stage_spec first;
    first.models = {"m"};
    first.work = [&](stage_context&) { ended = clock_type::now(); };
    auto second = first;
    second.work = [&](stage_context&) { started = clock_type::now(); };
    spec.stages = {first, second};
    sched.submit(std::move(spec)).wait();
    if (j >= 10)  // the first ones load and copy the model
      gaps.push_back(std::chrono::duration<double, std::micro>(started - ended).count());
  }
  return median(gaps);
}

/// The baseline: one blocking acquire + pin + two releases from a session, in microseconds, median.
double blocking_cycle_us(std::size_t cycles) {
  runtime rt{roomy()};
  rt.models().add(synthetic_model("m", {1024}));
  auto s = rt.open_session();
  std::vector<double> t;
  for (std::size_t c = 0; c < cycles; ++c) {
    auto start = clock_type::now();
    {
      auto l = s.acquire("m");
      auto p = s.pin(l, 0);
    }
    if (c >= 10)
      t.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - start).count());
  }
  return median(t);
}

} // namespace

/// LRU blind to what a copy back saves: the baseline of Note [Cheap to get back goes first].
std::unique_ptr<eviction_policy> make_blind_lru() { return std::make_unique<lru_policy>(/*cost_aware=*/false); }

void print_overhead() {
  auto gap = stage_gap_us(500);
  auto cycle = blocking_cycle_us(500);
  std::printf("scheduler overhead per stage (resident model, end of one stage's work to the start of the next): "
              "%.1f us median (target <= 50); a blocking session's acquire+pin+release cycle: %.1f us; ratio %.2f\n",
              gap, cycle, cycle > 0 ? gap / cycle : 0);
}

int main(int argc, char** argv) {
  workload::settings s;
  s.sessions = 6;
  s.jobs_per_session = 6;
  s.speedup = 8;
  s.compute_scale = 0.25;  // copies and loads about as long as compute: what prefetch can overlap
  std::size_t k = order_options{}.max_passes;
  double copy_compute_scale = 0.3;
  double tight_ram_gb = 28;     // one FLUX transformer, a little more
  double tight_device_gb = 40;  // about two thirds of the models
  int overhead_runs = 0;  // --overhead N: only the per-stage overhead, N times (it is the noisiest figure)
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--overhead")
      overhead_runs = std::stoi(argv[i + 1]);
    else if (a == "--sessions")
      s.sessions = std::stoul(argv[i + 1]);
    else if (a == "--jobs")
      s.jobs_per_session = std::stoul(argv[i + 1]);
    else if (a == "--speedup")
      s.speedup = std::stod(argv[i + 1]);
    else if (a == "--compute-scale")
      s.compute_scale = std::stod(argv[i + 1]);
    else if (a == "--k")
      k = std::stoul(argv[i + 1]);
    else if (a == "--copy-compute-scale")
      copy_compute_scale = std::stod(argv[i + 1]);
    else if (a == "--tight-ram-gb")
      tight_ram_gb = std::stod(argv[i + 1]);
    else if (a == "--tight-device-gb")
      tight_device_gb = std::stod(argv[i + 1]);
  }
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0; };
  if (overhead_runs > 0) {
    for (int run = 0; run < overhead_runs; ++run)
      print_overhead();
    return 0;
  }
  scheduler_options fifo;
  auto warm4 = fifo;
  warm4.order.order = order_options::policy::warm_first;
  warm4.order.window = 4;
  warm4.order.max_passes = k;
  auto warm16 = warm4;
  warm16.order.window = 16;
  auto prefetch = warm16;
  prefetch.prefetch = true;
  std::printf("workload: %zu sessions x %zu jobs, 1 simulated device of %.0f GB, RAM %.0f GB (sizes 1 GB -> %.1f MiB, "
              "%.0fx real speed, compute x%.2f)\n",
              s.sessions, s.jobs_per_session, s.device_gb, s.ram_gb, s.bytes_per_gb / (1 << 20), s.speedup,
              s.compute_scale);
  auto f = workload::run(s, fifo, {}, false, true);
  auto w4 = workload::run(s, warm4, {}, false, true);
  auto w16 = workload::run(s, warm16, {}, false, true);
  auto p = workload::run(s, prefetch, {}, false, true);
  auto mib = [](bytes_t b) { return static_cast<double>(b) / (1 << 20); };
  std::printf("%-22s %10s %14s %14s %7s %11s\n", "order", "makespan s", "to devices MiB", "from disk MiB", "failed",
              "max passed");
  auto row = [&](const char* name, const workload::outcome_of_run& r) {
    std::printf("%-22s %10.2f %14.1f %14.1f %7zu %11zu\n", name, r.makespan_s, mib(r.bytes_to_devices),
                mib(r.bytes_from_disk), r.failed, r.max_passed_over);
  };
  row("fifo", f);
  row("warm_first W=4", w4);
  row("warm_first W=16", w16);
  row("warm_first W=16+prefetch", p);
  // Prefetch's scenario: copies to the device about as long as compute. RAM holds every model (disk
  // reads happen once), the device a third of them, and copies run at pageable speed (8 GB/s).
  auto copies = s;
  copies.ram_gb = 64;
  copies.copy_gb_per_s = 8;
  copies.compute_scale = copy_compute_scale;
  auto cw = workload::run(copies, warm16, {}, false, true);
  auto cp = workload::run(copies, prefetch, {}, false, true);
  std::printf("warm_first W=16 / fifo, bytes to devices: %.2f (target <= 0.8)\n",
              ratio(static_cast<double>(w16.bytes_to_devices), static_cast<double>(f.bytes_to_devices)));
  std::printf("warm_first W=16 / fifo, bytes from disk:  %.2f (target <= 0.6)\n",
              ratio(static_cast<double>(w16.bytes_from_disk), static_cast<double>(f.bytes_from_disk)));
  std::printf("prefetch / warm_first W=16, makespan:     %.2f (disk-bound: loads are most of the time)\n",
              ratio(p.makespan_s, w16.makespan_s));
  std::printf("\ncopies about as long as compute (RAM %.0f GB, copies %.0f GB/s, compute x%.2f):\n", copies.ram_gb,
              copies.copy_gb_per_s, copies.compute_scale);
  row("warm_first W=16", cw);
  row("warm_first W=16+prefetch", cp);
  std::printf("prefetch / warm_first W=16, makespan:     %.2f (target <= 0.8)\n", ratio(cp.makespan_s, cw.makespan_s));
  std::printf("most passes over one job: %zu (K = %zu)\n",
              std::max({w4.max_passed_over, w16.max_passed_over, p.max_passed_over}), warm16.order.max_passes);
  // RAM tighter than VRAM, without a kept RAM copy: a model RAM evicts while the device holds it whole
  // comes back from the device; eviction that knows it takes those first.
  auto tight = s;
  tight.ram_gb = tight_ram_gb;
  tight.device_gb = tight_device_gb;
  tight.keep_ram_copy = false;
  tight.eviction = make_blind_lru;
  auto blind = workload::run(tight, warm16, {}, false, true);
  tight.eviction = make_lru_policy;
  auto aware = workload::run(tight, warm16, {}, false, true);
  std::printf("\nRAM tighter than VRAM, no kept RAM copy (RAM %.0f GB, device %.0f GB, warm_first W=16):\n",
              tight.ram_gb, tight.device_gb);
  std::printf("%-26s %10s %14s %14s %16s %7s\n", "RAM eviction", "makespan s", "to devices MiB", "from disk MiB",
              "from device MiB", "failed");
  auto tight_row = [&](const char* name, const workload::outcome_of_run& r) {
    std::printf("%-26s %10.2f %14.1f %14.1f %16.1f %7zu\n", name, r.makespan_s, mib(r.bytes_to_devices),
                mib(r.bytes_from_disk), mib(r.bytes_from_devices), r.failed);
  };
  tight_row("LRU", blind);
  tight_row("LRU, device-held first", aware);
  std::printf("device-held first / LRU, bytes from disk:  %.2f; makespan: %.2f\n",
              ratio(static_cast<double>(aware.bytes_from_disk), static_cast<double>(blind.bytes_from_disk)),
              ratio(aware.makespan_s, blind.makespan_s));
  print_overhead();
  return 0;
}
