#include "runtime/core/read_file.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace mcache {

namespace {
failure not_regular(const std::string& path) { return failure{errc::bad_file, path + ": not a regular file"}; }
} // namespace

int open_regular_file(const std::string& path, failure& why, struct stat* status) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    why = failure{errno == ENOENT ? errc::file_missing : errc::bad_file, path + ": " + std::strerror(errno)};
    return -1;
  }
  if (!S_ISREG(st.st_mode)) {
    why = not_regular(path);
    return -1;
  }
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    why = failure{errno == ENOENT ? errc::file_missing : errc::bad_file, path + ": cannot open: " + std::strerror(errno)};
    return -1;
  }
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {  // replaced between the look and the open
    ::close(fd);
    why = not_regular(path);
    return -1;
  }
  if (status)
    *status = st;
  return fd;
}

std::optional<std::string> read_regular_file(const std::string& path, failure& why) {
  int fd = open_regular_file(path, why);
  if (fd < 0)
    return std::nullopt;
  std::string text;
  char chunk[1 << 16];
  for (;;) {
    auto n = ::read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      why = failure{errc::bad_file, path + ": cannot read: " + std::strerror(errno)};
      ::close(fd);
      return std::nullopt;
    }
    if (n == 0)
      break;
    text.append(chunk, static_cast<size_t>(n));
  }
  ::close(fd);
  return text;
}

} // namespace mcache
