// One configuration: a JSON file and command-line flags onto runtime_options; every error names its key.

#include "runtime/config.hpp"
#include "runtime/runtime.hpp"

#include "support/catch.hpp"
#include "support/temp_dir.hpp"

#include <CLI/CLI.hpp>

#include <fstream>

using namespace mcache;
using namespace std::chrono_literals;

namespace {
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const request_error& e) {
    CHECK(e.code() == errc::invalid_argument);
    return e.what();
  }
  FAIL("no error");
  return {};
}
} // namespace

TEST_CASE("a JSON config sets every option with the peers' knob names, sizes and durations with units") {
  auto o = options_from_json(R"({
    "ram_budget": "24GiB", "pinned_budget": "8GB", "keep_ram_copy": false, "keep_alive": "5m",
    "default_wait": 2.5, "loader_threads": 3, "scheduler_threads": 4, "cpu_working_budget": 1048576,
    "trace_path": "t.json",
    "devices": [{"kind": "simulated", "vram_budget": "8GiB", "working_memory": "512MiB", "bandwidth": "16GB",
                 "partial_loading": false, "staging_slots": 3},
                {"kind": "cuda", "index": 1}]
  })");
  CHECK(o.ram_budget_bytes == 24ull << 30);
  CHECK(o.pinned_budget_bytes == 8'000'000'000ull);
  CHECK_FALSE(o.keep_ram_copy);
  CHECK(o.keep_alive == 5min);
  CHECK(o.default_wait == 2500ms);
  CHECK(o.loader_threads == 3);
  CHECK(o.scheduler_threads == 4);
  CHECK(o.cpu_working_budget_bytes == 1 << 20);
  CHECK(o.trace_path == "t.json");
  REQUIRE(o.devices.size() == 2);
  CHECK(o.devices[0].kind == device_kind::simulated);
  CHECK(o.devices[0].budget_bytes == 8ull << 30);
  CHECK(o.devices[0].reserve_bytes == 512ull << 20);
  CHECK(o.devices[0].simulated_bandwidth_bytes_per_s == 16e9);
  CHECK_FALSE(o.devices[0].partial_loading);
  CHECK(o.devices[0].staging_slots == 3);
  CHECK(o.devices[1].kind == device_kind::cuda);
  CHECK(o.devices[1].index == 1);
}

TEST_CASE("config errors name the key: unknown keys, wrong types, bad units, bad JSON") {
  CHECK_THAT(error_of([] { options_from_json(R"({"ram_budgett": 1})"); }),
             Catch::Contains("'ram_budgett': unknown key") && Catch::Contains("ram_budget"));
  CHECK_THAT(error_of([] { options_from_json(R"({"devices": [{}, {"vram": 1}]})"); }),
             Catch::Contains("'devices[1].vram': unknown key"));
  CHECK_THAT(error_of([] { options_from_json(R"({"keep_alive": true})"); }),
             Catch::Contains("'keep_alive': expected a duration"));
  CHECK_THAT(error_of([] { options_from_json(R"({"ram_budget": "8 parsecs"})"); }),
             Catch::Contains("'ram_budget': 'parsecs' is not a size unit"));
  CHECK_THAT(error_of([] { options_from_json(R"({"ram_budget": -5})"); }),
             Catch::Contains("'ram_budget': a size cannot be negative"));
  CHECK_THAT(error_of([] { options_from_json(R"({"devices": [{"kind": "tpu"}]})"); }),
             Catch::Contains("'devices[0].kind': 'tpu' is not a device kind"));
  CHECK_THAT(error_of([] { options_from_json(R"({"ram_budget": )"); }), Catch::Contains("not valid JSON"));
  // Longer than nanoseconds hold: refused as too long, not wrapped into a "negative" duration.
  CHECK_THAT(error_of([] { options_from_json(R"({"default_wait": 1e12})"); }),
             Catch::Contains("'default_wait': a duration of") && Catch::Contains("longer than any timer"));
  CHECK_THAT(error_of([] { options_from_json(R"({"keep_alive": "100000000h"})"); }),
             Catch::Contains("'keep_alive': a duration of"));
  CHECK_THAT(error_of([] { options_from_file("/nonexistent/mcache.json"); }),
             Catch::Contains("cannot read '/nonexistent/mcache.json'"));
  // Numbers past what a field holds are refused, naming the key, never narrowed or thrown as out_of_range.
  CHECK_THAT(error_of([] { options_from_json(R"({"devices": [{"kind": "cuda", "index": 4294967296}]})"); }),
             Catch::Contains("'devices[0].index': expected a device index from 0 to 127"));
  CHECK_THAT(error_of([] { options_from_json(R"({"devices": [{"kind": "cuda", "index": 200}]})"); }),
             Catch::Contains("'devices[0].index'"));
  CHECK_THAT(error_of([] { options_from_json(R"({"ram_budget": "1)" + std::string(400, '0') + R"("})"); }),
             Catch::Contains("'ram_budget': '1000") && Catch::Contains("is not a plausible size"));
  CHECK_THAT(error_of([] { options_from_json(R"({"ram_budget": "0.4B"})"); }),
             Catch::Contains("'ram_budget': '0.4B' is less than a byte"));
  CHECK_THAT(error_of([] { (void)parse_duration("1" + std::string(400, '0'), "--keep-alive"); }),
             Catch::Contains("'--keep-alive': a duration of"));
}

