// main() of the fuzzers' gcc builds: replays inputs through LLVMFuzzerTestOneInput, one
// gtest case per input file, so that `bazel test //...` (also under --config=asan and
// --config=tsan) runs every seed and every input that once crashed.
//
//   <name>_fuzzer_test --corpus=fuzz/corpus/<name> fuzz/regressions/<name>
//   bazel-bin/fuzz/<name>_fuzzer crash-0123abcd...        # one input, from tools/fuzz
//
// Each argument is a file or a directory (every regular file beneath it, in name order; names
// starting with '.' are skipped). A missing path is skipped too, except the --corpus=DIR one,
// which must hold at least one file. Under --config=fuzz this file is not linked: libFuzzer
// brings its own main().
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace {

// Appends the regular files at or under `path`, sorted; false when `path` does not exist.
bool CollectFiles(const std::string& path, std::vector<std::string>* files) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return false;
  if (S_ISREG(st.st_mode)) {
    files->push_back(path);
    return true;
  }
  if (!S_ISDIR(st.st_mode)) return true;
  DIR* dir = ::opendir(path.c_str());
  if (dir == nullptr) return true;
  std::vector<std::string> names;
  while (struct dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') names.emplace_back(entry->d_name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) CollectFiles(path + "/" + name, files);
  return true;
}

// "fuzz/corpus/hop/local_name" -> "corpus_hop_local_name": a gtest-friendly case name.
std::string CaseName(const std::string& path) {
  std::string name = path;
  if (name.rfind("fuzz/", 0) == 0) name = name.substr(5);
  for (char& c : name) {
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

class ReplayTest : public ::testing::Test {
 public:
  explicit ReplayTest(std::string path) : path_(std::move(path)) {}

  void TestBody() override {
    std::ifstream in(path_, std::ios::binary);
    ASSERT_TRUE(in.good()) << "cannot read " << path_;
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // A copy of exactly the input's size, so that ASan sees any read past its end.
    std::vector<uint8_t> data(bytes.begin(), bytes.end());
    LLVMFuzzerTestOneInput(data.empty() ? nullptr : data.data(), data.size());
  }

 private:
  const std::string path_;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (LLVMFuzzerInitialize != nullptr) LLVMFuzzerInitialize(&argc, &argv);
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    constexpr char kCorpus[] = "--corpus=";
    if (arg.rfind(kCorpus, 0) == 0) {
      std::string dir = arg.substr(strlen(kCorpus));
      size_t before = files.size();
      if (!CollectFiles(dir, &files) || files.size() == before) {
        fprintf(stderr, "replay: the corpus %s is missing or empty\n", dir.c_str());
        return 2;
      }
    } else if (!CollectFiles(arg, &files)) {
      fprintf(stderr, "replay: %s does not exist; skipped\n", arg.c_str());
    }
  }
  if (files.empty()) {
    fprintf(stderr, "usage: %s [--corpus=DIR] FILE_OR_DIR...: replays each input once\n",
            argv[0]);
    return 2;
  }
  for (const std::string& file : files) {
    ::testing::RegisterTest("Replay", CaseName(file).c_str(), nullptr, file.c_str(), __FILE__,
                            __LINE__, [file]() -> ::testing::Test* { return new ReplayTest(file); });
  }
  return RUN_ALL_TESTS();
}
