#pragma once
// A fleet node: a runtime and its scheduler, published on a port for routers (Note [The fleet],
// router.hpp). The embedding program registers its pipelines, since code does not travel: a job from the
// network names a pipeline, model ids and small parameters, and the pipeline turns them into a job_spec.
//
//   mcache::fleet::node_options o;
//   o.port = 7000;                                   // loopback unless `listen` says otherwise (then TLS)
//   mcache::fleet::node n{rt, sched, o, {{"sdxl", make_sdxl_job}}};
//   // ... serves until destroyed
//
// Note [Node jobs]: a request is checked against `request_limits`, then its key is looked up: a key seen
// before joins the run in progress or gets the result kept for it (the last `kept_results` keys), so a
// job sent twice never runs twice. Then the pipeline builds the job, and the scheduler checks the plan
// (unknown models, sizes) before anything is queued: every refusal is a typed error that changes nothing.
// While jobs are accepted and end, a summary thread reads the runtime's tiers and pushes a summary to
// every watching router when it changed, at most once per `summary_interval`.

#include "runtime/core/fleet/fleet_types.hpp"
#include "runtime/fleet/network.hpp"
#include "runtime/scheduler.hpp"

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>

namespace mcache {
class runtime;
}

namespace mcache::fleet {

/// Builds the job for a request. Its stages' work may write to `output`, which the caller gets back (keep
/// it small: results travel, weights do not). Throw request_error (invalid_argument) for parameters or
/// models the pipeline cannot use.
using pipeline = std::function<job_spec(const job_request& request, std::shared_ptr<std::string> output)>;

struct node_options {
  std::string name;                   // in summaries and results; default "<host>-<pid>"
  std::string listen = "127.0.0.1";   // Note [Fleet security]: anything but loopback needs `tls`
  std::uint16_t port = 0;             // 0: any free port (see node::port)
  bool reuse_address = true;          // a restarted node can take its port back at once
  tls_options tls;
  std::chrono::milliseconds summary_interval{200};
  request_limits limits;
  std::size_t kept_results = 4096;    // results kept for keys seen again (Note [Node jobs])
  std::string journal_path;           // if set: a line "<key> <node> <state>" per job that ended
  std::size_t network_threads = 2;
  liveness live;                      // heartbeats, and when a silent router's connection is closed
};

class node {
public:
  /// Publishes the node. `rt` and `sched` must outlive it. Throws request_error: invalid_argument for
  /// unusable options (a non-loopback address without TLS, unreadable TLS files, no pipelines), or when the
  /// port cannot be bound.
  node(runtime& rt, scheduler& sched, node_options options, std::map<std::string, pipeline> pipelines);
  /// Stops serving: its jobs are cancelled (one whose work runs ends when the work returns), and requests
  /// not yet answered get shutting_down, so that routers send them to another node.
  ~node();
  node(const node&) = delete;
  node& operator=(const node&) = delete;

  std::uint16_t port() const;
  const std::string& name() const;
  /// The summary a router would get now.
  node_summary summary() const;
  /// Its job counters in the Prometheus text format, for its status endpoint's /metrics
  /// (`http_options::extra_metrics`): mcache_node_jobs_served_total, mcache_node_jobs_failed_total,
  /// mcache_node_jobs_queued, with a `node` label.
  std::string metrics_text() const;
  /// False once the published actor was stopped from outside (a peer's exit message of reason kill,
  /// which CAF always honours): the node then serves nothing, and its process should exit and be started
  /// again, which its routers see as a lost node.
  bool serving() const;

  struct impl;

private:
  std::unique_ptr<impl> impl_;
};

} // namespace mcache::fleet
