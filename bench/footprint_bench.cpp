// The default sample's footprint (#8, item 9), against a floor measured in the same run.
//
// Runs the sample (`samples/pipeline_sessions`, its default unless flags follow `--`) several times as a
// child process and reads what the kernel says of each run (wait4's rusage): wall, user and kernel time,
// minor page faults, peak resident memory. Between runs it runs a floor: a child that only touches the
// sample's budgets once (RAM plus each device), allocated as the runtime allocates its pageable slabs (2 MiB
// aligned, transparent huge pages advised), and then reads as many bytes of the sample's model files as
// the sample loaded, with plain `pread` into that memory. No runtime can do that work for less: a fresh
// page is zeroed by the kernel on its first touch, whoever touches it, and a read through the page cache
// is a copy in the kernel.
//
// Targets: peak RSS <= 1.10 x the budgets; kernel time <= 0.20 x wall. Printed beside them: the floor's
// kernel time over the sample's wall (what first touches alone cost) and the sample's kernel time beyond
// the floor.
//
// Why each child starts after a pause (--settle-s, 6 s by default): on a VM with free page reporting (this
// one is Firecracker, `page_reporting.page_reporting_order=11`) the guest hands memory freed a few
// seconds ago back to the host, and the next first touch of it faults on the host too, inside the guest's
// `clear_page`. Touching 2.7 GiB right after another process freed as much cost 0.10 to 0.27 s of kernel
// time here; after a 6 s pause, 2.8 to 4.3 s. Without the pause the floor, run right after the sample
// exits, would get the sample's warm pages and the sample the cold ones.
//
//   footprint_bench [--runs N] [--settle-s S] [--sample PATH] [-- sample flags...]

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <regex>
#include <string>
#include <vector>

