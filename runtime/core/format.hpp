#pragma once

#include "messages/ids.hpp"

#include <string>

namespace mcache {

/// "1.50 GiB (1610612736 bytes)": readable and exact, for error texts.
std::string format_bytes(bytes_t bytes);

} // namespace mcache
