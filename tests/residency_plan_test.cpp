// The per-tensor plan on its own: what a pin copies and how much staging it reserves.

#include "runtime/core/tiers/residency_plan.hpp"

#include "support/catch.hpp"

using namespace mcache;

namespace {
std::vector<tensor_slot> absent(std::vector<bytes_t> bytes, std::vector<size_t> required = {}) {
  std::vector<tensor_slot> out;
  for (auto b : bytes)
    out.push_back({b, false, tensor_residency::absent});
  for (auto r : required)
    out[r].required = true;
  return out;
}
} // namespace

TEST_CASE("a model that fits beside its working memory is copied whole, with no staging") {
  auto p = plan_residency(absent({10, 20, 30}), 40, 100, true, 2);
  REQUIRE(p);
  CHECK(p->copy == std::vector<size_t>{0, 1, 2});
  CHECK(p->copy_bytes == 60);
  CHECK(p->staging_bytes == 0);
}

TEST_CASE("a model that does not fit keeps its required tensors, then what fits in order beside the ring") {
  // 70 bytes into 50: t2 is required (10); the worst ring is 2 x 20 (t1, the largest that may stream) = 40,
  // which leaves no room for another tensor; the ring is then sized by what streams: still t1.
  auto tensors = absent({10, 20, 10, 10, 10, 10}, {2});
  auto p = plan_residency(tensors, 0, 50, true, 2);
  REQUIRE(p);
  CHECK(p->copy == std::vector<size_t>{2});
  CHECK(p->staging_bytes == 40);
  CHECK(p->need() == 50);
  // With 10 more bytes of room, t0 fits too, in execution order before the others.
  auto more = plan_residency(tensors, 0, 60, true, 2);
  REQUIRE(more);
  CHECK(more->copy == std::vector<size_t>{0, 2});
}

TEST_CASE("required tensors never size the staging ring") {
  auto tensors = absent({30, 10, 10, 10, 10}, {0});
  CHECK(staging_for(tensors, {}, 2) == 20);
  auto p = plan_residency(tensors, 0, 60, true, 2);
  REQUIRE(p);
  CHECK(p->copy == std::vector<size_t>{0, 1});
  CHECK(p->staging_bytes == 20);
}

TEST_CASE("resident and arriving tensors are neither copied again nor staged") {
  auto tensors = absent({10, 10, 40});
  tensors[0].state = tensor_residency::resident;
  tensors[2].state = tensor_residency::copying;
  auto p = plan_residency(tensors, 0, 10, true, 2);
  REQUIRE(p);
  CHECK(p->copy == std::vector<size_t>{1});
  CHECK(staging_for(tensors, {}, 2) == 20);
}

TEST_CASE("without partial loading, or without room for the required tensors and the ring, there is no plan") {
  CHECK_FALSE(plan_residency(absent({10, 20, 30}), 0, 50, false, 2));
  CHECK_FALSE(plan_residency(absent({30, 20, 20}, {0}), 0, 60, true, 2));  // 30 + 2 x 20 > 60
  CHECK(plan_residency(absent({30, 20, 20}, {0}), 0, 70, true, 2));
}

TEST_CASE("the least a pin could ever need is the whole model, or in part its required tensors and a ring of the largest other") {
  CHECK(least_pin_bytes(absent({10, 20, 30}), false, 2) == 60);
  CHECK(least_pin_bytes(absent({10, 20, 30}), true, 2) == 60);          // 2 x 30 of staging: no less than whole
  CHECK(least_pin_bytes(absent({10, 20, 30, 5}), true, 2) == 60);       // 65 whole, 2 x 30 in part
  CHECK(least_pin_bytes(absent({40, 20, 20, 20}, {0}), true, 2) == 80);  // 40 required + 2 x 20
  CHECK(least_pin_bytes(absent({40, 20, 20, 20}, {0}), true, 3) == 100);
  auto arriving = absent({40, 20, 20, 20}, {0});
  arriving[1].state = tensor_residency::resident;  // what is on a device now does not lower what could be needed
  CHECK(least_pin_bytes(arriving, true, 2) == 80);
}

namespace {
std::vector<tensor_slot> resident(std::vector<bytes_t> bytes, std::vector<size_t> required = {}) {
  auto out = absent(std::move(bytes), std::move(required));
  for (auto& t : out)
    t.state = tensor_residency::resident;
  return out;
}
} // namespace

TEST_CASE("a pin of its own resident model drops the fewest of the model's last tensors that make its working memory and ring fit") {
  // Six tensors of 10, t0 required; 40 bytes of room for 50 of working memory. Dropping t5 and t4 frees
  // 20 and needs a ring of 2 x 10: 70 > 60. Dropping t3 too: 70 <= 70.
  auto t = plan_own_trim(resident({10, 10, 10, 10, 10, 10}, {0}), 50, 40, 2);
  REQUIRE(t);
  CHECK(t->drop == std::vector<size_t>{5, 4, 3});
  CHECK(t->freed == 30);
  CHECK(t->plan.staging_bytes == 20);
  CHECK(t->plan.copy.empty());
  // The ring is sized by the largest tensor that then streams, one already absent included.
  auto mixed = resident({10, 30, 10, 10});
  mixed[1].state = tensor_residency::absent;
  auto m = plan_own_trim(mixed, 10, 60, 2);
  REQUIRE(m);
  CHECK(m->drop == std::vector<size_t>{3});
  CHECK(m->plan.staging_bytes == 60);
}

TEST_CASE("a pin never drops its own model's required tensors, and has no trim when dropping all the others is not enough") {
  CHECK_FALSE(plan_own_trim(resident({10, 10}, {0, 1}), 5, 0, 2));
  // Dropping both others frees 20 and needs a ring of 2 x 10: 25 + 20 > 0 + 20.
  CHECK_FALSE(plan_own_trim(resident({10, 10, 10}, {0}), 25, 0, 2));
  auto enough = plan_own_trim(resident({10, 10, 10}, {0}), 0, 0, 2);
  REQUIRE(enough);
  CHECK(enough->drop == std::vector<size_t>{2, 1});
}

TEST_CASE("a pin of its own model copies the required tensors an eviction dropped, and makes room for them too") {
  // t0 (required, 10) was evicted; t1..t3 are resident. 11 of working memory, t0 and a ring of 2 x 10
  // need 41: 10 of room and all three others dropped (30) are not enough.
  auto tensors = resident({10, 10, 10, 10}, {0});
  tensors[0].state = tensor_residency::absent;
  CHECK_FALSE(plan_own_trim(tensors, 11, 10, 2));
  auto t = plan_own_trim(tensors, 10, 30, 2);  // dropping t3 frees 10: 10 + 10 + 20 <= 30 + 10
  REQUIRE(t);
  CHECK(t->drop == std::vector<size_t>{3});
  CHECK(t->plan.copy == std::vector<size_t>{0});
  CHECK(t->plan.copy_bytes == 10);
  CHECK(t->plan.staging_bytes == 20);
}
