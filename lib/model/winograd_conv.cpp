// Winograd F(m×m, 3×3) convolution passes (see winograd_conv.h), for tiles of m = 2 and m = 4 (α = m + 2).
//
// Matrix ξ = α·i + j of the transform domain holds entry (i, j) of every tile's α×α transform; its row k·T + t
// is tile t of the block's sample k. The transforms are unit-stride loops over the tiles: the padded input is
// split into polyphase planes in which entry (r, s) of every tile's patch sits at the same offset from the
// tile's index (split() below), and the small matrix products inside each iteration are unrolled at compile
// time over the transform matrices' nonzero entries.
#include "model/winograd_conv.h"

#include <algorithm>
#include <type_traits>
#include <utility>

#include "core/check.h"
#include "core/gemm.h"
#include "core/lane_sums.h"
#include "model/phase_rows.h"

// Each transform loop's iterations touch distinct entries: let the compiler vectorize without alias checks
// (too many streams for it to prove that itself). The fixed-size loops inside unroll completely.
#if defined(__clang__)
#define NATGRAD_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#define NATGRAD_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define NATGRAD_IVDEP _Pragma("GCC ivdep")
#define NATGRAD_UNROLL _Pragma("GCC unroll 16")
#else
#define NATGRAD_IVDEP
#define NATGRAD_UNROLL
#endif

