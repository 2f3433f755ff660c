#include "runtime/core/policies/placement_policy.hpp"

#include "support/catch.hpp"

using namespace mcache;

TEST_CASE("placement prefers where the model is resident, then its preferred device, then the most free") {
  resident_then_free_placement p;
  model_descriptor m;
  m.id = "m";
  m.bytes = 50;
  std::vector<placement_view> devices = {{0, 500, 0, 1000}, {1, 900, 0, 1000}, {2, 100, 0, 1000}};
  CHECK(p.choose(m, 0, devices) == 1);  // most free
  m.preferred_device = 2;
  CHECK(p.choose(m, 0, devices) == 2);  // preferred beats free
  devices[0].model_resident_bytes = 10;
  CHECK(p.choose(m, 0, devices) == 0);  // already resident beats both: no copy
  devices[1].model_resident_bytes = 20;
  CHECK(p.choose(m, 0, devices) == 1);  // the most of it resident
}

TEST_CASE("placement never picks a device that could never hold the pin, even where the model is resident") {
  resident_then_free_placement p;
  model_descriptor m;
  m.id = "m";
  m.bytes = 600;
  // Device 1 is small: the model is resident there, and it has the most free bytes, but 400 bytes of
  // working memory pass what it may ever use.
  std::vector<placement_view> devices = {{0, 100, 0, 1000}, {1, 300, 300, 350}};
  CHECK(p.choose(m, 400, devices) == 0);
  CHECK(p.choose(m, 0, devices) == 1);  // without working memory it could: partly resident, the rest streams
  // A device that loads no model in part cannot hold more than its usable bytes of model and working memory.
  devices[1] = {1, 900, 0, 900, false};
  devices[0].free_bytes = 100;
  CHECK(p.choose(m, 400, devices) == 0);  // 600 + 400 > 900
  CHECK(p.choose(m, 200, devices) == 1);  // 600 + 200 fit: the most free
  // Where none could, every device is a candidate (its tier refuses with model_too_large).
  CHECK(p.choose(m, 5000, devices) == 1);
}

TEST_CASE("placement sees from the catalog's tensor sizes that a device loading in part could still never hold a pin") {
  resident_then_free_placement p;
  model_descriptor m;
  m.id = "m";
  m.bytes = 600;
  m.tensor_names = {"embed", "block0", "block1"};
  m.tensor_bytes = {200, 200, 200};
  m.required_tensors = {"embed"};  // in part it needs 200 + 2 slots x 200
  std::vector<placement_view> devices = {{0, 100, 0, 1000}, {1, 550, 0, 550}};
  CHECK(p.choose(m, 0, devices) == 0);  // device 1 has the most free but could never hold 600
  devices[1].staging_slots = 1;        // 400 then: it could, and it has the most free
  CHECK(p.choose(m, 0, devices) == 1);
  CHECK(least_pin_bytes(m, true, 2) == 600);
  CHECK(least_pin_bytes(m, true, 1) == 400);
  CHECK(least_pin_bytes(m, false, 1) == 600);
  m.tensor_bytes.clear();  // sizes unknown (a custom loader): the device tier decides
  CHECK(least_pin_bytes(m, true, 2) == 0);
}

TEST_CASE("the least a pin could need counts what each tensor costs the device, sizes known or not") {
  model_descriptor m;
  m.id = "m";
  m.bytes = 600;
  m.tensor_names = {"embed", "block0", "block1"};
  m.tensor_bytes = {100, 250, 250};
  m.required_tensors = {"embed"};
  auto blocks_of_512 = [](bytes_t b) { return (b + 511) / 512 * 512; };
  CHECK(least_pin_bytes(m, true, 2, blocks_of_512) == 512 + 2 * 512);
  CHECK(least_pin_bytes(m, false, 2, blocks_of_512) == 3 * 512);
  auto nothing = [](bytes_t) { return bytes_t{0}; };  // the CPU pin tier: its pins alias the RAM copy
  CHECK(least_pin_bytes(m, false, 2, nothing) == 0);
  m.tensor_bytes.clear();
  CHECK(least_pin_bytes(m, false, 2, nothing) == 0);  // was the model's bytes: a CPU stage then failed
  CHECK(least_pin_bytes(m, false, 2) == 600);
}
