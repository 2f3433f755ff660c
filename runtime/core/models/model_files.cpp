#include "runtime/core/models/model_files.hpp"

#include "runtime/core/format.hpp"
#include "runtime/core/models/folder_walk.hpp"
#include "runtime/core/read_file.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

namespace mcache {

namespace fs = std::filesystem;

namespace {

std::optional<nlohmann::ordered_json> read_json(const std::string& path, failure& why) {
  auto text = read_regular_file(path, why);
  if (!text)
    return std::nullopt;
  nlohmann::ordered_json json;
  try {
    json = nlohmann::ordered_json::parse(*text);
  } catch (const nlohmann::json::parse_error& e) {  // its text says where, and why (ill-formed UTF-8, ...)
    why = failure{errc::bad_file, path + ": not valid JSON: " + escape_unprintable(e.what())};
    return std::nullopt;
  }
  if (!json.is_object()) {
    why = failure{errc::bad_file, path + ": not a JSON object"};
    return std::nullopt;
  }
  return json;
}

std::optional<std::vector<std::string>> string_list(const nlohmann::ordered_json& entry, const char* key) {
  std::vector<std::string> out;
  auto it = entry.find(key);
  if (it == entry.end())
    return out;
  if (!it->is_array())
    return std::nullopt;
  for (const auto& v : *it) {
    if (!v.is_string())
      return std::nullopt;
    out.push_back(v.get<std::string>());
  }
  return out;
}

} // namespace

outcome<model_descriptor> describe_files(const file_model_spec& spec, const safetensors::load_options& options) {
  if (spec.id.empty() || spec.files.empty())
    return failure{errc::invalid_argument, "a file model needs an id and at least one file"};
  std::vector<safetensors::file_layout> layouts;
  std::set<std::string> names;
  std::map<std::string, bytes_t> bytes_of;
  model_descriptor d;
  d.id = spec.id;
  for (const auto& path : spec.files) {
    auto layout = safetensors::read_layout(path);
    if (!succeeded(layout))
      return std::get<failure>(layout);
    auto& l = std::get<safetensors::file_layout>(layout);
    for (const auto& t : l.layout.tensors) {
      if (!names.insert(t.name).second)
        return failure{errc::bad_file, path + ": tensor '" + t.name + "' is also in another shard of '" + spec.id + "'"};
      d.tensor_names.push_back(t.name);
      bytes_of[t.name] = t.bytes();
    }
    d.bytes += l.layout.data_bytes;
    layouts.push_back(std::move(l));
  }
  for (const auto* list : {&spec.execution_order, &spec.required_tensors})
    for (const auto& name : *list)
      if (!names.count(name))
        return failure{errc::invalid_argument, "model '" + spec.id + "' names tensor '" + name
                                                 + "', which none of its files holds"};
  if (d.bytes == 0)
    return failure{errc::bad_file, spec.files.front() + ": holds no tensor data"};
  if (!spec.execution_order.empty()) {
    // The descriptor lists tensors in execution order, the rest after in declaration order.
    std::vector<std::string> ordered = spec.execution_order;
    std::set<std::string> seen(ordered.begin(), ordered.end());
    for (const auto& n : d.tensor_names)
      if (!seen.count(n))
        ordered.push_back(n);
    d.tensor_names = std::move(ordered);
  }
  for (const auto& n : d.tensor_names)
    d.tensor_bytes.push_back(bytes_of.at(n));
  d.required_tensors = spec.required_tensors;
  d.preferred_device = spec.preferred_device;
  d.source = spec.files.size() == 1 ? spec.files.front()
                                    : spec.files.front() + " (+" + std::to_string(spec.files.size() - 1) + " shards)";
  std::vector<safetensors::file_stamp> stamps;
  for (const auto& l : layouts)
    stamps.push_back(l.stamp);
  d.precheck = [stamps](const model_descriptor&) -> std::optional<failure> {
    for (const auto& s : stamps)
      if (auto err = safetensors::check_unchanged(s))
        return err;
    return std::nullopt;
  };
  d.loader = [layouts = std::move(layouts), order = spec.execution_order, options](const model_descriptor& self) {
    return safetensors::load(self.id, layouts, order, options);
  };
  return d;
}

outcome<model_descriptor> describe_sharded(const model_id& id, const std::string& index_path,
                                           const safetensors::load_options& options) {
  failure why{errc::bad_file, ""};
  auto json = read_json(index_path, why);
  if (!json)
    return why;
  auto map = json->find("weight_map");
  if (map == json->end() || !map->is_object())
    return failure{errc::bad_file, index_path + ": no \"weight_map\" object"};
  auto folder = fs::path(index_path).parent_path();
  file_model_spec spec;
  spec.id = id;
  std::set<std::string> seen;
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it.value().is_string())
      return failure{errc::bad_file, index_path + ": the shard of '" + it.key() + "' is not a file name"};
    auto shard = (folder / it.value().get<std::string>()).string();
    if (seen.insert(shard).second)
      spec.files.push_back(shard);
  }
  auto d = describe_files(spec, options);
  if (succeeded(d)) {
    // Every tensor the index names must be in the shards.
    auto& desc = std::get<model_descriptor>(d);
    std::set<std::string> present(desc.tensor_names.begin(), desc.tensor_names.end());
    for (auto it = map->begin(); it != map->end(); ++it)
      if (!present.count(it.key()))
        return failure{errc::bad_file, index_path + ": tensor '" + it.key() + "' is in no shard"};
    desc.source = index_path;
  }
  return d;
}

