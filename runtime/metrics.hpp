#pragma once
// The runtime's stats in the Prometheus text exposition format, for a server's /metrics endpoint.

#include "runtime/runtime.hpp"

#include <string>

namespace mcache {

/// Every RAM and device counter and level of `stats` as Prometheus metrics (`mcache_ram_*`,
/// `mcache_device_*{device="0"}`, the CPU pin tier as device="cpu"), with HELP and TYPE lines.
std::string prometheus_text(const runtime_stats& stats);

} // namespace mcache
