#pragma once
// The router's decisions, CAF-free so that tests drive them directly: where a job goes (Note [Routing]),
// and which jobs a lost node leaves to send again (Note [Exactly once]).
//
// Note [Routing]: with `routing_policy::residency`, a job goes to the node where it would move the fewest
// bytes: for each of its models, the bytes not yet in that node's RAM plus the bytes not yet on its best
// device (a model resident on no device counts whole), where the node's view is its last summary plus
// the models of jobs this router sent it that have not ended (they are arriving there now, whatever the
// summary says) or that ended after its last summary was made (an answer can overtake the summary that
// shows its models). A model's size comes from any node's summary that names it; a model no summary
// names costs 1 byte wherever it is not arriving, so it decides only between nodes where it is arriving
// and the others. Ties go to the shorter queue, then round-robin.
// A node whose queue is `balance_bound` or more jobs longer than the shortest queue is passed over, so a
// warm node cannot collect every job while others idle. Only nodes that are up and have the pipeline
// are eligible. `routing_policy::round_robin` takes eligible nodes in turn (for comparison). A job no
// node can take waits for one up to `wait_for_node`, unless every node is up and has said what it
// serves and none serves its pipeline: then it is `unknown_pipeline` at once (`unplaceable`).
//
// Note [Exactly once]: every job the router accepted ends in exactly one answer to its caller: a result,
// or a typed error. A job whose node is lost (its connection went down, or the request to it failed in
// the network) is sent again, once, to another node; if that one is lost too, or no node is up, the caller
// gets node_unavailable. Each send is an attempt; an answer that arrives for an attempt that is no longer
// the job's current one (the first node answered after all, late) is dropped, so no caller is answered
// twice. A node never runs the same job key twice (it joins the run in progress or answers the result it
// kept), so a job sent again to the same node does not run again. What cannot be prevented: a node that
// finished a job and died before its answer arrived has run it once, and the job runs again elsewhere.

#include "messages/errc.hpp"
#include "runtime/core/fleet/fleet_types.hpp"

#include <chrono>
#include <cstddef>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace mcache::fleet {

enum class routing_policy { residency, round_robin };
const char* to_string(routing_policy policy);

/// The router's view of one node.
struct node_view {
  bool up = false;
  bool has_summary = false;
  node_summary summary;
  std::multiset<model_id> arriving;  // models of this router's jobs in flight there
  /// Models of jobs it answered that its summaries do not show yet: model -> the answer's ended_at.
  std::map<model_id, std::uint64_t> just_used;
  /// A summary came: forget what it shows (the answers it counts).
  void summarized();
  std::size_t in_flight = 0;         // this router's jobs in flight there

  /// The queue the router compares: what the node reported, or what this router sent it if more.
  std::size_t queue() const { return std::max<std::size_t>(summary.queued, in_flight); }
  bool serves(const std::string& pipeline) const;
};

struct route_choice {
  std::size_t node = 0;
  bytes_t bytes_to_move = 0;  // the estimate that chose it (0 under round-robin)
};

/// Note [Routing]: why a job whose pipeline no node up serves cannot be placed. `waited_out` false (the
/// job just came): unknown_pipeline once every node is up and has said what it serves, and none serves
/// it; nothing while one of them might (the job waits for it, up to wait_for_node). `waited_out` true
/// (its wait is over): unknown_pipeline if every node is up, else node_unavailable; both name the
/// pipeline and what the nodes up serve.
std::optional<failure> unplaceable(const std::vector<node_view>& nodes, const std::string& pipeline,
                                   bool waited_out, std::chrono::milliseconds waited = {});

class router_policy {
public:
  explicit router_policy(routing_policy policy = routing_policy::residency, std::size_t balance_bound = 4);
  /// Note [Routing]: the node for a job, or nothing if no node is up with the pipeline. `excluded` (the
  /// node a job was lost on) is never chosen: the job waits for another node, or for that one to rejoin.
  std::optional<route_choice> choose(const std::vector<node_view>& nodes, const std::string& pipeline,
                                     const std::vector<model_id>& models,
                                     std::optional<std::size_t> excluded = std::nullopt);
  /// The bytes a job would move on `node` (Note [Routing]); `sizes` from `known_sizes`.
  static bytes_t bytes_to_move(const node_view& node, const std::vector<model_id>& models,
                               const std::map<model_id, bytes_t>& sizes);
  /// The size of each model any node's summary names.
  static std::map<model_id, bytes_t> known_sizes(const std::vector<node_view>& nodes);
  routing_policy policy() const { return policy_; }

private:
  routing_policy policy_;
  std::size_t balance_bound_;
  std::size_t cursor_ = 0;  // round-robin, and the last tie-break
};

/// Note [Exactly once]: the router's jobs in flight, each with its node and attempt.
class dispatch_book {
public:
  struct entry {
    job_request request;
    std::size_t node = 0;
    std::uint32_t attempt = 0;  // 1 on the first send, 2 on the resend
  };
  /// What to do with the jobs of a lost node.
  struct lost {
    std::vector<std::string> resend;  // send again (their attempt is now 2: `assign` them a node)
    std::vector<std::string> fail;    // answer node_unavailable (they were sent again already)
  };

  /// A new job, not yet sent. False if the key is already in flight (the caller must not reuse keys).
  bool accept(job_request request);
  /// The job goes to `node`: a new attempt. Returns the attempt number.
  std::uint32_t assign(const std::string& key, std::size_t node);
  enum class after_loss { stale, resend, fail };
  /// The node of (key, attempt) was lost for this job (the request failed in the network): `resend` if
  /// it was the first attempt, `fail` if the second (either way the attempt is over), `stale` if it is
  /// not the job's current attempt (nothing to do).
  after_loss attempt_lost(const std::string& key, std::uint32_t attempt);
  /// Every job in flight on `node` was lost with it.
  lost node_lost(std::size_t node);
  /// An answer for (key, attempt) arrived: true if it is the job's current attempt (the entry is gone
  /// then, and the caller is answered); false if it is late or unknown (drop it).
  bool answered(const std::string& key, std::uint32_t attempt);
  /// The job ends without an answer from a node (no node could take it): removes it.
  void drop(const std::string& key);

  const entry* find(const std::string& key) const;
  std::size_t size() const { return jobs_.size(); }
  /// Sets each view's `in_flight` and `arriving` from the jobs sent to it (one source of truth: the book).
  void annotate(std::vector<node_view>& nodes) const;
  /// Keys waiting for a node (accepted, or lost and not yet sent again).
  std::vector<std::string> unplaced() const;
  /// Every entry is consistent (each key once, attempts 0..2, an unplaced job has no node). Throws
  /// std::logic_error naming the first broken invariant.
  void check() const;

private:
  static constexpr std::size_t no_node = static_cast<std::size_t>(-1);
  std::map<std::string, entry> jobs_;
};

/// What a request asks (pipeline, models, parameters, priority, deadline), as a 64-bit FNV-1a digest in
/// hex: a node keeps it with each run, so that a key reused for another job is refused (run_book.hpp).
std::string request_digest(const job_request& request);

/// A request from the network within `limits`, or the failure (invalid_argument) that names what is not.
std::optional<failure> check_request(const job_request& request, const request_limits& limits);
/// Whether `text` may be (part of) a job key: printable ASCII without spaces, since a key is one field of
/// a node's journal line ("<key> <node> <state>"), which a newline or space in it could forge.
bool is_job_key_text(const std::string& text);

} // namespace mcache::fleet
