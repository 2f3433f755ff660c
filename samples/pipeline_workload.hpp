#pragma once
// A mixed workload shaped like real inference pipelines, for the scheduler sample and its bench: SD1.5,
// SDXL, FLUX.1 and an 8B LLM, with their public fp16 sizes scaled down (`bytes_per_gb`: bytes that stand
// for 1 GB), copies and disk reads paced at real speeds, and compute times of the same order as theirs,
// all sped up by `speedup`. Sessions submit their jobs concurrently; each session mostly runs its own
// favourite pipeline, as users of one server do.

#include "runtime/http_endpoint.hpp"
#include "runtime/runtime.hpp"
#include "runtime/scheduler.hpp"

#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace mcache::workload {

struct model_size {
  const char* id;
  double gb;  // public fp16 size
};

// Public parameter counts at 2 bytes each.
inline const std::vector<model_size>& models() {
  static const std::vector<model_size> all{
    {"clip_l", 0.25},          // CLIP ViT-L/14 text encoder (123 M): SD1.5, SDXL and FLUX share it
    {"sd15_unet", 1.72},       // 860 M
    {"sd15_vae", 0.17},        // 84 M
    {"sdxl_clip_g", 1.39},     // OpenCLIP bigG text encoder (695 M)
    {"sdxl_unet", 5.14},       // 2.6 B
    {"sdxl_vae", 0.17},
    {"flux_t5xxl", 9.52},      // T5-XXL encoder (4.76 B)
    {"flux_transformer", 23.8},// 11.9 B
    {"flux_vae", 0.17},
    {"llm_8b", 16.06},         // 8.03 B
  };
  return all;
}

struct stage_shape {
  std::vector<const char*> models;
  double compute_s;  // at real speed
  const char* name;
};

struct pipeline {
  const char* name;
  std::vector<stage_shape> stages;
};

inline const std::vector<pipeline>& pipelines() {
  static const std::vector<pipeline> all{
    {"sd15", {{{"clip_l"}, 0.02, "encode"}, {{"sd15_unet"}, 1.0, "denoise"}, {{"sd15_vae"}, 0.05, "decode"}}},
    {"sdxl", {{{"clip_l", "sdxl_clip_g"}, 0.05, "encode"}, {{"sdxl_unet"}, 2.5, "denoise"}, {{"sdxl_vae"}, 0.1, "decode"}}},
    {"flux", {{{"clip_l", "flux_t5xxl"}, 0.2, "encode"}, {{"flux_transformer"}, 6.0, "denoise"}, {{"flux_vae"}, 0.1, "decode"}}},
    {"llm", {{{"llm_8b"}, 2.0, "generate"}}},
  };
  return all;
}

struct settings {
  double bytes_per_gb = 1 << 20;     // 1 GB of the real model is this many bytes here
  double speedup = 8;                // every time (compute, copies, disk) runs this much faster than real
  double compute_scale = 1;          // compute times relative to the real ones (below 1: transfers weigh more)
  double copy_gb_per_s = 25;         // host to device, real
  double disk_gb_per_s = 3;          // NVMe, real
  double device_gb = 20;             // each device's budget, real: about a third of the models
  double ram_gb = 36;                // about one FLUX pipeline
  std::size_t devices = 1;
  std::size_t sessions = 4;
  std::size_t jobs_per_session = 4;
  double favourite = 0.7;            // how often a session runs its own pipeline
  std::uint32_t seed = 2026;
  bool keep_ram_copy = true;         // runtime_options::keep_ram_copy
  policy_factory eviction = make_lru_policy;
};

inline bytes_t to_bytes(double gb, const settings& s) { return static_cast<bytes_t>(gb * s.bytes_per_gb); }

/// Registers the models: synthetic tensors (8 layers each), loads paced at the disk's speed.
inline void add_models(runtime& rt, const settings& s) {
  for (const auto& m : models()) {
    auto floats = static_cast<int64_t>(to_bytes(m.gb, s) / 4 / 8);
    auto d = synthetic_model(m.id, std::vector<int64_t>(8, std::max<int64_t>(floats, 1)));
    auto read = d.loader;
    auto disk = s.disk_gb_per_s * s.bytes_per_gb * s.speedup;
    d.loader = [read, disk](const model_descriptor& self) {
      auto start = std::chrono::steady_clock::now();
      auto model = read(self);
      std::this_thread::sleep_until(start + std::chrono::duration_cast<std::chrono::nanoseconds>(
                                              std::chrono::duration<double>(static_cast<double>(self.bytes) / disk)));
      return model;
    };
    rt.models().add(d);
  }
}

inline runtime_options runtime_for(const settings& s) {
  runtime_options o;
  o.ram_budget_bytes = to_bytes(s.ram_gb, s);
  for (std::size_t d = 0; d < s.devices; ++d) {
    device_options dev;
    dev.kind = device_kind::simulated;
    dev.budget_bytes = to_bytes(s.device_gb, s);
    dev.simulated_bandwidth_bytes_per_s = s.copy_gb_per_s * s.bytes_per_gb * s.speedup;
    o.devices.push_back(dev);
  }
  o.keep_ram_copy = s.keep_ram_copy;
  o.eviction = s.eviction;
  o.loader_threads = 2;
  o.check_invariants = false;
  o.default_wait = std::chrono::seconds(120);
  return o;
}

