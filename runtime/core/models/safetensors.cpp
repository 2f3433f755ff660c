#include "runtime/core/models/safetensors.hpp"

#include "runtime/core/models/host_memory.hpp"

#include "runtime/core/models/catalog.hpp"
#include "runtime/core/format.hpp"
#include "runtime/core/read_file.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <memory>
#include <set>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace mcache::safetensors {

namespace {

struct dtype_row {
  dtype type;
  const char* name;
  size_t size;
  c10::ScalarType scalar;
};

constexpr dtype_row dtype_table[] = {
  {dtype::F64, "F64", 8, c10::ScalarType::Double},     {dtype::F32, "F32", 4, c10::ScalarType::Float},
  {dtype::F16, "F16", 2, c10::ScalarType::Half},       {dtype::BF16, "BF16", 2, c10::ScalarType::BFloat16},
  {dtype::I64, "I64", 8, c10::ScalarType::Long},       {dtype::I32, "I32", 4, c10::ScalarType::Int},
  {dtype::I16, "I16", 2, c10::ScalarType::Short},      {dtype::I8, "I8", 1, c10::ScalarType::Char},
  {dtype::U8, "U8", 1, c10::ScalarType::Byte},         {dtype::BOOL, "BOOL", 1, c10::ScalarType::Bool},
  {dtype::F8_E4M3, "F8_E4M3", 1, c10::ScalarType::Byte}, {dtype::F8_E5M2, "F8_E5M2", 1, c10::ScalarType::Byte},
};

const dtype_row& row_of(dtype type) {
  for (const auto& r : dtype_table)
    if (r.type == type)
      return r;
  throw std::logic_error("unknown safetensors dtype");
}

failure bad(const std::string& file, const std::string& problem) {
  return failure{errc::bad_file, file + ": " + problem};
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// One tensor's entry; on failure returns the problem.
std::optional<std::string> parse_tensor(const std::string& name, const nlohmann::ordered_json& v,
                                        uint64_t data_bytes, tensor_info& out) {
  auto where = "tensor '" + name + "': ";
  if (!v.is_object())
    return where + "entry is not an object";
  auto dt = v.find("dtype");
  auto sh = v.find("shape");
  auto off = v.find("data_offsets");
  if (dt == v.end() || !dt->is_string())
    return where + "missing or non-string \"dtype\"";
  auto type = parse_dtype(dt->get<std::string>());
  if (!type)
    return where + "unknown dtype '" + dt->get<std::string>() + "'";
  if (sh == v.end() || !sh->is_array())
    return where + "missing or non-array \"shape\"";
  if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned()
      || !(*off)[1].is_number_unsigned())
    return where + "\"data_offsets\" must be two non-negative integers";
  out.name = name;
  out.type = *type;
  uint64_t numel = 1;
  for (const auto& d : *sh) {
    if (!d.is_number_unsigned())
      return where + "shape entries must be non-negative integers";
    auto n = d.get<uint64_t>();
    if (n > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, n, &numel))
      return where + "shape overflows";
    out.shape.push_back(static_cast<int64_t>(n));
  }
  out.begin = (*off)[0].get<uint64_t>();
  out.end = (*off)[1].get<uint64_t>();
  if (out.begin > out.end)
    return where + "data_offsets [" + std::to_string(out.begin) + ", " + std::to_string(out.end)
           + ") end before they begin";
  if (out.end > data_bytes)
    return where + "data_offsets [" + std::to_string(out.begin) + ", " + std::to_string(out.end)
           + ") run past the end of the data section (" + std::to_string(data_bytes) + " bytes)";
  uint64_t expected = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(element_size(*type)), &expected))
    return where + "shape overflows";
  if (expected != out.bytes())
    return where + "shape " + shape_text(out.shape) + " of " + to_string(*type) + " is "
           + std::to_string(expected) + " bytes but its byte range holds " + std::to_string(out.bytes());
  return std::nullopt;
}

