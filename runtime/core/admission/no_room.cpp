#include "runtime/core/admission/no_room.hpp"

#include "runtime/core/format.hpp"

namespace mcache {

failure explain_no_room(const no_room_report& r) {
  std::string text = "no room in " + r.tier + " for " + r.subject + ": wanted " + format_bytes(r.wanted);
  if (!r.parts.empty()) {
    text += " (";
    for (size_t i = 0; i < r.parts.size(); ++i)
      text += (i ? " + " : "") + r.parts[i].first + " " + format_bytes(r.parts[i].second);
    text += ")";
  }
  text += ", free " + format_bytes(r.free) + " of " + format_bytes(r.usable) + " usable, "
          + format_bytes(r.evictable) + " more could be evicted";
  if (!r.also.empty())
    text += "; " + r.also;
  text += "; held: ";
  if (r.held.empty())
    text += "nothing";
  for (size_t i = 0; i < r.held.size(); ++i)
    text += (i ? ", " : "") + r.held[i];
  if (r.queued_ahead > 0)
    text += "; " + std::to_string(r.queued_ahead) + " request" + (r.queued_ahead == 1 ? " is" : "s are")
            + " queued ahead for room (first come, first served)";
  text += ". " + r.advice;
  return failure{errc::budget_exhausted, std::move(text)};
}

} // namespace mcache
