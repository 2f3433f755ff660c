// Note [Timeline] (timeline.hpp).

#include "runtime/core/timeline.hpp"

#include <nlohmann/json.hpp>

#include <fstream>
#include <stdexcept>

namespace mcache {

timeline::timeline(std::size_t max_events) : max_(max_events) {}

int timeline::track(const std::string& name) {
  std::lock_guard<std::mutex> guard{mutex_};
  auto i = tracks_.find(name);
  if (i != tracks_.end())
    return i->second;
  auto id = static_cast<int>(tracks_.size()) + 1;
  tracks_.emplace(name, id);
  return id;
}

double timeline::since_start_us(clock::time_point t) const {
  return std::chrono::duration<double, std::micro>(t - start_).count();
}

void timeline::span(int track, std::string name, const char* category, clock::time_point start,
                    clock::time_point end, bytes_t bytes, std::string detail) {
  auto ts = since_start_us(start);
  auto dur = std::max(0.0, since_start_us(end) - ts);
  std::lock_guard<std::mutex> guard{mutex_};
  if (events_.size() >= max_) {
    ++dropped_;
    return;
  }
  events_.push_back({std::move(name), category, 'X', track, ts, dur, bytes, std::move(detail)});
}

void timeline::instant(int track, std::string name, const char* category, bytes_t bytes) {
  auto ts = since_start_us(clock::now());
  std::lock_guard<std::mutex> guard{mutex_};
  if (events_.size() >= max_) {
    ++dropped_;
    return;
  }
  events_.push_back({std::move(name), category, 'i', track, ts, 0, bytes, {}});
}

std::size_t timeline::events() const {
  std::lock_guard<std::mutex> guard{mutex_};
  return events_.size();
}

std::size_t timeline::dropped() const {
  std::lock_guard<std::mutex> guard{mutex_};
  return dropped_;
}

std::string timeline::json() const {
  std::lock_guard<std::mutex> guard{mutex_};
  auto all = nlohmann::json::array();
  all.push_back({{"ph", "M"}, {"name", "process_name"}, {"pid", 1}, {"tid", 0}, {"args", {{"name", "mcache"}}}});
  for (const auto& [name, id] : tracks_) {
    all.push_back({{"ph", "M"}, {"name", "thread_name"}, {"pid", 1}, {"tid", id}, {"args", {{"name", name}}}});
    // Tracks sort by their id, so they show in the order they were first used.
    all.push_back({{"ph", "M"}, {"name", "thread_sort_index"}, {"pid", 1}, {"tid", id}, {"args", {{"sort_index", id}}}});
  }
  for (const auto& e : events_) {
    nlohmann::json j{{"name", e.name}, {"cat", e.category}, {"ph", std::string(1, e.phase)},
                     {"pid", 1}, {"tid", e.track}, {"ts", e.ts_us}};
    if (e.phase == 'X')
      j["dur"] = e.dur_us;
    else
      j["s"] = "t";  // an instant on its track
    nlohmann::json args = nlohmann::json::object();
    if (e.bytes)
      args["bytes"] = e.bytes;
    if (!e.detail.empty())
      args["detail"] = e.detail;
    if (!args.empty())
      j["args"] = std::move(args);
    all.push_back(std::move(j));
  }
  nlohmann::json doc{{"traceEvents", std::move(all)}, {"displayTimeUnit", "ms"}};
  if (dropped_)
    doc["otherData"] = {{"dropped_events", dropped_}};
  return doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);  // as runtime::status_json
}

void timeline::write(const std::string& path) const {
  auto text = json();
  std::ofstream out{path, std::ios::trunc};
  if (!out)
    throw std::runtime_error("cannot write the timeline to '" + path + "'");
  out << text;
  if (!out.flush())
    throw std::runtime_error("writing the timeline to '" + path + "' failed");
}

} // namespace mcache
