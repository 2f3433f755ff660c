#pragma once
// What crosses the network between a router and its nodes (Note [The fleet], runtime/fleet/router.hpp):
// jobs named by pipeline with model ids and small parameters, their results, and each node's residency
// summary. Never weights. Plain structs, CAF-free; messages/fleet.hpp makes them serializable.

#include "messages/ids.hpp"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mcache::fleet {

/// The tier of a resident model in a summary: a device index, or `ram_tier` for the host copy.
constexpr std::int32_t ram_tier = -2;

/// A job for a node: run the pipeline the node registered under `pipeline` on `models` with `params`.
struct job_request {
  /// The caller's name for the job, unique per caller (the router makes "<router>-<n>"). A node that has
  /// seen the key does not run the job again: it answers with the first run's result, or joins it.
  std::string key;
  std::string pipeline;
  std::vector<model_id> models;
  std::map<std::string, std::string> params;
  std::int32_t priority = 0;
  std::uint64_t deadline_ms = 0;  // 0: none; else the job fails with deadline_exceeded after this long
};

/// The answer to a job that ran to its end.
struct job_result {
  std::string key;
  std::string node;            // which node ran it
  std::string output;          // what the pipeline wrote (small)
  std::uint64_t queued_ns = 0;  // from arrival at the node to its first stage
  std::uint64_t run_ns = 0;     // from arrival to the end
  std::uint32_t attempt = 1;   // 2: the first node was lost and the router sent it again
  std::uint64_t ended_at = 0;  // the node's count of ended jobs once this one ended (a summary whose
                               // jobs_served + jobs_failed reaches it shows the tiers after this job)
};

/// One model's bytes in one tier of a node.
struct resident_model {
  model_id model;
  std::int32_t tier = ram_tier;  // ram_tier, or a device index
  bytes_t bytes = 0;             // resident there now (a device may hold part of a model)
  bytes_t model_bytes = 0;       // the whole model
};

inline bool operator==(const resident_model& a, const resident_model& b) {
  return a.model == b.model && a.tier == b.tier && a.bytes == b.bytes && a.model_bytes == b.model_bytes;
}

/// One tier's room.
struct tier_room {
  std::int32_t tier = ram_tier;
  bytes_t budget_bytes = 0;
  bytes_t free_bytes = 0;
};

inline bool operator==(const tier_room& a, const tier_room& b) {
  return a.tier == b.tier && a.budget_bytes == b.budget_bytes && a.free_bytes == b.free_bytes;
}

/// What a node tells the routers that watch it: sent on change, at most every `summary_interval`.
struct node_summary {
  std::string node;
  std::uint64_t incarnation = 0;  // random per node object: a new one means the node started again
  std::uint64_t sequence = 0;     // grows with every summary a node process sends
  std::vector<std::string> pipelines;
  std::vector<resident_model> resident;
  std::vector<tier_room> tiers;
  std::uint32_t queued = 0;          // jobs accepted and not ended (queued or running)
  std::uint64_t jobs_served = 0;     // jobs that ended done, since the node started
  std::uint64_t jobs_failed = 0;     // jobs that ended failed or cancelled
  bytes_t bytes_to_devices = 0;      // host-to-device bytes copied since the node started
  bytes_t bytes_from_disk = 0;       // bytes loaded into RAM since the node started
};

/// Two summaries say the same of their node (the sequence aside).
inline bool same_state(const node_summary& a, const node_summary& b) {
  return a.node == b.node && a.incarnation == b.incarnation && a.pipelines == b.pipelines && a.resident == b.resident && a.tiers == b.tiers
         && a.queued == b.queued && a.jobs_served == b.jobs_served && a.jobs_failed == b.jobs_failed
         && a.bytes_to_devices == b.bytes_to_devices && a.bytes_from_disk == b.bytes_from_disk;
}

/// Limits on what a node accepts from the network: a request beyond them is refused with
/// invalid_argument before anything else happens.
struct request_limits {
  std::size_t max_key = 256;
  std::size_t max_name = 256;           // a pipeline or model id
  std::size_t max_models = 64;
  std::size_t max_params = 64;
  std::size_t max_param_bytes = 64 << 10;  // keys and values together
  std::uint64_t max_deadline_ms = 24ull * 3600 * 1000;
};

} // namespace mcache::fleet
