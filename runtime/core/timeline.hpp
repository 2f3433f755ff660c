#pragma once
// Note [Timeline]: a record of what the runtime did, as Chrome trace-event JSON that Perfetto UI
// (ui.perfetto.dev) and chrome://tracing open: one track per tier (RAM loads, each device's copies) and
// one per scheduler worker, with loads, copies, copy backs, evictions, waits and job stages, each with its
// bytes. Spans are complete events ("X": a start and a duration, so begin and end always balance),
// evictions are instants ("i"). Thread-safe: loaders, copy threads, actors and workers all record.
// Recording is off unless a timeline exists (`runtime_options::trace_path`), and then costs a lock and
// an append per event; it keeps at most `max_events` and counts what it dropped.

#include "messages/ids.hpp"

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace mcache {

class timeline {
public:
  using clock = std::chrono::steady_clock;
  explicit timeline(std::size_t max_events = 1'000'000);

  /// The track named `name` (created on first use): "RAM", "device 0", "worker 0.1", ...
  int track(const std::string& name);
  /// A span on `track` from `start` to `end`. `bytes` 0 is left out of the event's arguments.
  void span(int track, std::string name, const char* category, clock::time_point start, clock::time_point end,
            bytes_t bytes = 0, std::string detail = {});
  /// An instant event on `track`, now.
  void instant(int track, std::string name, const char* category, bytes_t bytes = 0);

  std::size_t events() const;
  std::size_t dropped() const;
  /// The whole timeline as Chrome trace-event JSON.
  std::string json() const;
  /// Writes `json()` to `path`. Throws std::runtime_error naming the path if it cannot.
  void write(const std::string& path) const;

private:
  struct event {
    std::string name;
    const char* category;
    char phase;  // 'X' or 'i'
    int track;
    double ts_us;
    double dur_us;
    bytes_t bytes;
    std::string detail;
  };
  double since_start_us(clock::time_point t) const;

  clock::time_point start_ = clock::now();
  std::size_t max_;
  mutable std::mutex mutex_;
  std::vector<event> events_;
  std::map<std::string, int> tracks_;
  std::size_t dropped_ = 0;
};

} // namespace mcache
