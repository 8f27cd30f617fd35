// The command line's keep_freed_memory (apps/memory_reuse.h): a block of a K-FAC factor's size comes from the
// heap, not a fresh mapping, and stays with the process once freed.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "memory_reuse.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#define NATGRAD_TEST_SANITIZED_ALLOCATOR 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define NATGRAD_TEST_SANITIZED_ALLOCATOR 1
#endif

TEST(MemoryReuse, FreedBlocksOfFactorSizeStayMappedInTheHeap) {
#if defined(NATGRAD_TEST_SANITIZED_ALLOCATOR)
  GTEST_SKIP() << "the sanitizer's allocator replaces glibc's: mallopt and mallinfo2 do not apply";
#elif !defined(__GLIBC__)
  GTEST_SKIP() << "not glibc";
#else
  ASSERT_TRUE(natgrad::cli::keep_freed_memory());
  constexpr std::size_t kBytes = 16u << 20;  // the autoencoder's 1001-wide A in double is 8 MB
  const struct mallinfo2 before = mallinfo2();
  char* p = static_cast<char*>(std::malloc(kBytes));
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, kBytes);
  const struct mallinfo2 held = mallinfo2();
  EXPECT_EQ(held.hblkhd, before.hblkhd) << "the block was mapped on its own (glibc's default above 128 KiB)";
  EXPECT_GE(held.arena, before.arena + kBytes) << "the heap did not grow by the block";
  std::free(p);
  const struct mallinfo2 after = mallinfo2();
  EXPECT_GE(after.arena, before.arena + kBytes) << "the heap was trimmed: the block went back to the system";
  EXPECT_GE(after.fordblks, before.fordblks + kBytes) << "the freed block is not free in the heap";
#endif
}
