// #12's targets for the fleet (Note [The fleet], runtime/fleet/router.hpp), each as a ratio against a
// baseline measured in the same run, over real loopback sockets:
//  1. bytes copied to devices, fleet-wide, when the router sends each job where its models are (residency)
//     against round-robin, on the mixed workload over 3 nodes (target <= 0.6);
//  2. what routing adds to a job: the median time of a trivial job through the router, minus the median
//     time of the same job sent straight to the node actor (target <= 1 ms).
// Nodes run in this process (each with its own runtime, scheduler and network stack) to keep the bench one
// program; samples/fleet/run.sh runs them as processes.

#include "messages/fleet.hpp"
#include "runtime/fleet/node.hpp"
#include "runtime/fleet/router.hpp"
#include "samples/fleet/fleet_pipelines.hpp"

#include <CLI/CLI.hpp>
#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>

using namespace mcache;

namespace {

struct bench_node {
  bench_node(const std::string& name, const workload::settings& s) : rt(workload::runtime_for(s)) {
    workload::add_models(rt, s);
    sched = std::make_unique<scheduler>(rt);
    fleet::node_options o;
    o.name = name;
    n = std::make_unique<fleet::node>(rt, *sched, o, workload::fleet_pipelines(s));
  }
  ~bench_node() {
    n.reset();
    sched.reset();
  }
  runtime rt;
  std::unique_ptr<scheduler> sched;
  std::unique_ptr<fleet::node> n;
};

struct fleet_run {
  bytes_t bytes_to_devices = 0;
  double seconds = 0;
  bool exactly_once = false;
  std::vector<std::uint64_t> served;
};

fleet_run run_workload(fleet::routing_policy policy, const workload::settings& s, std::size_t nodes) {
  std::vector<std::unique_ptr<bench_node>> fleet;
  fleet::router_options o;
  for (std::size_t i = 0; i < nodes; ++i) {
    fleet.push_back(std::make_unique<bench_node>(std::string(1, static_cast<char>('a' + i)), s));
    o.nodes.push_back({"127.0.0.1", fleet.back()->n->port()});
  }
  o.policy = policy;
  fleet::router r{o};
  if (r.wait_for_nodes(nodes, std::chrono::seconds(30)) < nodes)
    throw std::runtime_error("the nodes did not come up");
  auto out = workload::replay(r, s);
  fleet_run run;
  run.seconds = out.seconds;
  run.exactly_once = out.exactly_once();
  for (auto& n : fleet) {
    auto summary = n->n->summary();
    run.bytes_to_devices += summary.bytes_to_devices;
    run.served.push_back(summary.jobs_served);
  }
  return run;
}

double median_ms(std::vector<double> xs) {
  std::sort(xs.begin(), xs.end());
  return xs[xs.size() / 2];
}

} // namespace

int main(int argc, char** argv) {
  auto s = workload::fleet_node_settings();
  s.sessions = 6;
  s.jobs_per_session = 8;
  std::size_t nodes = 3, echoes = 400;
  CLI::App app{"fleet bench: residency routing against round-robin, and what routing adds to a job"};
  app.add_option("--nodes", nodes, "nodes in the fleet")->check(CLI::Range(2, 8));
  app.add_option("--sessions", s.sessions, "sessions submitting at once")->check(CLI::PositiveNumber);
  app.add_option("--jobs", s.jobs_per_session, "jobs per session")->check(CLI::PositiveNumber);
  app.add_option("--seed", s.seed, "the workload's seed");
  app.add_option("--echoes", echoes, "trivial jobs timed for the routing overhead")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);

  std::printf("mixed workload: %zu sessions x %zu jobs over %zu nodes (one %.0f GB GPU each, %.0fx real speed)\n",
              s.sessions, s.jobs_per_session, nodes, s.device_gb, s.speedup);
  auto rr = run_workload(fleet::routing_policy::round_robin, s, nodes);
  auto res = run_workload(fleet::routing_policy::residency, s, nodes);
  auto line = [](const char* name, const fleet_run& r) {
    std::string served;
    for (auto n : r.served)
      served += (served.empty() ? "" : "/") + std::to_string(n);
    std::printf("  %-12s %8.1f MiB to devices  %5.1f s  jobs per node %s  %s\n", name,
                static_cast<double>(r.bytes_to_devices) / (1 << 20), r.seconds, served.c_str(),
                r.exactly_once ? "every job exactly once" : "NOT EXACTLY ONCE");
  };
  line("round-robin", rr);
  line("residency", res);
  auto ratio = static_cast<double>(res.bytes_to_devices) / static_cast<double>(std::max<bytes_t>(rr.bytes_to_devices, 1));
  std::printf("bytes to devices, residency / round-robin: %.2f (target <= 0.6): %s\n", ratio, ratio <= 0.6 ? "met" : "NOT MET");

  // What routing adds: the same trivial job straight to a node actor, then through the router.
  workload::settings small = s;
  bench_node a{"a", small};
  fleet::job_request echo;
  echo.pipeline = "echo";
  echo.params = {{"text", "x"}};
  std::vector<double> direct, routed;
  {
    fleet::network_system net{fleet::tls_options{}, 2};
    auto handle = net.system->middleman().remote_actor<fleet::node_actor>("127.0.0.1", a.n->port());
    if (!handle)
      throw std::runtime_error("cannot reach the node");
    caf::scoped_actor self{*net.system};
    for (std::size_t i = 0; i < echoes; ++i) {
      echo.key = "direct-" + std::to_string(i);
      auto t0 = std::chrono::steady_clock::now();
      self->request(*handle, std::chrono::seconds(10), fleet::run_atom::value, echo)
        .receive([](fleet::job_result&) {}, [](caf::error& e) { throw std::runtime_error(caf::to_string(e)); });
      direct.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  {
    fleet::router_options o;
    o.nodes = {{"127.0.0.1", a.n->port()}};
    fleet::router r{o};
    r.wait_for_nodes(1, std::chrono::seconds(10));
    for (std::size_t i = 0; i < echoes; ++i) {
      echo.key = "routed-" + std::to_string(i);
      auto t0 = std::chrono::steady_clock::now();
      r.run(echo);
      routed.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  auto d = median_ms(direct), t = median_ms(routed);
  std::printf("trivial job, median of %zu: straight to the node %.3f ms, through the router %.3f ms: routing adds %.3f ms "
              "(target <= 1 ms): %s\n",
              echoes, d, t, t - d, t - d <= 1.0 ? "met" : "NOT MET");
  return 0;
}
