#pragma once
// A fresh folder under $TMPDIR (or /tmp), removed with everything in it when the object goes away.

#include "runtime/core/models/folder_walk.hpp"

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace mcache::test {

class temp_dir {
public:
  temp_dir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base ? base : "/tmp") + "/mcache-test-XXXXXX";
    if (!::mkdtemp(pattern.data()))
      throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~temp_dir() { remove_tree(path_.string()); }  // not std::filesystem::remove_all: see folder_walk.hpp
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

private:
  std::filesystem::path path_;
};

} // namespace mcache::test
