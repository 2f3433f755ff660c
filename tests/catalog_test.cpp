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

TEST_CASE("the catalog rejects empty ids, zero or absurd sizes, tensor sizes that do not describe the model, missing loaders and duplicates, and stays as it was") {
  catalog c;
  REQUIRE_FALSE(c.add(synthetic_model("m", {4})));
  auto no_id = synthetic_model("", {4});
  auto zero = synthetic_model("z", {});
  auto no_loader = synthetic_model("n", {4});
  no_loader.loader = nullptr;
  auto absurd = synthetic_model("huge", {4});
  absurd.bytes = (bytes_t{1} << 63) + 7;  // sums of two such sizes would wrap the tiers' arithmetic
  auto sizes_short = synthetic_model("s", {4, 4});
  sizes_short.tensor_bytes.pop_back();  // tensor sizes the scheduler refuses plans by must describe the model
  auto sizes_over = synthetic_model("o", {4, 4});
  sizes_over.tensor_bytes[0] = 1000;
  for (auto* d : {&no_id, &zero, &no_loader, &absurd, &sizes_short, &sizes_over}) {
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

// -- Note [Remove and replace] ------------------------------------------------------------------------------

TEST_CASE("replacing a model gives its id a new generation, and the old generation's id names nothing") {
  catalog c;
  REQUIRE_FALSE(c.add(synthetic_model("m", {16})));
  CHECK(c.find("m")->id == "m");
  auto retired = c.replace(synthetic_model("m", {32}));
  REQUIRE(succeeded(retired));
  CHECK(std::get<model_id>(retired) == "m");
  auto now = c.find("m");
  REQUIRE(now);
  CHECK(now->id == "m#2");
  CHECK(now->bytes == 32 * sizeof(float));
  CHECK(c.find("m#2") == now);  // the generation's own id finds it too
  CHECK(c.ids() == std::vector<model_id>{"m"});
  CHECK(std::get<model_id>(c.replace(synthetic_model("m", {8}))) == "m#2");
  CHECK_FALSE(c.find("m#2"));
  CHECK(c.find("m")->id == "m#3");
}

TEST_CASE("a removed id is unknown, and registering it again never reuses an old generation's id") {
  catalog c;
  REQUIRE_FALSE(c.add(synthetic_model("m", {16})));
  auto retired = c.remove("m");
  REQUIRE(succeeded(retired));
  CHECK(std::get<model_id>(retired) == "m");
  CHECK_FALSE(c.find("m"));
  CHECK(c.size() == 0);
  REQUIRE_FALSE(c.add(synthetic_model("m", {16})));
  CHECK(c.find("m")->id == "m#2");  // copies of the first "m" may still be held somewhere
}

TEST_CASE("remove and replace of an unknown id, and ids with '#', are refused and change nothing") {
  catalog c;
  REQUIRE_FALSE(c.add(synthetic_model("m", {16})));
  CHECK(std::get<failure>(c.remove("x")).code == errc::unknown_model);
  CHECK(std::get<failure>(c.replace(synthetic_model("x", {16}))).code == errc::unknown_model);
  auto bad = c.add(synthetic_model("a#2", {16}));
  REQUIRE(bad);
  CHECK(bad->code == errc::invalid_argument);
  auto empty = synthetic_model("m", {16});
  empty.loader = nullptr;
  CHECK(std::get<failure>(c.replace(empty)).code == errc::invalid_argument);
  CHECK(c.find("m")->id == "m");
  CHECK(c.size() == 1);
}

TEST_CASE("a model id must be printable UTF-8, since ids appear in status JSON, metrics, logs and Python") {
  catalog c;
  // Also invisible format characters: U+2028 (a line break in a one-line log), U+202E (reverses what
  // follows on the status page: a name displayed as another's), U+200B (zero width).
  for (const auto* id : {"caf\xe9", "a\nb", "tab\tid", "\xc0\xaf", "\xed\xa0\x80", "x\x7f", "a\xe2\x80\xa8" "b",
                         "vae\xe2\x80\xae" "exe", "v\xe2\x80\x8b" "ae"}) {
    auto err = c.add(synthetic_model(id, {4}));
    REQUIRE(err);
    CHECK(err->code == errc::invalid_argument);
    CHECK(err->detail.find("not printable UTF-8") != std::string::npos);
  }
  auto err = c.add(synthetic_model("caf\xe9", {4}));
  REQUIRE(err);
  CHECK(err->detail.find("'caf\\xe9'") != std::string::npos);  // the message itself is text
  CHECK(c.size() == 0);
  CHECK_FALSE(c.add(synthetic_model("caf\xc3\xa9", {4})));           // "café"
  CHECK_FALSE(c.add(synthetic_model("\xe6\xa8\xa1\xe5\x9e\x8b", {4})));  // "模型"
  CHECK_FALSE(c.add(synthetic_model("flux/t5 xxl", {4})));
}
