#include "actors/node_actor.hpp"

#include "messages/errors.hpp"
#include "runtime/core/fleet/routing.hpp"
#include "runtime/core/fleet/run_book.hpp"
#include "runtime/core/format.hpp"

#include <caf/actor_system.hpp>
#include <caf/mailbox_element.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include <chrono>
#include <cstdio>
#include <fcntl.h>
#include <set>
#include <unistd.h>

namespace mcache::fleet {

void node_shared::post(std::shared_ptr<node_event> event) {
  std::lock_guard<std::mutex> guard{link_mutex};
  if (alive)
    caf::anon_send(self, std::move(event));
}

void node_shared::changed() {
  {
    std::lock_guard<std::mutex> guard{wake_mutex};
    dirty = true;
  }
  wake.notify_all();
}

namespace {

using result_promise = caf::typed_response_promise<job_result>;

constexpr std::size_t max_watchers = 64;

struct node_state {
  static const char* name;
  node_state() = default;
  node_state(const node_state&) = delete;
  node_state& operator=(const node_state&) = delete;
  ~node_state() {
    if (journal >= 0)
      ::close(journal);
  }
  run_book<job_result, result_promise> runs{0};
  std::map<std::string, job_handle> jobs;  // running, by key: cancelled when the node stops
  std::set<caf::actor> watchers;
  node_summary last;
  int journal = -1;
};
const char* node_state::name = "mcache_fleet_node";

std::uint64_t since(std::chrono::steady_clock::time_point t) {
  return static_cast<std::uint64_t>(
    std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t).count());
}

/// Builds the job of a request through its pipeline, with the node's bookkeeping around it.
outcome<job_spec> build_job(const std::shared_ptr<node_shared>& shared, const job_request& req) {
  auto p = shared->pipelines.find(req.pipeline);
  if (p == shared->pipelines.end()) {
    std::string names;
    for (const auto& [n, fn] : shared->pipelines)
      append_quoted(names, n);
    return failure{errc::unknown_pipeline, "node '" + shared->name + "' has no pipeline '" + req.pipeline
                                             + "'; it has " + names};
  }
  auto output = std::make_shared<std::string>();
  job_spec spec;
  try {
    spec = p->second(req, output);
  } catch (const request_error& e) {
    return e.as_failure();
  } catch (const std::exception& e) {
    return failure{errc::invalid_argument, "pipeline '" + req.pipeline + "' refused job '" + req.key + "': " + e.what()};
  }
  if (spec.stages.empty())
    return failure{errc::invalid_argument, "pipeline '" + req.pipeline + "' made no stages for job '" + req.key + "'"};
  if (spec.name.empty())
    spec.name = req.key;
  spec.priority = req.priority;
  if (req.deadline_ms > 0)
    spec.deadline = std::chrono::milliseconds(req.deadline_ms);
  auto arrival = std::chrono::steady_clock::now();
  auto first_stage = std::make_shared<std::atomic<std::uint64_t>>(0);
  auto& work = spec.stages.front().work;
  if (work)
    work = [inner = std::move(work), first_stage, arrival](stage_context& ctx) {
      first_stage->store(since(arrival));
      inner(ctx);
    };
  spec.on_end = [shared, key = req.key, output, arrival, first_stage](const job_status& st) {
    auto ev = std::make_shared<node_event>();
    ev->what = node_event::kind::job_ended;
    ev->key = key;
    std::uint64_t ended_at = 0;
    if (st.state == job_state::done) {
      ended_at = ++shared->served + shared->failed.load();
      job_result r;
      r.key = key;
      r.node = shared->name;
      r.output = *output;  // the work has returned: nobody writes it any more
      r.queued_ns = first_stage->load();
      r.run_ns = since(arrival);
      r.ended_at = ended_at;
      ev->result = std::move(r);
    } else {
      ev->result = st.error ? *st.error : failure{errc::work_failed, "job '" + key + "' ended without a reason"};
      ++shared->failed;
    }
    --shared->queued;
    shared->changed();
    shared->post(std::move(ev));
  };
  return spec;
}

void write_journal(int fd, const std::string& key, const std::string& node, const outcome<job_result>& r) {
  if (fd < 0)
    return;
  auto line = key + " " + node + " "
              + (succeeded(r) ? std::string{"done"} : std::string{to_string(std::get<failure>(r).code)}) + "\n";
  // One write of a short line to an O_APPEND file: whole lines, even with other writers.
  if (::write(fd, line.data(), line.size()) < 0)
    std::perror("mcache node: journal");
}

} // namespace

