// Models from files: sharded checkpoints, manifests, folder scans, and acquiring them through the actors.

#include "runtime/core/models/folder_walk.hpp"
#include "runtime/core/models/model_files.hpp"

#include "support/deterministic.hpp"
#include "support/temp_dir.hpp"

#include <ATen/ATen.h>

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>

using namespace mcache;
using namespace mcache::test;
using safetensors::write_file;

namespace {

void write_text(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream{path} << text;
}

/// A small diffusion-like layout: single files, one model in a subfolder, one sharded model.
void write_pipeline(const temp_dir& dir) {
  std::filesystem::create_directories(dir.path() / "sdxl");
  write_file(dir.file("sdxl/vae.safetensors"), {{"dec.w", at::randn({16, 16}), {}}, {"dec.b", at::randn({16}), {}}});
  write_file(dir.file("sdxl/text_encoder.safetensors"), {{"emb", at::randn({32, 8}), {}}});
  write_file(dir.file("sdxl/unet-00001-of-00002.safetensors"), {{"in.w", at::randn({8, 8}), {}}});
  write_file(dir.file("sdxl/unet-00002-of-00002.safetensors"), {{"out.w", at::randn({8, 4}), {}}, {"out.b", at::randn({4}), {}}});
  write_text(dir.file("sdxl/unet.safetensors.index.json"),
             R"({"metadata": {"total_size": 400}, "weight_map": {"in.w": "unet-00001-of-00002.safetensors",
                 "out.w": "unet-00002-of-00002.safetensors", "out.b": "unet-00002-of-00002.safetensors"}})");
}

model_descriptor described(outcome<model_descriptor> d) {
  if (!succeeded(d))
    FAIL(std::get<failure>(d).detail);
  return std::get<model_descriptor>(d);
}

} // namespace

TEST_CASE("registration reads headers only: sizes and tensor names are known before any load") {
  temp_dir dir;
  write_pipeline(dir);
  auto d = described(describe_files({"vae", {dir.file("sdxl/vae.safetensors")}, {}, {}, {}}));
  CHECK(d.bytes == (16 * 16 + 16) * 4);
  CHECK(d.tensor_names == std::vector<std::string>{"dec.w", "dec.b"});
  CHECK(d.source == dir.file("sdxl/vae.safetensors"));
}

TEST_CASE("a sharded checkpoint is one model made of all its shards") {
  temp_dir dir;
  write_pipeline(dir);
  auto d = described(describe_sharded("unet", dir.file("sdxl/unet.safetensors.index.json")));
  CHECK(d.bytes == (64 + 32 + 4) * 4);
  auto model = d.loader(d);
  CHECK(model->tensors.size() == 3);
  CHECK(model->find("out.b").numel() == 4);
  CHECK(model->total_bytes() == d.bytes);
}

TEST_CASE("an index naming a tensor that no shard holds is a bad file") {
  temp_dir dir;
  write_pipeline(dir);
  write_text(dir.file("sdxl/unet.safetensors.index.json"),
             R"({"weight_map": {"in.w": "unet-00001-of-00002.safetensors", "ghost": "unet-00001-of-00002.safetensors"}})");
  auto d = describe_sharded("unet", dir.file("sdxl/unet.safetensors.index.json"));
  REQUIRE_FALSE(succeeded(d));
  CHECK(std::get<failure>(d).detail.find("'ghost' is in no shard") != std::string::npos);
}

TEST_CASE("scanning a folder finds single-file and sharded models, and shards are not models of their own") {
  temp_dir dir;
  write_pipeline(dir);
  auto found = scan_folder(dir.path().string());
  REQUIRE(succeeded(found));
  std::vector<model_id> ids;
  for (auto& d : std::get<std::vector<model_descriptor>>(found))
    ids.push_back(d.id);
  std::sort(ids.begin(), ids.end());
  CHECK(ids == std::vector<model_id>{"sdxl/text_encoder", "sdxl/unet", "sdxl/vae"});
}

