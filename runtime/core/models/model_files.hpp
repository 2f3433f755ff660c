#pragma once
// Models from safetensors files: one file, a sharded checkpoint (an index JSON naming the shards), or a
// pipeline's parts as separate models. Registration reads headers only: sizes and tensor lists are known
// without loading any weights. The descriptor's loader reads the files on a loader thread when the model
// is acquired, and again after it was evicted.

#include "runtime/core/models/catalog.hpp"
#include "runtime/core/models/safetensors.hpp"

#include <optional>
#include <string>
#include <vector>

namespace mcache {

/// One model made of one or more safetensors files.
struct file_model_spec {
  model_id id;
  std::vector<std::string> files;             // the files (shards) holding its tensors
  std::vector<std::string> execution_order;   // tensor names in the order they are used (optional)
  std::vector<std::string> required_tensors;  // always resident when pinned (optional)
  std::optional<device_index> preferred_device;
};

/// A descriptor for `spec`: validates every file's header (and that the order and required names exist and
/// that no tensor is in two shards). Fails with file_missing, bad_file or invalid_argument.
outcome<model_descriptor> describe_files(const file_model_spec& spec,
                                         const safetensors::load_options& options = {});

/// A sharded checkpoint: `index_path` is a `*.safetensors.index.json` whose "weight_map" names each
/// tensor's shard (relative to the index's folder).
outcome<model_descriptor> describe_sharded(const model_id& id, const std::string& index_path,
                                           const safetensors::load_options& options = {});

/// Models declared in a JSON manifest, paths relative to the manifest's folder:
///   {"models": {"sdxl/unet": {"files": ["unet.safetensors"], "order": [...], "required": [...],
///                             "device": 0},
///               "flux/transformer": {"index": "transformer/model.safetensors.index.json"}}}
outcome<std::vector<model_descriptor>> read_manifest(const std::string& path,
                                                     const safetensors::load_options& options = {});

/// Models found under `folder`: each `*.safetensors` file is a model whose id is its path relative to the
/// folder without the extension ("sdxl/vae"); each `*.safetensors.index.json` is a sharded model (its
/// shards are not models of their own).
outcome<std::vector<model_descriptor>> scan_folder(const std::string& folder,
                                                   const safetensors::load_options& options = {});

/// Adds every descriptor to `c`, or none: the first failure leaves the catalog as it was.
std::optional<failure> register_all(catalog& c, const std::vector<model_descriptor>& models);

} // namespace mcache
