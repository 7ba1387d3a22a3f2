// SPDX-License-Identifier: Apache-2.0
// The ELF check before dlopen() (plugin/elf_check.hpp) and the loader against broken plugin
// files made from real built plugins: truncated where it matters (inside the header, the
// program headers, each loadable segment, one byte short), another class, byte order,
// machine or file type, not an ELF, not a regular file. Each is refused with its reason; none
// may end the process (a file truncated inside a loadable segment was SIGBUS in dlopen()) or
// block it (a FIFO).
#include "plugin/elf_check.hpp"
#include "plugin/loader.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <string>
#include <vector>

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/stat.h>
#include <unistd.h>

namespace asiosmtpd::plugin {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

const fs::path fixtures = ASIOSMTPD_TEST_PLUGIN_DIR;
const fs::path bundled = ASIOSMTPD_BUILD_PLUGIN_DIR;

std::string read_all(const fs::path& p)
{
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_all(const fs::path& p, const std::string& bytes)
{
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

template <class T>
T read_at(const std::string& bytes, std::size_t offset)
{
    T v{};
    std::memcpy(&v, bytes.data() + offset, sizeof v);
    return v;
}

template <class T>
void write_at(std::string& bytes, std::size_t offset, const T& v)
{
    std::memcpy(bytes.data() + offset, &v, sizeof v);
}

// Whatever `f` returns, but a call blocked for 5 s fails the test: the FIFO gets a writer
// (and then EOF) so that the blocked open() returns and the test ends all the same.
std::string without_blocking_on(const fs::path& fifo, std::function<std::string()> f)
{
    auto result = std::async(std::launch::async, std::move(f));
    if (result.wait_for(5s) == std::future_status::timeout) {
        ADD_FAILURE() << "blocked on the FIFO " << fifo;
        for (int i = 0; i < 100 && result.wait_for(100ms) == std::future_status::timeout; ++i) {
            const int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
            if (w >= 0) ::close(w);
        }
    }
    return result.get();
}

std::string load_failure(const fs::path& plugin)
{
    try {
        const auto s = config::parse("server: {hostname: mx.test}\nplugins: [{path: \"" + plugin.string() + "\"}]\n",
                                     "test.yaml", fixtures);
        (void)load(s);
    } catch (const load_error& e) {
        return e.what();
    }
    return "loaded";
}

// One broken file and the reason it must be refused with (the start of it).
struct broken {
    std::string label;
    fs::path file;
    std::string reason;
};

class broken_files : public ::testing::Test {
protected:
    void SetUp() override
    {
        std::string pattern = (fs::temp_directory_path() / "asiosmtpd-elf-XXXXXX").string();
        ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
        dir_ = pattern;
    }
    void TearDown() override
    {
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }

    // The table, from the real plugin `good`: every file written into the temp folder.
    std::vector<broken> table(const fs::path& good)
    {
        const std::string bytes = read_all(good);
        const auto h = read_at<ElfW(Ehdr)>(bytes, 0);
        std::vector<broken> t;
        const auto add = [&](std::string label, const std::string& content, std::string reason) {
            const fs::path file = dir_ / (good.stem().string() + "." + std::to_string(t.size()) + ".so");
            write_all(file, content);
            t.push_back({std::move(label), file, std::move(reason)});
        };
        const auto cut = [&](std::size_t at, const std::string& what) {
            add("cut at " + std::to_string(at) + " (" + what + ")", bytes.substr(0, at),
                at == 0 ? "empty file (0 bytes)" : "truncated: the file has " + std::to_string(at) + " bytes");
        };
        cut(0, "empty");
        cut(10, "inside e_ident");
        cut(sizeof(ElfW(Ehdr)) - 24, "inside the ELF header");
        const std::size_t table_end = h.e_phoff + std::size_t{h.e_phnum} * h.e_phentsize;
        cut(h.e_phoff + h.e_phentsize + 3, "inside the program headers");
        t.back().reason += ", the program header table needs bytes";
        std::size_t loads = 0;
        std::size_t last_end = 0;
        for (std::size_t i = 0; i < h.e_phnum; ++i) {
            const auto p = read_at<ElfW(Phdr)>(bytes, h.e_phoff + i * h.e_phentsize);
            if (p.p_type != PT_LOAD) continue;
            ++loads;
            last_end = std::max<std::size_t>(last_end, p.p_offset + p.p_filesz);
            const std::size_t middle = p.p_offset + p.p_filesz / 2;
            if (p.p_filesz < 2 || middle <= table_end) continue;
            cut(middle, "inside loadable segment " + std::to_string(loads));
            t.back().reason += ", loadable segment " + std::to_string(loads) + " ";
        }
        EXPECT_GE(loads, 2u) << good;  // a real plugin: text and data at least
        cut(last_end - 1, "one byte short of the last loadable segment");
        t.back().reason += ", loadable segment " + std::to_string(loads) + " ";

        std::string b = bytes;
        b[1] = 'X';
        add("wrong magic", b, "not an ELF file");
        add("a shell script", "#!/bin/sh\necho not a plugin\n", "not an ELF file");
        b = bytes;
        b[EI_CLASS] = sizeof(void*) == 8 ? ELFCLASS32 : ELFCLASS64;
        add("another ELF class", b,
            sizeof(void*) == 8 ? "built for another machine (32-bit ELF, this host is 64-bit)"
                               : "built for another machine (64-bit ELF, this host is 32-bit)");
        b = bytes;
        b[EI_DATA] = b[EI_DATA] == ELFDATA2LSB ? ELFDATA2MSB : ELFDATA2LSB;
        add("another byte order", b, "built for another machine (");
        b = bytes;
        const ElfW(Half) other_machine = h.e_machine == EM_X86_64 ? EM_AARCH64 : EM_X86_64;
        write_at(b, offsetof(ElfW(Ehdr), e_machine), other_machine);
        add("another e_machine", b, "built for another machine (e_machine " + std::to_string(other_machine));
        b = bytes;
        write_at(b, offsetof(ElfW(Ehdr), e_type), ElfW(Half){ET_EXEC});
        add("an executable", b, "not a shared library (e_type 2, an executable)");
        b = bytes;
        write_at(b, offsetof(ElfW(Ehdr), e_phnum), ElfW(Half){0});
        add("no program headers", b, "not a loadable shared library (no program headers)");
        b = bytes;
        write_at(b, offsetof(ElfW(Ehdr), e_phentsize), ElfW(Half){7});
        add("a nonsense e_phentsize", b, "not a valid ELF file (e_phentsize 7,");
        b = bytes;
        write_at(b, offsetof(ElfW(Ehdr), e_phnum), ElfW(Half){PN_XNUM});
        add("a nonsense e_phnum", b, "not a valid ELF file (e_phnum 65535,");
        b = bytes;
        for (std::size_t i = 0; i < h.e_phnum; ++i) {
            const std::size_t at = h.e_phoff + i * h.e_phentsize;
            if (read_at<ElfW(Phdr)>(b, at).p_type == PT_DYNAMIC)
                write_at(b, at + offsetof(ElfW(Phdr), p_type), ElfW(Word){PT_NULL});
        }
        add("no PT_DYNAMIC", b, "not a shared library (no dynamic section");

        // A sparse file of the plugin's size: a hole reads as zeros.
        const fs::path sparse = dir_ / (good.stem().string() + ".sparse.so");
        {
            std::ofstream create(sparse);
        }
        fs::resize_file(sparse, bytes.size());
        t.push_back({"sparse, all zeros", sparse, "not an ELF file"});
        return t;
    }

    fs::path dir_;
};

std::vector<fs::path> good_plugins() { return {fixtures / "c_plugin.so", bundled / "sink.so"}; }

TEST(elf_check, every_built_plugin_passes)
{
    std::size_t seen = 0;
    for (const fs::path& folder : {fixtures, bundled}) {
        for (const auto& entry : fs::directory_iterator(folder)) {
            if (entry.path().extension() != ".so") continue;
            ++seen;
            EXPECT_EQ(elf_problem(entry.path()), "") << entry.path();
        }
    }
    EXPECT_GE(seen, 5u);
}

TEST_F(broken_files, each_is_refused_with_its_reason)
{
    for (const fs::path& good : good_plugins()) {
        for (const broken& b : table(good)) {
            const std::string why = elf_problem(b.file);
            EXPECT_NE(why.find(b.reason), std::string::npos)
                << good.filename() << ", " << b.label << ": expected \"" << b.reason << "\", got \"" << why << "\"";
        }
    }
}

// The loader itself: a refusal naming the config, the key, the file and the reason, instead
// of SIGBUS in dlopen() (the process, this test program, would end here).
TEST_F(broken_files, the_loader_refuses_each_naming_the_file_and_the_reason)
{
    for (const fs::path& good : good_plugins()) {
        for (const broken& b : table(good)) {
            const std::string why = load_failure(b.file);
            EXPECT_NE(why.find("test.yaml: plugins[0]: " + b.file.string() + ": " + b.reason), std::string::npos)
                << good.filename() << ", " << b.label << ": got \"" << why << "\"";
        }
    }
    // And the good one still loads after all those refusals.
    EXPECT_EQ(load_failure(fixtures / "c_plugin.so"), "loaded");
}

TEST_F(broken_files, a_directory_is_not_a_plugin)
{
    const fs::path folder = dir_ / "folder.so";
    fs::create_directory(folder);
    EXPECT_EQ(elf_problem(folder), "not a regular file (a directory)");
    EXPECT_NE(load_failure(folder).find(folder.string() + ": not a regular file (a directory)"), std::string::npos);
}

TEST_F(broken_files, a_fifo_is_refused_without_blocking)
{
    const fs::path fifo = dir_ / "fifo.so";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    EXPECT_EQ(without_blocking_on(fifo, [&] { return elf_problem(fifo); }), "not a regular file (a FIFO)");
    EXPECT_NE(without_blocking_on(fifo, [&] { return load_failure(fifo); })
                  .find(fifo.string() + ": not a regular file (a FIFO)"),
              std::string::npos);
    const plugin_file f(fifo);
    EXPECT_EQ(f.fd(), -1);
    EXPECT_EQ(f.problem(), "not a regular file (a FIFO)");
}

TEST_F(broken_files, a_device_is_refused_without_being_opened)
{
    EXPECT_EQ(elf_problem("/dev/null"), "not a regular file (a character device)");
}

TEST_F(broken_files, a_missing_file_is_named_as_such) { EXPECT_EQ(elf_problem(dir_ / "nothing.so"), "no such file"); }

TEST(plugin_file, opens_a_regular_file_and_gives_its_size)
{
    const fs::path good = fixtures / "c_plugin.so";
    const plugin_file f(good);
    EXPECT_EQ(f.problem(), "");
    EXPECT_GE(f.fd(), 0);
    EXPECT_EQ(f.size(), fs::file_size(good));
    EXPECT_EQ(elf_problem(f.fd(), f.size()), "");
    // The same bytes seen as shorter (the file changed after its size was taken): refused.
    EXPECT_NE(elf_problem(f.fd(), 100).find("truncated: the file has 100 bytes"), std::string::npos);
}

}  // namespace
}  // namespace asiosmtpd::plugin
