#pragma once
// The safetensors format: an 8-byte little-endian header length N, N bytes of JSON, then the data section.
// The JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end)} (offsets relative to
// the data section), plus an optional "__metadata__" object of strings.
//
// Parsing validates everything before any weight is read: the header length against the file, the JSON,
// each dtype, each byte range (inside the data, begin <= end, no two overlapping), and shape x dtype size
// = range length. A header that passes cannot make the loader read outside the file.

#include "messages/errc.hpp"
#include "runtime/core/models/host_model.hpp"
#include "runtime/core/outcome.hpp"

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace mcache::safetensors {

enum class dtype { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2 };

std::optional<dtype> parse_dtype(const std::string& name);
const char* to_string(dtype type);
size_t element_size(dtype type);
/// The LibTorch element type a tensor of `type` is loaded as. LibTorch 1.13 has no float8 types, so F8_E4M3
/// and F8_E5M2 load as uint8 tensors of the same shape (bit-exact; the dtype name is kept in the header).
c10::ScalarType scalar_type(dtype type);
/// The safetensors dtype of a LibTorch tensor type, if there is one.
std::optional<dtype> from_scalar_type(c10::ScalarType type);

struct tensor_info {
  std::string name;
  dtype type = dtype::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offset in the data section
  uint64_t end = 0;    // one past the last byte
  uint64_t bytes() const { return end - begin; }
};

struct header {
  uint64_t json_bytes = 0;    // N
  uint64_t data_offset = 0;   // 8 + N: where the data section starts in the file
  uint64_t data_bytes = 0;    // the data section's length (file size - data offset)
  std::vector<tensor_info> tensors;  // in the order the file declares them
  std::map<std::string, std::string> metadata;
  uint64_t tensor_bytes() const;
};

/// Largest header accepted (as the reference implementation does): 100 MB.
constexpr uint64_t max_header_bytes = 100'000'000;

/// Parses and validates a header from the first `size` bytes of a file of `file_size` bytes (the prefix
/// must hold at least the 8 + N header bytes). Failures are `bad_file` and name `file` and the problem.
outcome<header> parse_header(const uint8_t* data, size_t size, uint64_t file_size, const std::string& file);

/// A file's identity at registration: a load refuses a file whose size or mtime changed since.
struct file_stamp {
  std::string path;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
};

/// `file_missing` or `file_changed` (naming the file) unless `stamp` still describes the file on disk.
std::optional<failure> check_unchanged(const file_stamp& stamp);

/// A validated file: where it is, what it was, and its header.
struct file_layout {
  file_stamp stamp;
  header layout;
};

/// Reads and validates the header of `path` (only the header: no weights are read).
/// Fails with `file_missing` or `bad_file`.
outcome<file_layout> read_layout(const std::string& path);

/// How a load brings the data section into memory.
enum class read_mode {
  read,  // large sequential pread() calls into one allocated buffer per file (default)
  mmap,  // map the file and prefault it; tensors point into the mapping (read-only)
};

struct load_options {
  read_mode mode = read_mode::read;
  size_t chunk_bytes = 16 << 20;  // bytes per read() call in read mode
};

/// Loads the tensors of `files` (one model, possibly sharded) into host memory, in `order` when given (the
/// names it lists first, the rest in declaration order). Throws `load_error` (file_missing, file_changed,
/// bad_file, load_failed) with the file named, or `load_stopped` between chunks once nobody waits for
/// the load (Note [An abandoned load stops]). The model's total_bytes() equals the sum of the data
/// sections (bytes between tensors count as opaque padding), which is what registration declares.
std::shared_ptr<const host_model> load(const model_id& id, const std::vector<file_layout>& files,
                                       const std::vector<std::string>& order, const load_options& options);

/// A tensor to write; `as` writes its raw bytes under another dtype of the same element size (e.g. a uint8
/// tensor as F8_E4M3).
struct tensor_to_write {
  std::string name;
  at::Tensor tensor;
  std::optional<dtype> as;
};

/// Writes a safetensors file (header padded to 8 bytes, tensors packed in the given order). Throws
/// std::runtime_error on an unsupported dtype, a duplicate name or an I/O error.
void write_file(const std::string& path, const std::vector<tensor_to_write>& tensors,
                const std::map<std::string, std::string>& metadata = {});

} // namespace mcache::safetensors
