// SPDX-License-Identifier: Apache-2.0
// Files on disk for the delivery plugins' tests (delivery_test.cpp, maildir_test.cpp, mbox_test.cpp): a
// temporary folder removed with its contents, a folder's entries, a file's bytes.
#ifndef ASIOSMTPD_TESTS_UNIT_PLUGINS_FILE_HELPERS_HPP
#define ASIOSMTPD_TESTS_UNIT_PLUGINS_FILE_HELPERS_HPP

#include <dirent.h>
#include <stdlib.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace asiosmtpd::test {

/// A new folder under /tmp, removed with everything in it by the destructor.
struct temp_dir {
    temp_dir()
    {
        char tmpl[] = "/tmp/asiosmtpd-unit-XXXXXX";
        path = ::mkdtemp(tmpl);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    ~temp_dir() { std::system(("rm -rf '" + path + "'").c_str()); }
    std::string path;
};

/// The paths of the entries of `dir` but the dot files (in readdir order); none if unreadable.
inline std::vector<std::string> list(const std::string& dir)
{
    std::vector<std::string> out;
    if (DIR* d = ::opendir(dir.c_str())) {
        while (dirent* e = ::readdir(d))
            if (e->d_name[0] != '.') out.push_back(dir + "/" + e->d_name);
        ::closedir(d);
    }
    return out;
}

/// The bytes of `file` ("" if unreadable).
inline std::string slurp(const std::string& file)
{
    std::ifstream in(file, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

}  // namespace asiosmtpd::test

#endif  // ASIOSMTPD_TESTS_UNIT_PLUGINS_FILE_HELPERS_HPP
