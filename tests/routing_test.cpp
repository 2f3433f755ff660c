// The fleet router's decisions without a network: Note [Routing] and Note [Exactly once]
// (runtime/core/fleet/routing.hpp), and a node's runs by key (Note [Node jobs], run_book.hpp).

#include "runtime/core/fleet/routing.hpp"
#include "runtime/core/fleet/run_book.hpp"

#include "support/catch.hpp"

using namespace mcache;
using namespace mcache::fleet;

namespace {

node_view node(std::vector<resident_model> resident, std::uint32_t queued = 0,
               std::vector<std::string> pipelines = {"p", "q"}) {
  node_view v;
  v.up = true;
  v.has_summary = true;
  v.summary.resident = std::move(resident);
  v.summary.queued = queued;
  v.summary.pipelines = std::move(pipelines);
  return v;
}

job_request job(std::string key, std::vector<model_id> models, std::string pipeline = "p") {
  job_request r;
  r.key = std::move(key);
  r.pipeline = std::move(pipeline);
  r.models = std::move(models);
  return r;
}

} // namespace

TEST_CASE("a job goes to the node that holds its models on a device, not to one that holds them in RAM only") {
  std::vector<node_view> nodes{node({{"unet", ram_tier, 100, 100}}),
                               node({{"unet", ram_tier, 100, 100}, {"unet", 0, 100, 100}}),
                               node({})};
  router_policy policy;
  auto choice = policy.choose(nodes, "p", {"unet"});
  REQUIRE(choice);
  CHECK(choice->node == 1);
  CHECK(choice->bytes_to_move == 0);
  auto sizes = router_policy::known_sizes(nodes);
  CHECK(router_policy::bytes_to_move(nodes[0], {"unet"}, sizes) == 100);  // RAM to device
  CHECK(router_policy::bytes_to_move(nodes[2], {"unet"}, sizes) == 200);  // disk to RAM, RAM to device
}

TEST_CASE("a partly resident model costs only its missing bytes, on the node's best device") {
  std::vector<node_view> nodes{node({{"llm", ram_tier, 160, 160}, {"llm", 0, 40, 160}, {"llm", 1, 120, 160}}),
                               node({{"llm", ram_tier, 160, 160}, {"llm", 0, 100, 160}})};
  router_policy policy;
  auto sizes = router_policy::known_sizes(nodes);
  CHECK(router_policy::bytes_to_move(nodes[0], {"llm"}, sizes) == 40);
  CHECK(router_policy::bytes_to_move(nodes[1], {"llm"}, sizes) == 60);
  CHECK(policy.choose(nodes, "p", {"llm"})->node == 0);
}

TEST_CASE("models arriving on a node for jobs in flight count as resident there") {
  std::vector<node_view> nodes{node({{"vae", 0, 10, 10}}), node({}), node({})};
  nodes[2].arriving.insert("vae");
  nodes[2].arriving.insert("unet");
  router_policy policy;
  auto sizes = router_policy::known_sizes(nodes);
  CHECK(router_policy::bytes_to_move(nodes[1], {"vae"}, sizes) == 20);
  CHECK(router_policy::bytes_to_move(nodes[2], {"vae"}, sizes) == 0);
  // "unet" is in no summary: 1 byte wherever it is not arriving, so the node it goes to wins.
  CHECK(router_policy::bytes_to_move(nodes[1], {"unet"}, sizes) == 1);
  CHECK(router_policy::bytes_to_move(nodes[2], {"unet"}, sizes) == 0);
  CHECK(router_policy{}.choose(nodes, "p", {"unet"})->node == 2);
}

TEST_CASE("equal costs go to the shorter queue, then in turn") {
  std::vector<node_view> nodes{node({}, 3), node({}, 1), node({}, 1)};
  router_policy policy;
  auto first = policy.choose(nodes, "p", {"x"});
  auto second = policy.choose(nodes, "p", {"x"});
  REQUIRE(first);
  REQUIRE(second);
  CHECK(first->node != 0);
  CHECK(second->node != 0);
  CHECK(first->node != second->node);
}

