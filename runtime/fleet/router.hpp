#pragma once
// Note [The fleet]: several machines run the same pipelines. Each runs a `node` (node.hpp): a runtime and
// its scheduler, published on a port through CAF's own network layer (libcaf_io). A `router` connects to
// a list of nodes, watches their residency summaries, and sends each job to the node where it would move
// the fewest bytes (Note [Routing], runtime/core/fleet/routing.hpp). Weights never cross the network:
// jobs and small results do. A node that dies is seen through CAF's monitors; its unfinished jobs are
// sent again to another node once each, and every caller gets a result or a typed error, never silence
// (Note [Exactly once], same file). A node that comes back is connected again and rejoins.
//
//   mcache::fleet::router_options o;
//   o.nodes = {{"127.0.0.1", 7001}, {"127.0.0.1", 7002}};
//   mcache::fleet::router r{o};
//   r.wait_for_nodes(2, std::chrono::seconds(5));
//   auto result = r.run({"", "sdxl", {"clip_l", "sdxl_clip_g", "sdxl_unet", "sdxl_vae"}, {{"steps", "30"}}});
//
// Note [Fleet security]: a node listens on loopback unless told otherwise, and then only with mutual TLS
// (caf::openssl): both ends present a certificate signed by the fleet's CA and refuse a peer whose
// certificate does not verify. A router needs TLS options to reach any node that is not on loopback.
// Whatever comes from the network is checked like any bad input (check_request on the node, summary
// sizes on the router): unknown pipelines, unknown models and absurd sizes get typed errors and change
// nothing; a message outside the node's interface is refused by CAF.

#include "runtime/core/fleet/routing.hpp"
#include "runtime/fleet/network.hpp"

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

namespace mcache::fleet {

struct endpoint {
  std::string host;
  std::uint16_t port = 0;
};
/// "host:port" -> endpoint. Throws request_error (invalid_argument) naming the text.
endpoint parse_endpoint(const std::string& text);

struct router_options {
  std::vector<endpoint> nodes;
  routing_policy policy = routing_policy::residency;
  std::size_t balance_bound = 4;                       // Note [Routing]
  tls_options tls;                                     // Note [Fleet security]
  std::chrono::milliseconds reconnect_interval{250};   // a lost or unreachable node is tried this often
  std::chrono::milliseconds wait_for_node{10000};      // a job no node can take waits this long for one
  std::chrono::milliseconds job_timeout{10 * 60 * 1000};  // a node that has not answered by then: timed_out
  std::string name;                                    // the prefix of job keys; default random
  std::size_t network_threads = 2;
  liveness live;  // a node silent for live.connection_timeout (hung, or cut off) is lost
};

/// What the router knows of one node.
struct node_report {
  endpoint where;
  bool up = false;
  bool reported = false;        // a summary came (routing weighs it; kept while it is down)
  std::string name;             // from its summaries
  node_summary last;            // its last summary (kept while it is down)
  std::uint64_t connects = 0;   // times it was connected (more than 1: it rejoined)
  std::uint64_t sent = 0;       // attempts sent to it
  std::uint64_t answered = 0;   // results it returned
  std::uint64_t lost = 0;       // jobs in flight on it when it was lost
  std::string last_error;       // why the last connection attempt failed, if it did
  // What earlier runs of the node process had reported when it came back as a new process (its
  // counters start again from 0): bytes copied to its devices and jobs it served.
  bytes_t earlier_bytes_to_devices = 0;
  std::uint64_t earlier_jobs_served = 0;
  bytes_t bytes_to_devices() const { return earlier_bytes_to_devices + last.bytes_to_devices; }
  std::uint64_t jobs_served() const { return earlier_jobs_served + last.jobs_served; }
};

struct router_stats {
  std::vector<node_report> nodes;
  std::uint64_t accepted = 0;   // jobs submitted
  std::uint64_t done = 0;       // answered with a result
  std::uint64_t failed = 0;     // answered with an error
  std::uint64_t resent = 0;     // sent again after their node was lost
  std::uint64_t late_dropped = 0;  // answers for an attempt that was over (Note [Exactly once])
  std::uint64_t in_flight = 0;
};

class router {
public:
  /// Starts connecting to every node (in the background: see wait_for_nodes). Throws request_error
  /// (invalid_argument) for unusable options: no nodes, a non-loopback node without TLS, bad TLS files.
  explicit router(router_options options);
  /// Callers still waiting get shutting_down.
  ~router();
  router(const router&) = delete;
  router& operator=(const router&) = delete;

  /// Sends a job (an empty key gets a fresh one). The future holds its result, or throws request_error:
  /// the node's typed error, node_unavailable (no node could run it), invalid_argument (a key already in
  /// flight, sizes beyond the limits), timed_out (job_timeout passed).
  std::future<job_result> submit(job_request request);
  job_result run(job_request request) { return submit(std::move(request)).get(); }
  /// How many nodes are up and have reported what they serve and hold (so that a job can be routed, or
  /// refused as unknown_pipeline, at once), after waiting until at least `count` are or `timeout` passed.
  std::size_t wait_for_nodes(std::size_t count, std::chrono::milliseconds timeout);
  router_stats stats();
  const std::string& name() const;

  struct impl;

private:
  std::unique_ptr<impl> impl_;
};

} // namespace mcache::fleet
