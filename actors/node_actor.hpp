#pragma once
// The fleet node actor: what a node publishes (messages/fleet.hpp). Thin: requests are checked by
// check_request, runs are kept by run_book (Note [Node jobs], runtime/fleet/node.hpp), jobs run in the
// runtime's scheduler, and summaries are made by the node's summary thread; the actor answers callers and
// pushes summaries to the routers that watch it.

#include "messages/fleet.hpp"
#include "runtime/core/outcome.hpp"
#include "runtime/fleet/node.hpp"

#include <atomic>
#include <condition_variable>
#include <mutex>

namespace mcache::fleet {

/// From inside the node process to its actor (see messages/fleet.hpp).
struct node_event {
  enum class kind { job_ended, summary, stop } what = kind::summary;
  std::string key;                  // job_ended
  outcome<job_result> result = job_result{};  // job_ended
  node_summary summary;             // summary
};

/// What the node, its actor, its summary thread and the scheduler's end-of-job callbacks share.
struct node_shared {
  runtime* rt = nullptr;
  scheduler* sched = nullptr;
  node_options options;
  std::map<std::string, pipeline> pipelines;
  std::string name;
  std::uint64_t incarnation = 0;

  std::atomic<std::uint32_t> queued{0};
  std::atomic<std::uint64_t> served{0};
  std::atomic<std::uint64_t> failed{0};

  /// Sends `event` to the actor if it still runs (the scheduler may end a job after the node is gone).
  void post(std::shared_ptr<node_event> event);
  /// Something a summary shows may have changed: wakes the summary thread.
  void changed();

  // The actor's handle, for other threads, while `alive`.
  std::mutex link_mutex;
  bool alive = false;
  node_actor self;
  /// The actor ended while the node still served (a peer killed it): see messages/fleet.hpp.
  std::atomic<bool> actor_lost{false};

  // The summary thread's wake-up.
  std::mutex wake_mutex;
  std::condition_variable wake;
  bool dirty = true;
  bool stopping = false;
};

node_actor spawn_node_actor(caf::actor_system& sys, std::shared_ptr<node_shared> shared, node_summary first);

} // namespace mcache::fleet
