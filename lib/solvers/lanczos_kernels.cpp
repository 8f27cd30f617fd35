#include "lanczos_kernels.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include "blocks.h"

namespace natgrad {
namespace detail {
namespace {
std::atomic<int> g_last_team{1};
}  // namespace

int basis_last_team_size() { return g_last_team.load(); }

// Within a block, Eigen's GEMV sums runs of kRun rows in B; the runs are added in double.
constexpr Index kRun = 2048;

template <typename B>
void basis_trans_product(const B* V, Index ld, Index n, Index cols, const B* y, B* res) {
  const int blocks = block_count(n);
  // One partial Vᵀy per block (at most 1024 × cols doubles), summed below in block order.
  std::vector<double> partial(static_cast<std::size_t>(blocks) * static_cast<std::size_t>(cols));
  g_last_team = for_each_block(n, [&](int k, Index i0, Index len) {
    VecMap<double> p(partial.data() + static_cast<std::size_t>(k) * static_cast<std::size_t>(cols), cols);
    p.setZero();
    Vec<B> run(cols);
    for (Index r = 0; r < len; r += kRun) {
      const Index m = std::min(kRun, len - r);
      const Eigen::Map<const Mat<B>, 0, Eigen::OuterStride<>> Vb(V + i0 + r, m, cols,
                                                                 Eigen::OuterStride<>(ld));
      run.noalias() = Vb.transpose() * ConstVecMap<B>(y + i0 + r, m);
      p += run.template cast<double>();
    }
  });
  Vec<double> sum = Vec<double>::Zero(cols);
  for (int k = 0; k < blocks; ++k)
    sum += ConstVecMap<double>(partial.data() + static_cast<std::size_t>(k) * static_cast<std::size_t>(cols),
                               cols);
  VecMap<B>(res, cols) = sum.cast<B>();
}

template void basis_trans_product<float>(const float*, Index, Index, Index, const float*, float*);
template void basis_trans_product<double>(const double*, Index, Index, Index, const double*, double*);

}  // namespace detail
}  // namespace natgrad