TEST_CASE("a warm node whose queue is balance_bound longer than the shortest is passed over") {
  std::vector<node_view> nodes{node({{"unet", ram_tier, 100, 100}, {"unet", 0, 100, 100}}, 4), node({}, 0)};
  router_policy bounded{routing_policy::residency, 4};
  CHECK(bounded.choose(nodes, "p", {"unet"})->node == 1);
  router_policy loose{routing_policy::residency, 5};
  CHECK(loose.choose(nodes, "p", {"unet"})->node == 0);
}

TEST_CASE("only nodes that are up, have reported and serve the pipeline are chosen") {
  std::vector<node_view> nodes{node({}), node({}), node({}, 0, {"q"}), node({})};
  nodes[0].up = false;
  nodes[1].has_summary = false;
  router_policy policy;
  for (int i = 0; i < 5; ++i)
    CHECK(policy.choose(nodes, "p", {})->node == 3);
  CHECK(policy.choose(nodes, "q", {})->node != 0);
  CHECK_FALSE(policy.choose(nodes, "r", {}));
  nodes[3].up = false;
  CHECK_FALSE(policy.choose(nodes, "p", {}));
}

TEST_CASE("a pipeline no node serves is unknown_pipeline at once when every node has said what it serves, else after the wait") {
  std::vector<node_view> nodes{node({}, 0, {"p"}), node({}, 0, {"q"})};
  auto now = unplaceable(nodes, "nope", /*waited_out=*/false);
  REQUIRE(now);
  CHECK(now->code == errc::unknown_pipeline);
  CHECK(now->detail == "no node serves pipeline 'nope'; the 2 node(s) serve 'p', 'q'");
  CHECK_FALSE(unplaceable(nodes, "q", false));  // served: placeable
  nodes[1].up = false;  // it might serve 'nope' when it comes back: wait
  CHECK_FALSE(unplaceable(nodes, "nope", false));
  auto later = unplaceable(nodes, "nope", /*waited_out=*/true, std::chrono::milliseconds(3000));
  REQUIRE(later);
  CHECK(later->code == errc::node_unavailable);
  CHECK(later->detail
        == "no node that serves pipeline 'nope' was up within 3000 ms; 1 of 2 node(s) did not answer, the others serve 'p'");
  nodes[1].up = true;
  nodes[1].has_summary = false;  // connected, not reported yet: still unknown
  CHECK_FALSE(unplaceable(nodes, "nope", false));
}

TEST_CASE("a job sent away from a lost node goes elsewhere, or nowhere yet, never back to it") {
  std::vector<node_view> nodes{node({{"m", 0, 5, 5}}), node({})};
  router_policy policy;
  CHECK(policy.choose(nodes, "p", {"m"}, 0)->node == 1);
  nodes[1].up = false;
  CHECK_FALSE(policy.choose(nodes, "p", {"m"}, 0));  // it waits for another node, or for node 0 to rejoin
  CHECK(policy.choose(nodes, "p", {"m"})->node == 0);
}

TEST_CASE("round-robin takes the eligible nodes in turn whatever they hold") {
  std::vector<node_view> nodes{node({{"m", 0, 5, 5}}), node({}), node({})};
  router_policy policy{routing_policy::round_robin};
  std::vector<std::size_t> order;
  for (int i = 0; i < 6; ++i)
    order.push_back(policy.choose(nodes, "p", {"m"})->node);
  CHECK(order == std::vector<std::size_t>{0, 1, 2, 0, 1, 2});
}

TEST_CASE("a lost node's jobs are sent again once, and fail the second time") {
  dispatch_book book;
  REQUIRE(book.accept(job("j1", {"m"})));
  REQUIRE(book.accept(job("j2", {"m"})));
  CHECK_FALSE(book.accept(job("j1", {})));  // a key in flight is refused
  CHECK(book.assign("j1", 0) == 1);
  CHECK(book.assign("j2", 1) == 1);
  auto lost = book.node_lost(0);
  CHECK(lost.resend == std::vector<std::string>{"j1"});
  CHECK(lost.fail.empty());
  CHECK(book.unplaced() == std::vector<std::string>{"j1"});
  book.check();
  CHECK(book.assign("j1", 1) == 2);
  lost = book.node_lost(1);
  CHECK(lost.fail == std::vector<std::string>{"j1"});
  CHECK(lost.resend == std::vector<std::string>{"j2"});
  book.check();
}

