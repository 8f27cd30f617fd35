#include "cg_kernels.h"

#include <algorithm>
#include <array>
#include <atomic>

#include "blocks.h"

namespace natgrad {
namespace detail {
namespace {

std::atomic<int> g_last_team{1};

// Runs f(i0, len) on every block (blocks.h) in parallel and returns the block results summed in block order.
// The partial sums live on the stack: no allocation.
template <typename F>
double blocked_sum(Index n, F f) {
  std::array<double, kMaxBlocks> partial;
  g_last_team = for_each_block(
      n, [&](int k, Index i0, Index len) { partial[static_cast<std::size_t>(k)] = f(i0, len); });
  double s = 0;
  for (int k = 0, blocks = block_count(n); k < blocks; ++k) s += partial[static_cast<std::size_t>(k)];
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