namespace natgrad {
namespace detail {

namespace {

// Rows of the transform-domain products a block aims for (a 14×14 map has 49 tiles of 2×2 per sample, a 28×28
// one 196): on the benchmark ResNet (AMD EPYC Zen 4, 2 threads, 2×2 tiles) 64, 128, 256 and 512 rows gave
// products of 348, 331, 341 and 359 ms — small blocks keep V and M in cache, and a product needs some rows to
// run at speed.
constexpr Index kTargetRows = 128;
Index round16(Index n) { return (n + 15) / 16 * 16; }

// The transform matrices (Lavin & Gray 2016): interpolation points 0, ±1 (m = 2) and 0, ±1, ±2 (m = 4), and ∞.
template <int m>
struct Transforms;
template <>
struct Transforms<2> {
  static constexpr double Bt[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  static constexpr double At[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
};
template <>
struct Transforms<4> {
  static constexpr double Bt[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                      {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
  static constexpr double G[6][3] = {{1.0 / 4, 0, 0},
                                     {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                     {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                     {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                     {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                     {0, 0, 1}};
  static constexpr double At[4][6] = {
      {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
};

// One term w·x of a transform: multiplications by ±1 are dropped.
template <typename Scalar>
inline Scalar term(double w, Scalar x) {
  return w == 1 ? x : w == -1 ? -x : Scalar(w) * x;
}

// out[i][j] = Σ_k c(i, k) · in[k][j] over the k with c(i, k) ≠ 0 (c a compile-time constant after inlining,
// so only those terms are emitted).
template <int R, int K, int N, typename Scalar, typename Coef>
inline void mix_rows(Coef c, const Scalar (&in)[K][N], Scalar (&out)[R][N]) {
  NATGRAD_UNROLL
  for (int i = 0; i < R; ++i) {
    NATGRAD_UNROLL
    for (int j = 0; j < N; ++j) {
      Scalar acc = Scalar(0);
      bool first = true;
      NATGRAD_UNROLL
      for (int k = 0; k < K; ++k) {
        if (c(i, k) == 0) continue;
        acc = first ? term(c(i, k), in[k][j]) : acc + term(c(i, k), in[k][j]);
        first = false;
      }
      out[i][j] = acc;
    }
  }
}
// out[i][j] = Σ_k in[i][k] · c(j, k) over the k with c(j, k) ≠ 0.
template <int R, int K, int N, typename Scalar, typename Coef>
inline void mix_cols(const Scalar (&in)[R][K], Coef c, Scalar (&out)[R][N]) {
  NATGRAD_UNROLL
  for (int i = 0; i < R; ++i) {
    NATGRAD_UNROLL
    for (int j = 0; j < N; ++j) {
      Scalar acc = Scalar(0);
      bool first = true;
      NATGRAD_UNROLL
      for (int k = 0; k < K; ++k) {
        if (c(j, k) == 0) continue;
        acc = first ? term(c(j, k), in[i][k]) : acc + term(c(j, k), in[i][k]);
        first = false;
      }
      out[i][j] = acc;
    }
  }
}

// f(std::integral_constant<int, i>) for i = 0 … N − 1: a loop whose index is a compile-time constant.
template <int... I, typename F>
inline void for_each_impl(std::integer_sequence<int, I...>, F&& f) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
inline void for_each(F&& f) {
  for_each_impl(std::make_integer_sequence<int, N>{}, f);
}

// The transforms of n tiles at once, one unit-stride loop over the tiles: out(t) = L in(t) Rᵀ, in(t) an R × K
// block with entry (i, j) at src[(K·i + j)·ss + t], out(t) an R' × K' block stored at dst[(K'·i + j)·ds + t], and
// L (R' × R) and R (K' × K) the coefficient functions left(i, r) and right(j, k).
template <int Rout, int Kout, int R, int K, typename Scalar, typename Left, typename Right>
inline void sandwich(Index n, const Scalar* src, Index ss, Left left, Right right, Scalar* dst, Index ds) {
  NATGRAD_IVDEP
  for (Index t = 0; t < n; ++t) {
    Scalar in[R][K], mid[Rout][K], out[Rout][Kout];
    NATGRAD_UNROLL
    for (int i = 0; i < R; ++i) {
      NATGRAD_UNROLL
      for (int j = 0; j < K; ++j) in[i][j] = src[(K * i + j) * ss + t];
    }
    mix_rows<Rout, R, K>(left, in, mid);
    mix_cols<Rout, K, Kout>(mid, right, out);
    NATGRAD_UNROLL
    for (int i = 0; i < Rout; ++i) {
      NATGRAD_UNROLL
      for (int j = 0; j < Kout; ++j) dst[(Kout * i + j) * ds + t] = out[i][j];
    }
  }
}

template <typename Scalar, int m>
class WinogradTiles final : public WinogradConv3x3<Scalar> {
  using Tr = Transforms<m>;
  static constexpr int a = m + 2;          // the transform's size
  static constexpr Index kXi = a * a;      // positions of the transform domain
  static constexpr Index kPhases = m * m;  // polyphase planes of one map

 public:
  WinogradTiles(Index C, Index O, Index H, Index W, Index ph, Index pw, Index Ho, Index Wo)
      : C_(C), O_(O), H_(H), W_(W), ph_(ph), pw_(pw), Ho_(Ho), Wo_(Wo) {
    NATGRAD_CHECK(Ho_ == H_ + 2 * ph_ - 2 && Wo_ == W_ + 2 * pw_ - 2 && Ho_ > 0 && Wo_ > 0);
    TH_ = (Ho_ + m - 1) / m;
    TW_ = (Wo_ + m - 1) / m;
    T_ = TH_ * TW_;
  }

  Index tile() const override { return m; }
  Index scratch_size(Index ncols) const override { return layout(block(ncols), 2).end; }

  void forward(const Scalar* w, const Scalar* bias, const Scalar* x, Index n, Scalar* y, Scalar* s) const override {
    const Index nb = block(n);
    transform_weights(w, 0, C_, s);
    for (Index n0 = 0; n0 < n; n0 += nb) {
      const Index b = std::min(nb, n - n0);
      const Layout L = layout(b, 1);
      input_transform(x + n0 * C_ * H_ * W_, b, 0, L.rows, L.rows * C_, s + L.v, s + L.plane);
      products(L, C_, s);
      output_transform(s + L.mo, b, L.rows, L.rows * O_, bias, y + n0 * O_ * Ho_ * Wo_, s + L.plane);
    }
  }

  void jvp(const Scalar* w, const Scalar* dw, const Scalar* dbias, const Scalar* x, const Scalar* dx, Index n,
           Scalar* dy, Scalar* s) const override {
    const Index width = dx ? 2 : 1, nb = block(n);
    // [U(dw); U(w)], 2C × O per ξ (U(dw) alone without dx); U sits at offset 0 for every block size.
    transform_weights(dw, 0, width * C_, s);
    if (dx) transform_weights(w, C_, width * C_, s);
    for (Index n0 = 0; n0 < n; n0 += nb) {
      const Index b = std::min(nb, n - n0);
      const Layout L = layout(b, width);
      const Index xs = L.rows * width * C_;
      input_transform(x + n0 * C_ * H_ * W_, b, 0, L.rows, xs, s + L.v, s + L.plane);
      if (dx) input_transform(dx + n0 * C_ * H_ * W_, b, C_, L.rows, xs, s + L.v, s + L.plane);
      products(L, width * C_, s);
      output_transform(s + L.mo, b, L.rows, L.rows * O_, dbias, dy + n0 * O_ * Ho_ * Wo_, s + L.plane);
    }
  }

  void vjp(const Scalar* w, const Scalar* x, const Scalar* gy, Index n, Scalar* gx, Scalar* gw, Scalar* gbias,
           Scalar* s) const override {
    const Index nb = block(n);
    const Layout L0 = layout(nb, 1);
    if (gx) transform_weights(w, 0, C_, s + L0.u);
    if (gw) std::fill(s + L0.z, s + L0.z + kXi * wstride(C_), Scalar(0));
    for (Index n0 = 0; n0 < n; n0 += nb) {
      const Index b = std::min(nb, n - n0);
      const Layout L = layout(b, 1);
      const Index vs = L.rows * C_, ys = L.rows * O_;
      output_adjoint(gy + n0 * O_ * Ho_ * Wo_, b, L.rows, ys, s + L.mo, s + L.plane);
      if (gw) {  // Z_ξ += V_ξᵀ Ŷ_ξ
        input_transform(x + n0 * C_ * H_ * W_, b, 0, L.rows, vs, s + L.v, s + L.plane);
        for (Index q = 0; q < kXi; ++q)
          gemm(C_, O_, L.rows, row_major<Scalar>(s + L.v + q * vs, L.rows),
               col_major<Scalar>(s + L.mo + q * ys, L.rows), s + L.z + q * wstride(C_), C_, true, s + L.pack);
      }
      if (gx) {  // X_ξ = Ŷ_ξ U_ξᵀ (into V's space), then the input transform's adjoint
        for (Index q = 0; q < kXi; ++q)
          gemm(L.rows, C_, O_, col_major<Scalar>(s + L.mo + q * ys, L.rows),
               row_major<Scalar>(s + L.u + q * wstride(C_), C_), s + L.v + q * vs, L.rows, false, s + L.pack);
        input_adjoint(s + L.v, b, L.rows, vs, gx + n0 * C_ * H_ * W_, s + L.plane);
      }
    }
    if (gw) {
      weight_adjoint(s + L0.z, gw);
      if (gbias)
        for (Index k = 0; k < n; ++k)
          for (Index o = 0; o < O_; ++o) {
            const Scalar* g = gy + (k * O_ + o) * Ho_ * Wo_;
            Scalar sum;
            lane_sums<1>(Ho_ * Wo_, [&](Index p, Scalar* t) { t[0] = g[p]; }, &sum);
            gbias[o] += sum;
          }
    }
  }

 private:
  Index block(Index ncols) const {
    return std::clamp<Index>((kTargetRows + T_ - 1) / T_, 1, std::max<Index>(ncols, 1));
  }
  // The distance between the α² matrices of U and Z (depth × O each): padded by 16 scalars, because a
  // power-of-two stride (2C·O = 2048 floats, 8 KiB) puts the α² entries of one weight in the same cache set.
  Index wstride(Index depth) const { return depth * O_ + 16; }
  // Scalars of one polyphase plane: (TH + 1) × TW, rounded up.
  Index phase_size() const { return round16((TH_ + 1) * TW_); }

  // The scratch layout of a block of b samples with `width` stacked input tensors (2 for the R-op).
  struct Layout {
    Index rows;       // b·T, the rows of every transform-domain matrix
    Index u, z;       // U (α² × width·C × O) and Z (α² × C × O, backprop): the same offsets for every b
    Index v, mo;      // V (α² × rows × width·C), M or Ŷ (α² × rows × O)
    Index plane;      // the polyphase planes and their shifted copies, then α² planes of T (input_adjoint)
    Index pack, end;  // the GEMM packing space, and the total
  };
  Layout layout(Index b, Index width) const {
    Layout L;
    L.rows = b * T_;
    const Index wc = width * C_;
    L.u = 0;
    L.z = L.u + round16(kXi * wstride(wc));
    L.v = L.z + round16(kXi * wstride(C_));
    L.mo = L.v + round16(kXi * L.rows * wc);
    L.plane = L.mo + round16(kXi * L.rows * O_);
    L.pack = L.plane + round16(2 * kPhases * phase_size() + kXi * T_);
    Index pack = 0;
    for (Index c = 1; c <= b; ++c) {  // both depths: Eigen's blocking is not monotone in the sizes
      const Index r = c * T_;
      pack = std::max({pack, gemm_pack_size<Scalar>(r, O_, C_), gemm_pack_size<Scalar>(r, O_, 2 * C_),
                       gemm_pack_size<Scalar>(C_, O_, r), gemm_pack_size<Scalar>(r, C_, O_)});
    }
    L.end = L.pack + pack;
    return L;
  }

  // U_ξ(c0 + c, o) = (G w_oc Gᵀ)(i, j): column-major (ldu × O), matrices ldu·O apart.
  void transform_weights(const Scalar* w, Index c0, Index ldu, Scalar* U) const {
    const Index xs = wstride(ldu);
    for (Index o = 0; o < O_; ++o) {
      const Scalar* g = w + o * C_ * 9;
      Scalar* dst = U + c0 + o * ldu;
      NATGRAD_IVDEP
      for (Index c = 0; c < C_; ++c) {  // unit-stride stores along c
        Scalar in[3][3], r[a][3], u[a][a];
        NATGRAD_UNROLL
        for (int i = 0; i < 3; ++i) {
          NATGRAD_UNROLL
          for (int j = 0; j < 3; ++j) in[i][j] = g[c * 9 + 3 * i + j];
        }
        mix_rows<a, 3, 3>([](int i, int k) { return Tr::G[i][k]; }, in, r);
        mix_cols<a, 3, a>(r, [](int j, int k) { return Tr::G[j][k]; }, u);
        NATGRAD_UNROLL
        for (int i = 0; i < a; ++i) {
          NATGRAD_UNROLL
          for (int j = 0; j < a; ++j) dst[(a * i + j) * xs + c] = u[i][j];
        }
      }
    }
  }

  // gw_oc += Gᵀ Z_oc G, Z_ξ column-major C × O: the adjoint of transform_weights.
  void weight_adjoint(const Scalar* Z, Scalar* gw) const {
    const Index xs = wstride(C_);
    for (Index o = 0; o < O_; ++o)
      for (Index c = 0; c < C_; ++c) {
        Scalar z[a][a], f[3][a], g[3][3];
        for (int i = 0; i < a; ++i)
          for (int j = 0; j < a; ++j) z[i][j] = Z[(a * i + j) * xs + c + o * C_];
        mix_rows<3, a, a>([](int i, int k) { return Tr::G[k][i]; }, z, f);
        mix_cols<3, a, 3>(f, [](int j, int k) { return Tr::G[k][j]; }, g);
        Scalar* dst = gw + (o * C_ + c) * 9;
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) dst[3 * i + j] += g[i][j];
      }
  }

  // Where a row's columns go (the P⁰ planes, `stride` apart): column m·k + e is entry k of phase (e + ow) mod m
  // at offset ⌊(e + ow)/m⌋, for the k inside the map and below wide column TW.
  PhaseColumns<m> phase_columns(Index w, Index ow, Index stride) const {
    PhaseColumns<m> pc;
    for (Index e = 0; e < m; ++e) {
      const Index q = (e + ow) % m, base = (e + ow) / m;
      pc.dst[e] = q * stride + base;
      pc.hi[e] = std::max<Index>(0, std::min(w > e ? (w - e + m - 1) / m : 0, TW_ - base));
    }
    return pc;
  }

  // The padded map split into polyphase planes: P^σ_pq(u, v) = x(m·u + p − oh, m·(v + σ) + q − ow) for σ = 0, 1
  // (the second a copy shifted by one tile column), each (TH + 1) × TW; plane σ·m² + p·m + q. Entry (r, s) of
  // tile t's α×α patch is then P^⌊s/m⌋_{r mod m, s mod m}(t + ⌊r/m⌋·TW): the same offset for every tile. split()
  // writes the map's entries only: the planes are zeroed once per call, and the padding stays zero from one map
  // to the next. A row's columns go to their phases with to_phases (phase_rows.h); P¹ is then P⁰ moved by one
  // entry, one unit-stride copy per plane, with the last column of each row (wide column TW, which P⁰ does not
  // hold) set from the map.
  void split(const Scalar* x, Index h, Index w, Index oh, Index ow, bool shifted, Scalar* P) const {
    const Index pp = phase_size();
    const PhaseColumns<m> pc = phase_columns(w, ow, pp);
    for (Index i = 0; i < h; ++i) {
      const Index pi = i + oh;
      to_phases(pc, x + i * w, P + (pi % m) * m * pp + (pi / m) * TW_);
    }
    if (!shifted) return;
    const Index len = (TH_ + 1) * TW_;
    for (Index p = 0; p < m; ++p)
      for (Index q = 0; q < m; ++q) {
        const Scalar* from = P + (p * m + q) * pp;
        Scalar* to = P + (kPhases + p * m + q) * pp;
        NATGRAD_IVDEP
        for (Index d = 0; d + 1 < len; ++d) to[d] = from[d + 1];
        const Index j = m * TW_ + q - ow;
        for (Index u = 0; u <= TH_; ++u) {
          const Index i = m * u + p - oh;
          to[u * TW_ + TW_ - 1] = i >= 0 && i < h && j >= 0 && j < w ? x[i * w + j] : Scalar(0);
        }
      }
  }

  // V_ξ(k·T + t, c0 + c) = (Bᵀ d_c(t) B)(i, j) for the b samples of x: column-major, leading dimension rows,
  // matrices xs apart. Two passes per map, each a loop over the tiles with a handful of values live (one pass
  // holding all α² entries of a tile spills registers for α = 6): Bᵀ d column by column into α² planes of T,
  // then (Bᵀ d) B row by row into V.
  void input_transform(const Scalar* x, Index b, Index c0, Index rows, Index xs, Scalar* V, Scalar* plane) const {
    const Index pp = phase_size(), n = T_, tw = TW_;
    Scalar* E = plane + 2 * kPhases * pp;
    std::fill(plane, plane + 2 * kPhases * pp, Scalar(0));
    for (Index k = 0; k < b; ++k)
      for (Index c = 0; c < C_; ++c) {
        split(x + (k * C_ + c) * H_ * W_, H_, W_, ph_, pw_, true, plane);
        for_each<a>([&](auto S) {  // column s of Bᵀ d
          constexpr int s = decltype(S)::value;
          const Scalar* src[a];
          for (int r = 0; r < a; ++r) src[r] = plane + ((s / m) * kPhases + (r % m) * m + s % m) * pp + (r / m) * tw;
          NATGRAD_IVDEP
          for (Index t = 0; t < n; ++t) {
            Scalar d[a][1], e[a][1];
            NATGRAD_UNROLL
            for (int r = 0; r < a; ++r) d[r][0] = src[r][t];
            mix_rows<a, a, 1>([](int i, int q) { return Tr::Bt[i][q]; }, d, e);
            NATGRAD_UNROLL
            for (int i = 0; i < a; ++i) E[(a * i + s) * n + t] = e[i][0];
          }
        });
        Scalar* v = V + (c0 + c) * rows + k * T_;
        for_each<a>([&](auto I) {  // row i of (Bᵀ d) B
          constexpr int i = decltype(I)::value;
          const Scalar* src = E + a * i * n;
          Scalar* dst = v + a * i * xs;
          NATGRAD_IVDEP
          for (Index t = 0; t < n; ++t) {
            Scalar e[1][a], out[1][a];
            NATGRAD_UNROLL
            for (int j = 0; j < a; ++j) e[0][j] = src[j * n + t];
            mix_cols<1, a, a>(e, [](int j, int q) { return Tr::Bt[j][q]; }, out);
            NATGRAD_UNROLL
            for (int j = 0; j < a; ++j) dst[j * xs + t] = out[0][j];
          }
        });
      }
  }

  // y = Aᵀ M A per tile, cropped to Ho × Wo, plus the bias; M's matrices are ms apart with leading dimension
  // rows. The m² outputs of every tile go to m² polyphase planes (unit stride), then are interleaved into y.
  void output_transform(const Scalar* M, Index b, Index rows, Index ms, const Scalar* bias, Scalar* y,
                        Scalar* plane) const {
    const Index n = T_;
    const PhaseColumns<m> pc = phase_columns(Wo_, 0, n);
    for (Index k = 0; k < b; ++k)
      for (Index o = 0; o < O_; ++o) {
        const auto At = [](int i, int q) { return Tr::At[i][q]; };
        sandwich<m, m, a, a>(n, M + o * rows + k * T_, ms, At, At, plane, n);
        Scalar* dst = y + (k * O_ + o) * Ho_ * Wo_;
        const Scalar add = bias ? bias[o] : Scalar(0);
        for (Index i = 0; i < Ho_; ++i) from_phases(pc, plane + (i % m) * m * n + (i / m) * TW_, add, dst + i * Wo_);
      }
  }

  // Ŷ = A gy Aᵀ per tile (gy zero beyond Ho × Wo): the adjoint of output_transform.
  void output_adjoint(const Scalar* gy, Index b, Index rows, Index ys, Scalar* Yhat, Scalar* plane) const {
    const Index pp = phase_size(), n = T_;
    std::fill(plane, plane + kPhases * pp, Scalar(0));
    for (Index k = 0; k < b; ++k)
      for (Index o = 0; o < O_; ++o) {
        split(gy + (k * O_ + o) * Ho_ * Wo_, Ho_, Wo_, 0, 0, false, plane);
        const auto A = [](int i, int r) { return Tr::At[r][i]; };
        sandwich<a, a, m, m>(n, plane, pp, A, A, Yhat + o * rows + k * T_, ys);
      }
  }

  // gx = Σ_t B X(t) Bᵀ, each tile added at its place, then cropped: the adjoint of input_transform. The α²
  // entries of every tile go to α² planes first (unit stride), which are then added into the polyphase planes
  // one after another (tiles overlap); X's matrices are xs apart with leading dimension rows; gx is set.
  void input_adjoint(const Scalar* X, Index b, Index rows, Index xs, Scalar* gx, Scalar* plane) const {
    const Index pp = phase_size(), n = T_;
    Scalar* E = plane + 2 * kPhases * pp;
    for (Index k = 0; k < b; ++k)
      for (Index c = 0; c < C_; ++c) {
        const auto B = [](int i, int r) { return Tr::Bt[r][i]; };
        sandwich<a, a, a, a>(n, X + c * rows + k * T_, xs, B, B, E, n);
        std::fill(plane, plane + 2 * kPhases * pp, Scalar(0));
        for (Index r = 0; r < a; ++r)
          for (Index s = 0; s < a; ++s) {
            Scalar* dst = plane + ((s / m) * kPhases + (r % m) * m + s % m) * pp + (r / m) * TW_;
            const Scalar* src = E + (a * r + s) * n;
            NATGRAD_IVDEP
            for (Index t = 0; t < n; ++t) dst[t] += src[t];
          }
        // Wide column V of a phase is P⁰(V) + P¹(V − 1): fold P¹ into P⁰ (one unit-stride pass per plane, the
        // last column of each P¹ row, wide column TW, held aside), then read the rows back out of the phases.
        const Index len = (TH_ + 1) * TW_;
        for (Index q = 0; q < kPhases; ++q) {
          Scalar* p0 = plane + q * pp;
          Scalar* p1 = p0 + kPhases * pp;
          Scalar* held = E + q * (TH_ + 1);
          for (Index u = 0; u <= TH_; ++u) {
            held[u] = p1[u * TW_ + TW_ - 1];
            p1[u * TW_ + TW_ - 1] = Scalar(0);
          }
          NATGRAD_IVDEP
          for (Index d = 0; d + 1 < len; ++d) p0[d + 1] += p1[d];
        }
        Scalar* out = gx + (k * C_ + c) * H_ * W_;
        const PhaseColumns<m> pc = phase_columns(W_, pw_, pp);
        for (Index i = 0; i < H_; ++i) {
          const Index pi = i + ph_;
          from_phases(pc, plane + (pi % m) * m * pp + (pi / m) * TW_, Scalar(0), out + i * W_);
          for (Index e = 0; e < m; ++e) {  // the column at wide column TW, if the map has it
            const Index j = m * (TW_ - (e + pw_) / m) + e;
            if (j < W_ && (j + pw_) / m == TW_) out[i * W_ + j] = E[((pi % m) * m + (e + pw_) % m) * (TH_ + 1) + pi / m];
          }
        }
      }
  }

  // M_ξ = V_ξ U_ξ for the α² ξ, V_ξ rows × depth, U_ξ depth × O.
  void products(const Layout& L, Index depth, Scalar* s) const {
    for (Index x = 0; x < kXi; ++x)
      gemm(L.rows, O_, depth, col_major<Scalar>(s + L.v + x * L.rows * depth, L.rows),
           col_major<Scalar>(s + L.u + x * wstride(depth), depth), s + L.mo + x * L.rows * O_, L.rows, false,
           s + L.pack);
  }

  Index C_, O_, H_, W_, ph_, pw_, Ho_, Wo_;
  Index TH_, TW_, T_;  // tiles per column and per row; T = TH·TW per sample
};

}  // namespace

// 4×4 tiles need 36 products per tile against 2×2 tiles' 16 per tile, but their transforms and polyphase splits
// cost more per output, and a map that is not a multiple of 4 wastes a larger border. They are used when they
// cut the products to at most 0.6 of the 2×2 tiles' — a 28×28 map (0.56), not a 14×14 one (0.73). Measured on
// AMD EPYC Zen 4, 2 threads, same-run rounds: 4×4 tiles everywhere made the benchmark ResNet's product 0.93×
// the time of 2×2 tiles everywhere, and the benchmark CNN's (whose 3×3 convolution runs on 14×14) 1.05×.
template <typename Scalar>
Index WinogradConv3x3<Scalar>::default_tile(Index Ho, Index Wo) {
  const Index t2 = ((Ho + 1) / 2) * ((Wo + 1) / 2), t4 = ((Ho + 3) / 4) * ((Wo + 3) / 4);
  return 36 * t4 * 10 <= 16 * t2 * 6 ? 4 : 2;
}

template <typename Scalar>
std::unique_ptr<WinogradConv3x3<Scalar>> WinogradConv3x3<Scalar>::make(Index C, Index O, Index H, Index W, Index ph,
                                                                       Index pw, Index Ho, Index Wo, Index tile) {
  NATGRAD_CHECK(tile == 2 || tile == 4);
  if (tile == 4) return std::make_unique<WinogradTiles<Scalar, 4>>(C, O, H, W, ph, pw, Ho, Wo);
  return std::make_unique<WinogradTiles<Scalar, 2>>(C, O, H, W, ph, pw, Ho, Wo);
}

template class WinogradConv3x3<float>;
template class WinogradConv3x3<double>;

}  // namespace detail
}  // namespace natgrad
