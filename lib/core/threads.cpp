#include <natgrad/core/threads.h>

#include <atomic>
#include <stdexcept>
#include <string>

#include "core/fail.h"

#ifdef NATGRAD_HAVE_OPENMP
#include <omp.h>
#endif

namespace natgrad {

namespace {
std::atomic<int> g_threads{0};  // 0: not set, use OpenMP's default
}  // namespace

int available_cores() {
#ifdef NATGRAD_HAVE_OPENMP
  return omp_get_num_procs();
#else
  return 1;
#endif
}

void set_num_threads(int threads) {
  if (threads < 0)
    detail::fail("the thread count must be >= 1, or 0 for all cores; got " + std::to_string(threads));
  g_threads = threads == 0 ? available_cores() : threads;
}

int num_threads() {
#ifdef NATGRAD_HAVE_OPENMP
  const int t = g_threads.load();
  return t > 0 ? t : omp_get_max_threads();
#else
  return 1;
#endif
}

int resolve_threads(int requested) {
#ifdef NATGRAD_HAVE_OPENMP
  return requested > 0 ? requested : num_threads();
#else
  (void)requested;
  return 1;
#endif
}

}  // namespace natgrad
