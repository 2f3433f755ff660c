// mcache-node: one machine of the fleet (Note [The fleet], runtime/fleet/router.hpp). Runs a runtime with
// the sample workload's models and pipelines (simulated devices unless --config says otherwise) and its
// scheduler, and serves jobs on a port until SIGINT or SIGTERM.
//
//   mcache-node --port 7001 --name a                        # loopback
//   mcache-node --listen 0.0.0.0 --port 7001 --tls-cert node.pem --tls-key node.key --tls-ca ca.pem
//   mcache-node --node-config node.json --config runtime.json
//
// --node-config is JSON with the node's keys: {"listen": "127.0.0.1", "port": 7001, "name": "a",
// "summary_interval": "200ms", "journal": "a.log", "tls": {"certificate": ..., "key": ..., "ca_file": ...}};
// flags given on the command line win over it.

#include "runtime/config.hpp"
#include "runtime/http_endpoint.hpp"
#include "runtime/fleet/node.hpp"
#include "runtime/runtime.hpp"
#include "runtime/scheduler.hpp"
#include "samples/fleet/fleet_pipelines.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>

using namespace mcache;

namespace {

void apply_node_config(const std::string& path, fleet::node_options& o) {
  std::ifstream in{path};
  if (!in)
    throw request_error(failure{errc::invalid_argument, "--node-config '" + path + "' cannot be read"});
  nlohmann::json j;
  try {
    in >> j;
  } catch (const std::exception& e) {
    throw request_error(failure{errc::invalid_argument, "--node-config '" + path + "': " + e.what()});
  }
  for (const auto& [key, v] : j.items()) {
    try {
      if (key == "listen") o.listen = v.get<std::string>();
      else if (key == "port") {
        if (!v.is_number_unsigned() || v.get<std::uint64_t>() > 65535)  // get<uint16_t> wrapped 70000 to 4464
          throw request_error(failure{errc::invalid_argument, "a port from 0 to 65535, got " + v.dump()});
        o.port = static_cast<std::uint16_t>(v.get<std::uint64_t>());
      }
      else if (key == "name") o.name = v.get<std::string>();
      else if (key == "journal") o.journal_path = v.get<std::string>();
      else if (key == "summary_interval")
        o.summary_interval = std::chrono::duration_cast<std::chrono::milliseconds>(parse_duration(v.get<std::string>(), key));
      else if (key == "tls") {
        o.tls.certificate = v.value("certificate", "");
        o.tls.key = v.value("key", "");
        o.tls.ca_file = v.value("ca_file", "");
        o.tls.passphrase = v.value("passphrase", "");
      } else
        throw request_error(failure{errc::invalid_argument, "unknown key"});
    } catch (const std::exception& e) {  // a wrong type (nlohmann), a bad duration or an unknown key
      throw request_error(failure{errc::invalid_argument, "--node-config '" + path + "', key '" + key + "': " + e.what()});
    }
  }
}

} // namespace

