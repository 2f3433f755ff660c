#pragma once
// The fleet router actor (Note [The fleet], runtime/fleet/router.hpp): connects to the nodes, keeps their
// summaries, and moves each job through Note [Exactly once] with the decisions of router_policy and
// dispatch_book (runtime/core/fleet/routing.hpp). Local only: never published.

#include "runtime/fleet/router.hpp"

#include <caf/actor.hpp>
#include <caf/allowed_unsafe_message_type.hpp>

#include <future>
#include <memory>

namespace mcache::fleet {

/// A caller's job, from the router object to its actor.
struct router_call {
  job_request request;
  std::promise<job_result> answer;
};
struct router_stats_call {
  std::promise<router_stats> answer;
};
/// The router's own commands: a type no peer can send (nodes learn the router's address through watch).
struct router_command {
  enum class kind { connect, tick, shutdown } what;
  std::size_t node = 0;  // connect
};

} // namespace mcache::fleet

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<mcache::fleet::router_call>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<mcache::fleet::router_stats_call>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<mcache::fleet::router_command>)

namespace mcache::fleet {

struct network_system;
caf::actor spawn_router_actor(network_system& net, router_options options);

} // namespace mcache::fleet
