#include "runtime/config.hpp"

#include "messages/errc.hpp"
#include "runtime/core/read_file.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <regex>

namespace mcache {

namespace {

using json = nlohmann::json;

[[noreturn]] void bad(const std::string& key, const std::string& why) {
  throw request_error(failure{errc::invalid_argument, "config: '" + key + "': " + why});
}

std::string lower(std::string s) {
  for (auto& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

/// A number and its unit, or nothing.
std::optional<std::pair<double, std::string>> split_unit(const std::string& text) {
  static const std::regex form{R"(^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$)"};
  std::smatch m;
  if (!std::regex_match(text, m, form))
    return std::nullopt;
  // strtod, not stod: a number past double's range is infinity here (refused as implausible by the
  // caller, with the key), where stod threw std::out_of_range through every caller.
  return std::make_pair(std::strtod(m[1].str().c_str(), nullptr), lower(m[2].str()));
}

void check_keys(const json& object, const std::string& where, const std::vector<std::string>& known) {
  if (!object.is_object())
    bad(where.empty() ? "(top level)" : where, "expected an object");
  for (const auto& kv : object.items())
    if (std::find(known.begin(), known.end(), kv.key()) == known.end()) {
      std::string list;
      for (const auto& k : known)
        list += (list.empty() ? "" : ", ") + k;
      bad(where.empty() ? kv.key() : where + "." + kv.key(), "unknown key; known keys here: " + list);
    }
}

bytes_t size_of(const json& v, const std::string& key) {
  if (v.is_number_unsigned())
    return v.get<bytes_t>();
  if (v.is_number_integer())
    bad(key, "a size cannot be negative");
  if (v.is_string())
    return parse_size(v.get<std::string>(), key);
  bad(key, "expected a size: a number of bytes, or a string like \"8GiB\"");
}

/// `seconds` as nanoseconds, refused past what they can hold (292 years): the cast would wrap, and a
/// wrapped duration read as negative ("1e12 seconds cannot be negative").
std::chrono::nanoseconds nanoseconds_of(double seconds, const std::string& key) {
  if (seconds * 1e9 >= static_cast<double>(std::chrono::nanoseconds::max().count()))
    bad(key, "a duration of " + std::to_string(seconds) + " s is longer than any timer can hold (292 years)");
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(seconds));
}

std::chrono::nanoseconds duration_of(const json& v, const std::string& key) {
  if (v.is_number()) {
    auto s = v.get<double>();
    if (!(s >= 0) || !std::isfinite(s))
      bad(key, "a duration cannot be negative");
    return nanoseconds_of(s, key);
  }
  if (v.is_string())
    return parse_duration(v.get<std::string>(), key);
  bad(key, "expected a duration: seconds, or a string like \"5m\" or \"250ms\"");
}

bool bool_of(const json& v, const std::string& key) {
  if (!v.is_boolean())
    bad(key, "expected true or false");
  return v.get<bool>();
}

std::size_t count_of(const json& v, const std::string& key) {
  if (!v.is_number_unsigned())
    bad(key, "expected a whole number >= 0");
  return v.get<std::size_t>();
}

double number_of(const json& v, const std::string& key) {
  if (!v.is_number())
    bad(key, "expected a number");
  return v.get<double>();
}

std::string string_of(const json& v, const std::string& key) {
  if (!v.is_string())
    bad(key, "expected a string");
  return v.get<std::string>();
}

/// Sets `field` from `object[key]`, read by `read` (whose errors name the key), when the key is there.
template <class T, class Read>
void take(const json& object, const std::string& where, const char* key, T& field, Read read) {
  if (object.contains(key))
    field = static_cast<T>(read(object[key], where.empty() ? std::string{key} : where + "." + key));
}

device_options device_of(const json& d, const std::string& where) {
  check_keys(d, where, {"kind", "index", "vram_budget", "working_memory", "partial_loading", "staging_slots", "bandwidth"});
  device_options o;
  if (d.contains("kind")) {
    auto kind = string_of(d["kind"], where + ".kind");
    if (kind == "cuda")
      o.kind = device_kind::cuda;
    else if (kind == "simulated")
      o.kind = device_kind::simulated;
    else if (kind == "accelerator")
      o.kind = device_kind::accelerator;
    else
      bad(where + ".kind", "'" + kind + "' is not a device kind (cuda, simulated, accelerator)");
  }
  if (d.contains("index")) {
    // Read whole, then checked: get<int>() wrapped 4294967296 to device 0.
    if (!d["index"].is_number_unsigned() || d["index"].get<std::uint64_t>() > 127)
      bad(where + ".index", "expected a device index from 0 to 127, got " + d["index"].dump());
    o.index = d["index"].get<int>();
  }
  take(d, where, "vram_budget", o.budget_bytes, size_of);
  take(d, where, "working_memory", o.reserve_bytes, size_of);
  take(d, where, "partial_loading", o.partial_loading, bool_of);
  take(d, where, "staging_slots", o.staging_slots, count_of);
  take(d, where, "bandwidth", o.simulated_bandwidth_bytes_per_s, size_of);
  return o;
}

} // namespace

bytes_t parse_size(const std::string& text, const std::string& key) {
  auto parts = split_unit(text);
  if (!parts)
    bad(key, "'" + text + "' is not a size (a number with an optional unit: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)");
  static const std::vector<std::pair<std::string, double>> units{
    {"", 1}, {"b", 1}, {"k", 1e3}, {"kb", 1e3}, {"m", 1e6}, {"mb", 1e6}, {"g", 1e9}, {"gb", 1e9}, {"t", 1e12},
    {"tb", 1e12}, {"kib", 1024.0}, {"mib", 1048576.0}, {"gib", 1073741824.0}, {"tib", 1099511627776.0}};
  for (const auto& [unit, scale] : units)
    if (parts->second == unit) {
      auto bytes = parts->first * scale;
      if (bytes > 9.2e18)
        bad(key, "'" + text + "' is not a plausible size");
      // A size under half a byte would round to 0, which means "derive it" for budgets: never silently.
      if (bytes > 0 && bytes < 0.5)
        bad(key, "'" + text + "' is less than a byte (0 means: derive it from free memory)");
      return static_cast<bytes_t>(std::llround(bytes));
    }
  bad(key, "'" + parts->second + "' is not a size unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)");
}

std::chrono::nanoseconds parse_duration(const std::string& text, const std::string& key) {
  auto parts = split_unit(text);
  if (!parts)
    bad(key, "'" + text + "' is not a duration (a number with an optional unit: ms, s, m, h)");
  static const std::vector<std::pair<std::string, double>> units{
    {"", 1}, {"s", 1}, {"ms", 1e-3}, {"us", 1e-6}, {"m", 60}, {"min", 60}, {"h", 3600}};
  for (const auto& [unit, scale] : units)
    if (parts->second == unit)
      return nanoseconds_of(parts->first * scale, key);
  bad(key, "'" + parts->second + "' is not a duration unit (ms, s, m, h)");
}

runtime_options options_from_json(const std::string& json_text, runtime_options o) {
  json doc;
  try {
    doc = json::parse(json_text);
  } catch (const json::parse_error& e) {
    throw request_error(failure{errc::invalid_argument, std::string{"config: not valid JSON: "} + e.what()});
  }
  check_keys(doc, "", {"ram_budget", "ram_fraction", "pinned_budget", "keep_ram_copy", "keep_alive", "default_wait",
                       "loader_threads", "scheduler_threads", "cpu_working_budget", "trace_path", "devices"});
  take(doc, "", "ram_budget", o.ram_budget_bytes, size_of);
  take(doc, "", "ram_fraction", o.ram_fraction, number_of);
  take(doc, "", "pinned_budget", o.pinned_budget_bytes, size_of);
  take(doc, "", "keep_ram_copy", o.keep_ram_copy, bool_of);
  take(doc, "", "keep_alive", o.keep_alive, duration_of);
  take(doc, "", "default_wait", o.default_wait, duration_of);
  take(doc, "", "loader_threads", o.loader_threads, count_of);
  take(doc, "", "scheduler_threads", o.scheduler_threads, count_of);
  take(doc, "", "cpu_working_budget", o.cpu_working_budget_bytes, size_of);
  take(doc, "", "trace_path", o.trace_path, string_of);
  if (doc.contains("devices")) {
    const auto& d = doc["devices"];
    if (d.is_string()) {
      if (d.get<std::string>() != "all")
        bad("devices", "expected \"all\" or a list of devices");
      o.devices = all_gpus();
    } else if (d.is_array()) {
      o.devices.clear();
      for (std::size_t i = 0; i < d.size(); ++i)
        o.devices.push_back(device_of(d[i], "devices[" + std::to_string(i) + "]"));
    } else {
      bad("devices", "expected \"all\" or a list of devices");
    }
  }
  return o;
}

runtime_options options_from_file(const std::string& path, runtime_options base) {
  failure why;
  auto text = read_regular_file(path, why);
  if (!text) {
    auto reason = why.detail.rfind(path + ": ", 0) == 0 ? why.detail.substr(path.size() + 2) : why.detail;
    throw request_error(failure{errc::invalid_argument, "config: cannot read '" + path + "': " + reason});
  }
  try {
    return options_from_json(*text, std::move(base));
  } catch (const request_error& e) {
    throw request_error(failure{errc::invalid_argument, path + ": " + std::string{e.what()}.substr(std::string{"mcache: invalid_argument: "}.size())});
  }
}

runtime_flags::runtime_flags(CLI::App& app) : app_(&app) {
  app.add_option("--config", config_, "JSON config file (keys: runtime/config.hpp); flags override it");
  app.add_option("--ram-budget", ram_budget_, "RAM for model host copies, e.g. 24GiB (0: a share of MemAvailable)");
  app.add_option("--ram-fraction", ram_fraction_, "share of MemAvailable when --ram-budget is 0");
  app.add_option("--pinned-budget", pinned_budget_, "of the RAM budget, pinned host memory, e.g. 8GiB");
  app.add_flag("--keep-ram-copy,!--no-keep-ram-copy", keep_ram_copy_, "keep the RAM copy of a model on a GPU");
  app.add_option("--keep-alive", keep_alive_, "drop a model unused this long, e.g. 5m (0: until room is needed)");
  app.add_option("--default-wait", default_wait_, "how long an acquire or pin waits for room, e.g. 30s");
  app.add_option("--loader-threads", loader_threads_, "threads loading models");
  app.add_option("--devices", devices_, "'all' (every GPU) or a number of simulated devices");
  app.add_option("--vram-budget", vram_budget_, "each device's budget, e.g. 20GiB (0 on CUDA: its free memory)");
  app.add_option("--working-memory", reserve_, "of each device's budget, kept for work outside pins");
  app.add_flag("--no-partial-loading", no_partial_loading_, "a model that does not fit whole waits or fails");
  app.add_option("--bandwidth", bandwidth_, "simulated devices' copy speed per second, e.g. 16GB");
  app.add_option("--trace", trace_path_, "write the timeline (Chrome trace JSON) here at shutdown");
}

runtime_options runtime_flags::finish(runtime_options o) const {
  if (!config_.empty())
    o = options_from_file(config_, std::move(o));
  auto given = [&](const char* flag) { return app_->count(flag) > 0; };
  if (given("--ram-budget"))
    o.ram_budget_bytes = parse_size(ram_budget_, "--ram-budget");
  if (given("--ram-fraction"))
    o.ram_fraction = ram_fraction_;
  if (given("--pinned-budget"))
    o.pinned_budget_bytes = parse_size(pinned_budget_, "--pinned-budget");
  if (given("--keep-ram-copy") || given("--no-keep-ram-copy"))
    o.keep_ram_copy = keep_ram_copy_;
  if (given("--keep-alive"))
    o.keep_alive = parse_duration(keep_alive_, "--keep-alive");
  if (given("--default-wait"))
    o.default_wait = parse_duration(default_wait_, "--default-wait");
  if (given("--loader-threads"))
    o.loader_threads = loader_threads_;
  if (given("--trace"))
    o.trace_path = trace_path_;
  if (given("--devices")) {
    if (devices_ == "all") {
      o.devices = all_gpus();
    } else {
      static const std::regex number{R"(^[0-9]{1,3}$)"};
      if (!std::regex_match(devices_, number))
        bad("--devices", "'" + devices_ + "' is neither 'all' nor a number of simulated devices");
      // N simulated devices with the first configured one's budgets (a sample's derived budget), or
      // default ones; never copies of a real device, which would put N tiers on one GPU.
      auto like = o.devices.empty() ? device_options{} : o.devices.front();
      like.kind = device_kind::simulated;
      like.index = -1;
      o.devices.assign(std::stoul(devices_), like);
    }
  }
  for (auto& d : o.devices) {
    if (given("--vram-budget"))
      d.budget_bytes = parse_size(vram_budget_, "--vram-budget");
    if (given("--working-memory"))
      d.reserve_bytes = parse_size(reserve_, "--working-memory");
    if (no_partial_loading_)
      d.partial_loading = false;
    if (given("--bandwidth"))
      d.simulated_bandwidth_bytes_per_s = static_cast<double>(parse_size(bandwidth_, "--bandwidth"));
  }
  return o;
}

} // namespace mcache
