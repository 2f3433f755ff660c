// Several sessions share one runtime, each running image-generation jobs:
//   text encoder -> denoiser loop (N steps) -> decoder
// Budgets are set so that neither RAM nor any device holds every model: the runtime has to evict, wait and
// reuse. The sample prints what each session did and what each tier saw.
//
// By default the models are safetensors files the sample writes on its first run (next to the binary, in
// demo-models/, one of them sharded); --models DIR uses your own folder (a manifest.json there, or a scan:
// a pipeline is a folder holding a text_encoder, a vae and a denoiser); --synthetic loads from memory.
//
//   pipeline_sessions [--sessions N] [--jobs J] [--steps S] [--scale F] [--bandwidth 16GB]
//                     [--models DIR | --synthetic] [every runtime flag: --config FILE, --devices N|all,
//                     --ram-budget, --vram-budget, --keep-alive, ...]   (--help lists them)

#include "runtime/core/models/folder_walk.hpp"
#include "runtime/core/models/model_files.hpp"
#include "runtime/config.hpp"
#include "runtime/runtime.hpp"
#include "samples/sample_main.hpp"

#include <CLI/CLI.hpp>

#include <ATen/ATen.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>

using namespace mcache;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

struct demo_spec {
  const char* id;
  double mib;  // size at scale 1
  int shards;  // files it is split into (more than one: a sharded checkpoint with an index)
};

bytes_t scaled(double mib, double scale) { return static_cast<bytes_t>(mib * scale * (1 << 20)); }

std::string default_demo_dir() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string{"demo-models"} : (exe.parent_path() / "demo-models").string();
}

// Writes the demo models as safetensors files once (a marker records the scale they were made at).
void write_demo_models(const std::string& dir, const std::vector<demo_spec>& specs, double scale) {
  namespace fs = std::filesystem;
  auto marker = fs::path(dir) / (".complete-" + std::to_string(scale));
  if (fs::exists(marker))
    return;
  remove_tree(dir);  // not fs::remove_all, which a pip LibTorch breaks (folder_walk.hpp)
  std::printf("writing demo models to %s (first run only) ...\n", dir.c_str());
  for (const auto& spec : specs) {
    auto path = fs::path(dir) / spec.id;
    fs::create_directories(path.parent_path());
    auto elements = static_cast<int64_t>(scaled(spec.mib, scale) / 4);
    const int layers = 8;
    std::vector<safetensors::tensor_to_write> tensors;
    for (int l = 0; l < layers; ++l) {
      auto n = l + 1 < layers ? elements / layers : elements - (layers - 1) * (elements / layers);
      tensors.push_back({"layers." + std::to_string(l) + ".weight", at::full({n}, 0.01 * (l + 1)), {}});
    }
    if (spec.shards == 1) {
      safetensors::write_file(path.string() + ".safetensors", tensors);
      continue;
    }
    std::string index = "{\"weight_map\": {";
    for (int s = 0; s < spec.shards; ++s) {
      auto shard = path.filename().string() + "-0000" + std::to_string(s + 1) + "-of-0000" + std::to_string(spec.shards)
                   + ".safetensors";
      std::vector<safetensors::tensor_to_write> part;
      for (size_t t = static_cast<size_t>(s); t < tensors.size(); t += static_cast<size_t>(spec.shards)) {
        part.push_back(tensors[t]);
        index += std::string(index.back() == '{' ? "" : ", ") + "\"" + tensors[t].name + "\": \"" + shard + "\"";
      }
      safetensors::write_file((path.parent_path() / shard).string(), part);
    }
    std::ofstream{path.string() + ".safetensors.index.json"} << index << "}}\n";
  }
  std::ofstream{marker.string()} << "ok\n";
}

struct settings {
  int sessions = 4;
  int jobs = 3;
  int steps = 6;
  int devices = 2;
  double scale = 1.0 / 16;   // model sizes below are multiplied by this
  double bandwidth_gbps = 16; // simulated host-to-device copy speed (the runtime flag --bandwidth overrides it)
  std::string models_dir;     // safetensors files to use; empty: demo files written on first run
  bool synthetic = false;     // use in-memory synthetic models instead of files
};

struct pipeline {
  std::string name, text_encoder, denoiser, decoder;
};

