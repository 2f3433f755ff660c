#pragma once
// Every field of a stats snapshot as a list of numbers, through the same inspect() CAF serializes with,
// so "the state is exactly as before" compares all of them and a new field is never forgotten.

#include "messages/inspect.hpp"

#include <cstdint>
#include <vector>

namespace mcache::test {

struct field_collector {
  using result_type = void;
  std::vector<int64_t> fields;
  template <class... Ts>
  void operator()(caf::meta::type_name_t, Ts&... xs) {
    (fields.push_back(static_cast<int64_t>(xs)), ...);
  }
};

template <class Stats>
std::vector<int64_t> fields_of(Stats s) {
  field_collector f;
  inspect(f, s);
  return f.fields;
}

} // namespace mcache::test
