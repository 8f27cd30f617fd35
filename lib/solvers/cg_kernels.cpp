#include <natgrad/core/threads.h>
#include <natgrad/solvers/detail/cg_kernels.h>

#include <atomic>

#ifdef NATGRAD_HAVE_OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <array>

namespace natgrad {
namespace detail {
namespace {

std::atomic<int> g_last_team{1};

// At most kMaxBlocks blocks of at least kMinBlock scalars (a multiple of 64, so every block starts with the
// vector's own alignment and Eigen peels it the same way). The partial sums live on the stack: no allocation.
constexpr Index kMinBlock = 16384;
constexpr int kMaxBlocks = 1024;

Index block_size(Index n) {
  const Index b = std::max<Index>(kMinBlock, (n + kMaxBlocks - 1) / kMaxBlocks);
  return (b + 63) / 64 * 64;
}

// Runs f(i0, len) on every block in parallel and returns the block results summed in block order.
template <typename F>
double blocked_sum(Index n, F f) {
  const Index bs = block_size(n);
  const int blocks = static_cast<int>((n + bs - 1) / bs);
  std::array<double, kMaxBlocks> partial;
#ifdef NATGRAD_HAVE_OPENMP
#pragma omp parallel num_threads(num_threads()) if (blocks > 1)
  {
#pragma omp single nowait
    g_last_team = omp_get_num_threads();
#pragma omp for schedule(static)
    for (int k = 0; k < blocks; ++k) {
      const Index i0 = k * bs;
      partial[static_cast<std::size_t>(k)] = f(i0, std::min(bs, n - i0));
    }
  }
#else
  for (int k = 0; k < blocks; ++k) {
    const Index i0 = k * bs;
    partial[static_cast<std::size_t>(k)] = f(i0, std::min(bs, n - i0));
  }
#endif
  double s = 0;
  for (int k = 0; k < blocks; ++k) s += partial[static_cast<std::size_t>(k)];
  return s;
}

}  // namespace

int cg_last_team_size() { return g_last_team.load(); }

template <typename Scalar>
double cg_dot(const Scalar* a, const Scalar* b, Index n) {
  return blocked_sum(n, [&](Index i0, Index len) {
    return double(ConstVecMap<Scalar>(a + i0, len).dot(ConstVecMap<Scalar>(b + i0, len)));
  });
}

template <typename Scalar>
double cg_update_residual(Scalar* r, const Scalar* Ap, Scalar alpha, Index n) {
  return blocked_sum(n, [&](Index i0, Index len) {
    VecMap<Scalar> rb(r + i0, len);
    rb -= alpha * ConstVecMap<Scalar>(Ap + i0, len);
    return double(rb.squaredNorm());  // the block is still in cache
  });
}

template <typename Scalar>
double cg_update_solution(Scalar* x, const Scalar* p, Scalar alpha, const Scalar* b, const Scalar* r,
                          Index n) {
  return blocked_sum(n, [&](Index i0, Index len) {
    VecMap<Scalar> xb(x + i0, len);
    xb += alpha * ConstVecMap<Scalar>(p + i0, len);
    return double(xb.dot(ConstVecMap<Scalar>(b + i0, len) + ConstVecMap<Scalar>(r + i0, len)));
  });
}

template <typename Scalar>
void cg_update_direction(Scalar* p, const Scalar* z, Scalar beta, Index n) {
  blocked_sum(n, [&](Index i0, Index len) {
    VecMap<Scalar> pb(p + i0, len);
    pb = ConstVecMap<Scalar>(z + i0, len) + beta * pb;
    return 0.0;
  });
}

template <typename Scalar>
void cg_copy(Scalar* dst, const Scalar* src, Index n) {
  blocked_sum(n, [&](Index i0, Index len) {
    std::copy(src + i0, src + i0 + len, dst + i0);
    return 0.0;
  });
}

#define NATGRAD_INSTANTIATE_CG_KERNELS(S)                                            \
  template double cg_dot<S>(const S*, const S*, Index);                              \
  template double cg_update_residual<S>(S*, const S*, S, Index);                     \
  template double cg_update_solution<S>(S*, const S*, S, const S*, const S*, Index); \
  template void cg_update_direction<S>(S*, const S*, S, Index);                      \
  template void cg_copy<S>(S*, const S*, Index);
NATGRAD_INSTANTIATE_CG_KERNELS(float)
NATGRAD_INSTANTIATE_CG_KERNELS(double)
#undef NATGRAD_INSTANTIATE_CG_KERNELS

}  // namespace detail
}  // namespace natgrad