TEST_CASE("a folder walk lists regular files at any depth relative to the folder, sorted, without entering linked folders") {
  temp_dir dir;
  write_text(dir.file("b/deep/x.safetensors"), "x");
  write_text(dir.file("a.txt"), "a");
  write_text(dir.file("b/c.safetensors"), "c");
  std::filesystem::create_directories(dir.path() / "empty");
  ::symlink(dir.file("b").c_str(), dir.file("link-to-b").c_str());            // a linked folder: not entered
  ::symlink(dir.file("a.txt").c_str(), dir.file("link-to-a").c_str());        // a linked file: listed
  std::error_code ec;
  auto files = regular_files_under(dir.path().string() + "/", ec);
  CHECK_FALSE(ec);
  CHECK(files == std::vector<std::string>{"a.txt", "b/c.safetensors", "b/deep/x.safetensors", "link-to-a"});
  regular_files_under(dir.file("missing"), ec);
  CHECK(ec == std::errc::no_such_file_or_directory);
}

TEST_CASE("removing a tree removes every file and folder under it but not what its links point to") {
  temp_dir dir, outside;
  write_text(outside.file("kept.txt"), "kept");
  write_text(dir.file("tree/a/b/c.txt"), "c");
  write_text(dir.file("tree/d.txt"), "d");
  ::symlink(outside.path().c_str(), dir.file("tree/a/link").c_str());
  CHECK_FALSE(remove_tree(dir.file("tree")));
  CHECK_FALSE(std::filesystem::exists(dir.file("tree")));
  CHECK(std::filesystem::exists(outside.file("kept.txt")));
  CHECK_FALSE(remove_tree(dir.file("tree")));  // already gone: not an error
}

TEST_CASE("a manifest declares models with execution order, required tensors and a device preference") {
  temp_dir dir;
  write_pipeline(dir);
  write_text(dir.file("manifest.json"), R"({"models": {
      "vae": {"files": ["sdxl/vae.safetensors"], "order": ["dec.b"], "required": ["dec.b"], "device": 1},
      "unet": {"index": "sdxl/unet.safetensors.index.json"}}})");
  auto found = read_manifest(dir.file("manifest.json"));
  REQUIRE(succeeded(found));
  auto& ds = std::get<std::vector<model_descriptor>>(found);
  REQUIRE(ds.size() == 2);
  CHECK(ds[0].id == "vae");
  CHECK(ds[0].tensor_names == std::vector<std::string>{"dec.b", "dec.w"});
  CHECK(ds[0].required_tensors == std::vector<std::string>{"dec.b"});
  CHECK(ds[0].preferred_device == 1);
  CHECK(ds[0].loader(ds[0])->tensors.front().name == "dec.b");
  CHECK(ds[1].id == "unet");
}

TEST_CASE("a manifest naming a tensor its files do not hold is refused and registers nothing") {
  temp_dir dir;
  write_pipeline(dir);
  write_text(dir.file("manifest.json"), R"({"models": {
      "te": {"files": ["sdxl/text_encoder.safetensors"]},
      "vae": {"files": ["sdxl/vae.safetensors"], "required": ["nope"]}}})");
  auto found = read_manifest(dir.file("manifest.json"));
  REQUIRE_FALSE(succeeded(found));
  CHECK(std::get<failure>(found).code == errc::invalid_argument);
  CHECK(std::get<failure>(found).detail.find("'nope'") != std::string::npos);
}

TEST_CASE("registering a set of models is all or nothing") {
  temp_dir dir;
  write_pipeline(dir);
  catalog c;
  REQUIRE_FALSE(c.add(synthetic_model("sdxl/vae", {4})));
  auto found = std::get<std::vector<model_descriptor>>(scan_folder(dir.path().string()));
  auto err = register_all(c, found);
  REQUIRE(err);
  CHECK(c.size() == 1);
  // A model the catalog would refuse ('#' names generations) is found before any other is added.
  catalog fresh;
  auto bad = register_all(fresh, {synthetic_model("ok", {4}), synthetic_model("bad#1", {4})});
  REQUIRE(bad);
  CHECK(bad->code == errc::invalid_argument);
  CHECK(fresh.size() == 0);
}