int64_t mtime_of(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

/// An open file descriptor, closed on scope exit.
struct fd_guard {
  int fd;
  ~fd_guard() {
    if (fd >= 0)
      ::close(fd);
  }
};

[[noreturn]] void fail_load(errc code, const std::string& what) { throw load_error(code, what); }

std::optional<failure> compare_stamp(const file_stamp& stamp, const struct stat& st) {
  if (static_cast<uint64_t>(st.st_size) == stamp.size && mtime_of(st) == stamp.mtime_ns)
    return std::nullopt;
  return failure{errc::file_changed, stamp.path + ": changed on disk since registration (size "
                                       + std::to_string(stamp.size) + " -> " + std::to_string(st.st_size)
                                       + ", mtime changed: " + (mtime_of(st) != stamp.mtime_ns ? "yes" : "no")
                                       + "); register it again"};
}

// Opens a registered file and checks it is the one that was registered.
int open_checked(const file_stamp& stamp) {
  failure why;
  struct stat st {};
  int fd = open_regular_file(stamp.path, why, &st);  // (a FIFO put in its place: refused, not waited on)
  if (fd < 0)
    fail_load(why.code == errc::file_missing ? errc::file_missing : errc::load_failed, why.detail);
  if (auto changed = compare_stamp(stamp, st)) {
    ::close(fd);
    fail_load(changed->code, changed->detail);
  }
  return fd;
}

// The data section of one file in host memory, and where each byte of it lives.
struct data_block {
  at::Tensor owner;  // keeps the memory alive (read mode: the buffer; mmap mode: holds the mapping)
  const uint8_t* base = nullptr;
};

data_block read_data(const file_layout& f, const load_options& options) {
  fd_guard fd{open_checked(f.stamp)};
  const auto n = f.layout.data_bytes;
  if (options.mode == read_mode::mmap) {
    if (n == 0)
      return {at::empty({0}, at::kByte), nullptr};
    void* map = ::mmap(nullptr, f.stamp.size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd.fd, 0);
    if (map == MAP_FAILED)
      fail_load(errc::load_failed, f.stamp.path + ": mmap failed: " + std::strerror(errno));
    auto size = f.stamp.size;
    auto* base = static_cast<uint8_t*>(map) + f.layout.data_offset;
    // A tensor over the mapping whose deleter unmaps it: the views below keep it alive.
    auto owner = at::from_blob(
      base, {static_cast<int64_t>(n)}, [map, size](void*) { ::munmap(map, size); },
      at::TensorOptions().dtype(at::kByte));
    return {owner, base};
  }
  // Read straight into the buffer the runtime wants (pinned where a GPU will read it): no second copy.
  auto buffer = host_memory::buffer(n);
  auto* dst = static_cast<uint8_t*>(buffer.data_ptr());
  uint64_t done = 0;
  ::posix_fadvise(fd.fd, static_cast<off_t>(f.layout.data_offset), static_cast<off_t>(n), POSIX_FADV_SEQUENTIAL);
  while (done < n) {
    stop_if_abandoned();  // Note [An abandoned load stops]
    auto want = std::min<uint64_t>(options.chunk_bytes, n - done);
    auto got = ::pread(fd.fd, dst + done, want, static_cast<off_t>(f.layout.data_offset + done));
    if (got < 0 && errno == EINTR)
      continue;
    if (got < 0)
      fail_load(errc::load_failed, f.stamp.path + ": read failed: " + std::strerror(errno));
    if (got == 0)
      fail_load(errc::file_changed, f.stamp.path + ": ended after " + std::to_string(f.layout.data_offset + done)
                                      + " of " + std::to_string(f.stamp.size) + " bytes while loading");
    done += static_cast<uint64_t>(got);
  }
  return {buffer, dst};
}

} // namespace

std::optional<dtype> parse_dtype(const std::string& name) {
  for (const auto& r : dtype_table)
    if (name == r.name)
      return r.type;
  return std::nullopt;
}

const char* to_string(dtype type) { return row_of(type).name; }
size_t element_size(dtype type) { return row_of(type).size; }
c10::ScalarType scalar_type(dtype type) { return row_of(type).scalar; }

std::optional<dtype> from_scalar_type(c10::ScalarType type) {
  for (const auto& r : dtype_table)
    if (r.scalar == type && r.type != dtype::F8_E4M3 && r.type != dtype::F8_E5M2)
      return r.type;
  return std::nullopt;
}