namespace {

struct run_figures {
  double wall_s = 0, user_s = 0, kernel_s = 0;
  long minor_faults = 0;
  double peak_rss_mib = 0;
  int status = 0;
  std::string output;  // its standard output
  std::string log;     // its standard error (shown if it fails)
};

double seconds(const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; }

/// Runs `child` in a forked process (its stdout captured, its stderr kept in a file) and returns what
/// wait4 reports of it.
template <class Child>
run_figures run_child(Child child) {
  int out[2];
  char log_path[] = "/tmp/footprint_bench-XXXXXX";
  int log = ::mkstemp(log_path);
  if (::pipe(out) != 0 || log < 0) {
    std::perror("pipe or mkstemp");
    std::exit(2);
  }
  ::unlink(log_path);
  std::fflush(nullptr);  // else the child inherits, and writes again, what this process has buffered
  auto start = std::chrono::steady_clock::now();
  pid_t pid = ::fork();
  if (pid < 0) {
    std::perror("fork");
    std::exit(2);
  }
  if (pid == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    ::dup2(log, STDERR_FILENO);  // log lines apart: one in the middle of a table row would break parsing
    ::close(out[0]);
    ::close(out[1]);
    ::close(log);
    child();
    std::_Exit(127);
  }
  ::close(out[1]);
  run_figures f;
  std::array<char, 4096> buffer;
  ssize_t n;
  while ((n = ::read(out[0], buffer.data(), buffer.size())) > 0)
    f.output.append(buffer.data(), static_cast<size_t>(n));
  ::close(out[0]);
  ::lseek(log, 0, SEEK_SET);
  while ((n = ::read(log, buffer.data(), buffer.size())) > 0)
    f.log.append(buffer.data(), static_cast<size_t>(n));
  ::close(log);
  rusage usage{};
  ::wait4(pid, &f.status, 0, &usage);
  f.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  f.user_s = seconds(usage.ru_utime);
  f.kernel_s = seconds(usage.ru_stime);
  f.minor_faults = usage.ru_minflt;
  f.peak_rss_mib = usage.ru_maxrss / 1024.0;  // KiB on Linux
  return f;
}

/// What the floor does: the budgets touched once, then `read_mib` read from the files under `folder`.
struct floor_work {
  double budgets_mib = 0;
  double ram_budget_mib = 0;
  double read_mib = 0;
  std::string folder;  // empty: nothing is read (synthetic models)
};

/// Touches the budgets once, as fresh pageable slabs of the runtime are touched (buffer_cache.cpp), then
/// reads the files under the folder over and over into the RAM budget's part of that memory until as many
/// bytes as the sample loaded are read.
void floor_child(const floor_work& w) {
  constexpr size_t huge_page = 2 << 20;
  auto bytes = static_cast<size_t>(w.budgets_mib * (1 << 20));
  bytes = (bytes + huge_page - 1) / huge_page * huge_page;
  auto* p = static_cast<char*>(std::aligned_alloc(huge_page, bytes));
  if (!p)
    std::_Exit(3);
  ::madvise(p, bytes, MADV_HUGEPAGE);
  std::memset(p, 1, bytes);
  std::vector<std::string> files;
  if (!w.folder.empty())
    for (const auto& f : std::filesystem::recursive_directory_iterator(w.folder))
      if (f.is_regular_file() && f.path().extension() == ".safetensors")
        files.push_back(f.path().string());
  std::sort(files.begin(), files.end());
  const auto to_read = static_cast<size_t>(w.read_mib * (1 << 20));
  const auto room = std::min(bytes, static_cast<size_t>(w.ram_budget_mib * (1 << 20)));
  const size_t chunk = std::min<size_t>(64 << 20, room);
  size_t read = 0, at = 0, read_at_pass_start = 0, passes = 0;
  for (size_t i = 0; chunk > 0 && !files.empty() && read < to_read; i = (i + 1) % files.size()) {
    if (i == 0) {
      if (passes++ > 0 && read == read_at_pass_start)
        std::_Exit(5);  // a whole pass over the files read nothing
      read_at_pass_start = read;
    }
    int fd = ::open(files[i].c_str(), O_RDONLY);
    if (fd < 0)
      std::_Exit(4);
    for (off_t offset = 0; read < to_read;) {
      if (at + chunk > room)
        at = 0;
      auto n = ::pread(fd, p + at, std::min(chunk, to_read - read), offset);
      if (n <= 0)
        break;
      offset += n;
      at += static_cast<size_t>(n);
      read += static_cast<size_t>(n);
    }
    ::close(fd);
  }
  std::printf("%d %zu\n", p[bytes / 3], read);  // so the stores are not elided
  std::fflush(stdout);
  std::_Exit(0);
}

/// The floor's work from the sample's output: its budgets (header lines), the bytes its RAM tier loaded
/// (the RAM row's "moved MiB") and where its model files are.
std::optional<floor_work> floor_of(const std::string& output) {
  std::smatch devices, sizes, loaded, folder;
  if (!std::regex_search(output, devices, std::regex{R"((\d+) (simulated device|GPU)\(s\))"}) ||
      !std::regex_search(output, sizes, std::regex{R"(RAM budget ([0-9.]+) MiB; each device ([0-9.]+) MiB)"}) ||
      !std::regex_search(output, loaded,
                         std::regex{R"(\nRAM +[0-9.]+ +[0-9.]+ +\d+ +\d+ +\d+ +\d+ +([0-9.]+) )"}))
    return std::nullopt;
  floor_work w;
  w.ram_budget_mib = std::stod(sizes[1]);
  // A simulated device's memory is host memory; a GPU's is not, and is not in the RSS either.
  const bool simulated = devices[2] == "simulated device";
  w.budgets_mib = w.ram_budget_mib + (simulated ? std::stod(devices[1]) * std::stod(sizes[2]) : 0.0);
  w.read_mib = std::stod(loaded[1]);
  if (std::regex_search(output, folder, std::regex{R"(safetensors files in ([^,\n]+),)"}))
    w.folder = folder[1];
  return w;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

std::string sibling_sample(const char* argv0) {
  std::string self = argv0;
  auto slash = self.rfind('/');
  std::string dir = slash == std::string::npos ? "." : self.substr(0, slash);
  return dir + "/../samples/pipeline_sessions";
}

} // namespace

int main(int argc, char** argv) {
  int runs = 3;
  int settle_s = 6;
  std::string sample = sibling_sample(argv[0]);
  std::vector<std::string> sample_flags;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--runs" && i + 1 < argc)
      runs = std::max(1, std::atoi(argv[++i]));
    else if (a == "--settle-s" && i + 1 < argc)
      settle_s = std::max(0, std::atoi(argv[++i]));
    else if (a == "--sample" && i + 1 < argc)
      sample = argv[++i];
    else if (a == "--") {
      sample_flags.assign(argv + i + 1, argv + argc);
      break;
    } else {
      std::fprintf(stderr, "usage: %s [--runs N] [--settle-s S] [--sample PATH] [-- sample flags...]\n", argv[0]);
      return 2;
    }
  }
  if (::access(sample.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "no sample at %s (build the pipeline_sessions target, or pass --sample)\n",
                 sample.c_str());
    return 2;
  }

