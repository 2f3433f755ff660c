#include "runtime/core/format.hpp"

#include <cstdio>

namespace mcache {

std::string format_bytes(bytes_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[96];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else
    std::snprintf(buf, sizeof buf, "%.2f %s (%llu bytes)", v, units[u],
                  static_cast<unsigned long long>(bytes));
  return buf;
}

std::string format_seconds(double seconds) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.1f s", seconds);
  return buf;
}

} // namespace mcache
