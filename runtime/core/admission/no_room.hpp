#pragma once
// The "no room" explanation, written once for both tiers: what was asked (every part of it), what is free
// of what, who holds the rest, how many requests are queued ahead, and what to change.

#include "messages/errc.hpp"
#include "messages/ids.hpp"

#include <string>
#include <vector>

namespace mcache {

struct no_room_report {
  std::string tier;                    // "RAM", "device 0"
  std::string subject;                 // "'a', 'b'"
  bytes_t wanted = 0;                  // new bytes the request needs
  std::vector<std::pair<std::string, bytes_t>> parts;  // what `wanted` is made of ("model", "staging", ...)
  bytes_t free = 0;                    // free now
  bytes_t usable = 0;                  // of this many usable bytes
  bytes_t evictable = 0;               // unheld bytes that could be freed
  std::string also;                    // one more fact, e.g. "working memory reserved 1 GiB"
  std::vector<std::string> held;       // "'x' 12 MiB (1 pin)", one per held entry
  size_t queued_ahead = 0;             // requests waiting before this one
  std::string advice;                  // what to change
};

/// A `budget_exhausted` failure with the report's text.
failure explain_no_room(const no_room_report& report);

} // namespace mcache
