// The scheduler's order without CAF: Note [Scheduling order] (runtime/core/scheduling/job_queue.hpp).

#include "runtime/core/scheduling/job_queue.hpp"

#include "support/catch.hpp"

#include <random>

using namespace mcache;

namespace {

queued_job job(job_id id, std::vector<std::pair<model_id, bytes_t>> models, stage_target target = stage_target::any_gpu(),
               int priority = 0) {
  queued_job q;
  q.id = id;
  q.models = std::move(models);
  q.target = target;
  q.priority = priority;
  return q;
}

order_options warm(size_t window, size_t passes) {
  order_options o;
  o.order = order_options::policy::warm_first;
  o.window = window;
  o.max_passes = passes;
  return o;
}

} // namespace

TEST_CASE("fifo runs jobs in arrival order, higher priority first") {
  job_queue q;
  q.push(job(1, {{"a", 10}}));
  q.push(job(2, {{"b", 10}}));
  q.push(job(3, {{"c", 10}}, stage_target::any_gpu(), /*priority=*/5));
  residency_view none;
  std::vector<job_id> order;
  while (auto j = q.pick(0, none, {}))
    order.push_back(j->id);
  CHECK(order == std::vector<job_id>{3, 1, 2});
}

TEST_CASE("a worker only takes jobs whose stage may run on its device") {
  job_queue q;
  q.push(job(1, {{"a", 10}}, stage_target::on(1)));
  q.push(job(2, {{"b", 10}}, stage_target::cpu()));
  q.push(job(3, {{"c", 10}}, stage_target::any_gpu()));
  residency_view none;
  CHECK(q.has_work_for(5));  // any_gpu runs on any GPU
  CHECK(q.pick(0, none, {})->id == 3);
  CHECK_FALSE(q.pick(0, none, {}));
  CHECK(q.pick(cpu_device, none, {})->id == 2);
  CHECK(q.pick(1, none, {})->id == 1);
  CHECK(q.empty());
}

TEST_CASE("warm_first prefers the job whose models are already on the free device, then in RAM, then on disk") {
  job_queue q;
  q.push(job(1, {{"cold", 100}}));
  q.push(job(2, {{"in_ram", 100}}));
  q.push(job(3, {{"on_gpu", 100}}));
  residency_view where;
  where.in_ram = {"in_ram", "on_gpu"};
  where.on_device[0] = {{"on_gpu", 100}};
  auto o = warm(16, 8);
  CHECK(job_queue::cost(q.jobs()[0], 0, where, o) == Approx(900));  // a disk load (8x) and a copy
  CHECK(job_queue::cost(q.jobs()[1], 0, where, o) == Approx(100));
  CHECK(job_queue::cost(q.jobs()[2], 0, where, o) == Approx(0));
  CHECK(q.pick(0, where, o)->id == 3);
  CHECK(q.pick(0, where, o)->id == 2);
  CHECK(q.pick(0, where, o)->id == 1);
  // On another device the resident copy does not count.
  q.push(job(4, {{"on_gpu", 100}}));
  CHECK(job_queue::cost(q.jobs()[0], 1, where, o) == Approx(100));
}

TEST_CASE("warm_first counts a CPU stage's model for its disk load alone, never for a copy") {
  job_queue q;
  auto cold_cpu = job(1, {{"on_gpu", 100}});
  cold_cpu.loaded_only = {{"encoder", 50}};
  auto warm_cpu = job(2, {{"on_gpu", 100}});
  warm_cpu.loaded_only = {{"encoder_in_ram", 50}};
  q.push(cold_cpu);
  q.push(warm_cpu);
  residency_view where;
  where.in_ram = {"on_gpu", "encoder_in_ram"};
  where.on_device[0] = {{"on_gpu", 100}};
  auto o = warm(16, 8);
  CHECK(job_queue::cost(q.jobs()[0], 0, where, o) == Approx(400));  // its load (8x), no copy
  CHECK(job_queue::cost(q.jobs()[1], 0, where, o) == Approx(0));
  CHECK(job_queue::cost(q.jobs()[0], cpu_device, where, o) == Approx(400));  // the CPU worker loads it too
  CHECK(q.pick(0, where, o)->id == 2);
}

