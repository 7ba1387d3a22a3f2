// SPDX-License-Identifier: Apache-2.0
// The structural check of a plugin file before dlopen(): see elf_check.hpp for why.
#include "plugin/elf_check.hpp"

#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace asiosmtpd::plugin {
namespace {

// This host's ELF flavour: the one ld.so of this process accepts.
constexpr bool host_64 = sizeof(void*) == 8;
using ehdr = std::conditional_t<host_64, Elf64_Ehdr, Elf32_Ehdr>;
using phdr = std::conditional_t<host_64, Elf64_Phdr, Elf32_Phdr>;
constexpr unsigned char host_class = host_64 ? ELFCLASS64 : ELFCLASS32;
constexpr unsigned char host_data = std::endian::native == std::endian::little ? ELFDATA2LSB : ELFDATA2MSB;

// e_machine of this host, from the compiler's target macros. 0 on a target not listed: the
// machine is then left to ld.so, which refuses a foreign one cleanly ("wrong ELF class" or
// "invalid ELF header"); only the precise reason is lost.
constexpr unsigned host_machine =
#if defined(__x86_64__)
    EM_X86_64;
#elif defined(__i386__)
    EM_386;
#elif defined(__aarch64__)
    EM_AARCH64;
#elif defined(__arm__)
    EM_ARM;
#elif defined(__riscv)
    EM_RISCV;
#elif defined(__powerpc64__)
    EM_PPC64;
#elif defined(__powerpc__)
    EM_PPC;
#elif defined(__s390__)
    EM_S390;
#elif defined(__mips__)
    EM_MIPS;
#elif defined(__loongarch__) && defined(EM_LOONGARCH)
    EM_LOONGARCH;
#else
    0;
#endif

// The more common machines by name, for the message; the number is always given.
const char* machine_name(unsigned m) noexcept
{
    switch (m) {
    case EM_X86_64: return "x86-64";
    case EM_386: return "i386";
    case EM_AARCH64: return "aarch64";
    case EM_ARM: return "arm";
    case EM_RISCV: return "riscv";
    case EM_PPC64: return "ppc64";
    case EM_PPC: return "ppc";
    case EM_S390: return "s390";
    case EM_MIPS: return "mips";
    default: return nullptr;
    }
}

std::string machine(unsigned m)
{
    const char* name = machine_name(m);
    return "e_machine " + std::to_string(m) + (name != nullptr ? std::string(", ") + name : std::string());
}

const char* type_name(unsigned t) noexcept
{
    switch (t) {
    case ET_NONE: return "no file type";
    case ET_REL: return "an object file";
    case ET_EXEC: return "an executable";
    case ET_CORE: return "a core dump";
    default: return "unknown";
    }
}

// More than any linker makes (a shared library has about ten); it also bounds what is read.
constexpr unsigned max_program_headers = 1024;

// "truncated: the file has 150 bytes, <what> needs bytes 100..200". The end saturates: a
// nonsense offset near 2^64 is not to wrap round in the message.
std::string past_end(const std::string& what, std::uint64_t offset, std::uint64_t length, std::uint64_t size)
{
    constexpr std::uint64_t top = std::numeric_limits<std::uint64_t>::max();
    const std::uint64_t end = offset > top - length ? top : offset + length;
    return "truncated: the file has " + std::to_string(size) + " bytes, " + what + " needs bytes " +
           std::to_string(offset) + ".." + std::to_string(end);
}

// Reads exactly `n` bytes at `offset`; false when the file has fewer (it changed since its
// size was taken) or cannot be read.
bool read_at(int fd, void* into, std::size_t n, std::uint64_t offset, std::string& why)
{
    auto* p = static_cast<unsigned char*>(into);
    while (n > 0) {
        const ssize_t got = ::pread(fd, p, n, static_cast<off_t>(offset));
        if (got < 0) {
            if (errno == EINTR) continue;
            why = std::string("cannot read: ") + std::strerror(errno);
            return false;
        }
        if (got == 0) {
            why = "cannot read: the file got shorter while being read";
            return false;
        }
        p += got;
        n -= static_cast<std::size_t>(got);
        offset += static_cast<std::uint64_t>(got);
    }
    return true;
}

// [offset, offset + length) inside a file of `size` bytes, without overflow.
bool inside(std::uint64_t offset, std::uint64_t length, std::uint64_t size) noexcept
{
    return offset <= size && length <= size - offset;
}

const char* kind_of(mode_t mode) noexcept
{
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    return "an unknown kind of file";
}

}  // namespace

plugin_file::plugin_file(const std::filesystem::path& file)
{
    // stat() first so that a device is never opened (opening one can have effects); the
    // descriptor is judged again below, which is what counts.
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0) {
        problem_ = errno == ENOENT ? std::string("no such file") : std::string("cannot open: ") + std::strerror(errno);
        return;
    }
    if (!S_ISREG(st.st_mode)) {
        problem_ = std::string("not a regular file (") + kind_of(st.st_mode) + ")";
        return;
    }
    // O_NONBLOCK: a FIFO swapped in after the stat() does not block the open (nor the reads:
    // it is refused by the fstat() below first).
    fd_ = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd_ < 0) {
        problem_ = errno == ENOENT ? std::string("no such file") : std::string("cannot open: ") + std::strerror(errno);
        return;
    }
    if (::fstat(fd_, &st) != 0) {
        problem_ = std::string("cannot open: ") + std::strerror(errno);
    } else if (!S_ISREG(st.st_mode)) {
        problem_ = std::string("not a regular file (") + kind_of(st.st_mode) + ")";
    } else {
        size_ = static_cast<std::uint64_t>(st.st_size);
        return;
    }
    ::close(fd_);
    fd_ = -1;
}

