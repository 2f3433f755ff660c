#pragma once
// Reading a small file the caller named (a manifest, a config) whole, as text.

#include "messages/errc.hpp"

#include <optional>
#include <string>

namespace mcache {

/// The contents of the regular file at `path`. Else nothing, and `why`: file_missing when it cannot be
/// opened, bad_file when it is not a regular file (a folder, a FIFO, a device) or cannot be read. It
/// opens without blocking, so a FIFO is refused at once rather than waited on for a writer.
std::optional<std::string> read_regular_file(const std::string& path, failure& why);

} // namespace mcache
