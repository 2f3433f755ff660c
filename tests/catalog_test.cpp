#include "runtime/core/models/catalog.hpp"

#include "support/catch.hpp"

using namespace mcache;

TEST_CASE("registering a model makes it findable without loading it") {
  catalog c;
  int loads = 0;
  auto d = synthetic_model("m", {16, 16});
  auto inner = d.loader;
  d.loader = [&loads, inner](const model_descriptor& self) {
    ++loads;
    return inner(self);
  };
  REQUIRE_FALSE(c.add(d));
  auto found = c.find("m");
  REQUIRE(found);
  CHECK(found->bytes == 32 * sizeof(float));
  CHECK(loads == 0);
  CHECK_FALSE(c.find("other"));
}

TEST_CASE("the catalog rejects empty ids, zero or absurd sizes, missing loaders and duplicates, and stays as it was") {
  catalog c;
  REQUIRE_FALSE(c.add(synthetic_model("m", {4})));
  auto no_id = synthetic_model("", {4});
  auto zero = synthetic_model("z", {});
  auto no_loader = synthetic_model("n", {4});
  no_loader.loader = nullptr;
  auto absurd = synthetic_model("huge", {4});
  absurd.bytes = (bytes_t{1} << 63) + 7;  // sums of two such sizes would wrap the tiers' arithmetic
  for (auto* d : {&no_id, &zero, &no_loader, &absurd}) {
    auto err = c.add(*d);
    REQUIRE(err);
    CHECK(err->code == errc::invalid_argument);
  }
  auto dup = c.add(synthetic_model("m", {8}));
  REQUIRE(dup);
  CHECK(dup->detail.find("already registered") != std::string::npos);
  CHECK(c.size() == 1);
  CHECK(c.find("m")->bytes == 4 * sizeof(float));
}

TEST_CASE("a synthetic model loads exactly the bytes it declares, deterministically") {
  auto d = synthetic_model("m", {10, 3}, 7, 5);
  auto a = d.loader(d);
  auto b = d.loader(d);
  CHECK(a->total_bytes() == d.bytes);
  CHECK(d.bytes == 13 * sizeof(float) + 5);
  REQUIRE(a->tensors.size() == 2);
  CHECK(a->tensors[0].tensor.equal(b->tensors[0].tensor));
  CHECK(a->find("t1").numel() == 3);
}