node_actor spawn_node_actor(caf::actor_system& sys, std::shared_ptr<node_shared> shared, node_summary first) {
  auto impl = [shared, first](node_actor::stateful_pointer<node_state> self) -> node_actor::behavior_type {
    self->state.runs = run_book<job_result, result_promise>{shared->options.kept_results};
    self->state.last = first;
    if (!shared->options.journal_path.empty())
      self->state.journal = ::open(shared->options.journal_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    self->set_down_handler([self](caf::down_msg& dm) {
      for (auto i = self->state.watchers.begin(); i != self->state.watchers.end();)
        i = i->address() == dm.source ? self->state.watchers.erase(i) : std::next(i);
    });
    // A message outside the interface (from anything on the network) is answered unexpected_message,
    // quietly: CAF's default would print each one to stderr.
    self->set_default_handler([](caf::scheduled_actor*, caf::message_view&) -> caf::result<caf::message> {
      return caf::sec::unexpected_message;
    });
    // An exit message from a peer does not stop the node (its routers and jobs are not the peer's).
    self->set_exit_handler([](caf::exit_msg&) {});
    self->attach_functor([shared] {  // (the state is gone by now: CAF destroys it before attached functors run)
      std::lock_guard<std::mutex> guard{shared->link_mutex};
      if (shared->alive)
        shared->actor_lost = true;  // it ended while the node served: killed by a peer
    });
    return {
      [self, shared](run_atom, job_request& req) -> caf::result<job_result> {
        if (auto f = check_request(req, shared->options.limits))
          return make_error(*f);
        // Every answer from here goes through the promise: once it is made, a returned value is not sent.
        auto rp = self->make_response_promise<job_result>();
        const outcome<job_result>* kept = nullptr;
        auto digest = request_digest(req);
        switch (self->state.runs.look_up(req.key, digest, rp, &kept)) {
          case run_book<job_result, result_promise>::seen::conflict:
            rp.deliver(make_error(errc::invalid_argument, "job key '" + req.key + "' was used for another job on node '"
                                                            + shared->name + "'; a key names one job"));
            return rp;
          case run_book<job_result, result_promise>::seen::running:
            return rp;  // joined the run in progress
          case run_book<job_result, result_promise>::seen::ended:
            if (succeeded(*kept))
              rp.deliver(std::get<job_result>(*kept));
            else
              rp.deliver(make_error(std::get<failure>(*kept)));
            return rp;
          case run_book<job_result, result_promise>::seen::new_key:
            break;
        }
        auto job = build_job(shared, req);
        if (!succeeded(job)) {
          rp.deliver(make_error(std::get<failure>(job)));
          return rp;
        }
        ++shared->queued;
        try {
          self->state.jobs[req.key] = shared->sched->submit(std::move(std::get<job_spec>(job)));
        } catch (const request_error& e) {
          --shared->queued;
          rp.deliver(make_error(e.as_failure()));
          return rp;
        }
        self->state.runs.start(req.key, std::move(digest), rp);
        shared->changed();
        return rp;
      },
      [self](watch_atom) -> node_summary {
        auto watcher = caf::actor_cast<caf::actor>(self->current_sender());
        if (watcher && self->state.watchers.size() < max_watchers && self->state.watchers.insert(watcher).second)
          self->monitor(watcher);
        return self->state.last;
      },
      [self](summary_atom) -> node_summary { return self->state.last; },
      [self, shared](std::shared_ptr<node_event>& ev) {
        switch (ev->what) {
          case node_event::kind::job_ended: {
            self->state.jobs.erase(ev->key);
            write_journal(self->state.journal, ev->key, shared->name, ev->result);
            for (auto& rp : self->state.runs.end(ev->key, ev->result)) {
              if (succeeded(ev->result))
                rp.deliver(std::get<job_result>(ev->result));
              else
                rp.deliver(make_error(std::get<failure>(ev->result)));
            }
            break;
          }
          case node_event::kind::summary:
            self->state.last = std::move(ev->summary);
            // Sent with the node as sender, which is how a router knows whose summary it is (a typed
            // actor may not `send` to an untyped one, hence the mailbox element by hand).
            for (const auto& w : self->state.watchers)
              w->enqueue(caf::make_mailbox_element(caf::actor_cast<caf::strong_actor_ptr>(self), caf::make_message_id(),
                                                   {}, summary_atom::value, self->state.last),
                         self->context());
            break;
          case node_event::kind::stop:
            // Its jobs stop too (a job whose work is running ends when the work returns): a router sends
            // them to another node, and they must not also finish here.
            // Each ends here with the node (its own end, later, tells nobody): journaled as such.
            for (auto& [key, job] : self->state.jobs) {
              job.cancel();
              write_journal(self->state.journal, key, shared->name,
                            failure{errc::shutting_down, "node '" + shared->name + "' is stopping"});
            }
            self->state.jobs.clear();
            for (auto& rp : self->state.runs.abandon_all())
              rp.deliver(make_error(errc::shutting_down, "node '" + shared->name + "' is stopping"));
            self->quit();
            break;
        }
      },
    };
  };
  return sys.spawn(impl);
}

} // namespace mcache::fleet
