#pragma once

#include "messages/ids.hpp"

#include <string>

namespace mcache {

/// "1.50 GiB (1610612736 bytes)": readable and exact, for error texts.
std::string format_bytes(bytes_t bytes);
/// "12.0 s": a duration for messages ("held by 'worker-3' for 12.0 s").
std::string format_seconds(double seconds);
/// Appends `item` quoted to a list of names for messages: "'a'", then "'a', 'b'".
void append_quoted(std::string& list, const std::string& item);

/// Whether `text` is valid UTF-8 without control characters or invisible format characters (zero-width,
/// line separators, bidirectional overrides): what a name must be to appear in JSON (/status),
/// Prometheus labels, Python strings, the status page and one-line logs.
bool is_printable_utf8(const std::string& text);
/// `text` with every byte that is not part of printable UTF-8 written as \xNN, for error texts about it.
std::string escape_unprintable(const std::string& text);

} // namespace mcache
