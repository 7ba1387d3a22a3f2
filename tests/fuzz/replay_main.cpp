// SPDX-License-Identifier: Apache-2.0
// replay_main: a stand-in for libFuzzer's main() in ordinary builds. Runs every file given (or
// every file in every directory given) through LLVMFuzzerTestOneInput once, so that the
// committed corpora and crash regressions replay under g++ (and under the asan preset) as a
// plain ctest. A crash, sanitizer report or failed check aborts, which fails the test.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv)
{
    namespace fs = std::filesystem;
    std::vector<fs::path> files;
    for (int i = 1; i < argc; ++i) {
        const fs::path p = argv[i];
        if (fs::is_directory(p)) {
            for (const auto& e : fs::recursive_directory_iterator(p))
                if (e.is_regular_file()) files.push_back(e.path());
        } else if (fs::is_regular_file(p)) {
            files.push_back(p);
        } else {
            std::fprintf(stderr, "replay: no such file or directory: %s\n", argv[i]);
            return 2;
        }
    }
    if (files.empty()) {
        std::fprintf(stderr, "replay: no inputs\n");
        return 2;
    }
    for (const auto& f : files) {
        std::ifstream in(f, std::ios::binary);
        const std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
        // An empty vector's data() may be null; libFuzzer always passes a valid pointer.
        const std::vector<std::uint8_t> buf(bytes.begin(), bytes.end());
        static const std::uint8_t empty = 0;
        LLVMFuzzerTestOneInput(buf.empty() ? &empty : buf.data(), buf.size());
    }
    std::printf("replay: %zu inputs, no failure\n", files.size());
    return 0;
}
