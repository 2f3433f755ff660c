// Writes the README's C++ examples into a test source: each ```cpp block becomes the body of a function
// `example_N(rt, self)` (its #include lines go to the top), so that the examples are compiled with the
// tests and cannot drift from the API. Usage: readme_extract README.md OUT.cpp

#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: readme_extract README.md OUT.cpp\n";
    return 2;
  }
  std::ifstream in{argv[1]};
  if (!in) {
    std::cerr << "readme_extract: cannot read " << argv[1] << "\n";
    return 1;
  }
  std::vector<std::string> includes, bodies;
  std::string line, body;
  bool inside = false;
  while (std::getline(in, line)) {
    if (!inside && line == "```cpp") {
      inside = true;
      body.clear();
    } else if (inside && line == "```") {
      inside = false;
      bodies.push_back(body);
    } else if (inside && line.rfind("#include", 0) == 0) {
      includes.push_back(line);
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