std::optional<failure> check_unchanged(const file_stamp& stamp) {
  struct stat st {};
  if (::stat(stamp.path.c_str(), &st) != 0)
    return failure{errno == ENOENT ? errc::file_missing : errc::load_failed,
                   stamp.path + ": cannot stat: " + std::strerror(errno)};
  return compare_stamp(stamp, st);
}

uint64_t header::tensor_bytes() const {
  uint64_t sum = 0;
  for (const auto& t : tensors)
    sum += t.bytes();
  return sum;
}

outcome<header> parse_header(const uint8_t* data, size_t size, uint64_t file_size, const std::string& file) {
  if (size < 8 || file_size < 8)
    return bad(file, "truncated: " + std::to_string(file_size)
                       + " bytes, but a safetensors file starts with an 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | data[i];
  if (n == 0)
    return bad(file, "the header length is 0");
  if (n > max_header_bytes)
    return bad(file, "the header length " + std::to_string(n) + " exceeds the limit of "
                       + std::to_string(max_header_bytes) + " bytes");
  if (n > file_size - 8)
    return bad(file, "the header length " + std::to_string(n) + " is longer than the file ("
                       + std::to_string(file_size) + " bytes)");
  if (size < 8 + n)
    return bad(file, "truncated inside the header");
  header h;
  h.json_bytes = n;
  h.data_offset = 8 + n;
  h.data_bytes = file_size - h.data_offset;
  // JSON objects may repeat a key and a parser keeps one of them; the format forbids it, so the top-level
  // keys are watched as they are parsed.
  std::set<std::string> keys;
  std::string repeated;
  auto watch_keys = [&](int depth, nlohmann::ordered_json::parse_event_t event, nlohmann::ordered_json& parsed) {
    if (event == nlohmann::ordered_json::parse_event_t::key && depth == 1 && repeated.empty()
        && !keys.insert(parsed.get<std::string>()).second)
      repeated = parsed.get<std::string>();
    return true;
  };
  auto json = nlohmann::ordered_json::parse(data + 8, data + 8 + n, watch_keys, /*allow_exceptions=*/false);
  if (json.is_discarded())
    return bad(file, "the header is not valid JSON");
  if (!repeated.empty())
    return bad(file, "tensor '" + repeated + "' is declared twice");
  if (!json.is_object())
    return bad(file, "the header is not a JSON object");
  std::set<std::string> names;
  for (auto it = json.begin(); it != json.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object())
        return bad(file, "\"__metadata__\" is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string())
          return bad(file, "\"__metadata__\" value of '" + m.key() + "' is not a string");
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    tensor_info t;
    if (auto problem = parse_tensor(it.key(), it.value(), h.data_bytes, t))
      return bad(file, *problem);
    if (!names.insert(t.name).second)
      return bad(file, "tensor '" + t.name + "' is declared twice");
    h.tensors.push_back(std::move(t));
  }
  std::vector<const tensor_info*> by_offset;
  for (const auto& t : h.tensors)
    if (t.bytes() > 0)
      by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const tensor_info* a, const tensor_info* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      return bad(file, "tensors '" + by_offset[i - 1]->name + "' and '" + by_offset[i]->name + "' overlap");
  return h;
}

outcome<file_layout> read_layout(const std::string& path) {
  failure why;
  struct stat st {};
  int fd = open_regular_file(path, why, &st);  // a FIFO named as a model file is refused, not waited on
  if (fd < 0)
    return why;
  fd_guard guard{fd};
  file_layout out;
  out.stamp = {path, static_cast<uint64_t>(st.st_size), mtime_of(st)};
  uint8_t prefix[8] = {};
  auto got = ::pread(fd, prefix, 8, 0);
  if (got != 8)
    return bad(path, "truncated: " + std::to_string(st.st_size)
                       + " bytes, but a safetensors file starts with an 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | prefix[i];
  // Read only what the header says, bounded by the file and the format's limit; parse_header reports why.
  auto want = std::min<uint64_t>({n, max_header_bytes, out.stamp.size - 8});
  std::vector<uint8_t> bytes(8 + want);
  std::memcpy(bytes.data(), prefix, 8);
  uint64_t done = 0;
  while (done < want) {
    auto r = ::pread(fd, bytes.data() + 8 + done, want - done, static_cast<off_t>(8 + done));
    if (r <= 0)
      return bad(path, "could not read the header");
    done += static_cast<uint64_t>(r);
  }
  auto h = parse_header(bytes.data(), bytes.size(), out.stamp.size, path);
  if (!succeeded(h))
    return std::get<failure>(h);
  out.layout = std::move(std::get<header>(h));
  return out;
}

std::shared_ptr<const host_model> load(const model_id& id, const std::vector<file_layout>& files,
                                       const std::vector<std::string>& order, const load_options& options) {
  auto model = std::make_shared<host_model>();
  model->id = id;
  struct placed {
    const tensor_info* info;
    size_t block;
  };
  std::vector<data_block> blocks;
  std::vector<placed> declared;
  bytes_t padding = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    blocks.push_back(read_data(files[i], options));
    for (const auto& t : files[i].layout.tensors)
      declared.push_back({&t, i});
    padding += files[i].layout.data_bytes - files[i].layout.tensor_bytes();
  }
  auto make = [&](const placed& p) {
    const auto& t = *p.info;
    const auto& block = blocks[p.block];
    auto options_t = at::TensorOptions().dtype(scalar_type(t.type));
    if (t.bytes() == 0)
      return at::empty(t.shape, options_t);
    const uint8_t* ptr = block.base + t.begin;
    if (reinterpret_cast<uintptr_t>(ptr) % element_size(t.type) != 0) {
      // A misaligned range (legal in the format, rare in practice): give it aligned memory of its own.
      auto aligned = at::empty(t.shape, options_t);
      std::memcpy(aligned.data_ptr(), ptr, t.bytes());
      return aligned;
    }
    auto keep = block.owner;
    return at::from_blob(const_cast<uint8_t*>(ptr), t.shape, [keep](void*) {}, options_t);
  };
  std::set<std::string> taken;
  for (const auto& name : order) {
    auto it = std::find_if(declared.begin(), declared.end(), [&](const placed& p) { return p.info->name == name; });
    if (it != declared.end() && taken.insert(name).second)
      model->tensors.push_back({name, make(*it)});
  }
  for (const auto& p : declared)
    if (taken.insert(p.info->name).second)
      model->tensors.push_back({p.info->name, make(p)});
  model->opaque_bytes = padding;  // bytes between tensors: in memory, so in the budget
  return model;
}

void write_file(const std::string& path, const std::vector<tensor_to_write>& tensors,
                const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json json = nlohmann::ordered_json::object();
  if (!metadata.empty())
    json["__metadata__"] = metadata;
  std::vector<at::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (json.contains(t.name))
      throw std::runtime_error("write_file: tensor '" + t.name + "' is given twice");
    auto c = t.tensor.contiguous().cpu();
    auto type = t.as ? t.as : from_scalar_type(c.scalar_type());
    if (!type)
      throw std::runtime_error("write_file: tensor '" + t.name + "' has a dtype safetensors cannot hold");
    if (element_size(*type) != static_cast<size_t>(c.element_size()))
      throw std::runtime_error("write_file: tensor '" + t.name + "' cannot be written as " + to_string(*type));
    auto bytes = static_cast<uint64_t>(c.numel()) * element_size(*type);
    json[t.name] = {{"dtype", to_string(*type)}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(c);
  }
  auto text = json.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // pad so the data section starts 8-byte aligned
  std::ofstream out{path, std::ios::binary | std::ios::trunc};
  if (!out)
    throw std::runtime_error("write_file: cannot create " + path);
  uint64_t n = text.size();
  uint8_t prefix[8];
  for (int i = 0; i < 8; ++i)
    prefix[i] = static_cast<uint8_t>(n >> (8 * i));
  out.write(reinterpret_cast<const char*>(prefix), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& c : contiguous)
    out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * c.element_size()));
  if (!out.flush())
    throw std::runtime_error("write_file: writing " + path + " failed");
}

} // namespace mcache::safetensors
