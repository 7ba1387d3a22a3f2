// SPDX-License-Identifier: Apache-2.0
// The configuration reference stays true: docs/configuration.md documents every key the parser
// accepts (and no key it does not), and the default config, conf/asiosmtpd.yaml, parses and
// mentions only keys that exist (also in its commented-out lines).
#include "config/config.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

namespace asiosmtpd::config {
namespace {

namespace fs = std::filesystem;

const fs::path source_dir = fs::path(ASIOSMTPD_TEST_DATA_DIR).parent_path();

std::string read(const fs::path& p)
{
    std::ifstream in(p);
    EXPECT_TRUE(in) << "cannot read " << p;
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// The keys of the reference's tables: rows that start with "| `key` |".
std::set<std::string> documented_keys()
{
    std::set<std::string> keys;
    const std::string text = read(source_dir / "docs" / "configuration.md");
    const std::regex row(R"(^\| `([a-z0-9_.\[\]]+)` \|)", std::regex::multiline);
    for (auto it = std::sregex_iterator(text.begin(), text.end(), row); it != std::sregex_iterator(); ++it)
        keys.insert((*it)[1].str());
    return keys;
}

TEST(configuration_docs, every_key_the_parser_accepts_is_documented)
{
    const std::set<std::string> documented = documented_keys();
    ASSERT_GT(documented.size(), 30u);
    for (const std::string& key : known_keys())
        EXPECT_TRUE(documented.count(key)) << key << " is not in docs/configuration.md";
}

TEST(configuration_docs, every_documented_key_exists)
{
    const std::vector<std::string> known = known_keys();
    for (const std::string& key : documented_keys())
        EXPECT_NE(std::find(known.begin(), known.end(), key), known.end())
            << "docs/configuration.md documents " << key << ", which the parser does not accept";
}

TEST(default_config, parses_and_names_only_existing_keys)
{
    const fs::path file = source_dir / "conf" / "asiosmtpd.yaml";
    EXPECT_NO_THROW((void)load_file(file));
    // Every "key:" of the file, commented out or not, is the last part of a known key.
    std::set<std::string> leaves;
    for (const std::string& key : known_keys()) leaves.insert(key.substr(key.find_last_of(".]") + 1));
    leaves.insert("stream");  // the debugging plugin's own config key
    const std::regex key_line(R"(^\s*#?\s*([a-z0-9_]+):(\s|$))");
    std::istringstream lines(read(file));
    std::string line;
    int seen = 0;
    while (std::getline(lines, line)) {
        std::smatch m;
        if (!std::regex_search(line, m, key_line)) continue;
        ++seen;
        EXPECT_TRUE(leaves.count(m[1].str())) << "conf/asiosmtpd.yaml mentions an unknown key: " << line;
    }
    EXPECT_GT(seen, 30);
}

}  // namespace
}  // namespace asiosmtpd::config
