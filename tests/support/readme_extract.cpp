// Writes the README's C++ examples into a test source: each ```cpp block becomes the body of a function
// `example_N(rt, self)` (its #include lines go to the top), so that the examples are compiled with the
// tests and cannot drift from the API. A block that includes a header under a `--skip PREFIX` is left
// out (the fleet's example where the fleet is not built).
// Usage: readme_extract README.md OUT.cpp [--skip PREFIX]...

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  std::vector<std::string> skipped;
  for (int i = 3; i + 1 < argc; i += 2)
    if (std::string{argv[i]} == "--skip")
      skipped.push_back(argv[i + 1]);
  if (argc < 3 || (argc - 3) % 2 != 0 || skipped.size() * 2 != static_cast<size_t>(argc - 3)) {
    std::cerr << "usage: readme_extract README.md OUT.cpp [--skip PREFIX]...\n";
    return 2;
  }
  std::ifstream in{argv[1]};
  if (!in) {
    std::cerr << "readme_extract: cannot read " << argv[1] << "\n";
    return 1;
  }
  std::vector<std::string> includes, bodies, block_includes;
  std::string line, body;
  bool inside = false;
  auto is_skipped = [&](const std::string& include) {
    for (const auto& prefix : skipped)
      if (include.find("\"" + prefix) != std::string::npos || include.find("<" + prefix) != std::string::npos)
        return true;
    return false;
  };
  while (std::getline(in, line)) {
    if (!inside && line == "```cpp") {
      inside = true;
      body.clear();
      block_includes.clear();
    } else if (inside && line == "```") {
      inside = false;
      if (std::none_of(block_includes.begin(), block_includes.end(), is_skipped)) {
        includes.insert(includes.end(), block_includes.begin(), block_includes.end());
        bodies.push_back(body);
      }
    } else if (inside && line.rfind("#include", 0) == 0) {
      block_includes.push_back(line);
    } else if (inside) {
      body += "    " + line + "\n";
    }
  }
  std::ostringstream out;
  out << "// Generated from README.md by readme_extract: do not edit.\n";
  for (const auto& i : includes)
    out << i << "\n";
  out << "#include \"support/readme_examples_support.hpp\"\n\nnamespace readme {\n";
  for (size_t n = 0; n < bodies.size(); ++n)
    out << "\n[[maybe_unused]] void example_" << n + 1
        << "([[maybe_unused]] mcache::runtime& rt, [[maybe_unused]] caf::event_based_actor* self) {\n  {\n"
        << bodies[n] << "  }\n}\n";
  out << "\nconst int example_count = " << bodies.size() << ";\n\n} // namespace readme\n";
  std::ofstream{argv[2]} << out.str();
  return 0;
}
