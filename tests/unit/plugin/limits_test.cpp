// SPDX-License-Identifier: Apache-2.0
// isolation/limits: where this process's cgroup2 cgroup is, and the control files' formats.
#include "plugin/isolation/limits.hpp"

#include <gtest/gtest.h>

namespace limits = asiosmtpd::plugin::isolation::limits;

namespace {

constexpr const char* hybrid_mountinfo =
    "25 30 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n"
    "26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw\n"
    "27 25 0:25 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory\n";

TEST(LimitsTest, UnifiedDirUnderTheCgroup2Mount)
{
    const auto dir = limits::unified_dir(
        "22 1 0:21 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
        "0::/system.slice/asiosmtpd.service\n");
    ASSERT_TRUE(dir);
    EXPECT_EQ(dir->string(), "/sys/fs/cgroup/system.slice/asiosmtpd.service");
}

TEST(LimitsTest, HybridHierarchyUsesTheUnifiedMount)
{
    const auto dir = limits::unified_dir(hybrid_mountinfo, "4:memory:/x\n1:name=systemd:/\n0::/\n");
    ASSERT_TRUE(dir);
    EXPECT_EQ(dir->string(), "/sys/fs/cgroup/unified");
}

TEST(LimitsTest, NoUnifiedEntryOrMount)
{
    EXPECT_FALSE(limits::unified_dir(hybrid_mountinfo, "4:memory:/x\n"));
    EXPECT_FALSE(
        limits::unified_dir("27 25 0:25 / /sys/fs/cgroup/memory rw shared:11 - cgroup cgroup rw,memory\n", "0::/\n"));
}

TEST(LimitsTest, MountOfASubtree)
{
    // A container sees the hierarchy from its own cgroup on; an escaped mount point is decoded.
    const char* info = "40 30 0:26 /docker/abc /sys/fs/my\\040cgroup rw - cgroup2 cgroup2 rw\n";
    const auto inside = limits::unified_dir(info, "0::/docker/abc/svc\n");
    ASSERT_TRUE(inside);
    EXPECT_EQ(inside->string(), "/sys/fs/my cgroup/svc");
    const auto root = limits::unified_dir(info, "0::/docker/abc\n");
    ASSERT_TRUE(root);
    EXPECT_EQ(root->string(), "/sys/fs/my cgroup");
    EXPECT_FALSE(limits::unified_dir(info, "0::/docker/abcdef\n"));
    EXPECT_FALSE(limits::unified_dir(info, "0::/../other\n"));
}

TEST(LimitsTest, KeyedValues)
{
    const char* events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 1\n";
    EXPECT_EQ(limits::keyed_value(events, "oom_kill"), 1u);
    EXPECT_EQ(limits::keyed_value(events, "oom"), 2u);
    EXPECT_EQ(limits::keyed_value(events, "max"), 12u);
    EXPECT_EQ(limits::keyed_value(events, "absent"), 0u);
    EXPECT_EQ(limits::keyed_value("populated 1\nfrozen 0\n", "populated"), 1u);
}

TEST(LimitsTest, OwnerPids)
{
    EXPECT_EQ(limits::owner_pid("asiosmtpd-plugin-1234-aBcDeF", "asiosmtpd-plugin-"), 1234);
    EXPECT_EQ(limits::owner_pid("asiosmtpd-77-plugins0-3", "asiosmtpd-"), 77);
    EXPECT_EQ(limits::owner_pid("asiosmtpd-plugin-aBcDeF", "asiosmtpd-plugin-"), 0);  // before pids were named
    EXPECT_EQ(limits::owner_pid("asiosmtpd-server", "asiosmtpd-"), 0);
    EXPECT_EQ(limits::owner_pid("asiosmtpd-12", "asiosmtpd-"), 0);
    EXPECT_EQ(limits::owner_pid("other-12-x", "asiosmtpd-"), 0);
}

TEST(LimitsTest, Words)
{
    EXPECT_TRUE(limits::has_word("cpuset cpu io memory hugetlb pids\n", "memory"));
    EXPECT_TRUE(limits::has_word("memory", "memory"));
    EXPECT_FALSE(limits::has_word("hugetlb\n", "memory"));
    EXPECT_FALSE(limits::has_word("memory_x cpu", "memory"));
    EXPECT_FALSE(limits::has_word("", "memory"));
}

}  // namespace
