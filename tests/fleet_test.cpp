// Nodes and routers over real loopback sockets (Note [The fleet], runtime/fleet/router.hpp): routing to
// warm nodes, a node killed mid-job and started again, a router restart, malformed remote messages, and
// mutual TLS. Nodes run in this process, or as mcache-node processes where one must die.

#include "messages/errors.hpp"
#include "messages/fleet.hpp"
#include "runtime/fleet/node.hpp"
#include "runtime/fleet/router.hpp"
#include "runtime/runtime.hpp"
#include "runtime/scheduler.hpp"

#include "support/catch.hpp"
#include "support/fake_models.hpp"
#include "support/temp_dir.hpp"

#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include <csignal>
#include <fcntl.h>
#include <fstream>
#include <functional>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

using namespace mcache;
using namespace mcache::fleet;
using namespace std::chrono_literals;

namespace {

constexpr bytes_t kib = 1024;

/// Stage work for the test pipeline: sleeps params["ms"] (default 0) and says which job it ran.
fleet::pipeline test_pipeline() {
  return [](const job_request& r, std::shared_ptr<std::string> output) {
    job_spec job;
    stage_spec st;
    st.models = r.models;
    auto ms = r.params.count("ms") ? std::stoi(r.params.at("ms")) : 0;
    if (ms < 0)
      throw request_error(failure{errc::invalid_argument, "ms must not be negative"});
    st.work = [output, ms, key = r.key](stage_context& ctx) {
      auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
      while (std::chrono::steady_clock::now() < until && !ctx.cancelled())
        std::this_thread::sleep_for(2ms);
      *output = "ran " + key;
    };
    job.stages.push_back(std::move(st));
    return job;
  };
}

/// A node in this process: a runtime with models "m1".."m4" (16 KiB each), one simulated device of 40 KiB.
struct local_node {
  explicit local_node(std::string name, tls_options tls = {}, std::string listen = "127.0.0.1",
                      std::string journal = {})
    : rt(options()) {
    for (int i = 1; i <= 4; ++i)
      rt.models().add(synthetic_model("m" + std::to_string(i), {static_cast<int64_t>(16 * kib / 4)}));
    sched = std::make_unique<scheduler>(rt);
    node_options o;
    o.name = std::move(name);
    o.summary_interval = 10ms;
    o.tls = std::move(tls);
    o.listen = std::move(listen);
    o.journal_path = std::move(journal);
    n = std::make_unique<node>(rt, *sched, o, std::map<std::string, fleet::pipeline>{{"p", test_pipeline()}});
  }
  ~local_node() {
    n.reset();
    sched.reset();
  }
  static runtime_options options() {
    runtime_options o;
    o.ram_budget_bytes = 128 * kib;
    o.devices.push_back({device_kind::simulated, 40 * kib, 0, 0});
    o.check_invariants = true;
    o.default_wait = 2s;
    return o;
  }
  endpoint where() const { return {"127.0.0.1", n->port()}; }
  runtime rt;
  std::unique_ptr<scheduler> sched;
  std::unique_ptr<node> n;
};

/// An mcache-node process (the sample's pipelines), stopped by its pid when the object goes.
class node_process {
public:
  node_process(std::string name, std::uint16_t port = 0) : name_(std::move(name)) {
    auto port_file = dir_.file("port");
    auto out = dir_.file("out");
    pid_ = ::fork();
    if (pid_ == 0) {
      auto p = std::to_string(port);
      int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::execl(MCACHE_NODE_BINARY, MCACHE_NODE_BINARY, "--name", name_.c_str(), "--port", p.c_str(), "--port-file",
              port_file.c_str(), "--summary-interval", "20ms", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 600 && port_ == 0; ++i) {
      std::ifstream in{port_file};
      int value = 0;
      if (in >> value)
        port_ = static_cast<std::uint16_t>(value);
      else
        std::this_thread::sleep_for(50ms);
    }
    if (port_ == 0) {
      std::ifstream log{out};
      std::string text{std::istreambuf_iterator<char>(log), {}};
      kill(SIGKILL);
      throw std::runtime_error("mcache-node '" + name_ + "' did not start: " + text);
    }
  }
  ~node_process() { kill(SIGTERM); }
  void signal(int sig) { ::kill(pid_, sig); }
  void kill(int sig) {
    if (pid_ <= 0)
      return;
    ::kill(pid_, sig);
    int status = 0;
    for (int i = 0; i < 200; ++i) {  // 10 s, then SIGKILL
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(50ms);
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  std::uint16_t port() const { return port_; }
  endpoint where() const { return {"127.0.0.1", port_}; }

private:
  std::string name_;
  test::temp_dir dir_;
  pid_t pid_ = -1;
  std::uint16_t port_ = 0;
};

router_options to(std::vector<endpoint> nodes) {
  router_options o;
  o.nodes = std::move(nodes);
  o.reconnect_interval = 50ms;
  o.wait_for_node = 5s;
  return o;
}

job_request job(std::vector<model_id> models, std::map<std::string, std::string> params = {}) {
  job_request r;
  r.pipeline = "p";
  r.models = std::move(models);
  r.params = std::move(params);
  return r;
}

errc code_of(std::future<job_result>& f) {
  try {
    f.get();
  } catch (const request_error& e) {
    return e.code();
  }
  FAIL("the job did not fail");
  return errc::invalid_argument;
}

template <class F>
bool eventually(F&& f, std::chrono::milliseconds within = 10s) {
  auto until = std::chrono::steady_clock::now() + within;
  while (!f()) {
    if (std::chrono::steady_clock::now() > until)
      return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

/// A thread joined when the scope ends, also when a REQUIRE leaves it early.
struct joined {
  template <class F>
  explicit joined(F&& f) : t(std::forward<F>(f)) {}
  ~joined() { t.join(); }
  std::thread t;
};

/// The sample's LLM pipeline for `steps` steps (400: about 2.5 s of compute on mcache-node).
job_request slow_llm_job(int steps) {
  job_request slow;
  slow.pipeline = "llm";
  slow.models = {"llm_8b"};
  slow.params = {{"steps", std::to_string(steps)}};
  return slow;
}

/// The node (of two) that the router sent its first job to, once it has.
std::size_t sent_to(router& r) {
  REQUIRE(eventually([&] { return r.stats().nodes[0].sent + r.stats().nodes[1].sent == 1; }));
  return r.stats().nodes[0].sent == 1 ? 0 : 1;
}

/// A client of a node that speaks CAF directly, as anything on the network could.
struct raw_client {
  explicit raw_client(std::uint16_t port) : net(tls_options{}, 1), self(*net.system) {
    auto h = net.system->middleman().remote_actor<node_actor>("127.0.0.1", port);
    REQUIRE(h);
    node = *h;
  }
  /// The reply to `xs`: the result, or the error.
  template <class... Ts>
  std::variant<job_result, caf::error> ask(Ts&&... xs) {
    std::variant<job_result, caf::error> out;
    self->request(caf::actor_cast<caf::actor>(node), 10s, std::forward<Ts>(xs)...)
      .receive([&](job_result& r) { out = r; }, [&](caf::error& e) { out = e; });
    return out;
  }
  network_system net;
  caf::scoped_actor self;
  node_actor node;
};

errc mcache_code(const std::variant<job_result, caf::error>& reply) {
  REQUIRE(std::holds_alternative<caf::error>(reply));
  const auto& e = std::get<caf::error>(reply);
  INFO(caf::to_string(e));
  REQUIRE(e.category() == error_category());
  return static_cast<errc>(e.code());
}

} // namespace

TEST_CASE("a job goes to the node that already holds its models, and another job to the idle node") {
  local_node a{"a"}, b{"b"};
  router r{to({a.where(), b.where()})};
  REQUIRE(r.wait_for_nodes(2, 10s) == 2);
  auto first = r.run(job({"m1"}));
  CHECK(first.output == "ran " + first.key);
  for (int i = 0; i < 3; ++i)
    CHECK(r.run(job({"m1"})).node == first.node);
  // m2 is nowhere: it costs the same on both, and the tie goes to the other node in turn.
  auto other = r.run(job({"m2"}));
  CHECK(other.node != first.node);
  CHECK(r.run(job({"m2"})).node == other.node);
  CHECK(r.run(job({"m1"})).node == first.node);
  auto st = r.stats();
  CHECK(st.done == 7);
  CHECK(st.resent == 0);
  // Every node copied each model to its device once.
  CHECK(a.n->summary().bytes_to_devices + b.n->summary().bytes_to_devices == 32 * kib);
}

TEST_CASE("under round-robin the same jobs move more bytes than under residency routing") {
  auto moved = [](routing_policy policy) {
    local_node a{"a"}, b{"b"};
    auto o = to({a.where(), b.where()});
    o.policy = policy;
    router r{o};
    REQUIRE(r.wait_for_nodes(2, 10s) == 2);
    for (int i = 0; i < 3; ++i)
      for (const char* m : {"m1", "m2", "m3"})
        r.run(job({m}));
    return a.n->summary().bytes_to_devices + b.n->summary().bytes_to_devices;
  };
  auto residency = moved(routing_policy::residency);
  auto round_robin = moved(routing_policy::round_robin);
  CHECK(residency == 3 * 16 * kib);  // each model copied once, to one node
  CHECK(round_robin > residency);
}

TEST_CASE("a node killed during a job: the job is sent again once, finishes on another node, and the node rejoins when it comes back") {
  node_process a{"a"}, b{"b"};
  router r{to({a.where(), b.where()})};
  REQUIRE(r.wait_for_nodes(2, 20s) == 2);
  auto f = r.submit(slow_llm_job(400));  // about 2.5 s of compute
  std::size_t victim = 0;
  REQUIRE(eventually([&] {
    auto st = r.stats();
    for (std::size_t i = 0; i < st.nodes.size(); ++i)
      if (st.nodes[i].sent == 1 && st.nodes[i].last.queued == 1) {
        victim = i;
        return true;
      }
    return false;
  }));
  auto port = (victim == 0 ? a : b).port();
  (victim == 0 ? a : b).kill(SIGKILL);
  auto result = f.get();
  CHECK(result.attempt == 2);
  CHECK(result.node == (victim == 0 ? "b" : "a"));
  auto st = r.stats();
  CHECK(st.resent == 1);
  CHECK(st.done == 1);
  CHECK(st.late_dropped == 0);
  CHECK(st.nodes[victim].lost == 1);
  CHECK_FALSE(st.nodes[victim].up);
  // The node comes back on its port: the router connects again, and it serves.
  node_process again{victim == 0 ? "a" : "b", port};
  REQUIRE(eventually([&] { return r.stats().nodes[victim].up; }, 20s));
  CHECK(r.stats().nodes[victim].connects == 2);
  job_request echo;
  echo.pipeline = "echo";
  echo.params = {{"text", "hello"}};
  std::set<std::string> served_by;
  for (int i = 0; i < 4; ++i)
    served_by.insert(r.run(echo).node);
  CHECK(served_by.size() == 2);  // equal costs alternate: the node that came back takes its turn
}

TEST_CASE("a node that goes silent (stopped, as a hung machine or a cut cable would be) is lost after the connection timeout, and its job runs elsewhere") {
  node_process a{"a"}, b{"b"};
  auto o = to({a.where(), b.where()});
  o.live.heartbeat = 100ms;
  o.live.connection_timeout = 2s;  // at least 3 of the nodes' heartbeats (500 ms)
  router r{o};
  REQUIRE(r.wait_for_nodes(2, 20s) == 2);
  auto f = r.submit(slow_llm_job(400));
  auto first = sent_to(r);
  auto victim = first;
  auto& silent = victim == 0 ? a : b;
  silent.signal(SIGSTOP);  // no FIN, no heartbeats: only the timeout can tell
  auto result = f.get();
  CHECK(result.attempt == 2);
  CHECK(result.node == (victim == 0 ? "b" : "a"));
  CHECK(r.stats().nodes[victim].lost == 1);
  silent.signal(SIGCONT);
  // Awake again, it is connected again.
  CHECK(eventually([&] { return r.stats().nodes[victim].up && r.stats().nodes[victim].connects == 2; }, 20s));
}

TEST_CASE("a job whose node and second node are both lost fails with node_unavailable, not silence") {
  auto a = std::make_unique<node_process>("a");
  auto b = std::make_unique<node_process>("b");
  auto o = to({a->where(), b->where()});
  o.wait_for_node = 500ms;
  router r{o};
  REQUIRE(r.wait_for_nodes(2, 20s) == 2);
  auto f = r.submit(slow_llm_job(800));
  auto first = sent_to(r);
  (first == 0 ? a : b)->kill(SIGKILL);
  REQUIRE(eventually([&] { return r.stats().nodes[1 - first].sent == 1; }));
  (first == 0 ? b : a)->kill(SIGKILL);
  CHECK(code_of(f) == errc::node_unavailable);
  CHECK(r.stats().failed == 1);
}

TEST_CASE("with no node up a job waits wait_for_node, then fails with node_unavailable") {
  std::uint16_t closed = 0;
  {
    local_node probe{"probe"};
    closed = probe.n->port();
  }  // nothing listens there now
  auto o = to({{"127.0.0.1", closed}});
  o.wait_for_node = 300ms;
  router r{o};
  auto start = std::chrono::steady_clock::now();
  auto f = r.submit(job({"m1"}));
  CHECK(code_of(f) == errc::node_unavailable);
  CHECK(std::chrono::steady_clock::now() - start >= 300ms);
  CHECK_FALSE(r.stats().nodes[0].last_error.empty());
}

TEST_CASE("a job no node can take fails after wait_for_node even while the nodes keep sending summaries") {
  std::uint16_t closed = 0;
  {
    local_node probe{"probe"};
    closed = probe.n->port();
  }  // a node that never comes up might serve the pipeline: the job waits for it
  local_node a{"a"};
  auto o = to({a.where(), {"127.0.0.1", closed}});
  o.wait_for_node = 300ms;
  router r{o};
  REQUIRE(r.wait_for_nodes(1, 10s) == 1);
  std::atomic<bool> busy{true};
  joined load{[&] {  // jobs on the node: summaries keep coming, each one a chance to place again
    while (busy)
      r.run(job({"m1"}, {{"ms", "5"}}));
  }};
  auto start = std::chrono::steady_clock::now();
  job_request nowhere;
  nowhere.pipeline = "no such pipeline";
  auto f = r.submit(nowhere);
  CHECK(code_of(f) == errc::node_unavailable);
  CHECK(std::chrono::steady_clock::now() - start < 3s);
  busy = false;
}

TEST_CASE("a job for a pipeline no node serves is unknown_pipeline at once once every node has said what it serves") {
  local_node a{"a"};
  auto o = to({a.where()});
  o.wait_for_node = 30s;  // far longer than the test waits: only the answer at once ends it in time
  router r{o};
  REQUIRE(r.wait_for_nodes(1, 10s) == 1);
  REQUIRE(eventually([&] { return r.stats().nodes[0].name == "a"; }));  // its summary came
  job_request nowhere;
  nowhere.pipeline = "nope";
  auto start = std::chrono::steady_clock::now();
  try {
    r.run(nowhere);
    FAIL("a job for an unknown pipeline ran");
  } catch (const request_error& e) {
    CHECK(e.code() == errc::unknown_pipeline);
    CHECK(std::string{e.what()}.find("no node serves pipeline 'nope'; the 1 node(s) serve 'p'") != std::string::npos);
  }
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  CHECK(r.run(job({"m1"})).node == "a");  // the router goes on
}

TEST_CASE("a router restart: jobs of the old router finish on the node, and the new router is served") {
  local_node a{"a"};
  {
    router old{to({a.where()})};
    REQUIRE(old.wait_for_nodes(1, 10s) == 1);
    auto f = old.submit(job({"m1"}, {{"ms", "2000"}}));
    REQUIRE(eventually([&] { return a.n->summary().queued == 1; }));
  }  // gone with its job running on the node
  REQUIRE(eventually([&] { return a.n->summary().queued == 0; }));
  CHECK(a.n->summary().jobs_served == 1);
  router fresh{to({a.where()})};
  REQUIRE(fresh.wait_for_nodes(1, 10s) == 1);
  CHECK(fresh.run(job({"m1"})).node == "a");
  // The new router watches the node: it sees the summary that counts its job.
  CHECK(eventually([&] { return fresh.stats().nodes[0].last.jobs_served == 2; }));
}

TEST_CASE("a router that stops answers its waiting callers with shutting_down") {
  local_node a{"a"};
  std::future<job_result> f;
  {
    router r{to({a.where()})};
    REQUIRE(r.wait_for_nodes(1, 10s) == 1);
    f = r.submit(job({"m1"}, {{"ms", "3000"}}));
    REQUIRE(eventually([&] { return a.n->summary().queued == 1; }));
  }
  CHECK(code_of(f) == errc::shutting_down);
}

TEST_CASE("malformed remote messages get typed errors and change nothing on the node") {
  local_node a{"a"};
  raw_client c{a.n->port()};
  auto before = a.n->summary();
  job_request ok;
  ok.key = "k1";
  ok.pipeline = "p";
  ok.models = {"m1"};
  auto with = [&](auto change) {
    auto r = ok;
    change(r);
    return c.ask(run_atom::value, r);
  };
  CHECK(mcache_code(with([](job_request& r) { r.pipeline = "nope"; })) == errc::unknown_pipeline);
  CHECK(mcache_code(with([](job_request& r) { r.models = {"m9"}; })) == errc::unknown_model);
  CHECK(mcache_code(with([](job_request& r) { r.key.clear(); })) == errc::invalid_argument);
  CHECK(mcache_code(with([](job_request& r) { r.key = std::string(100000, 'k'); })) == errc::invalid_argument);
  CHECK(mcache_code(with([](job_request& r) { r.models.assign(100000, "m1"); })) == errc::invalid_argument);
  CHECK(mcache_code(with([](job_request& r) { r.models = {"m1", "m1"}; })) == errc::invalid_argument);
  CHECK(mcache_code(with([](job_request& r) { r.params["blob"] = std::string(1 << 20, 'x'); })) == errc::invalid_argument);
  CHECK(mcache_code(with([](job_request& r) { r.params["ms"] = "-5"; })) == errc::invalid_argument);
  CHECK(mcache_code(with([](job_request& r) { r.deadline_ms = ~0ull; })) == errc::invalid_argument);
  // Messages outside the node's interface are refused by CAF.
  for (auto reply : {c.ask(run_atom::value, std::string{"job"}), c.ask(std::string{"run"}, ok),
                     c.ask(run_atom::value, ok, std::int32_t{1})}) {
    REQUIRE(std::holds_alternative<caf::error>(reply));
    CHECK(std::get<caf::error>(reply) == caf::sec::unexpected_message);
  }
  // Nothing changed: no job queued or run, nothing loaded, and the node still serves.
  std::this_thread::sleep_for(50ms);
  auto after = a.n->summary();
  CHECK(same_state(before, after));
  auto good = c.ask(run_atom::value, ok);
  REQUIRE(std::holds_alternative<job_result>(good));
  CHECK(std::get<job_result>(good).output == "ran k1");
}

TEST_CASE("a job key sent twice runs once: the second request joins the first run or gets its result") {
  local_node a{"a"};
  raw_client c1{a.n->port()}, c2{a.n->port()};
  job_request r;
  r.key = "same";
  r.pipeline = "p";
  r.models = {"m1"};
  r.params = {{"ms", "2000"}};
  std::variant<job_result, caf::error> first, second;
  {
    joined t{[&] { first = c1.ask(run_atom::value, r); }};
    CHECK(eventually([&] { return a.n->summary().queued == 1; }));
    second = c2.ask(run_atom::value, r);
  }
  REQUIRE(std::holds_alternative<job_result>(first));
  REQUIRE(std::holds_alternative<job_result>(second));
  CHECK(std::get<job_result>(first).output == std::get<job_result>(second).output);
  auto third = c2.ask(run_atom::value, r);  // after the end: the kept result
  if (auto* e = std::get_if<caf::error>(&third))
    FAIL(caf::to_string(*e));
  REQUIRE(std::holds_alternative<job_result>(third));
  CHECK(a.n->summary().jobs_served == 1);
}

TEST_CASE("a key reused for another job is refused, and never answered with the other job's result") {
  local_node a{"a"};
  raw_client c{a.n->port()};
  job_request r;
  r.key = "k";
  r.pipeline = "p";
  r.models = {"m1"};
  REQUIRE(std::holds_alternative<job_result>(c.ask(run_atom::value, r)));
  r.models = {"m2"};
  CHECK(mcache_code(c.ask(run_atom::value, r)) == errc::invalid_argument);
  CHECK(a.n->summary().jobs_served == 1);
}

TEST_CASE("an exit message from a peer does not stop a node, and a kill (which CAF always honours) makes it stop serving") {
  local_node a{"a"};
  raw_client c{a.n->port()};
  caf::anon_send_exit(c.node, caf::exit_reason::user_shutdown);
  std::this_thread::sleep_for(100ms);
  job_request r;
  r.key = "after-exit";
  r.pipeline = "p";
  CHECK(std::holds_alternative<job_result>(c.ask(run_atom::value, r)));
  CHECK(a.n->serving());
  caf::anon_send_exit(c.node, caf::exit_reason::kill);
  CHECK(eventually([&] { return !a.n->serving(); }));
}

TEST_CASE("a router refuses timeouts of a century or more at start: its timers add them to now") {
  for (auto set : std::vector<std::function<void(router_options&)>>{
         [](router_options& o) { o.job_timeout = std::chrono::milliseconds::max(); },
         [](router_options& o) { o.wait_for_node = std::chrono::hours(24 * 365 * 100); }}) {
    auto o = to({{"127.0.0.1", 7000}});
    set(o);
    try {
      router r{o};
      FAIL("a router started with a timeout of a century or more");
    } catch (const request_error& e) {
      CHECK(e.code() == errc::invalid_argument);
    }
  }
}

TEST_CASE("a node refuses to listen beyond loopback without TLS, and a router to reach such a node") {
  runtime rt{local_node::options()};
  scheduler sched{rt};
  node_options o;
  o.listen = "0.0.0.0";
  try {
    node n{rt, sched, o, {{"p", test_pipeline()}}};
    FAIL("a node listened on 0.0.0.0 without TLS");
  } catch (const request_error& e) {
    CHECK(e.code() == errc::invalid_argument);
    CHECK(std::string{e.what()}.find("TLS") != std::string::npos);
  }
  CHECK_THROWS_AS(router(to({{"10.1.2.3", 7000}})), request_error);
  CHECK_THROWS_AS(parse_endpoint("nohost"), request_error);
  CHECK_THROWS_WITH(parse_endpoint("localhost"), Catch::Contains("no port"));  // the host is what was given
  CHECK_THROWS_WITH(parse_endpoint(":7001"), Catch::Contains("no host"));
  CHECK_THROWS_AS(parse_endpoint("h:99999"), request_error);
  CHECK(parse_endpoint("[::1]:7001").host == "::1");
  tls_options half;
  half.certificate = "/nonexistent.pem";
  o.listen = "127.0.0.1";
  o.tls = half;
  CHECK_THROWS_AS(node(rt, sched, o, {{"p", test_pipeline()}}), request_error);
}

TEST_CASE("a node's metrics text counts the jobs it served and failed, labelled with its name") {
  local_node a{"a\"b"};
  router r{to({a.where()})};
  REQUIRE(r.wait_for_nodes(1, 10s) == 1);
  r.run(job({"m1"}));
  auto late = job({"m2"}, {{"ms", "2000"}});
  late.deadline_ms = 50;
  CHECK_THROWS(r.run(late));
  auto text = a.n->metrics_text();
  CHECK(text.find("mcache_node_jobs_served_total{node=\"a\\\"b\"} 1\n") != std::string::npos);
  CHECK(text.find("mcache_node_jobs_failed_total{node=\"a\\\"b\"} 1\n") != std::string::npos);
  CHECK(text.find("mcache_node_jobs_queued{node=\"a\\\"b\"} 0\n") != std::string::npos);
  CHECK(text.find("# TYPE mcache_node_jobs_served_total counter\n") != std::string::npos);
}

TEST_CASE("a node's journal has a line for every job that ended there, those it stopped with included") {
  test::temp_dir dir;
  auto journal = dir.file("journal.a");
  {
    local_node a{"a", {}, "127.0.0.1", journal};
    router r{to({a.where()})};
    REQUIRE(r.wait_for_nodes(1, 10s) == 1);
    auto done = r.run(job({"m1"}));
    auto running = job({"m2"}, {{"ms", "20000"}});
    running.key = "long-1";
    auto f = r.submit(running);
    REQUIRE(eventually([&] { return a.n->summary().queued == 1; }));
    a.n.reset();  // the node stops with the job running
    std::ifstream in{journal};
    std::string all{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    CHECK(all.find(done.key + " a done\n") != std::string::npos);
    CHECK(all.find("long-1 a shutting_down\n") != std::string::npos);
  }
}

TEST_CASE("a node whose journal cannot be opened, and a router whose name would break journal lines, are refused at start") {
  runtime rt{local_node::options()};
  scheduler sched{rt};
  node_options o;
  o.journal_path = "/nonexistent/dir/journal.log";
  try {
    node n{rt, sched, o, {{"p", test_pipeline()}}};
    FAIL("a node started with a journal it cannot write");
  } catch (const request_error& e) {
    CHECK(e.code() == errc::invalid_argument);
    CHECK(std::string{e.what()}.find("'/nonexistent/dir/journal.log' cannot be opened") != std::string::npos);
  }
  auto named = to({{"127.0.0.1", 7000}});
  named.name = "r1-s9.9 g done\nr1";
  CHECK_THROWS_AS(router{named}, request_error);
}

namespace {

/// A CA, and certificates signed by it (or by another CA) made with the openssl command.
struct certificates {
  test::temp_dir dir;
  std::string path(const std::string& name) const { return dir.file(name); }
  void run(const std::string& cmd) const {
    auto full = "cd '" + dir.path().string() + "' && " + cmd + " >/dev/null 2>&1";
    REQUIRE(std::system(full.c_str()) == 0);
  }
  void make_ca(const std::string& name) const {
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout " + name + ".key -out " + name + ".pem -days 1 -subj /CN=" + name);
  }
  tls_options make(const std::string& name, const std::string& ca) const {
    run("openssl req -newkey rsa:2048 -nodes -keyout " + name + ".key -out " + name + ".csr -subj /CN=" + name);
    run("openssl x509 -req -in " + name + ".csr -CA " + ca + ".pem -CAkey " + ca + ".key -CAcreateserial -out " + name
        + ".pem -days 1");
    return {path(name + ".pem"), path(name + ".key"), path("fleet-ca.pem"), ""};
  }
};

} // namespace

TEST_CASE("TLS files that exist but cannot be used are refused at start, each named with OpenSSL's reason") {
  // CAF's TLS layer loads them only when the first connection comes, and ends the process if it cannot.
  certificates certs;
  certs.make_ca("fleet-ca");
  auto good = certs.make("node", "fleet-ca");
  auto other = certs.make("other", "fleet-ca");
  std::ofstream{certs.path("garbage.pem")} << "not a PEM file\n";
  REQUIRE_FALSE(good.check());
  auto refused = [](tls_options tls, const std::string& says) {
    auto why = tls.check();
    REQUIRE(why);
    CHECK(why->code == errc::invalid_argument);
    CHECK_THAT(why->detail, Catch::Contains(says));
    runtime rt{local_node::options()};
    scheduler sched{rt};
    node_options o;
    o.listen = "0.0.0.0";
    o.tls = tls;
    CHECK_THROWS_WITH(node(rt, sched, o, {{"p", test_pipeline()}}), Catch::Contains(says));
    auto r = to({{"127.0.0.1", 7000}});
    r.tls = tls;
    CHECK_THROWS_WITH(router{r}, Catch::Contains(says));
  };
  auto bad_cert = good;
  bad_cert.certificate = certs.path("garbage.pem");
  refused(bad_cert, "is not a usable PEM certificate chain");
  auto bad_key = good;
  bad_key.key = certs.path("garbage.pem");
  refused(bad_key, "is not a usable PEM private key");
  auto wrong_key = good;
  wrong_key.key = other.key;
  refused(wrong_key, "does not belong to certificate");
  auto bad_ca = good;
  bad_ca.ca_file = certs.path("garbage.pem");
  refused(bad_ca, "holds no usable PEM certificate");
}

TEST_CASE("with TLS a router whose certificate the fleet's CA signed is served, and one signed by another CA or without TLS is refused") {
  certificates certs;
  certs.make_ca("fleet-ca");
  certs.make_ca("other-ca");
  auto node_tls = certs.make("node", "fleet-ca");
  auto router_tls = certs.make("router", "fleet-ca");
  auto rogue_tls = certs.make("rogue", "other-ca");
  rogue_tls.ca_file = certs.path("other-ca.pem");
  local_node a{"a", node_tls};

  auto trusted = to({a.where()});
  trusted.tls = router_tls;
  router good{trusted};
  REQUIRE(good.wait_for_nodes(1, 10s) == 1);
  CHECK(good.run(job({"m1"})).node == "a");

  for (auto tls : {rogue_tls, tls_options{}}) {
    auto o = to({a.where()});
    o.tls = tls;
    o.wait_for_node = 300ms;
    router refused{o};
    CHECK(refused.wait_for_nodes(1, 1500ms) == 0);
    auto st = refused.stats();
    CHECK(st.nodes[0].connects == 0);
    CHECK_FALSE(st.nodes[0].last_error.empty());  // it tried, and was refused
    auto f = refused.submit(job({"m1"}));
    CHECK(code_of(f) == errc::node_unavailable);
  }
  // The node is unharmed by the refused peers.
  CHECK(good.run(job({"m2"})).node == "a");
}
