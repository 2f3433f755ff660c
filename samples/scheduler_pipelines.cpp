// The scheduler on a mixed workload shaped like real pipelines (samples/pipeline_workload.hpp): SD1.5, SDXL,
// FLUX.1 and an 8B LLM, several sessions submitting at once, simulated devices with a copy speed set and
// disk reads paced. It runs the same seeded workload under each order, prints a progress line while each
// runs and a summary table, and writes each run's timeline (open it in ui.perfetto.dev).
//
//   scheduler_pipelines [--sessions N] [--jobs J] [--devices D] [--speedup X] [--mib-per-gb M]
//                       [--order fifo|warm4|warm16|prefetch|all] [--timelines DIR] [--quiet] [--http PORT]

#include "samples/pipeline_workload.hpp"

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

[[noreturn]] void usage(const char* self) {
  std::fprintf(stderr,
               "usage: %s [--sessions N] [--jobs J] [--devices D] [--speedup X] [--mib-per-gb M]\n"
               "          [--order fifo|warm4|warm16|prefetch|all] [--timelines DIR] [--quiet] [--http PORT]\n",
               self);
  std::exit(2);
}

} // namespace

int main(int argc, char** argv) {
  workload::settings s;
  std::string only = "all";
  std::string timelines;
  bool progress = true;
  int http_port = -1;  // --http PORT: serve the status page while it runs (0: any free port)
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc)
        usage(argv[0]);
      return argv[++i];
    };
    if (a == "--sessions")
      s.sessions = std::stoul(value());
    else if (a == "--jobs")
      s.jobs_per_session = std::stoul(value());
    else if (a == "--devices")
      s.devices = std::stoul(value());
    else if (a == "--speedup")
      s.speedup = std::stod(value());
    else if (a == "--mib-per-gb")
      s.bytes_per_gb = std::stod(value()) * (1 << 20);
    else if (a == "--order")
      only = value();
    else if (a == "--timelines")
      timelines = value();
    else if (a == "--quiet")
      progress = false;
    else if (a == "--http")
      http_port = std::stoi(value());
    else
      usage(argv[0]);
  }
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
    std::printf("  timeline: %s\n", path.c_str());
  }
  if (rows.empty())
    usage(argv[0]);
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
