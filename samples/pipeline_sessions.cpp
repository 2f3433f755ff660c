// Several sessions share one runtime, each running image-generation jobs:
//   text encoder -> denoiser loop (N steps) -> decoder
// Budgets are set so that neither RAM nor any device holds every model: the runtime has to evict, wait and
// reuse. The sample prints what each session did and what each tier saw.
//
//   pipeline_sessions [--sessions N] [--jobs J] [--steps S] [--devices D] [--scale F] [--bandwidth GBps]

#include "runtime/runtime.hpp"

#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>

using namespace mcache;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

struct settings {
  int sessions = 4;
  int jobs = 3;
  int steps = 6;
  int devices = 2;
  double scale = 1.0 / 16;   // model sizes below are multiplied by this
  double bandwidth_gbps = 16; // simulated host-to-device copy speed
};

struct pipeline {
  std::string name, text_encoder, denoiser, decoder;
};

struct session_report {
  int jobs_done = 0, jobs_failed = 0, retries = 0;
  double acquire_ms = 0, pin_ms = 0, compute_ms = 0;
  std::string last_error;
};

double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

// A stand-in for real compute: touches every weight of the pinned model once.
double run_model(const pin_handle& pin, const at::Tensor& input) {
  double acc = input.sum().item<double>();
  for (const auto& t : pin.tensors().tensors)
    acc += t.tensor.sum().item<double>() * 1e-9;
  return acc;
}

void run_session(runtime& rt, const settings& cfg, const std::vector<pipeline>& pipelines, int index,
                 session_report& report) {
  auto s = rt.open_session();
  auto device = static_cast<device_index>(index % cfg.devices);
  const bytes_t working = 8 << 20;  // activations, per pin
  for (int job = 0; job < cfg.jobs; ++job) {
    const auto& p = pipelines[static_cast<size_t>(index + job) % pipelines.size()];
    try {
      // Lease everything the job needs first: nothing leased can be evicted until the job ends. Holding
      // some leases while waiting for others can deadlock with a session doing the same, so a job that
      // cannot get all three soon gives back what it holds and tries again after a backoff.
      auto t0 = clock_type::now();
      lease te, dn, dc;
      for (int attempt = 0;; ++attempt) {
        try {
          te = s.acquire(p.text_encoder);
          dn = s.acquire(p.denoiser, 500ms);
          dc = s.acquire(p.decoder, 500ms);
          break;
        } catch (const request_error& e) {
          if (e.code() != errc::budget_exhausted || attempt == 20)
            throw;
          te.release();
          dn.release();
          ++report.retries;
          std::this_thread::sleep_for(std::chrono::milliseconds(10 * (1 + (index + attempt) % 7)));
        }
      }
      report.acquire_ms += ms_since(t0);

      auto prompt = at::ones({64});
      t0 = clock_type::now();
      at::Tensor embedding;
      {
        auto pin = s.pin(te, cpu_device, working);  // the text encoder runs from RAM
        report.pin_ms += ms_since(t0);
        auto c0 = clock_type::now();
        embedding = prompt * run_model(pin, prompt);
        report.compute_ms += ms_since(c0);
      }
      t0 = clock_type::now();
      {
        auto pin = s.pin(dn, device, working);
        report.pin_ms += ms_since(t0);
        auto c0 = clock_type::now();
        auto latent = embedding.clone();
        for (int step = 0; step < cfg.steps; ++step)
          latent = latent * 0.5 + run_model(pin, latent) * 1e-12;
        report.compute_ms += ms_since(c0);
      }
      t0 = clock_type::now();
      {
        auto pin = s.pin(dc, device, working);
        report.pin_ms += ms_since(t0);
        auto c0 = clock_type::now();
        run_model(pin, embedding);
        report.compute_ms += ms_since(c0);
      }
      ++report.jobs_done;
    } catch (const request_error& e) {
      ++report.jobs_failed;
      report.last_error = e.what();
    }
  }
}

bytes_t scaled(double mib, double scale) { return static_cast<bytes_t>(mib * scale * (1 << 20)); }

std::string mib(bytes_t b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", b / 1048576.0);
  return buf;
}

} // namespace

