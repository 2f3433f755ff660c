#include "runtime/core/policies/eviction_policy.hpp"

#include "support/catch.hpp"

using namespace mcache;

TEST_CASE("the LRU policy offers the least recently inserted or touched candidate first") {
  lru_policy lru;
  lru.insert("a");
  lru.insert("b");
  lru.insert("c");
  CHECK(lru.victims() == std::vector<model_id>{"a", "b", "c"});
  lru.touch("a");
  CHECK(lru.victims() == std::vector<model_id>{"b", "c", "a"});
  lru.insert("b");  // inserting again counts as a use
  CHECK(lru.victims() == std::vector<model_id>{"c", "a", "b"});
}

TEST_CASE("peeking at the LRU victims does not count as a use") {
  lru_policy lru;
  lru.insert("a");
  lru.insert("b");
  auto first = lru.victims();
  auto second = lru.victims();
  CHECK(first == second);
  CHECK(first.front() == "a");
}

TEST_CASE("an erased model is no longer a candidate and touching an absent one changes nothing") {
  lru_policy lru;
  lru.insert("a");
  lru.insert("b");
  lru.erase("a");
  lru.erase("zzz");
  lru.touch("zzz");
  CHECK_FALSE(lru.contains("a"));
  CHECK(lru.size() == 1);
  CHECK(lru.victims() == std::vector<model_id>{"b"});
}

// Note [Eviction with known next uses]

TEST_CASE("with known next uses, models never needed again go first, then the one needed farthest ahead") {
  lru_policy lru;
  for (auto m : {"a", "b", "c", "d", "e"})
    lru.insert(m);
  lru.set_next_uses({"c", "a", "x", "c"});  // soonest first; 'x' is not a candidate, 'c' repeats
  CHECK(lru.has_next_use("a"));
  CHECK_FALSE(lru.has_next_use("b"));
  CHECK(lru.victims() == std::vector<model_id>{"b", "d", "e", "a", "c"});
  lru.set_next_uses({});
  CHECK(lru.victims() == std::vector<model_id>{"a", "b", "c", "d", "e"});
}

TEST_CASE("restorable candidates with no known next use go first, least recently used first, and a next use still comes last") {
  lru_policy lru;
  for (auto m : {"a", "b", "c", "d", "e"})
    lru.insert(m);
  lru.set_restorable("d", true);
  lru.set_restorable("b", true);
  lru.set_restorable("x", true);  // not a candidate: never offered
  CHECK(lru.victims() == std::vector<model_id>{"b", "d", "a", "c", "e"});
  lru.touch("b");  // now used after 'd'
  CHECK(lru.victims() == std::vector<model_id>{"d", "b", "a", "c", "e"});
  lru.set_next_uses({"d"});  // needed soon: its next use decides, not whether it is restorable
  CHECK(lru.victims() == std::vector<model_id>{"b", "a", "c", "e", "d"});
  lru.set_restorable("b", false);
  lru.set_next_uses({});
  CHECK(lru.victims() == std::vector<model_id>{"d", "a", "c", "e", "b"});
  lru.erase("d");
  CHECK(lru.victims() == std::vector<model_id>{"a", "c", "e", "b"});
  lru.insert("d");  // still marked: offered first again
  CHECK(lru.victims() == std::vector<model_id>{"d", "a", "c", "e", "b"});
}

TEST_CASE("an LRU that is not cost aware records restorable marks but keeps plain LRU order") {
  lru_policy blind{/*cost_aware=*/false};
  for (auto m : {"a", "b", "c"})
    blind.insert(m);
  blind.set_restorable("c", true);
  blind.set_restorable("b", true);
  CHECK(blind.restorable("c"));
  CHECK(blind.restorable_count() == 2);
  CHECK(blind.victims() == std::vector<model_id>{"a", "b", "c"});
}
