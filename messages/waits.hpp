#pragma once
// How long a wait is, across actor boundaries: a request's wait for room, a job's deadline.

#include <chrono>

namespace mcache {

/// A wait this long is for ever. Timers are `now + wait` (CAF's delayed messages, steady_clock deadlines),
/// and a wait near `nanoseconds::max()` would overflow that sum and expire at once (an acquire that asked
/// to wait `max() - 1 s` failed after 0 ms). A century is, for a request, for ever, and `now + wait`
/// stays far from overflow (the clock's range is 292 years).
inline constexpr std::chrono::hours for_ever{24 * 365 * 100};

/// Whether a wait of `wait` lasts for ever: it arms no timer.
inline bool waits_forever(std::chrono::nanoseconds wait) { return wait >= for_ever; }

} // namespace mcache
