// mcache-router: the fleet sample's front end (Note [The fleet], runtime/fleet/router.hpp). Connects to
// the nodes, replays the mixed workload (each session runs its jobs one after another, sessions at once),
// and prints per node the bytes it copied to its devices and the jobs it served, and whether every job
// finished exactly once. Exit status 0 only if every job has exactly one result.
//
//   mcache-router --nodes 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 --sessions 6 --jobs 8

#include "runtime/fleet/router.hpp"
#include "samples/fleet/fleet_pipelines.hpp"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <thread>

using namespace mcache;

int main(int argc, char** argv) {
  workload::settings s;
  s.sessions = 6;
  s.jobs_per_session = 8;
  std::string nodes, policy = "residency";
  std::size_t wait_nodes = 0;
  bool progress = false;
  fleet::router_options o;
  CLI::App app{"mcache-router: replays the mixed workload over a fleet of mcache-node processes"};
  app.add_option("--nodes", nodes, "host:port of each node, comma-separated")->required();
  app.add_option("--policy", policy, "residency (default) or round_robin")->check(CLI::IsMember({"residency", "round_robin"}));
  app.add_option("--sessions", s.sessions, "sessions submitting at once")->check(CLI::PositiveNumber);
  app.add_option("--jobs", s.jobs_per_session, "jobs per session")->check(CLI::PositiveNumber);
  app.add_option("--seed", s.seed, "the workload's seed");
  app.add_option("--wait-nodes", wait_nodes, "wait (up to 30 s) until this many nodes are up before starting");
  app.add_flag("--progress", progress, "print a line per finished job");
  app.add_option("--name", o.name, "the router's name: its job keys are <name>-s<session>.<job>");
  app.add_option("--tls-cert", o.tls.certificate, "PEM certificate chain of this router");
  app.add_option("--tls-key", o.tls.key, "PEM private key");
  app.add_option("--tls-ca", o.tls.ca_file, "PEM CA file that signs the fleet's certificates");
  CLI11_PARSE(app, argc, argv);
  try {
    for (std::size_t at = 0; at <= nodes.size();) {
      auto comma = nodes.find(',', at);
      auto part = nodes.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
      if (!part.empty())
        o.nodes.push_back(fleet::parse_endpoint(part));
      if (comma == std::string::npos)
        break;
      at = comma + 1;
    }
    o.policy = policy == "round_robin" ? fleet::routing_policy::round_robin : fleet::routing_policy::residency;
    o.wait_for_node = std::chrono::seconds(30);
    fleet::router r{o};
    if (wait_nodes > 0) {
      auto up = r.wait_for_nodes(wait_nodes, std::chrono::seconds(30));
      if (up < wait_nodes) {
        std::string missing;
        for (const auto& n : r.stats().nodes)
          if (!n.up || !n.reported)
            missing += " " + n.where.host + ":" + std::to_string(n.where.port)
                       + (n.last_error.empty() ? "" : " (" + n.last_error + ")");
        std::fprintf(stderr, "mcache-router: only %zu of %zu nodes came up within 30 s; not up:%s\n", up, wait_nodes,
                     missing.c_str());
        return 1;
      }
    }
    auto run = workload::replay(r, s, progress);
    auto total = run.jobs;
    // One more summary from every node, so the figures include the last jobs.
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    auto st = r.stats();
    bytes_t fleet_bytes = 0;
    std::printf("\n%-10s %-22s %-5s %8s %9s %6s %10s %7s %16s\n", "node", "address", "up", "connects", "answered",
                "lost", "served", "queued", "MiB to devices");
    for (const auto& n : st.nodes) {
      fleet_bytes += n.bytes_to_devices();
      std::printf("%-10s %-22s %-5s %8llu %9llu %6llu %10llu %7u %16.1f\n", n.name.c_str(),
                  (n.where.host + ":" + std::to_string(n.where.port)).c_str(), n.up ? "yes" : "no",
                  static_cast<unsigned long long>(n.connects), static_cast<unsigned long long>(n.answered),
                  static_cast<unsigned long long>(n.lost), static_cast<unsigned long long>(n.jobs_served()),
                  n.last.queued, static_cast<double>(n.bytes_to_devices()) / (1 << 20));
    }
    std::size_t once = 0, twice = 0;
    for (const auto& [k, c] : run.results) {
      once += c == 1;
      twice += c > 1;
    }
    auto missing = total - run.results.size();
    std::printf("\npolicy %s: %zu jobs in %.1f s; %llu done, %llu failed, %llu sent again after their node was lost\n",
                fleet::to_string(o.policy), total, run.seconds, static_cast<unsigned long long>(st.done),
                static_cast<unsigned long long>(st.failed), static_cast<unsigned long long>(st.resent));
    std::printf("fleet bytes to devices: %.1f MiB\n", static_cast<double>(fleet_bytes) / (1 << 20));
    for (const auto& [k, e] : run.errors)
      std::printf("  %s: %s\n", k.c_str(), e.c_str());
    bool exact = run.exactly_once();
    std::printf("%s: %zu of %zu jobs have exactly one result (%zu with more than one, %zu without)\n",
                exact ? "every job finished exactly once" : "NOT every job finished exactly once", once, total, twice,
                missing);
    return exact ? 0 : 1;
  } catch (const request_error& e) {
    std::fprintf(stderr, "mcache-router: %s\n", e.what());
    return 2;
  }
}
