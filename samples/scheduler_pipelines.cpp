// The scheduler on a mixed workload shaped like real pipelines (samples/pipeline_workload.hpp): SD1.5, SDXL,
// FLUX.1 and an 8B LLM, several sessions submitting at once, simulated devices with a copy speed set and
// disk reads paced. It runs the same seeded workload under each order, prints a progress line while each
// runs and a summary table, and writes each run's timeline (open it in ui.perfetto.dev).
//
//   scheduler_pipelines [--sessions N] [--jobs J] [--devices D] [--speedup X] [--mib-per-gb M]
//                       [--order fifo|warm4|warm16|prefetch|all] [--timelines DIR] [--quiet] [--http PORT]
//                       (--help lists every flag)

#include "samples/pipeline_workload.hpp"
#include "samples/sample_main.hpp"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

using namespace mcache;

namespace {

struct order_choice {
  const char* name;
  scheduler_options options;
};

std::vector<order_choice> orders() {
  scheduler_options fifo;
  scheduler_options warm4;
  warm4.order.order = order_options::policy::warm_first;
  warm4.order.window = 4;
  auto warm16 = warm4;
  warm16.order.window = 16;
  auto prefetch = warm16;
  prefetch.prefetch = true;
  return {{"fifo", fifo}, {"warm4", warm4}, {"warm16", warm16}, {"prefetch", prefetch}};
}

int run_sample(int argc, char** argv) {
  workload::settings s;
  std::string only = "all";
  std::string timelines;
  bool quiet = false;
  int http_port = -1;  // --http PORT: serve the status page while it runs (0: any free port)
  double mib_per_gb = s.bytes_per_gb / (1 << 20);
  CLI::App app{"mcache scheduler sample: a mixed SD1.5 / SDXL / FLUX.1 / LLM workload under each order"};
  app.add_option("--sessions", s.sessions, "sessions submitting at once")->check(CLI::PositiveNumber);
  app.add_option("--jobs", s.jobs_per_session, "jobs per session")->check(CLI::PositiveNumber);
  app.add_option("--devices", s.devices, "simulated devices")->check(CLI::PositiveNumber);
  app.add_option("--speedup", s.speedup, "how much faster than real everything runs")->check(CLI::PositiveNumber);
  app.add_option("--compute-scale", s.compute_scale, "compute time relative to real")->check(CLI::PositiveNumber);
  app.add_option("--mib-per-gb", mib_per_gb, "MiB that stand for 1 GB of the real models")->check(CLI::PositiveNumber);
  app.add_option("--ram-gb", s.ram_gb, "RAM budget, in real GB")->check(CLI::PositiveNumber);
  app.add_option("--device-gb", s.device_gb, "each device's budget, in real GB")->check(CLI::PositiveNumber);
  app.add_option("--copy-gbps", s.copy_gb_per_s, "host-to-device copy speed, real GB/s")->check(CLI::PositiveNumber);
  app.add_option("--disk-gbps", s.disk_gb_per_s, "disk read speed, real GB/s")->check(CLI::PositiveNumber);
  app.add_option("--seed", s.seed, "the workload's seed");
  app.add_option("--order", only, "which order to run")->check(CLI::IsMember({"fifo", "warm4", "warm16", "prefetch", "all"}));
  app.add_option("--timelines", timelines, "where the timelines go (default: next to the binary)");
  app.add_flag("--quiet", quiet, "no progress lines");
  app.add_option("--http", http_port, "serve the status page on this port while it runs (0: any free port)")
    ->check(CLI::Range(0, 65535));
  CLI11_PARSE(app, argc, argv);
  s.bytes_per_gb = mib_per_gb * (1 << 20);
  bool progress = !quiet;
  if (timelines.empty()) {
    std::error_code ec;
    auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    timelines = ec ? std::string{"timelines"} : (exe.parent_path() / "timelines").string();
  }
  std::filesystem::create_directories(timelines);
  std::printf("mcache scheduler sample: %zu sessions x %zu jobs (SD1.5, SDXL, FLUX.1, 8B LLM), %zu simulated "
              "device(s)\n  sizes: 1 GB -> %.2f MiB; copies %.0f GB/s, disk %.0f GB/s; everything %.0fx faster "
              "than real; RAM %.0f GB, each device %.0f GB\n",
              s.sessions, s.jobs_per_session, s.devices, s.bytes_per_gb / (1 << 20), s.copy_gb_per_s,
              s.disk_gb_per_s, s.speedup, s.ram_gb, s.device_gb);
  struct row {
    std::string name;
    workload::outcome_of_run r;
  };
  std::vector<row> rows;
  for (const auto& o : orders()) {
    if (only != "all" && only != o.name)
      continue;
    auto path = timelines + "/timeline-" + o.name + ".json";
    std::printf("\n%s:\n", o.name);
    rows.push_back({o.name, workload::run(s, o.options, path, progress, false, http_port)});
    if (http_port == 0)  // later orders serve the page at the same address, so one open page follows them all
      http_port = rows.back().r.http_port;
    std::printf("  timeline: %s\n", path.c_str());
  }
  auto mib = [](bytes_t b) { return static_cast<double>(b) / (1 << 20); };
  std::printf("\n%-10s %10s %14s %14s %6s %7s %12s\n", "order", "makespan s", "to devices MiB", "from disk MiB",
              "jobs", "failed", "max passed");
  for (const auto& r : rows)
    std::printf("%-10s %10.2f %14.1f %14.1f %6zu %7zu %12zu\n", r.name.c_str(), r.r.makespan_s,
                mib(r.r.bytes_to_devices), mib(r.r.bytes_from_disk), r.r.jobs, r.r.failed, r.r.max_passed_over);
  std::printf("(warm4/warm16: warm_first with a window of 4/16 jobs and K = 8; prefetch: warm16 with prefetch)\n");
  std::size_t failed = 0;
  for (const auto& r : rows)
    failed += r.r.failed;
  return failed == 0 ? 0 : 1;
}

} // namespace

int main(int argc, char** argv) { return mcache::samples::main_reporting_refusals(run_sample, argc, argv); }