/// The jobs of every session, in the order each session submits them (seeded).
inline std::vector<std::vector<const pipeline*>> plan(const settings& s) {
  std::mt19937 rng{s.seed};
  std::uniform_real_distribution<double> coin{0, 1};
  std::vector<std::vector<const pipeline*>> sessions(s.sessions);
  const auto& ps = pipelines();
  for (std::size_t k = 0; k < s.sessions; ++k) {
    const auto* own = &ps[k % ps.size()];
    for (std::size_t j = 0; j < s.jobs_per_session; ++j)
      sessions[k].push_back(coin(rng) < s.favourite ? own : &ps[rng() % ps.size()]);
  }
  return sessions;
}

inline job_spec make_job(const pipeline& p, const settings& s, std::size_t session, std::size_t index) {
  job_spec job;
  job.name = std::string{p.name} + " s" + std::to_string(session) + "." + std::to_string(index);
  for (const auto& st : p.stages) {
    stage_spec stage;
    for (auto m : st.models)
      stage.models.push_back(m);
    stage.name = st.name;
    stage.target = stage_target::any_gpu();
    auto compute = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(st.compute_s * s.compute_scale / s.speedup));
    stage.work = [compute](stage_context& ctx) {
      auto until = std::chrono::steady_clock::now() + compute;
      while (std::chrono::steady_clock::now() < until && !ctx.cancelled())
        std::this_thread::sleep_for(std::min<std::chrono::nanoseconds>(compute, std::chrono::milliseconds(5)));
    };
    job.stages.push_back(std::move(stage));
  }
  return job;
}

struct outcome_of_run {
  double makespan_s = 0;
  bytes_t bytes_to_devices = 0;
  bytes_t bytes_from_disk = 0;
  bytes_t bytes_from_devices = 0;  // copies back to RAM (keep_ram_copy = false)
  std::size_t jobs = 0;
  std::size_t failed = 0;
  int http_port = -1;  // where the status page was served, if it was
  std::size_t max_passed_over = 0;
};

/// Runs the whole workload under `order` (and prefetch); returns when every job has ended. Each session
/// submits its jobs at once from its own thread, or (`same_order`, for comparisons) one thread submits
/// them round-robin over the sessions, so that every order sees the same queue. `progress` prints a line
/// every half second.
inline outcome_of_run run(const settings& s, const scheduler_options& order, const std::string& trace_path = {},
                          bool progress = false, bool same_order = false, int http_port = -1) {
  auto options = runtime_for(s);
  options.trace_path = trace_path;
  runtime rt{options};
  add_models(rt, s);
  std::unique_ptr<http_endpoint> http;  // the status page, when asked for (--http)
  if (http_port >= 0) {
    http_options ho;
    ho.port = static_cast<std::uint16_t>(http_port);
    http = std::make_unique<http_endpoint>(rt, ho);
    std::printf("status page at %s\n", http->url().c_str());
    std::fflush(stdout);
  }
  outcome_of_run out;
  if (http)
    out.http_port = http->port();
  auto sessions = plan(s);
  auto start = std::chrono::steady_clock::now();
  std::vector<job_handle> handles;
  {
    scheduler sched{rt, order};
    std::vector<std::vector<job_handle>> per_session(sessions.size());
    if (same_order) {
      for (std::size_t j = 0; j < s.jobs_per_session; ++j)
        for (std::size_t k = 0; k < sessions.size(); ++k)
          per_session[k].push_back(sched.submit(make_job(*sessions[k][j], s, k, j)));
    } else {
      std::vector<std::thread> submitters;
      for (std::size_t k = 0; k < sessions.size(); ++k)
        submitters.emplace_back([&, k] {
          for (std::size_t j = 0; j < sessions[k].size(); ++j)
            per_session[k].push_back(sched.submit(make_job(*sessions[k][j], s, k, j)));
        });
      for (auto& t : submitters)
        t.join();
    }
    for (auto& hs : per_session)
      handles.insert(handles.end(), hs.begin(), hs.end());
    for (;;) {
      std::size_t ended = 0;
      for (auto& h : handles)
        ended += h.status().ended();
      if (ended == handles.size())
        break;
      if (progress) {
        auto st = rt.stats();
        std::printf("  %5.1f s  jobs %zu/%zu  RAM %6.1f MiB  loaded %7.1f MiB  copied %7.1f MiB\n",
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), ended,
                    handles.size(), static_cast<double>(st.ram.used_bytes) / (1 << 20),
                    static_cast<double>(st.ram.bytes_loaded) / (1 << 20),
                    [&] {
                      bytes_t c = 0;
                      for (const auto& d : st.devices)
                        c += d.bytes_copied_in;
                      return static_cast<double>(c) / (1 << 20);
                    }());
        std::fflush(stdout);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(progress ? 500 : 5));
    }
  }
  out.makespan_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  auto st = rt.stats();
  out.bytes_from_devices = st.ram.bytes_from_devices;  // counted in bytes_loaded too: loads are either
  out.bytes_from_disk = st.ram.bytes_loaded - std::min(st.ram.bytes_loaded, st.ram.bytes_from_devices);
  for (const auto& d : st.devices)
    out.bytes_to_devices += d.bytes_copied_in;
  out.jobs = handles.size();
  for (auto& h : handles) {
    auto js = h.wait();
    out.failed += js.state != job_state::done;
    out.max_passed_over = std::max(out.max_passed_over, js.passed_over);
  }
  return out;
}

} // namespace mcache::workload