int main(int argc, char** argv) {
  settings cfg;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&] { return i + 1 < argc ? std::stod(argv[++i]) : 0.0; };
    if (a == "--sessions")
      cfg.sessions = static_cast<int>(value());
    else if (a == "--jobs")
      cfg.jobs = static_cast<int>(value());
    else if (a == "--steps")
      cfg.steps = static_cast<int>(value());
    else if (a == "--devices")
      cfg.devices = static_cast<int>(value());
    else if (a == "--scale")
      cfg.scale = value();
    else if (a == "--bandwidth")
      cfg.bandwidth_gbps = value();
    else {
      std::fprintf(stderr,
                   "usage: %s [--sessions N] [--jobs J] [--steps S] [--devices D] [--scale F] [--bandwidth GBps]\n",
                   argv[0]);
      return 2;
    }
  }
  if (cfg.sessions < 1 || cfg.jobs < 1 || cfg.devices < 1 || cfg.scale <= 0) {
    std::fprintf(stderr, "sessions, jobs and devices must be >= 1 and scale > 0\n");
    return 2;
  }

  // Sizes in MiB at scale 1, in the proportions of real pipelines.
  struct spec {
    const char* id;
    double mib;
  };
  std::vector<spec> specs = {{"sdxl/text_encoder", 1600}, {"sdxl/unet", 5000}, {"sdxl/vae", 320},
                             {"flux/text_encoder", 9000}, {"flux/transformer", 12000}, {"flux/vae", 320},
                             {"sd15/text_encoder", 240},  {"sd15/unet", 1700},        {"sd15/vae", 320}};
  std::vector<pipeline> pipelines = {{"sdxl", "sdxl/text_encoder", "sdxl/unet", "sdxl/vae"},
                                     {"flux", "flux/text_encoder", "flux/transformer", "flux/vae"},
                                     {"sd15", "sd15/text_encoder", "sd15/unet", "sd15/vae"}};
  bytes_t all = 0, flux = 0, largest = 0;
  for (auto& s : specs) {
    all += scaled(s.mib, cfg.scale);
    largest = std::max(largest, scaled(s.mib, cfg.scale));
  }
  flux = scaled(9000 + 12000 + 320, cfg.scale);

  runtime_options o;
  // RAM: room for the biggest pipeline and a bit more, far from everything, so models are evicted.
  o.ram_budget_bytes = flux + scaled(2000, cfg.scale);
  // Devices: the largest model plus working memory for two pins and a reserve, so models take turns.
  for (int d = 0; d < cfg.devices; ++d)
    o.devices.push_back({device_kind::simulated, largest + scaled(1000, cfg.scale) + (16 << 20) + (4 << 20),
                         4 << 20, cfg.bandwidth_gbps * 1e9});
  o.default_wait = 60s;
  runtime rt{o};
  for (auto& s : specs) {
    // A model is a few large tensors, as layers are.
    auto bytes = scaled(s.mib, cfg.scale);
    auto per = static_cast<int64_t>(bytes / 4 / 4);
    rt.models().add(synthetic_model(s.id, {per, per, per, static_cast<int64_t>(bytes / 4) - 3 * per}));
  }
  std::printf("mcache sample: %d sessions x %d jobs (text encoder on CPU -> denoiser x%d -> decoder), %d "
              "simulated device(s) at %.0f GB/s\n",
              cfg.sessions, cfg.jobs, cfg.steps, cfg.devices, cfg.bandwidth_gbps);
  std::printf("models: %zu, %s MiB in all; RAM budget %s MiB; each device %s MiB (reserve 4 MiB)\n\n",
              specs.size(), mib(all).c_str(), mib(o.ram_budget_bytes).c_str(), mib(o.devices[0].budget_bytes).c_str());

  std::vector<session_report> reports(static_cast<size_t>(cfg.sessions));
  std::vector<std::thread> threads;
  auto t0 = clock_type::now();
  for (int i = 0; i < cfg.sessions; ++i)
    threads.emplace_back([&, i] { run_session(rt, cfg, pipelines, i, reports[static_cast<size_t>(i)]); });
  for (auto& t : threads)
    t.join();
  auto wall = ms_since(t0);

  std::printf("%-8s %6s %6s %8s %8s %13s %10s %12s\n", "session", "device", "jobs", "failed", "retries",
              "acquire ms", "pin ms", "compute ms");
  for (int i = 0; i < cfg.sessions; ++i) {
    auto& r = reports[static_cast<size_t>(i)];
    std::printf("%-8d %6d %6d %8d %8d %13.1f %10.1f %12.1f\n", i, i % cfg.devices, r.jobs_done, r.jobs_failed,
                r.retries, r.acquire_ms, r.pin_ms, r.compute_ms);
    if (!r.last_error.empty())
      std::printf("         last error: %s\n", r.last_error.c_str());
  }
  auto st = rt.stats();
  std::printf("\n%-7s %10s %10s %6s %6s %7s %9s %10s %6s %8s %9s\n", "tier", "budget MiB", "peak MiB", "hits",
              "loads", "shared", "evictions", "moved MiB", "waits", "timeouts", "GB/s");
  auto gbps = [](bytes_t b, uint64_t ns) { return ns ? static_cast<double>(b) / static_cast<double>(ns) : 0.0; };
  std::printf("%-7s %10s %10s %6llu %6llu %7llu %9llu %10s %6llu %8llu %9.2f\n", "RAM", mib(st.ram.budget_bytes).c_str(),
              mib(st.ram.peak_used_bytes).c_str(), (unsigned long long) st.ram.hits, (unsigned long long) st.ram.loads,
              (unsigned long long) st.ram.shared_loads, (unsigned long long) st.ram.evictions,
              mib(st.ram.bytes_loaded).c_str(), (unsigned long long) st.ram.waits, (unsigned long long) st.ram.timeouts,
              gbps(st.ram.bytes_loaded, st.ram.load_ns));
  auto row = [&](const std::string& name, const device_stats& d) {
    std::printf("%-7s %10s %10s %6llu %6llu %7llu %9llu %10s %6llu %8llu %9.2f\n", name.c_str(),
                mib(d.budget_bytes).c_str(), mib(d.peak_used_bytes).c_str(), (unsigned long long) d.hits,
                (unsigned long long) d.loads, (unsigned long long) d.shared_loads, (unsigned long long) d.evictions,
                mib(d.bytes_copied_in).c_str(), (unsigned long long) d.waits, (unsigned long long) d.timeouts,
                gbps(d.bytes_copied_in, d.copy_ns));
  };
  for (size_t d = 0; d < st.devices.size(); ++d)
    row("dev " + std::to_string(d), st.devices[d]);
  row("cpu", st.cpu);
  std::printf("\n(RAM: loads are from the loader, 'moved' is bytes loaded; devices: loads are copies in, 'moved' is "
              "bytes copied; the CPU tier pins in place and copies nothing)\n");
  std::printf("wall time %.0f ms; leases still held: %llu; pins still held: %llu\n", wall,
              (unsigned long long) st.ram.leases_active,
              (unsigned long long) (st.cpu.pins_active + [&] {
                uint64_t n = 0;
                for (auto& d : st.devices)
                  n += d.pins_active;
                return n;
              }()));
  int failed = 0;
  for (auto& r : reports)
    failed += r.jobs_failed;
  return failed == 0 ? 0 : 1;
}
