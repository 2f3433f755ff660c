#pragma once

#include "messages/ids.hpp"

#include <string>

namespace mcache {

/// "1.50 GiB (1610612736 bytes)": readable and exact, for error texts.
std::string format_bytes(bytes_t bytes);
/// "12.0 s": a duration for messages ("held by 'worker-3' for 12.0 s").
std::string format_seconds(double seconds);

} // namespace mcache
