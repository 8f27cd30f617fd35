// keep_freed_memory (memory_reuse.h): glibc's mallopt, called once at the start of the command line.
#include "memory_reuse.h"

#include <cstdlib>  // (first: it defines __GLIBC__ where glibc is the C library)

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace natgrad {
namespace cli {

bool keep_freed_memory() {
#if defined(__GLIBC__)
  constexpr int kMmapThreshold = 32 << 20;  // glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit systems)
  constexpr int kTrimThreshold = 1 << 30;
  const bool mapped = mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1;
  const bool trimmed = mallopt(M_TRIM_THRESHOLD, kTrimThreshold) == 1;
  return mapped && trimmed;
#else
  return false;
#endif
}

}  // namespace cli
}  // namespace natgrad