plugin_file::~plugin_file()
{
    if (fd_ >= 0) ::close(fd_);
}

std::string elf_problem(int fd, std::uint64_t size)
{
    if (size == 0) return "empty file (0 bytes)";
    std::string why;

    // The identification bytes: what is there of them must be ELF's before anything else.
    unsigned char ident[EI_NIDENT] = {};
    const std::size_t ident_size = size < EI_NIDENT ? static_cast<std::size_t>(size) : EI_NIDENT;
    if (!read_at(fd, ident, ident_size, 0, why)) return why;
    if (std::memcmp(ident, ELFMAG, ident_size < SELFMAG ? ident_size : SELFMAG) != 0) return "not an ELF file";
    if (size < sizeof(ehdr))
        return "truncated: the file has " + std::to_string(size) + " bytes, shorter than an ELF header (" +
               std::to_string(sizeof(ehdr)) + " bytes)";
    if (ident[EI_CLASS] != ELFCLASS32 && ident[EI_CLASS] != ELFCLASS64)
        return "not a valid ELF file (EI_CLASS " + std::to_string(ident[EI_CLASS]) + ")";
    if (ident[EI_CLASS] != host_class)
        return std::string("built for another machine (") + (ident[EI_CLASS] == ELFCLASS64 ? "64" : "32") +
               "-bit ELF, this host is " + (host_64 ? "64" : "32") + "-bit)";
    if (ident[EI_DATA] != ELFDATA2LSB && ident[EI_DATA] != ELFDATA2MSB)
        return "not a valid ELF file (EI_DATA " + std::to_string(ident[EI_DATA]) + ")";
    if (ident[EI_DATA] != host_data)
        return std::string("built for another machine (") + (ident[EI_DATA] == ELFDATA2MSB ? "big" : "little") +
               "-endian, this host is " + (host_data == ELFDATA2MSB ? "big" : "little") + "-endian)";
    if (ident[EI_VERSION] != EV_CURRENT)
        return "not a valid ELF file (EI_VERSION " + std::to_string(ident[EI_VERSION]) + ")";

    // Same class and byte order as this host from here on: the structures read as they are.
    ehdr h{};
    if (!read_at(fd, &h, sizeof h, 0, why)) return why;
    if (host_machine != 0 && h.e_machine != host_machine)
        return "built for another machine (" + machine(h.e_machine) + "; this host is " + machine(host_machine) + ")";
    if (h.e_type != ET_DYN)
        return "not a shared library (e_type " + std::to_string(h.e_type) + ", " + type_name(h.e_type) + ")";
    if (h.e_version != EV_CURRENT) return "not a valid ELF file (e_version " + std::to_string(h.e_version) + ")";
    if (h.e_phnum == 0) return "not a loadable shared library (no program headers)";
    if (h.e_phentsize != sizeof(phdr))
        return "not a valid ELF file (e_phentsize " + std::to_string(h.e_phentsize) + ", expected " +
               std::to_string(sizeof(phdr)) + ")";
    if (h.e_phnum > max_program_headers)  // includes PN_XNUM, which ld.so does not take either
        return "not a valid ELF file (e_phnum " + std::to_string(h.e_phnum) + ", at most " +
               std::to_string(max_program_headers) + " accepted)";
    const std::uint64_t table = std::uint64_t{h.e_phnum} * sizeof(phdr);
    if (!inside(h.e_phoff, table, size)) return past_end("the program header table", h.e_phoff, table, size);

    std::vector<phdr> ph(h.e_phnum);
    if (!read_at(fd, ph.data(), static_cast<std::size_t>(table), h.e_phoff, why)) return why;

    // What ld.so maps: every PT_LOAD's file bytes [p_offset, p_offset + p_filesz). A page of
    // them past the end of the file is mapped all the same, and touching it is SIGBUS.
    unsigned loads = 0;
    const phdr* dynamic = nullptr;
    for (std::size_t i = 0; i < ph.size(); ++i) {
        const phdr& p = ph[i];
        if (p.p_type == PT_DYNAMIC && dynamic == nullptr) dynamic = &p;
        if (p.p_type != PT_LOAD) continue;
        ++loads;
        const std::string name =
            "loadable segment " + std::to_string(loads) + " (program header " + std::to_string(i) + ")";
        if (p.p_filesz > p.p_memsz)
            return "not a valid ELF file: " + name + " has more file bytes (" + std::to_string(p.p_filesz) +
                   ") than memory bytes (" + std::to_string(p.p_memsz) + ")";
        if (!inside(p.p_offset, p.p_filesz, size)) return past_end(name, p.p_offset, p.p_filesz, size);
    }
    if (loads == 0) return "not a loadable shared library (no PT_LOAD segment)";
    if (dynamic == nullptr) return "not a shared library (no dynamic section, PT_DYNAMIC)";
    if (!inside(dynamic->p_offset, dynamic->p_filesz, size))
        return past_end("the dynamic section", dynamic->p_offset, dynamic->p_filesz, size);
    // ld.so reads the dynamic section from memory (its p_vaddr), not from the file: it must
    // lie in the file-backed part of a loadable segment.
    bool mapped = false;
    for (const phdr& p : ph) {
        if (p.p_type != PT_LOAD || dynamic->p_vaddr < p.p_vaddr) continue;
        const std::uint64_t at = dynamic->p_vaddr - p.p_vaddr;
        mapped = mapped || inside(at, dynamic->p_filesz, p.p_filesz);
    }
    if (!mapped) return "not a valid ELF file: the dynamic section is outside the loadable segments";
    return {};
}

std::string elf_problem(const std::filesystem::path& file)
{
    const plugin_file f(file);
    if (!f.problem().empty()) return f.problem();
    return elf_problem(f.fd(), f.size());
}

}  // namespace asiosmtpd::plugin