TEST_CASE("flags override the config file, and a bad flag value names the flag") {
  test::temp_dir dir;
  auto path = (dir.path() / "mcache.json").string();
  std::ofstream{path} << R"({"ram_budget": "1GiB", "keep_alive": "10s", "devices": [{"vram_budget": "2GiB"}]})";
  CLI::App app;
  runtime_flags flags{app};
  std::vector<std::string> args{"prog", "--config", path, "--keep-alive", "250ms", "--no-keep-ram-copy",
                                "--devices", "2", "--vram-budget", "512MiB"};
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  app.parse(static_cast<int>(argv.size()), argv.data());
  auto o = flags.finish();
  CHECK(o.ram_budget_bytes == 1ull << 30);  // from the file
  CHECK(o.keep_alive == 250ms);            // the flag wins
  CHECK_FALSE(o.keep_ram_copy);
  REQUIRE(o.devices.size() == 2);
  CHECK(o.devices[1].budget_bytes == 512ull << 20);

  CLI::App app2;
  runtime_flags flags2{app2};
  std::vector<std::string> args2{"prog", "--keep-alive", "soon"};
  std::vector<char*> argv2;
  for (auto& a : args2)
    argv2.push_back(a.data());
  app2.parse(static_cast<int>(argv2.size()), argv2.data());
  CHECK_THAT(error_of([&] { flags2.finish(); }), Catch::Contains("'--keep-alive': 'soon' is not a duration"));
}

TEST_CASE("a config that parses but cannot run is refused at start with the reason") {
  auto o = options_from_json(R"({"ram_budget": "1MiB", "pinned_budget": "2MiB"})");
  CHECK_THAT(error_of([&] { runtime rt{o}; }), Catch::Contains("pinned_budget_bytes"));
  o = options_from_json(R"({"ram_budget": "1MiB", "loader_threads": 1099511627776})");
  CHECK_THAT(error_of([&] { runtime rt{o}; }), Catch::Contains("loader_threads is 1099511627776; it must be 1 to 1024"));
  o = options_from_json(R"({"ram_budget": "1MiB", "scheduler_threads": 4294967296})");
  CHECK_THAT(error_of([&] { runtime rt{o}; }), Catch::Contains("scheduler_threads is 4294967296"));
  o = options_from_json(R"({"ram_budget": "1MiB", "devices": [{"vram_budget": "1MiB", "staging_slots": 1000}]})");
  CHECK_THAT(error_of([&] { runtime rt{o}; }), Catch::Contains("staging_slots is 1000; streaming needs 2 to 64"));
}

TEST_CASE("the flag --devices N gives N simulated devices, also where the config's first device is a GPU") {
  test::temp_dir dir;
  auto path = (dir.path() / "mcache.json").string();
  std::ofstream{path} << R"({"devices": [{"kind": "cuda", "index": 1, "vram_budget": "2GiB"}]})";
  CLI::App app;
  runtime_flags flags{app};
  std::vector<std::string> args{"prog", "--config", path, "--devices", "2"};
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  app.parse(static_cast<int>(argv.size()), argv.data());
  auto o = flags.finish();
  REQUIRE(o.devices.size() == 2);
  for (const auto& d : o.devices) {
    CHECK(d.kind == device_kind::simulated);  // not two tiers on cuda:1
    CHECK(d.budget_bytes == 2ull << 30);
  }
}
