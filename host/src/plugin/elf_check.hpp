// SPDX-License-Identifier: Apache-2.0
// plugin: the structural check of a plugin file before dlopen(). ld.so trusts the file it is
// handed: a program header that points past the end of the file gets mmap()ed all the same,
// and the first touch of such a page is SIGBUS, which ends the whole server (a plugin copied
// half-way, a deploy interrupted). So before dlopen() the loader looks at what ld.so will
// map: a regular file, an ELF shared object for this machine, every loadable segment and the
// dynamic section inside the file. This is not a defence against a crafted file (a plugin is
// native code running in our process: its constructor can do worse); it turns an accidental
// broken file into a refusal with a reason. Standard library, <elf.h> and POSIX calls only.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace asiosmtpd::plugin {

/// A plugin file opened for reading, or why it cannot be: missing, not readable, or not a
/// regular file (a directory, a FIFO, a device, a socket). Opened with O_NONBLOCK (a FIFO
/// with no writer does not block the open) and judged by fstat() of the descriptor itself,
/// so a file swapped after a stat() cannot get past. Closes its descriptor.
class plugin_file {
public:
    explicit plugin_file(const std::filesystem::path& file);
    plugin_file(const plugin_file&) = delete;
    plugin_file& operator=(const plugin_file&) = delete;
    ~plugin_file();

    /// "" when open; otherwise the reason ("no such file", "not a regular file (a FIFO)", ...).
    [[nodiscard]] const std::string& problem() const noexcept { return problem_; }
    [[nodiscard]] int fd() const noexcept { return fd_; }
    /// The size fstat() gave when it was opened.
    [[nodiscard]] std::uint64_t size() const noexcept { return size_; }

private:
    int fd_ = -1;
    std::uint64_t size_ = 0;
    std::string problem_;
};

/// Why the ELF file open on `fd` (of `size` bytes) cannot be handed to dlopen() on this host,
/// or "" when it can: not an ELF file, truncated (shorter than its header, its program
/// headers, a loadable segment or its dynamic section: what ld.so would map past the end of
/// the file), built for another class, byte order or machine, not a shared object (e_type),
/// nonsense program header sizes or counts. Only the ELF and program headers are read.
[[nodiscard]] std::string elf_problem(int fd, std::uint64_t size);

/// The same for a file: opens it as plugin_file does (refusing anything but a regular file
/// first), then checks the ELF structure.
[[nodiscard]] std::string elf_problem(const std::filesystem::path& file);

}  // namespace asiosmtpd::plugin