int main(int argc, char** argv) {
  auto s = workload::fleet_node_settings();
  fleet::node_options o;
  std::string node_config, port_file, summary_interval;
  double mib_per_gb = 1;
  CLI::App app{"mcache-node: serves the sample pipelines to fleet routers"};
  runtime_flags flags{app};
  app.add_option("--node-config", node_config, "JSON file with the node's options (flags win)");
  auto* listen = app.add_option("--listen", o.listen, "address to listen on (not loopback: TLS required)");
  auto* port = app.add_option("--port", o.port, "port (0: any free port; see --port-file)")->check(CLI::Range(0, 65535));
  auto* name = app.add_option("--name", o.name, "the node's name in summaries and results");
  auto* journal = app.add_option("--journal", o.journal_path, "append '<key> <node> <state>' per job that ended");
  app.add_option("--summary-interval", summary_interval, "at most one summary per this long (default 200ms)");
  app.add_option("--port-file", port_file, "write the port here once listening");
  int http_port = -1;
  app.add_option("--http", http_port, "serve the node's status page, /status and /metrics on this loopback port "
                                      "(0: any free port)")->check(CLI::Range(0, 65535));
  auto* cert = app.add_option("--tls-cert", o.tls.certificate, "PEM certificate chain of this node");
  auto* key = app.add_option("--tls-key", o.tls.key, "PEM private key");
  auto* ca = app.add_option("--tls-ca", o.tls.ca_file, "PEM CA file that signs the fleet's certificates");
  app.add_option("--speedup", s.speedup, "the workload runs this much faster than real")->check(CLI::PositiveNumber);
  app.add_option("--compute-scale", s.compute_scale, "compute time relative to real")->check(CLI::PositiveNumber);
  app.add_option("--mib-per-gb", mib_per_gb, "MiB that stand for 1 GB of the real models")->check(CLI::PositiveNumber);
  app.add_option("--device-gb", s.device_gb, "each simulated device's budget, in real GB")->check(CLI::PositiveNumber);
  app.add_option("--ram-gb", s.ram_gb, "RAM budget, in real GB")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  try {
    s.bytes_per_gb = mib_per_gb * (1 << 20);
    if (!node_config.empty()) {
      // The file first, then the flags given on the command line again over it.
      auto from_flags = o;
      apply_node_config(node_config, o);
      if (*listen) o.listen = from_flags.listen;
      if (*port) o.port = from_flags.port;
      if (*name) o.name = from_flags.name;
      if (*journal) o.journal_path = from_flags.journal_path;
      if (*cert) o.tls.certificate = from_flags.tls.certificate;
      if (*key) o.tls.key = from_flags.tls.key;
      if (*ca) o.tls.ca_file = from_flags.tls.ca_file;
    }
    if (!summary_interval.empty())
      o.summary_interval = std::chrono::duration_cast<std::chrono::milliseconds>(parse_duration(summary_interval, "--summary-interval"));
    // Block the stop signals in every thread; main waits for them below.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, nullptr);

    runtime rt{flags.finish(workload::runtime_for(s))};
    workload::add_models(rt, s);
    scheduler sched{rt, {}};
    fleet::node n{rt, sched, o, workload::fleet_pipelines(s)};
    std::unique_ptr<http_endpoint> http;  // the operators' view of this node's tiers
    if (http_port >= 0) {
      http_options ho;
      ho.port = static_cast<std::uint16_t>(http_port);
      ho.extra_metrics = [&n] { return n.metrics_text(); };  // its job counters beside the tiers' metrics
      http = std::make_unique<http_endpoint>(rt, ho);
      std::printf("mcache-node '%s' status page at %s\n", n.name().c_str(), http->url().c_str());
    }
    std::printf("mcache-node '%s' listening on %s:%u (%s)\n", n.name().c_str(), o.listen.c_str(), n.port(),
                o.tls.enabled() ? "TLS" : "plain TCP, loopback");
    std::fflush(stdout);
    if (!port_file.empty()) {
      auto tmp = port_file + ".tmp";
      std::ofstream out{tmp};
      out << n.port() << "\n";
      out.close();
      // Whole or absent, for a script that polls it; one that cannot be written ends the node, since
      // that script would otherwise wait for it for ever.
      if (!out || std::rename(tmp.c_str(), port_file.c_str()) != 0)
        throw request_error(failure{errc::invalid_argument, "--port-file '" + port_file + "' cannot be written: "
                                                              + std::strerror(errno)});
    }
    int sig = 0;
    for (;;) {
      timespec second{1, 0};
      sig = sigtimedwait(&stop, nullptr, &second);
      if (sig > 0)
        break;
      if (!n.serving()) {
        std::fprintf(stderr, "mcache-node '%s': its actor was stopped from outside; exiting so that it can be "
                             "started again\n", n.name().c_str());
        return 3;
      }
    }
    if (!port_file.empty())
      std::remove(port_file.c_str());  // a script that polls it must not take a stopped node's port
    // Said before the wait: ending the node, its scheduler and runtime waits for the stages running now.
    std::printf("mcache-node '%s' stopping (signal %d): cancelling its jobs, waiting for the stages running now\n",
                n.name().c_str(), sig);
    std::fflush(stdout);
    return 0;
  } catch (const std::exception& e) {  // a request_error, or anything else at start: a bad option, never an abort
    std::fprintf(stderr, "mcache-node: %s\n", e.what());
    return 2;
  }
}