TEST_CASE("warm_first looks only at the first W eligible jobs") {
  job_queue q;
  q.push(job(1, {{"cold", 100}}));
  q.push(job(2, {{"cold2", 100}}));
  q.push(job(3, {{"hot", 100}}));
  residency_view where;
  where.on_device[0] = {{"hot", 100}};
  where.in_ram = {"hot"};
  CHECK(q.pick(0, where, warm(2, 8))->id == 1);  // 'hot' is third: outside a window of 2
}

TEST_CASE("warm_first passes a job over at most K times, then runs it") {
  const size_t k = 3;
  auto o = warm(16, k);
  job_queue q;
  residency_view where;
  where.on_device[0] = {{"hot", 100}};
  where.in_ram = {"hot"};
  q.push(job(1, {{"cold", 100}}));
  job_id next = 2;
  std::vector<job_id> ran;
  for (int round = 0; round < 10; ++round) {
    q.push(job(next++, {{"hot", 100}}));  // a warm job keeps arriving behind the cold one
    ran.push_back(q.pick(0, where, o)->id);
    q.check_invariants(o);
  }
  auto cold_at = std::find(ran.begin(), ran.end(), job_id{1}) - ran.begin();
  CHECK(cold_at == static_cast<long>(k));  // passed over exactly K times, then taken
}

TEST_CASE("with random workloads no job is ever passed over more than K times") {
  std::mt19937 rng{7};
  for (size_t k : {0, 1, 4}) {
    for (size_t w : {1, 4, 16}) {
      auto o = warm(w, k);
      job_queue q;
      residency_view where;
      job_id next = 1;
      for (int step = 0; step < 400; ++step) {
        if (rng() % 3 != 0) {
          auto m = "m" + std::to_string(rng() % 6);
          q.push(job(next++, {{m, 10 + rng() % 90}}, rng() % 5 == 0 ? stage_target::on(rng() % 2) : stage_target::any_gpu(),
                     static_cast<int>(rng() % 2)));
        }
        where.on_device[0] = {{"m" + std::to_string(rng() % 6), 50}};
        where.in_ram = {"m" + std::to_string(rng() % 6)};
        if (auto j = q.pick(static_cast<device_index>(rng() % 2), where, o))
          CHECK(j->passed_over <= k);
        q.check_invariants(o);
      }
    }
  }
}

TEST_CASE("jobs past their deadline are taken out, the others keep their order") {
  job_queue q;
  auto now = std::chrono::steady_clock::now();
  auto a = job(1, {});
  a.deadline = now - std::chrono::seconds(1);
  auto b = job(2, {});
  auto c = job(3, {});
  c.deadline = now + std::chrono::hours(1);
  q.push(a);
  q.push(b);
  q.push(c);
  CHECK(q.next_deadline() == a.deadline);
  auto expired = q.take_expired(now);
  REQUIRE(expired.size() == 1);
  CHECK(expired[0].id == 1);
  CHECK(q.size() == 2);
  CHECK(q.remove(3));
  CHECK_FALSE(q.remove(3));
  CHECK(q.jobs().front().id == 2);
}

TEST_CASE("peek names the job pick would take, and changes nothing") {
  job_queue q;
  q.push(job(1, {{"cold", 100}}));
  q.push(job(2, {{"hot", 100}}));
  residency_view where;
  where.on_device[0] = {{"hot", 100}};
  auto o = warm(16, 8);
  REQUIRE(q.peek(0, where, o));
  CHECK(q.peek(0, where, o)->id == 2);
  CHECK(q.jobs()[0].passed_over == 0);
  CHECK(q.size() == 2);
  CHECK(q.pick(0, where, o)->id == 2);
  CHECK(q.peek(cpu_device, where, o) == nullptr);
}
