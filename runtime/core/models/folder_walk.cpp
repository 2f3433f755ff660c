#include "runtime/core/models/folder_walk.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace mcache {
namespace {

std::error_code last_error() { return {errno, std::generic_category()}; }

/// Calls `visit(name)` for every entry of `folder` but "." and "..".
template <class Visit>
std::error_code for_each_entry(const std::string& folder, Visit visit) {
  DIR* dir = ::opendir(folder.c_str());
  if (!dir)
    return last_error();
  std::vector<std::string> names;
  errno = 0;
  while (auto* entry = ::readdir(dir)) {
    if (std::strcmp(entry->d_name, ".") != 0 && std::strcmp(entry->d_name, "..") != 0)
      names.emplace_back(entry->d_name);
    errno = 0;
  }
  auto read_error = errno ? last_error() : std::error_code{};
  ::closedir(dir);
  if (read_error)
    return read_error;
  for (const auto& name : names)  // after closedir: a walk holds one descriptor at a time
    if (auto ec = visit(name))
      return ec;
  return {};
}

/// Appends the regular files under `base` + "/" + `relative` to `out`, as paths relative to `base`.
std::error_code collect_files(const std::string& base, const std::string& relative, std::vector<std::string>& out) {
  auto folder = relative.empty() ? base : base + "/" + relative;
  return for_each_entry(folder, [&](const std::string& name) -> std::error_code {
    auto rel = relative.empty() ? name : relative + "/" + name;
    auto path = base + "/" + rel;
    struct stat link {};
    if (::lstat(path.c_str(), &link) != 0)
      return {};  // gone since the listing
    if (S_ISDIR(link.st_mode))
      return collect_files(base, rel, out);
    struct stat target {};
    if (::stat(path.c_str(), &target) == 0 && S_ISREG(target.st_mode))
      out.push_back(std::move(rel));
    return {};
  });
}

} // namespace

std::vector<std::string> regular_files_under(const std::string& folder, std::error_code& error) {
  std::vector<std::string> files;
  auto base = folder;
  while (base.size() > 1 && base.back() == '/')
    base.pop_back();
  error = collect_files(base, "", files);
  std::sort(files.begin(), files.end());
  return files;
}

std::error_code remove_tree(const std::string& path) {
  struct stat link {};
  if (::lstat(path.c_str(), &link) != 0)
    return errno == ENOENT ? std::error_code{} : last_error();
  std::error_code first;
  if (S_ISDIR(link.st_mode)) {
    auto listed = for_each_entry(path, [&](const std::string& name) {
      if (auto ec = remove_tree(path + "/" + name); ec && !first)
        first = ec;
      return std::error_code{};
    });
    if (listed && !first)
      first = listed;
    if (::rmdir(path.c_str()) != 0 && !first)
      first = last_error();
  } else if (::unlink(path.c_str()) != 0 && !first) {
    first = last_error();
  }
  return first;
}

} // namespace mcache
