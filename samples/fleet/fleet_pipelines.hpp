#pragma once
// The sample fleet's pipelines: the mixed workload of samples/pipeline_workload.hpp (SD1.5, SDXL, FLUX.1,
// an 8B LLM), registered on every node, plus "echo" (no models: what routing itself costs). A request
// names the pipeline and the model of each role in order (a fine-tuned UNet may stand in for the base
// one), and may set "steps" (compute scales with it; default 20) or, for echo, "text".

#include "runtime/fleet/node.hpp"
#include "runtime/fleet/router.hpp"
#include "samples/pipeline_workload.hpp"

#include <atomic>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>

namespace mcache::workload {

inline fleet::pipeline fleet_pipeline(const pipeline& p, const settings& s) {
  return [&p, s](const fleet::job_request& r, std::shared_ptr<std::string> output) {
    std::size_t roles = 0;
    for (const auto& st : p.stages)
      roles += st.models.size();
    if (r.models.size() != roles)
      throw request_error(failure{errc::invalid_argument, std::string{"pipeline '"} + p.name + "' takes "
                                                            + std::to_string(roles) + " models (one per role), not "
                                                            + std::to_string(r.models.size())});
    double steps = 20;
    if (auto it = r.params.find("steps"); it != r.params.end()) {
      char* end = nullptr;
      steps = std::strtod(it->second.c_str(), &end);
      if (end == it->second.c_str() || *end != '\0' || !(steps >= 1 && steps <= 1000))
        throw request_error(failure{errc::invalid_argument, "steps must be a number from 1 to 1000, not '" + it->second + "'"});
    }
    settings scaled = s;
    scaled.compute_scale *= steps / 20;
    auto job = make_job(p, scaled, 0, 0);
    std::size_t role = 0;
    for (auto& st : job.stages)
      for (auto& m : st.models)
        m = r.models[role++];
    job.name = r.key;
    job.stages.back().work = [inner = job.stages.back().work, output, name = std::string{p.name}, steps](stage_context& ctx) {
      inner(ctx);
      *output = name + " done in " + std::to_string(static_cast<int>(steps)) + " steps on device " + std::to_string(ctx.device());
    };
    return job;
  };
}

inline fleet::pipeline echo_pipeline() {
  return [](const fleet::job_request& r, std::shared_ptr<std::string> output) {
    job_spec job;
    stage_spec st;
    st.target = stage_target::cpu();
    auto text = r.params.count("text") ? r.params.at("text") : std::string{};
    st.work = [output, text](stage_context&) { *output = text; };
    job.stages.push_back(std::move(st));
    return job;
  };
}

inline std::map<std::string, fleet::pipeline> fleet_pipelines(const settings& s) {
  std::map<std::string, fleet::pipeline> all;
  for (const auto& p : pipelines())
    all[p.name] = fleet_pipeline(p, s);
  all["echo"] = echo_pipeline();
  return all;
}

/// The request for one job of the workload: the pipeline's own models in role order.
inline fleet::job_request fleet_request(const pipeline& p) {
  fleet::job_request r;
  r.pipeline = p.name;
  for (const auto& st : p.stages)
    for (auto m : st.models)
      r.models.push_back(m);
  return r;
}

/// The fleet workload: sessions' jobs interleaved in submission order (seeded), as a router sees them.
inline std::vector<fleet::job_request> fleet_workload(const settings& s) {
  auto sessions = plan(s);
  std::vector<fleet::job_request> out;
  for (std::size_t j = 0; j < s.jobs_per_session; ++j)
    for (std::size_t k = 0; k < sessions.size(); ++k)
      out.push_back(fleet_request(*sessions[k][j]));
  return out;
}

/// What a replay of the workload through a router saw.
struct replay_outcome {
  std::size_t jobs = 0;
  std::map<std::string, int> results;        // key -> results received (exactly once: 1 each)
  std::map<std::string, std::string> errors;  // key -> why it failed (or got another key's result)
  double seconds = 0;
  /// Every job has exactly one result and none failed.
  bool exactly_once() const {
    if (!errors.empty() || results.size() != jobs)
      return false;
    for (const auto& [k, n] : results)
      if (n != 1)
        return false;
    return true;
  }
};

/// Replays the workload through `r`: each session runs its jobs one after another, sessions at once, as
/// users of a server do. Keys are "<router>-s<session>.<job>". `progress` prints a line per job.
inline replay_outcome replay(fleet::router& r, const settings& s, bool progress = false) {
  auto sessions = plan(s);
  replay_outcome out;
  out.jobs = s.sessions * s.jobs_per_session;
  std::mutex mutex;
  std::atomic<std::size_t> finished{0};
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (std::size_t k = 0; k < sessions.size(); ++k)
    threads.emplace_back([&, k] {
      for (std::size_t j = 0; j < sessions[k].size(); ++j) {
        auto req = fleet_request(*sessions[k][j]);
        req.key = r.name() + "-s" + std::to_string(k) + "." + std::to_string(j);
        std::string line;
        try {
          auto res = r.run(req);
          std::lock_guard<std::mutex> guard{mutex};
          ++out.results[res.key];
          if (res.key != req.key)
            out.errors[req.key] = "answered with the result of '" + res.key + "'";
          line = req.key + " " + req.pipeline + " on " + res.node + (res.attempt > 1 ? " (sent again)" : "");
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> guard{mutex};
          out.errors[req.key] = e.what();
          line = req.key + " failed: " + e.what();
        }
        auto n = ++finished;
        if (progress) {
          std::lock_guard<std::mutex> guard{mutex};
          std::printf("progress %zu/%zu %s\n", n, out.jobs, line.c_str());
          std::fflush(stdout);
        }
      }
    });
  for (auto& t : threads)
    t.join();
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

/// The settings of the fleet sample's nodes: a 40 GB GPU each (FLUX.1 fits whole on one, but not two
/// pipelines' models), 64 GB of RAM, everything 16x faster than real.
inline settings fleet_node_settings() {
  settings s;
  s.speedup = 16;
  s.device_gb = 40;
  s.ram_gb = 64;
  return s;
}

} // namespace mcache::workload
