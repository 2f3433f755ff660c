#pragma once
// The sample fleet's pipelines: the mixed workload of samples/pipeline_workload.hpp (SD1.5, SDXL, FLUX.1,
// an 8B LLM), registered on every node, plus "echo" (no models: what routing itself costs). A request
// names the pipeline and the model of each role in order (a fine-tuned UNet may stand in for the base
// one), and may set "steps" (compute scales with it; default 20) or, for echo, "text".

#include "runtime/fleet/node.hpp"
#include "runtime/fleet/router.hpp"
#include "samples/pipeline_workload.hpp"

#include <random>

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

} // namespace mcache::workload
