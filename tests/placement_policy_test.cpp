#include "runtime/core/policies/placement_policy.hpp"

#include "support/catch.hpp"

using namespace mcache;

TEST_CASE("placement prefers where the model is resident, then its preferred device, then the most free") {
  resident_then_free_placement p;
  model_descriptor m;
  m.id = "m";
  std::vector<placement_view> devices = {{0, 500, 0}, {1, 900, 0}, {2, 100, 0}};
  CHECK(p.choose(m, devices) == 1);  // most free
  m.preferred_device = 2;
  CHECK(p.choose(m, devices) == 2);  // preferred beats free
  devices[0].model_resident_bytes = 10;
  CHECK(p.choose(m, devices) == 0);  // already resident beats both: no copy
  devices[1].model_resident_bytes = 20;
  CHECK(p.choose(m, devices) == 1);  // the most of it resident
}
