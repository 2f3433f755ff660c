#pragma once
// Results of the core tiers: a value or a `failure`, and the replies a tier step asks its actor to send.

#include "messages/errc.hpp"
#include "messages/ids.hpp"

#include <variant>

namespace mcache {

template <class T>
using outcome = std::variant<T, failure>;

template <class T>
bool succeeded(const outcome<T>& x) {
  return std::holds_alternative<T>(x);
}

/// The answer to a request that a tier held (waiting for room, a load or a copy) or answered at once.
template <class T>
struct reply {
  request_id request;
  outcome<T> result;
};

} // namespace mcache