outcome<std::vector<model_descriptor>> read_manifest(const std::string& path,
                                                     const safetensors::load_options& options) {
  failure why{errc::bad_file, ""};
  auto json = read_json(path, why);
  if (!json)
    return why;
  auto models = json->find("models");
  if (models == json->end() || !models->is_object())
    return failure{errc::bad_file, path + ": no \"models\" object"};
  auto folder = fs::path(path).parent_path();
  std::vector<model_descriptor> out;
  for (auto it = models->begin(); it != models->end(); ++it) {
    const auto& e = it.value();
    auto where = path + ": model '" + it.key() + "': ";
    if (!e.is_object())
      return failure{errc::bad_file, where + "entry is not an object"};
    outcome<model_descriptor> d = failure{errc::bad_file, where + "needs \"files\" or \"index\""};
    auto order = string_list(e, "order");
    auto required = string_list(e, "required");
    auto files = string_list(e, "files");
    if (!order || !required || !files)
      return failure{errc::bad_file, where + "\"files\", \"order\" and \"required\" must be lists of strings"};
    if (e.contains("index")) {
      if (!e["index"].is_string())
        return failure{errc::bad_file, where + "\"index\" must be a file name"};
      d = describe_sharded(it.key(), (folder / e["index"].get<std::string>()).string(), options);
    } else if (!files->empty()) {
      file_model_spec spec;
      spec.id = it.key();
      for (const auto& f : *files)
        spec.files.push_back((folder / f).string());
      spec.execution_order = *order;
      spec.required_tensors = *required;
      if (e.contains("device")) {
        if (!e["device"].is_number_integer())
          return failure{errc::bad_file, where + "\"device\" must be an integer"};
        spec.preferred_device = e["device"].get<device_index>();
      }
      d = describe_files(spec, options);
    }
    if (!succeeded(d))
      return std::get<failure>(d);
    out.push_back(std::move(std::get<model_descriptor>(d)));
  }
  return out;
}

outcome<std::vector<model_descriptor>> scan_folder(const std::string& folder, const safetensors::load_options& options) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec))
    return failure{errc::file_missing, folder + ": not a folder"};
  const std::string index_suffix = ".safetensors.index.json";
  // Relative paths, sorted; the walk is POSIX, not fs::recursive_directory_iterator (see folder_walk.hpp).
  std::vector<std::string> files, indexes;
  for (auto& rel : regular_files_under(folder, ec)) {
    auto ends_with = [&](const std::string& suffix) {
      return rel.size() > suffix.size() && rel.compare(rel.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends_with(index_suffix))
      indexes.push_back(std::move(rel));
    else if (fs::path(rel).extension() == ".safetensors")
      files.push_back(std::move(rel));
  }
  if (ec)
    return failure{errc::file_missing, folder + ": " + ec.message()};
  std::vector<model_descriptor> out;
  std::set<std::string> shards;
  for (const auto& rel : indexes) {
    auto index = fs::path(folder) / rel;
    auto id = rel.substr(0, rel.size() - index_suffix.size());
    auto d = describe_sharded(id, index.string(), options);
    if (!succeeded(d))
      return std::get<failure>(d);
    auto& desc = std::get<model_descriptor>(d);
    failure unused{errc::bad_file, ""};
    if (auto json = read_json(index.string(), unused))
      for (auto it = (*json)["weight_map"].begin(); it != (*json)["weight_map"].end(); ++it)
        shards.insert(fs::weakly_canonical(index.parent_path() / it.value().get<std::string>()).string());
    out.push_back(std::move(desc));
  }
  for (const auto& file : files) {
    auto f = fs::path(folder) / file;
    if (shards.count(fs::weakly_canonical(f).string()))
      continue;
    auto rel = fs::path(file);
    file_model_spec spec;
    spec.id = (rel.parent_path() / rel.stem()).generic_string();
    spec.files = {f.string()};
    auto d = describe_files(spec, options);
    if (!succeeded(d))
      return std::get<failure>(d);
    out.push_back(std::move(std::get<model_descriptor>(d)));
  }
  return out;
}

std::optional<failure> register_all(catalog& c, const std::vector<model_descriptor>& models) {
  std::set<model_id> ids;
  for (const auto& d : models) {
    if (c.find(d.id) || !ids.insert(d.id).second)
      return failure{errc::invalid_argument, "model '" + d.id + "' is already registered"};
    if (auto bad = catalog::validate(d))  // all checked before any is added: all or nothing
      return bad;
  }
  for (const auto& d : models)
    if (auto err = c.add(d))
      return err;  // cannot happen after the checks above, short of a concurrent registration
  return std::nullopt;
}

} // namespace mcache