SCENARIO("models acquired from files are read again after eviction, once however many ask") {
  GIVEN("two file models and RAM for one of them") {
    temp_dir dir;
    write_file(dir.file("a.safetensors"), {{"w", at::arange(256, at::kFloat), {}}});
    write_file(dir.file("b.safetensors"), {{"w", at::arange(256, at::kFloat).neg(), {}}});
    deterministic_runtime rt{1024, {}};
    auto reads_of_a = std::make_shared<std::atomic<int>>(0);
    auto a_model = described(describe_files({"a", {dir.file("a.safetensors")}, {}, {}, {}}));
    a_model.loader = [reads_of_a, inner = a_model.loader](const model_descriptor& self) {
      ++*reads_of_a;
      return inner(self);
    };
    rt.add(a_model);
    rt.add(described(describe_files({"b", {dir.file("b.safetensors")}, {}, {}, {}})));
    client s{rt.sys};
    auto a = rt.lease(s, "a");
    CHECK(a.payload->find("w").equal(at::arange(256, at::kFloat)));
    rt.release(s, rt.ram, a.lease);
    auto b = rt.lease(s, "b");  // evicts 'a'
    rt.release(s, rt.ram, b.lease);
    WHEN("three sessions acquire the evicted model at once") {
      client x{rt.sys}, y{rt.sys}, z{rt.sys};
      for (auto* c : {&x, &y, &z})
        rt.send_acquire(*c, "a");
      rt.deliver();
      THEN("one read serves them all, and the stats count it as a reload") {
        CHECK(*reads_of_a == 1);
        rt.settle();
        CHECK(*reads_of_a == 2);
        for (auto* c : {&x, &y, &z}) {
          auto r = c->poll<ram_lease>();
          REQUIRE(r);
          REQUIRE(succeeded(*r));
          CHECK(std::get<ram_lease>(*r).payload->find("w").equal(at::arange(256, at::kFloat)));
        }
        auto st = rt.ram_snapshot();
        CHECK(st.loads == 3);
        CHECK(st.reloads == 1);
        CHECK(st.shared_loads == 2);
      }
    }
    WHEN("the evicted model's file changed on disk") {
      write_file(dir.file("a.safetensors"), {{"w", at::ones({300}), {}}});
      auto before = rt.ram_snapshot();
      auto r = rt.acquire(s, "a");
      THEN("the acquire fails with file_changed, naming the file, and the cache is as it was") {
        REQUIRE_FALSE(succeeded(r));
        CHECK(code_of(r) == errc::file_changed);
        CHECK(std::get<failure>(r).detail.find(dir.file("a.safetensors")) != std::string::npos);
        auto after = rt.ram_snapshot();
        CHECK(after.used_bytes == before.used_bytes);
        CHECK(after.leases_active == before.leases_active);
        CHECK(after.models_resident == before.models_resident);
        rt.check_all();
      }
    }
    WHEN("the evicted model's file was deleted") {
      std::filesystem::remove(dir.file("a.safetensors"));
      auto r = rt.acquire(s, "a");
      THEN("the acquire fails with file_missing, not a crash") {
        CHECK(code_of(r) == errc::file_missing);
        rt.check_all();
      }
    }
  }
}

TEST_CASE("a folder or a FIFO named as a manifest or a model file is refused as bad_file at once, never waited on") {
  temp_dir dir;
  write_pipeline(dir);
  auto fifo = dir.file("pipe.safetensors");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);  // nothing ever writes to it: opening it to read would block
  auto manifest = read_manifest(fifo);
  REQUIRE_FALSE(succeeded(manifest));
  CHECK(std::get<failure>(manifest).code == errc::bad_file);
  auto folder = read_manifest(dir.file("sdxl"));
  REQUIRE_FALSE(succeeded(folder));
  CHECK(std::get<failure>(folder).code == errc::bad_file);
  CHECK(std::get<failure>(folder).detail.find("not a regular file") != std::string::npos);
  auto described = describe_files({"pipe", {fifo}, {}, {}, {}});
  REQUIRE_FALSE(succeeded(described));
  CHECK(std::get<failure>(described).code == errc::bad_file);
}
