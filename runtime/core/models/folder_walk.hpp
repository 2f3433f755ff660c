#pragma once
// Walking and removing folders with POSIX calls instead of std::filesystem's directory iterators.
//
// Why: the pip wheels of LibTorch (the CUDA LibTorch a GPU machine has) link parts of an older libstdc++
// statically and export them, std::filesystem's directory iterators among them. A program built with a
// newer g++ then calls LibTorch's copy with its own, differently laid out, iterator objects, and
// crashes: on the GPU machine (g++ 13, PyTorch 2.11) every test that scanned a folder or removed one
// through std::filesystem segfaulted. Paths themselves are safe; only folder walks go through here.

#include <string>
#include <system_error>
#include <vector>

namespace mcache {

/// The regular files under `folder`, at any depth, as paths relative to it ("a/b.safetensors"), sorted. A
/// symbolic link counts as what it points to, but linked folders are not entered (no cycles), as
/// std::filesystem::recursive_directory_iterator does by default. Sets `error` if `folder` or a folder
/// under it cannot be read.
std::vector<std::string> regular_files_under(const std::string& folder, std::error_code& error);

/// Removes `path` and everything under it; a missing path is not an error. Links are removed, never
/// followed. Returns the first error met (it goes on past it).
std::error_code remove_tree(const std::string& path);

} // namespace mcache
