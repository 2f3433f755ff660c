#pragma once
// The answers a tier gave to the requests a test harness sent it, by request id, and the holders it sent
// them for.

#include "runtime/core/outcome.hpp"

#include <map>
#include <string>
#include <vector>

namespace mcache::test {

/// The holders a tier harness asks for.
constexpr holder_id alice = 11;
constexpr holder_id bob = 22;
constexpr holder_id carol = 33;

template <class T>
struct answer_book {
  std::map<request_id, outcome<T>> answers;

  void record(const std::vector<reply<T>>& replies) {
    for (const auto& r : replies)
      answers.emplace(r.request, r.result);
  }
  bool answered(request_id r) const { return answers.count(r) > 0; }
  bool granted(request_id r) const { return answered(r) && succeeded(answers.at(r)); }
  errc error_of(request_id r) const { return std::get<failure>(answers.at(r)).code; }
  std::string text_of(request_id r) const { return std::get<failure>(answers.at(r)).detail; }
};

} // namespace mcache::test
