#include "actors/router_actor.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/fleet.hpp"
#include "runtime/core/outcome.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>

#include <spdlog/spdlog.h>

namespace mcache::fleet {

namespace {

using namespace std::chrono_literals;

struct node_link {
  endpoint where;
  node_actor handle;        // null while down
  std::uint64_t generation = 0;  // one per connection: handles of one node process compare equal across them
  bool connecting = false;
  node_report report;
};

struct waiting_job {
  std::string key;
  std::chrono::steady_clock::time_point until;
};

struct router_state {
  static const char* name;
  router_options options;
  router_policy policy;
  dispatch_book book;
  std::vector<node_link> links;
  std::vector<node_view> views;
  std::map<std::string, std::shared_ptr<router_call>> callers;
  std::map<std::string, std::chrono::steady_clock::time_point> unplaced_until;  // waiting for a node
  std::set<std::string> expected_interface;
  caf::io::middleman_actor connector;
  router_stats counts;
  bool ticking = false;
};
const char* router_state::name = "mcache_fleet_router";

using self_ptr = caf::stateful_actor<router_state>*;

constexpr std::size_t max_summary_entries = 1 << 16;

/// A summary from the network within sizes a node could mean (else it is ignored).
bool sane(const node_summary& s) {
  return s.resident.size() <= max_summary_entries && s.pipelines.size() <= max_summary_entries
         && s.tiers.size() <= max_summary_entries && s.node.size() <= 256;
}

std::shared_ptr<router_command> command(router_command::kind what, std::size_t node = 0) {
  return std::make_shared<router_command>(router_command{what, node});
}

void connect_later(self_ptr self, std::size_t i) {
  self->delayed_send(self, self->state.options.reconnect_interval, command(router_command::kind::connect, i));
}

void answer(self_ptr self, const std::string& key, outcome<job_result> result) {
  auto& st = self->state;
  auto c = st.callers.find(key);
  if (c == st.callers.end())
    return;
  if (succeeded(result)) {
    ++st.counts.done;
    c->second->answer.set_value(std::move(std::get<job_result>(result)));
  } else {
    ++st.counts.failed;
    c->second->answer.set_exception(std::make_exception_ptr(request_error(std::get<failure>(result))));
  }
  st.callers.erase(c);
  st.unplaced_until.erase(key);
}

void place(self_ptr self, const std::string& key, std::optional<std::size_t> lost_on = std::nullopt);
void place_waiting(self_ptr self);
void node_lost(self_ptr self, std::size_t i, const std::string& why);

/// A summary from node i on its current connection (pushed, or the answer to a watch or a probe): what
/// stats report of it and what routing weighs. Absurd sizes are not taken. It speaks, so a request that
/// failed in the network no longer excludes it, and jobs waiting for a node are tried again.
void take_summary(self_ptr self, std::size_t i, node_summary s) {
  auto& st = self->state;
  if (sane(s)) {
    st.links[i].report.name = s.node;
    st.links[i].report.last = s;
    st.views[i].summary = std::move(s);
    st.views[i].has_summary = true;
    st.views[i].summarized();
  }
  st.views[i].up = true;
  if (!st.unplaced_until.empty())
    place_waiting(self);
}

/// Takes node i out of the choice until it answers a summary request on its current connection.
void probe(self_ptr self, std::size_t i) {
  auto& st = self->state;
  st.views[i].up = false;
  if (!st.links[i].handle)
    return;
  auto generation = st.links[i].generation;
  self->request(st.links[i].handle, caf::timespan{5s}, summary_atom::value)
    .then(
      [self, i, generation](node_summary& s) {
        auto& st = self->state;
        if (st.links[i].generation != generation || !st.links[i].handle || !sane(s))
          return;
        take_summary(self, i, std::move(s));
      },
      [](caf::error&) {});  // its down message, or the next connection, decides
}

void send_to(self_ptr self, const std::string& key, std::size_t i) {
  auto& st = self->state;
  auto attempt = st.book.assign(key, i);
  st.unplaced_until.erase(key);
  ++st.links[i].report.sent;
  self->request(st.links[i].handle, caf::timespan{st.options.job_timeout}, run_atom::value, st.book.find(key)->request)
    .then(
      [self, key, attempt, i](job_result& r) {
        auto& st = self->state;
        if (const auto* e = st.book.find(key); e && e->attempt == attempt)
          for (const auto& m : e->request.models)
            st.views[i].just_used[m] = std::max(st.views[i].just_used[m], r.ended_at);
        if (!st.book.answered(key, attempt)) {
          ++st.counts.late_dropped;
          return;
        }
        ++st.links[i].report.answered;
        r.attempt = attempt;
        answer(self, key, std::move(r));
      },
      [self, key, attempt, i](caf::error& e) {
        auto& st = self->state;
        bool node_stopping = e.category() == error_category() && static_cast<errc>(e.code()) == errc::shutting_down;
        if ((e.category() == error_category() && !node_stopping) || e == caf::sec::request_timeout) {
          // The node answered with a typed error, or did not answer in time (it may still be running
          // the job: sending it elsewhere could run it twice).
          if (!st.book.answered(key, attempt)) {
            ++st.counts.late_dropped;
            return;
          }
          answer(self, key, e.category() == error_category()
                              ? to_failure(e)
                              : failure{errc::timed_out, "node '" + st.links[i].report.name + "' did not answer job '"
                                                           + key + "' within the router's job_timeout"});
          return;
        }
        // The network or the node's actor failed under this request, or the node is stopping: the node
        // is lost for this job, and is passed over until it answers a probe (a down message usually
        // follows first, and then it rejoins through a new connection).
        auto after = st.book.attempt_lost(key, attempt);
        if (after != dispatch_book::after_loss::stale)
          probe(self, i);
        switch (after) {
          case dispatch_book::after_loss::stale: ++st.counts.late_dropped; return;
          case dispatch_book::after_loss::resend: ++st.counts.resent; place(self, key, i); return;
          case dispatch_book::after_loss::fail:
            st.book.drop(key);
            answer(self, key, failure{errc::node_unavailable, "job '" + key + "' was lost with two nodes (the last: "
                                                                + self->system().render(e) + ")"});
            return;
        }
      });
}

/// Note [Routing]: sends the job to a node, or keeps it waiting for one (up to wait_for_node).
void place(self_ptr self, const std::string& key, std::optional<std::size_t> lost_on) {
  auto& st = self->state;
  const auto* e = st.book.find(key);
  if (!e)
    return;
  st.book.annotate(st.views);
  auto choice = st.policy.choose(st.views, e->request.pipeline, e->request.models, lost_on);
  if (choice) {
    send_to(self, key, choice->node);
    return;
  }
  if (auto why = unplaceable(st.views, e->request.pipeline, /*waited_out=*/false)) {
    st.unplaced_until.erase(key);  // every node said what it serves: waiting would not help
    st.book.drop(key);
    answer(self, key, std::move(*why));
    return;
  }
  auto until = std::chrono::steady_clock::now() + st.options.wait_for_node;
  st.unplaced_until.emplace(key, until);
  if (!st.ticking) {
    st.ticking = true;
    self->delayed_send(self, 50ms, command(router_command::kind::tick));
  }
}

/// Tries the waiting jobs again; each keeps the deadline it got when it first waited.
void place_waiting(self_ptr self) {
  std::vector<std::string> keys;
  for (const auto& [k, until] : self->state.unplaced_until)
    keys.push_back(k);
  for (const auto& k : keys)
    place(self, k);
}

void connect(self_ptr self, std::size_t i) {
  auto& st = self->state;
  auto& link = st.links[i];
  if (link.connecting || link.handle)
    return;
  link.connecting = true;
  self->request(st.connector, caf::timespan{5s}, caf::connect_atom::value, link.where.host, link.where.port)
    .then(
      [self, i](caf::node_id&, caf::strong_actor_ptr& ptr, std::set<std::string>& interface) {
        auto& st = self->state;
        auto& link = st.links[i];
        if (!ptr || interface != st.expected_interface) {
          link.connecting = false;
          link.report.last_error = ptr ? "the actor at this port is not a node of this version (its interface differs)"
                                       : "no actor is published at this port";
          connect_later(self, i);
          return;
        }
        auto handle = caf::actor_cast<node_actor>(ptr);
        self->monitor(handle);
        link.handle = handle;
        auto generation = ++link.generation;
        self->request(handle, caf::timespan{10s}, watch_atom::value)
          .then(
            [self, i, generation](node_summary& s) {
              auto& st = self->state;
              auto& link = st.links[i];
              if (link.generation != generation || !link.handle)
                return;  // lost meanwhile: node_lost has scheduled the next attempt
              link.connecting = false;
              ++link.report.connects;
              link.report.up = true;
              link.report.last_error.clear();
              if (link.report.connects > 1 && s.incarnation != link.report.last.incarnation) {
                // A new process at the same address: its counters start from 0 again.
                link.report.earlier_bytes_to_devices += link.report.last.bytes_to_devices;
                link.report.earlier_jobs_served += link.report.last.jobs_served;
                st.views[i].summary.sequence = 0;
              }
              take_summary(self, i, std::move(s));
              spdlog::info("mcache router: node '{}' at {}:{} is up", link.report.name, link.where.host, link.where.port);
            },
            [self, i, generation](caf::error& e) {
              if (self->state.links[i].generation == generation && self->state.links[i].handle)
                node_lost(self, i, self->system().render(e));
            });
      },
      [self, i](caf::error& e) {
        auto& st = self->state;
        st.links[i].connecting = false;
        st.links[i].report.last_error = self->system().render(e);
        connect_later(self, i);
      });
}

/// Note [Exactly once]: the node's jobs go elsewhere once each, or fail; the node is tried again later.
void node_lost(self_ptr self, std::size_t i, const std::string& why) {
  auto& st = self->state;
  auto& link = st.links[i];
  if (link.handle)
    self->demonitor(link.handle.address());
  link.handle = nullptr;
  link.connecting = false;  // a watch still unanswered belongs to the lost handle
  link.report.up = false;
  link.report.last_error = why;
  st.views[i].up = false;
  st.views[i].just_used.clear();
  auto lost = st.book.node_lost(i);
  link.report.lost += lost.resend.size() + lost.fail.size();
  spdlog::warn("mcache router: node '{}' at {}:{} is lost ({}); {} job(s) go to another node, {} fail", link.report.name,
               link.where.host, link.where.port, why, lost.resend.size(), lost.fail.size());
  for (const auto& k : lost.fail) {
    st.book.drop(k);
    answer(self, k, failure{errc::node_unavailable, "job '" + k + "' was lost with node '" + link.report.name
                                                      + "' after it had been sent again once"});
  }
  for (const auto& k : lost.resend) {
    ++st.counts.resent;
    place(self, k, i);
  }
  connect_later(self, i);
}

} // namespace

caf::actor spawn_router_actor(network_system& net, router_options options) {
  auto expected = net.system->message_types<node_actor>();
  auto connector = net.connector();
  return net.system->spawn([options, expected, connector](caf::stateful_actor<router_state>* self) -> caf::behavior {
    auto& st = self->state;
    st.options = options;
    st.policy = router_policy{options.policy, options.balance_bound};
    st.expected_interface = expected;
    st.connector = connector;
    for (const auto& n : options.nodes) {
      node_link l;
      l.where = n;
      l.report.where = n;
      st.links.push_back(l);
      st.views.emplace_back();
    }
    // An exit message from a node does not stop the router (its callers are not the node's).
    self->set_exit_handler([](caf::exit_msg&) {});
    self->set_down_handler([self](caf::down_msg& dm) {
      auto& st = self->state;
      for (std::size_t i = 0; i < st.links.size(); ++i)
        if (st.links[i].handle && st.links[i].handle.address() == dm.source)
          node_lost(self, i, dm.reason ? "its connection went down: " + self->system().render(dm.reason)
                                       : std::string{"it stopped (its jobs still running there were answered "
                                                     "shutting_down and sent on)"});
    });
    for (std::size_t i = 0; i < st.links.size(); ++i)
      connect(self, i);
    return {
      [self](std::shared_ptr<router_call>& call) {
        auto& st = self->state;
        auto key = call->request.key;
        ++st.counts.accepted;
        if (auto f = check_request(call->request, request_limits{})) {
          ++st.counts.failed;
          call->answer.set_exception(std::make_exception_ptr(request_error(*f)));
          return;
        }
        if (!st.book.accept(call->request)) {
          ++st.counts.failed;
          call->answer.set_exception(std::make_exception_ptr(
            request_error(failure{errc::invalid_argument, "job key '" + key + "' is already in flight"})));
          return;
        }
        st.callers.emplace(key, std::move(call));
        place(self, key);
      },
      [self](summary_atom, node_summary& s) {
        auto& st = self->state;
        auto from = self->current_sender();
        for (std::size_t i = 0; i < st.links.size(); ++i) {
          if (!st.links[i].handle || caf::actor_cast<caf::strong_actor_ptr>(st.links[i].handle) != from)
            continue;
          if (!sane(s) || (s.incarnation == st.views[i].summary.incarnation && s.sequence < st.views[i].summary.sequence))
            return;  // absurd, or older than what we have
          take_summary(self, i, std::move(s));
          return;
        }
      },
      [self](std::shared_ptr<router_command>& cmd) {
        auto& st = self->state;
        switch (cmd->what) {
          case router_command::kind::connect:
            if (cmd->node < st.links.size())
              connect(self, cmd->node);
            return;
          case router_command::kind::tick: {
            auto now = std::chrono::steady_clock::now();
            std::vector<std::string> expired;
            for (const auto& [k, until] : st.unplaced_until)
              if (until <= now)
                expired.push_back(k);
            for (const auto& k : expired) {
              std::optional<failure> why;
              if (const auto* e = st.book.find(k))
                why = unplaceable(st.views, e->request.pipeline, /*waited_out=*/true, st.options.wait_for_node);
              if (!why)  // a node serves it but could not take it (the one it was lost on)
                why = failure{errc::node_unavailable, "no node that serves the job's pipeline could take it within "
                                                        + std::to_string(st.options.wait_for_node.count()) + " ms"};
              st.book.drop(k);
              answer(self, k, std::move(*why));
            }
            st.ticking = !st.unplaced_until.empty();
            if (st.ticking)
              self->delayed_send(self, 50ms, command(router_command::kind::tick));
            return;
          }
          case router_command::kind::shutdown: {
            std::vector<std::string> keys;
            for (const auto& [k, c] : st.callers)
              keys.push_back(k);
            for (const auto& k : keys)
              answer(self, k, failure{errc::shutting_down, "the router is stopping"});
            self->quit();
            return;
          }
        }
      },
      [self](std::shared_ptr<router_stats_call>& call) {
        auto& st = self->state;
        auto out = st.counts;
        out.in_flight = st.book.size();
        for (std::size_t i = 0; i < st.links.size(); ++i) {
          out.nodes.push_back(st.links[i].report);
          out.nodes.back().reported = st.views[i].has_summary;  // what routing weighs, read from it
        }
        call->answer.set_value(std::move(out));
      },
    };
  });
}

} // namespace mcache::fleet
