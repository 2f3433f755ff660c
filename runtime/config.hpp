#pragma once
// One configuration for a runtime: a JSON file, command-line flags, or both (flags win), mapped onto
// `runtime_options` with the knob names operators know from the peers. Every error names the key.
// The keys, with what each takes after "//" (notes here only: JSON itself has no comments, and "devices"
// is either form, not both):
//
//   {
//     "ram_budget": "24GiB",          // bytes, or a size with a unit (B, KB, MB, GB, KiB, MiB, GiB, TiB)
//     "ram_fraction": 0.5,            // of MemAvailable, when ram_budget is 0 or absent
//     "pinned_budget": "8GiB",
//     "keep_ram_copy": true,
//     "keep_alive": "5m",             // seconds, or a duration with a unit (ms, s, m, h); 0 = until room is needed
//     "default_wait": "30s",
//     "loader_threads": 2,
//     "scheduler_threads": 0,
//     "cpu_working_budget": "4GiB",
//     "trace_path": "timeline.json",
//     "devices": "all",               // every GPU LibTorch sees, or a list:
//     "devices": [{"kind": "cuda", "index": 0, "vram_budget": "70GiB", "working_memory": "4GiB",
//                  "partial_loading": true, "staging_slots": 2},
//                 {"kind": "simulated", "vram_budget": "8GiB", "bandwidth": "16GB"}]
//   }

#include "runtime/options.hpp"

#include <string>

namespace CLI {
class App;
}

namespace mcache {

/// The options a JSON document describes, over `base` (keys it does not name keep base's values). Throws
/// request_error (invalid_argument) naming the key on an unknown key, a wrong type or a bad value.
runtime_options options_from_json(const std::string& json_text, runtime_options base = {});
/// The same, from a file (the error names the file, and the line and column of a JSON syntax error).
runtime_options options_from_file(const std::string& path, runtime_options base = {});

/// "24GiB", "512MB", "1048576" -> bytes. Throws request_error (invalid_argument) naming `key`.
bytes_t parse_size(const std::string& text, const std::string& key);
/// "5m", "30s", "250ms", "2" (seconds) -> nanoseconds. Throws request_error (invalid_argument) naming `key`.
std::chrono::nanoseconds parse_duration(const std::string& text, const std::string& key);

/// Command-line flags for every runtime option (--config FILE, --ram-budget, --vram-budget, --devices,
/// ...), on `app`. `--devices N` makes N devices like the first one configured so far (or default ones). After `app.parse`, `finish()` applies the file first, then the flags given, and
/// validates; errors name the flag or key.
class runtime_flags {
public:
  explicit runtime_flags(CLI::App& app);
  runtime_options finish(runtime_options base = {}) const;

private:
  CLI::App* app_;
  std::string config_, ram_budget_, pinned_budget_, keep_alive_, default_wait_, vram_budget_, reserve_,
    devices_, bandwidth_, trace_path_;
  double ram_fraction_ = 0;
  bool keep_ram_copy_ = true, no_partial_loading_ = false;
  std::size_t loader_threads_ = 0;
};

} // namespace mcache
