#include "runtime/core/read_file.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace mcache {

std::optional<std::string> read_regular_file(const std::string& path, failure& why) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    why = failure{errc::file_missing, path + ": cannot open: " + std::strerror(errno)};
    return std::nullopt;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    why = failure{errc::bad_file, path + ": not a regular file"};
    return std::nullopt;
  }
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