// A pipeline per folder that holds a text encoder, a VAE and one other model (the denoiser).
std::vector<pipeline> pipelines_of(const std::vector<model_descriptor>& models) {
  std::map<std::string, pipeline> by_folder;
  for (const auto& d : models) {
    auto slash = d.id.rfind('/');
    auto folder = slash == std::string::npos ? std::string{} : d.id.substr(0, slash);
    auto& p = by_folder[folder];
    p.name = folder;
    if (d.id.find("text_encoder") != std::string::npos)
      p.text_encoder = d.id;
    else if (d.id.find("vae") != std::string::npos)
      p.decoder = d.id;
    else
      p.denoiser = d.id;
  }
  std::vector<pipeline> out;
  for (auto& kv : by_folder)
    if (!kv.second.text_encoder.empty() && !kv.second.denoiser.empty() && !kv.second.decoder.empty())
      out.push_back(kv.second);
  return out;
}

struct session_report {
  int jobs_done = 0, jobs_failed = 0;
  double acquire_ms = 0, pin_ms = 0, compute_ms = 0;
  std::string last_error;
};

double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

// A stand-in for real compute: touches every weight of the pinned model once, layer after layer. Tensors
// that are not resident (the model did not fit whole) are streamed, their copies overlapping this loop.
double run_model(const pin_handle& pin, const at::Tensor& input) {
  double acc = input.sum().item<double>();
  auto layers = pin.stream();
  for (size_t i = 0; i < layers.size(); ++i)
    acc += layers.get(i).sum().item<double>() * 1e-9;
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
      // Lease everything the job needs, together: nothing leased can be evicted until the job ends, and a
      // job never holds some models while waiting for room for the others, so jobs cannot deadlock.
      auto t0 = clock_type::now();
      auto leases = s.acquire_all({p.text_encoder, p.denoiser, p.decoder});
      auto& te = leases[0];
      auto& dn = leases[1];
      auto& dc = leases[2];
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

std::string mib(bytes_t b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", b / 1048576.0);
  return buf;
}

int run_sample(int argc, char** argv) {
  settings cfg;
  CLI::App app{"mcache sample: sessions running text encoder -> denoiser -> decoder jobs on one runtime"};
  app.add_option("--sessions", cfg.sessions, "sessions, each on its own thread")->check(CLI::PositiveNumber);
  app.add_option("--jobs", cfg.jobs, "jobs per session")->check(CLI::PositiveNumber);
  app.add_option("--steps", cfg.steps, "denoiser steps per job")->check(CLI::PositiveNumber);
  app.add_option("--scale", cfg.scale, "model sizes relative to the built-in ones")->check(CLI::PositiveNumber);
  auto* models_flag = app.add_option("--models", cfg.models_dir, "a folder of safetensors models (manifest.json or a scan)");
  app.add_flag("--synthetic", cfg.synthetic, "in-memory synthetic models instead of files")->excludes(models_flag);
  // Every runtime option too (--config FILE, --ram-budget, --devices N|all, --vram-budget, --keep-alive, ...):
  // they override what the sample derives from its models.
  runtime_flags runtime_options_flags{app};
  CLI11_PARSE(app, argc, argv);

  // Sizes in MiB at scale 1, in the proportions of real pipelines.
  std::vector<demo_spec> specs = {{"sdxl/text_encoder", 1600, 1}, {"sdxl/unet", 5000, 1},
                                  {"sdxl/vae", 320, 1},          {"flux/text_encoder", 9000, 1},
                                  {"flux/transformer", 12000, 2}, {"flux/vae", 320, 1},
                                  {"sd15/text_encoder", 240, 1},  {"sd15/unet", 1700, 1},
                                  {"sd15/vae", 320, 1}};
  std::vector<model_descriptor> models;
  std::string origin;
  if (cfg.synthetic) {
    for (auto& spec : specs) {
      auto bytes = scaled(spec.mib, cfg.scale);
      auto per = static_cast<int64_t>(bytes / 4 / 4);
      models.push_back(synthetic_model(spec.id, {per, per, per, static_cast<int64_t>(bytes / 4) - 3 * per}));
    }
    origin = "synthetic loaders";
  } else {
    if (cfg.models_dir.empty()) {
      cfg.models_dir = default_demo_dir();
      write_demo_models(cfg.models_dir, specs, cfg.scale);
    }
    auto manifest = cfg.models_dir + "/manifest.json";
    auto found = std::filesystem::exists(manifest) ? read_manifest(manifest) : scan_folder(cfg.models_dir);
    if (!succeeded(found)) {
      std::fprintf(stderr, "cannot register models from %s: %s\n", cfg.models_dir.c_str(),
                   std::get<failure>(found).detail.c_str());
      return 1;
    }
    models = std::move(std::get<std::vector<model_descriptor>>(found));
    origin = "safetensors files in " + cfg.models_dir;
  }
  auto pipelines = pipelines_of(models);
  if (pipelines.empty()) {
    std::fprintf(stderr, "no pipeline found: a pipeline is a folder holding a text_encoder, a vae and a denoiser\n");
    return 1;
  }
  bytes_t all = 0, largest = 0, biggest_pipeline = 0;
  for (auto& d : models) {
    all += d.bytes;
    largest = std::max(largest, d.bytes);
  }
  for (auto& p : pipelines) {
    bytes_t sum = 0;
    for (auto& d : models)
      if (d.id == p.text_encoder || d.id == p.denoiser || d.id == p.decoder)
        sum += d.bytes;
    biggest_pipeline = std::max(biggest_pipeline, sum);
  }

  runtime_options o;
  // RAM: room for the biggest pipeline and a bit more, far from everything, so models are evicted.
  o.ram_budget_bytes = biggest_pipeline + all / 10;
  // Devices: 80% of the largest model plus working memory for two pins and a reserve, so models take turns
  // and the largest one is only partly resident: the rest of it streams.
  // Real GPUs when LibTorch sees some (the same small budgets, so the sample behaves the same), else
  // simulated devices.
  device_options each{device_kind::simulated, largest * 4 / 5 + (16 << 20) + (4 << 20), 4 << 20,
                      cfg.bandwidth_gbps * 1e9};
  auto gpus = all_gpus(each);
  bool on_gpus = !gpus.empty();
  if (on_gpus) {
    cfg.devices = static_cast<int>(gpus.size());
    o.devices = gpus;
    o.pinned_budget_bytes = o.ram_budget_bytes;
  } else {
    for (int d = 0; d < cfg.devices; ++d)
      o.devices.push_back(each);
  }
  o.default_wait = 60s;
  try {
    o = runtime_options_flags.finish(o);
  } catch (const request_error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  cfg.devices = static_cast<int>(o.devices.size());
  if (cfg.devices == 0) {
    std::fprintf(stderr, "the sample needs at least one device\n");
    return 2;
  }
  runtime rt{o};
  if (auto err = register_all(rt.models(), models)) {
    std::fprintf(stderr, "%s\n", err->detail.c_str());
    return 1;
  }
  std::printf("mcache sample: %d sessions x %d jobs (text encoder on CPU -> denoiser x%d -> decoder), %d %s\n",
              cfg.sessions, cfg.jobs, cfg.steps, cfg.devices,
              on_gpus ? "GPU(s) through LibTorch" : ("simulated device(s) at " + std::to_string(static_cast<int>(o.devices[0].simulated_bandwidth_bytes_per_s / 1e9)) + " GB/s").c_str());
  std::printf("models: %zu from %s, %s MiB in all; RAM budget %s MiB; each device %s MiB (reserve 4 MiB)\n\n",
              models.size(), origin.c_str(), mib(all).c_str(), mib(o.ram_budget_bytes).c_str(),
              mib(o.devices[0].budget_bytes).c_str());

  std::vector<session_report> reports(static_cast<size_t>(cfg.sessions));
  std::vector<std::thread> threads;
  auto t0 = clock_type::now();
  for (int i = 0; i < cfg.sessions; ++i)
    threads.emplace_back([&, i] { run_session(rt, cfg, pipelines, i, reports[static_cast<size_t>(i)]); });
  for (auto& t : threads)
    t.join();
  auto wall = ms_since(t0);

  std::printf("%-8s %6s %6s %8s %13s %10s %12s\n", "session", "device", "jobs", "failed", "acquire ms",
              "pin ms", "compute ms");
  for (int i = 0; i < cfg.sessions; ++i) {
    auto& r = reports[static_cast<size_t>(i)];
    std::printf("%-8d %6d %6d %8d %13.1f %10.1f %12.1f\n", i, i % cfg.devices, r.jobs_done, r.jobs_failed,
                r.acquire_ms, r.pin_ms, r.compute_ms);
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
  std::printf("RAM reloads after eviction: %llu; freed load buffers kept for reuse: %s MiB; buffers no slab "
              "could hold (beyond the budget while in use): %llu\n",
              (unsigned long long) st.ram.reloads, mib(st.ram.host_cached_bytes).c_str(),
              (unsigned long long) st.ram.host_overflows);
  for (size_t d = 0; d < st.devices.size(); ++d)
    std::printf("dev %zu: %llu partial loads, %s MiB streamed through staging, %llu partial evictions, "
                "%s MiB kept for reuse, %llu buffers no slab could hold\n",
                d, (unsigned long long) st.devices[d].partial_loads, mib(st.devices[d].streamed_bytes).c_str(),
                (unsigned long long) st.devices[d].partial_evictions,
                mib(st.devices[d].allocator_cached_bytes).c_str(),
                (unsigned long long) st.devices[d].allocator_overflows);
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

} // namespace

int main(int argc, char** argv) { return mcache::samples::main_reporting_refusals(run_sample, argc, argv); }
