#include "runtime/core/format.hpp"

#include <cstdint>
#include <cstdio>

namespace mcache {

std::string format_bytes(bytes_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[96];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else
    std::snprintf(buf, sizeof buf, "%.2f %s (%llu bytes)", v, units[u],
                  static_cast<unsigned long long>(bytes));
  return buf;
}

namespace {

/// Invisible characters that change how the text around them reads: zero-width ones, line and paragraph
/// separators (one-line logs), and bidirectional overrides (a name that displays as another's).
bool is_invisible_format(std::uint32_t code) {
  return (code >= 0x200b && code <= 0x200f) || (code >= 0x2028 && code <= 0x202e) || (code >= 0x2066 && code <= 0x2069)
         || code == 0xfeff;
}

/// The length of the printable UTF-8 character at `text[i]`, or 0 where the bytes there are not one
/// (a stray continuation byte, an overlong form, a surrogate, past U+10FFFF, a control character, or an
/// invisible format character).
std::size_t printable_char_at(const std::string& text, std::size_t i) {
  auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  unsigned char c = byte(i);
  if (c < 0x80)
    return c >= 0x20 && c != 0x7f ? 1 : 0;
  std::size_t n = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
  if (n == 0 || i + n > text.size())
    return 0;
  std::uint32_t code = c & (0x7f >> n);
  for (std::size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xc0) != 0x80)
      return 0;
    code = (code << 6) | (byte(i + k) & 0x3f);
  }
  static const std::uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000};
  if (code < least[n] || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff) || (code >= 0x80 && code < 0xa0)
      || is_invisible_format(code))
    return 0;
  return n;
}

} // namespace

bool is_printable_utf8(const std::string& text) {
  for (std::size_t i = 0; i < text.size();) {
    auto n = printable_char_at(text, i);
    if (n == 0)
      return false;
    i += n;
  }
  return true;
}

std::string escape_unprintable(const std::string& text) {
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    if (auto n = printable_char_at(text, i)) {
      out.append(text, i, n);
      i += n;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(text[i]));
      out += buf;
      ++i;
    }
  }
  return out;
}

void append_quoted(std::string& list, const std::string& item) {
  list += (list.empty() ? "'" : ", '") + item + "'";
}

std::string format_seconds(double seconds) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.1f s", seconds);
  return buf;
}

} // namespace mcache