TEST_CASE("an answer for an attempt that is over is dropped, so no caller is answered twice") {
  dispatch_book book;
  book.accept(job("j", {}));
  auto first = book.assign("j", 0);
  CHECK(book.attempt_lost("j", first) == dispatch_book::after_loss::resend);
  auto second = book.assign("j", 1);
  CHECK_FALSE(book.answered("j", first));    // the first node answered late
  CHECK(book.attempt_lost("j", first) == dispatch_book::after_loss::stale);
  CHECK(book.answered("j", second));
  CHECK_FALSE(book.answered("j", second));   // and only once
  CHECK(book.size() == 0);
  book.check();
}

TEST_CASE("the book says how many jobs and which models are in flight on each node") {
  dispatch_book book;
  book.accept(job("a", {"x", "y"}));
  book.accept(job("b", {"x"}));
  book.accept(job("c", {"z"}));
  book.assign("a", 1);
  book.assign("b", 1);
  std::vector<node_view> nodes(2);
  book.annotate(nodes);
  CHECK(nodes[0].in_flight == 0);
  CHECK(nodes[1].in_flight == 2);
  CHECK(nodes[1].arriving.count("x") == 2);
  CHECK(nodes[1].arriving.count("z") == 0);
  CHECK(book.unplaced() == std::vector<std::string>{"c"});
}

TEST_CASE("requests beyond the limits are refused with a text that names the limit") {
  request_limits limits;
  CHECK_FALSE(check_request(job("k", {"m"}), limits));
  CHECK(check_request(job("", {"m"}), limits)->code == errc::invalid_argument);
  CHECK(check_request(job(std::string(limits.max_key + 1, 'k'), {}), limits));
  // A key is one field of a journal line: a space or newline in it could write a line of its own.
  CHECK(check_request(job("r1-s9.9 g done\nr1", {"m"}), limits)->detail.find("printable ASCII") != std::string::npos);
  CHECK(check_request(job("k\x01", {"m"}), limits));
  CHECK(check_request(job("k\xc3\xa9", {"m"}), limits));
  CHECK(check_request(job("k", {}, ""), limits));
  CHECK(check_request(job("k", std::vector<model_id>(limits.max_models + 1, "m")), limits)->detail.find("at most")
        != std::string::npos);
  CHECK(check_request(job("k", {""}), limits));
  auto big = job("k", {});
  big.params["blob"] = std::string(limits.max_param_bytes + 1, 'x');
  CHECK(check_request(big, limits)->detail.find("weights never travel") != std::string::npos);
  auto late = job("k", {});
  late.deadline_ms = limits.max_deadline_ms + 1;
  CHECK(check_request(late, limits));
}

TEST_CASE("a node's run of a key is joined while it runs, answered from the kept outcome after, and a key reused for another job is a conflict") {
  run_book<int, int> book{2};
  int waiter = 1;
  const outcome<int>* kept = nullptr;
  using seen = run_book<int, int>::seen;
  CHECK(book.look_up("k", "d", waiter, &kept) == seen::new_key);
  book.start("k", "d", 1);
  int second = 2;
  CHECK(book.look_up("k", "d", second, &kept) == seen::running);
  int other = 9;
  CHECK(book.look_up("k", "another job", other, &kept) == seen::conflict);
  book.check();
  auto waiters = book.end("k", 42);
  CHECK(waiters == std::vector<int>{1, 2});
  int third = 3;
  REQUIRE(book.look_up("k", "d", third, &kept) == seen::ended);
  CHECK(book.look_up("k", "another job", third, &kept) == seen::conflict);
  CHECK(std::get<int>(*kept) == 42);
  book.end("k2", failure{errc::work_failed, "x"});
  book.end("k3", 3);
  int fourth = 4;
  CHECK(book.look_up("k", "d", fourth, &kept) == seen::new_key);  // only the last 2 are kept
  CHECK(book.kept() == 2);
  book.check();
}

TEST_CASE("a stopping node gives every waiting caller back") {
  run_book<int, int> book{4};
  book.start("a", "d", 1);
  int w = 2;
  const outcome<int>* kept = nullptr;
  book.look_up("a", "d", w, &kept);
  book.start("b", "d", 3);
  auto all = book.abandon_all();
  std::sort(all.begin(), all.end());
  CHECK(all == std::vector<int>{1, 2, 3});
  CHECK(book.running() == 0);
}
