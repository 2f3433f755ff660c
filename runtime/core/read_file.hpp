#pragma once
// Opening and reading files the caller named (model files, a manifest, a config).

#include "messages/errc.hpp"

#include <optional>
#include <string>

struct stat;

namespace mcache {

/// Opens the regular file at `path` to read; -1 and `why` otherwise: file_missing when nothing is there,
/// bad_file when it is not a regular file (a folder, a FIFO, a device) or cannot be opened. It looks
/// before it opens, so a FIFO is refused at once rather than waited on for a writer (and an ordinary open
/// still waits, as the kernel wants, for another host's lease on the file to be broken). `st`, when given,
/// receives the open file's status.
int open_regular_file(const std::string& path, failure& why, struct stat* st = nullptr);

/// The contents of the regular file at `path`; nothing and `why` as `open_regular_file` says, or
/// bad_file when it cannot be read.
std::optional<std::string> read_regular_file(const std::string& path, failure& why);

} // namespace mcache