  std::printf("footprint_bench: %s, %d runs, each followed by a floor (its budgets touched once and the bytes "
              "it loaded read once); %d s pause before each\n\n", sample.c_str(), runs, settle_s);
  std::printf("%4s %9s %9s %9s %9s %11s | %9s %9s %9s %9s\n", "run", "wall s", "user s", "kernel s", "faults",
              "peak MiB", "floor s", "kernel s", "faults", "read MiB");
  std::vector<double> kernel_share, floor_share, beyond_floor_share, rss_ratio;
  std::vector<double> faults, floor_faults;
  double budgets = 0, loaded = 0;
  for (int r = 0; r < runs; ++r) {
    ::sleep(static_cast<unsigned>(settle_s));
    auto s = run_child([&] {
      std::vector<char*> args{const_cast<char*>(sample.c_str())};
      for (auto& f : sample_flags)
        args.push_back(const_cast<char*>(f.c_str()));
      args.push_back(nullptr);
      ::execv(sample.c_str(), args.data());
      std::perror("execv");
    });
    if (!WIFEXITED(s.status) || WEXITSTATUS(s.status) != 0) {
      std::fprintf(stderr, "the sample failed (status %d):\n%s\n%s\n", s.status, s.output.c_str(), s.log.c_str());
      return 1;
    }
    auto work = floor_of(s.output);
    if (!work) {
      std::fprintf(stderr, "no budgets or RAM row in the sample's output:\n%s\n", s.output.c_str());
      return 1;
    }
    budgets = work->budgets_mib;
    loaded = work->read_mib;
    ::sleep(static_cast<unsigned>(settle_s));
    auto floor = run_child([&] { floor_child(*work); });
    if (!WIFEXITED(floor.status) || WEXITSTATUS(floor.status) != 0) {
      std::fprintf(stderr, "the floor failed (status %d)\n", floor.status);
      return 1;
    }
    double floor_read_mib = 0;
    if (auto space = floor.output.find(' '); space != std::string::npos)
      floor_read_mib = std::stod(floor.output.substr(space + 1)) / (1 << 20);
    std::printf("%4d %9.2f %9.2f %9.2f %9ld %11.1f | %9.2f %9.2f %9ld %9.1f\n", r + 1, s.wall_s, s.user_s,
                s.kernel_s, s.minor_faults, s.peak_rss_mib, floor.wall_s, floor.kernel_s, floor.minor_faults,
                floor_read_mib);
    kernel_share.push_back(s.kernel_s / s.wall_s);
    floor_share.push_back(floor.kernel_s / s.wall_s);
    beyond_floor_share.push_back(std::max(0.0, s.kernel_s - floor.kernel_s) / s.wall_s);
    rss_ratio.push_back(s.peak_rss_mib / budgets);
    faults.push_back(static_cast<double>(s.minor_faults));
    floor_faults.push_back(static_cast<double>(floor.minor_faults));
  }
  std::printf("\nbudgets (RAM + devices): %.1f MiB; the last run loaded %.1f MiB into RAM\n", budgets, loaded);
  std::printf("peak RSS / budgets:            max %.3f, median %.3f   (target <= 1.10)\n",
              *std::max_element(rss_ratio.begin(), rss_ratio.end()), median(rss_ratio));
  std::printf("kernel time / wall:            median %.2f           (target <= 0.20)\n", median(kernel_share));
  std::printf("  of it, the floor's / wall:   median %.2f           (the budgets touched once, the bytes read once)\n",
              median(floor_share));
  std::printf("  beyond the floor / wall:     median %.2f\n", median(beyond_floor_share));
  std::printf("minor faults:                  median %.0f, floor %.0f\n", median(faults), median(floor_faults));
  return 0;
}
