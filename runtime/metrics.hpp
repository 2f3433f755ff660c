#pragma once
// The runtime's stats in the Prometheus text exposition format, for a server's /metrics endpoint.

#include "runtime/runtime.hpp"

#include <string>
#include <vector>

namespace mcache {

/// Every RAM and device counter and level of `stats` as Prometheus metrics (`mcache_ram_*`,
/// `mcache_device_*{device="0"}`, the CPU pin tier as device="cpu"), with HELP and TYPE lines.
/// `torch_devices[i]` names device i as LibTorch does (cuda:1, ...) in an `mcache_device_info` series,
/// so that a dashboard over several GPUs can tell which index is which GPU.
std::string prometheus_text(const runtime_stats& stats, const std::vector<std::string>& torch_devices = {});
/// The same for `rt`: its stats now, and its devices' LibTorch names.
std::string prometheus_text(runtime& rt);

/// One metric in the Prometheus text format: its HELP and TYPE lines and one sample, with `labels`
/// ({name, value} pairs, values escaped as the format asks). For metrics beside the runtime's, such as a
/// fleet node's job counters.
std::string prometheus_metric(const std::string& name, const char* type, const std::string& help, uint64_t value,
                              const std::vector<std::pair<std::string, std::string>>& labels = {});

/// Every metric of one tier's stats by its Prometheus name without the prefix ("loads_total", ...), in the
/// order `prometheus_text` writes them: what /status lists under "metrics".
std::vector<std::pair<std::string, uint64_t>> metric_values(const ram_stats& stats);
std::vector<std::pair<std::string, uint64_t>> metric_values(const device_stats& stats);

} // namespace mcache
