// The README's examples: all of them compile (see support/readme_extract.cpp); the first, the API in a few
// lines, also runs.

#include "support/catch.hpp"
#include "support/readme_examples_support.hpp"

namespace readme {
void example_1(mcache::runtime& rt, caf::event_based_actor* self);
}

TEST_CASE("the README's examples compile, and its API example runs") {
  CHECK(readme::example_count >= 3);
  mcache::runtime_options o;
  o.ram_budget_bytes = 1 << 20;
  mcache::runtime unused{o};
  readme::example_1(unused, nullptr);  // it builds its own runtime, as the README shows
}
