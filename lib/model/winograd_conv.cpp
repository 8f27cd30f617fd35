// Winograd F(2×2, 3×3) convolution passes (see winograd_conv.h). The transform matrices:
//   Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]     (input, 4×4)
//   G  = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]                (weight, 4×3)
//   Aᵀ = [1 1 1 0; 0 1 -1 -1]                         (output, 2×4)
// Matrix ξ = 4a + b of the transform domain holds entry (a, b) of every tile's 4×4 transform; its row
// k·T + t is tile t of the block's sample k. The transforms run over a whole row of tiles at a time, on a
// zero-padded copy of one channel's plane, so they have no bounds checks and vectorize along the row.
#include "model/winograd_conv.h"

#include <algorithm>

#include "core/check.h"
#include "core/gemm.h"

namespace natgrad {
namespace detail {

// Each transform loop's iterations touch distinct entries: let the compiler vectorize without alias checks
// (too many streams for it to prove that itself).
#if defined(__clang__)
#define NATGRAD_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define NATGRAD_IVDEP _Pragma("GCC ivdep")
#else
#define NATGRAD_IVDEP
#endif

namespace {
constexpr Index kXi = 16;  // positions of the 4×4 transform domain
// Rows of the transform-domain products a block aims for (a 14×14 map has 56 tiles per sample, a 28×28 one
// 210): on the benchmark ResNet (AMD EPYC Zen 4, 2 threads) 64, 128, 256 and 512 rows gave products of 348,
// 331, 341 and 359 ms — small blocks keep V and M in cache, and a product needs some rows to run at speed.
constexpr Index kTargetRows = 128;
Index round16(Index n) { return (n + 15) / 16 * 16; }
}  // namespace

template <typename Scalar>
WinogradConv3x3<Scalar>::WinogradConv3x3(Index C, Index O, Index H, Index W, Index ph, Index pw, Index Ho,
                                         Index Wo)
    : C_(C), O_(O), H_(H), W_(W), ph_(ph), pw_(pw), Ho_(Ho), Wo_(Wo) {
  NATGRAD_CHECK(Ho_ == H_ + 2 * ph_ - 2 && Wo_ == W_ + 2 * pw_ - 2);
  TH_ = (Ho_ + 1) / 2;
  TW_ = (Wo_ + 1) / 2;
  T_ = TH_ * TW_;
}

template <typename Scalar>
Index WinogradConv3x3<Scalar>::block(Index ncols) const {
  return std::clamp<Index>((kTargetRows + T_ - 1) / T_, 1, std::max<Index>(ncols, 1));
}

template <typename Scalar>
typename WinogradConv3x3<Scalar>::Layout WinogradConv3x3<Scalar>::layout(Index b, Index width) const {
  Layout L;
  L.rows = b * T_;
  const Index wc = width * C_;
  L.u = 0;  // U and Z keep their offsets for every block size: they live across a call's blocks
  L.z = L.u + round16(kXi * wc * O_);
  L.v = L.z + round16(kXi * C_ * O_);
  L.m = L.v + round16(kXi * L.rows * wc);
  L.plane = L.m + round16(kXi * L.rows * O_);
  L.pack = L.plane + round16(8 * phase_size() + 16 * T_);  // polyphase planes, then input_adjoint's 16 planes
  Index pack = 0;
  for (Index c = 1; c <= b; ++c) {
    const Index r = c * T_;
    // (both depths: Eigen's blocking is not monotone in the sizes)
    pack = std::max({pack, gemm_pack_size<Scalar>(r, O_, C_), gemm_pack_size<Scalar>(r, O_, 2 * C_),
                     gemm_pack_size<Scalar>(C_, O_, r), gemm_pack_size<Scalar>(r, C_, O_)});
  }
  L.end = L.pack + pack;
  return L;
}

template <typename Scalar>
Index WinogradConv3x3<Scalar>::scratch_size(Index ncols) const {
  return layout(block(ncols), 2).end;
}

// U_ξ(c0 + c, o) = (G w_oc Gᵀ)(a, b): column-major (ldu × O), matrices ldu·O apart.
template <typename Scalar>
void WinogradConv3x3<Scalar>::transform_weights(const Scalar* w, Index c0, Index ldu, Scalar* U) const {
  const Scalar h = Scalar(0.5);
  const Index xs = ldu * O_;
  for (Index o = 0; o < O_; ++o)
    for (Index c = 0; c < C_; ++c) {
      const Scalar* g = w + (o * C_ + c) * 9;
      Scalar r[4][3];  // G g
      for (Index j = 0; j < 3; ++j) {
        r[0][j] = g[j];
        r[1][j] = h * (g[j] + g[3 + j] + g[6 + j]);
        r[2][j] = h * (g[j] - g[3 + j] + g[6 + j]);
        r[3][j] = g[6 + j];
      }
      Scalar* u = U + (c0 + c) + o * ldu;
      for (Index a = 0; a < 4; ++a) {
        u[(4 * a + 0) * xs] = r[a][0];
        u[(4 * a + 1) * xs] = h * (r[a][0] + r[a][1] + r[a][2]);
        u[(4 * a + 2) * xs] = h * (r[a][0] - r[a][1] + r[a][2]);
        u[(4 * a + 3) * xs] = r[a][2];
      }
    }
}

// The padded input plane split into polyphase components: P⁰_pq(u, v) = x(2u + p − ph, 2v + q − pw) and the same
// shifted by one tile column, P¹_pq(u, v) = P⁰_pq(u, v + 1), each (TH + 1) × TW and a few zeros at the end
// (plane 4·shift + 2p + q). Entry (r, s) of tile t's 4×4 patch is then P^⌊s/2⌋_{r mod 2, s mod 2}(t + ⌊r/2⌋·TW):
// the same offset for every tile, so each transform is one unit-stride loop over the tiles. split() writes the
// image's entries only: the planes are zeroed once per call, and the padding stays zero from one map to the
// next. Without `shifted` only P⁰ is written.
template <typename Scalar>
void WinogradConv3x3<Scalar>::split(const Scalar* x, Index h, Index w, Index oh, Index ow, bool shifted,
                                    Scalar* P) const {
  const Index pp = phase_size();
  for (Index i = 0; i < h; ++i) {
    const Index pi = i + oh;
    const Scalar* src = x + i * w;
    Scalar* row = P + 2 * (pi & 1) * pp + (pi >> 1) * TW_;
    // Column j = 2m + e lands in phase q = (e + ow) mod 2 at wide column V = m + ⌊(e + ow)/2⌋ (0 … TW): in P⁰
    // at V when V < TW, in P¹ at V − 1 when V ≥ 1.
    for (Index e = 0; e < 2; ++e) {
      const Index q = (e + ow) & 1, base = (e + ow) >> 1, count = (w - e + 1) / 2;
      const Scalar* from = src + e;
      Scalar* p0 = row + q * pp + base;
      const Index hi0 = std::min(count, TW_ - base);
      NATGRAD_IVDEP
      for (Index m = 0; m < hi0; ++m) p0[m] = from[2 * m];
      if (!shifted) continue;
      Scalar* p1 = row + (4 + q) * pp + base - 1;
      NATGRAD_IVDEP
      for (Index m = std::max<Index>(0, 1 - base); m < count; ++m) p1[m] = from[2 * m];
    }
  }
}

// V_ξ(k·T + t, c0 + c) = (Bᵀ d_c(t) B)(a, b) for the b samples of x: column-major, leading dimension rows,
// matrices xs apart.
template <typename Scalar>
void WinogradConv3x3<Scalar>::input_transform(const Scalar* x, Index b, Index c0, Index rows, Index xs, Scalar* V,
                                              Scalar* plane) const {
  const Index pp = phase_size(), n = T_;
  std::fill(plane, plane + 8 * pp, Scalar(0));
  for (Index k = 0; k < b; ++k)
    for (Index c = 0; c < C_; ++c) {
      split(x + (k * C_ + c) * H_ * W_, H_, W_, ph_, pw_, true, plane);
      Scalar* v = V + (c0 + c) * rows + k * T_;
      NATGRAD_IVDEP
      for (Index t = 0; t < n; ++t) {
        Scalar d[4][4];
        for (Index r = 0; r < 4; ++r) {
          const Scalar* e = plane + 2 * (r & 1) * pp + t + (r >> 1) * TW_;
          d[r][0] = e[0];
          d[r][1] = e[pp];
          d[r][2] = e[4 * pp];
          d[r][3] = e[5 * pp];
        }
        for (Index j = 0; j < 4; ++j) {  // Bᵀ d
          const Scalar d0 = d[0][j], d1 = d[1][j], d2 = d[2][j], d3 = d[3][j];
          d[0][j] = d0 - d2;
          d[1][j] = d1 + d2;
          d[2][j] = d2 - d1;
          d[3][j] = d1 - d3;
        }
        for (Index a = 0; a < 4; ++a) {  // (Bᵀ d) B
          v[(4 * a) * xs + t] = d[a][0] - d[a][2];
          v[(4 * a + 1) * xs + t] = d[a][1] + d[a][2];
          v[(4 * a + 2) * xs + t] = d[a][2] - d[a][1];
          v[(4 * a + 3) * xs + t] = d[a][1] - d[a][3];
        }
      }
    }
}

// y = Aᵀ M A per tile, cropped to Ho × Wo, plus the bias; M's matrices are ms apart with leading dimension rows.
// The four outputs of every tile go to four polyphase planes (unit stride), which are then interleaved into y.
template <typename Scalar>
void WinogradConv3x3<Scalar>::output_transform(const Scalar* M, Index b, Index rows, Index ms, const Scalar* bias,
                                               Scalar* y, Scalar* plane) const {
  const Index n = T_;
  Scalar *y00 = plane, *y01 = plane + n, *y10 = plane + 2 * n, *y11 = plane + 3 * n;
  for (Index k = 0; k < b; ++k)
    for (Index o = 0; o < O_; ++o) {
      const Scalar* m = M + o * rows + k * T_;
      NATGRAD_IVDEP
      for (Index t = 0; t < n; ++t) {
        Scalar p0[4], p1[4];  // Aᵀ M
        for (Index c = 0; c < 4; ++c) {
          const Scalar m0 = m[c * ms + t], m1 = m[(4 + c) * ms + t], m2 = m[(8 + c) * ms + t],
                       m3 = m[(12 + c) * ms + t];
          p0[c] = m0 + m1 + m2;
          p1[c] = m1 - m2 - m3;
        }
        y00[t] = p0[0] + p0[1] + p0[2];
        y01[t] = p0[1] - p0[2] - p0[3];
        y10[t] = p1[0] + p1[1] + p1[2];
        y11[t] = p1[1] - p1[2] - p1[3];
      }
      Scalar* dst = y + (k * O_ + o) * Ho_ * Wo_;
      const Scalar add = bias ? bias[o] : Scalar(0);
      for (Index i = 0; i < Ho_; ++i) {
        const Scalar* e = plane + (2 * (i & 1)) * n + (i >> 1) * TW_;  // y_(i mod 2) 0
        const Scalar* f = e + n;                                          // y_(i mod 2) 1
        Scalar* row = dst + i * Wo_;
        for (Index j = 0; j + 1 < Wo_; j += 2) {
          row[j] = e[j >> 1] + add;
          row[j + 1] = f[j >> 1] + add;
        }
        if (Wo_ & 1) row[Wo_ - 1] = e[(Wo_ - 1) >> 1] + add;
      }
    }
}

// Ŷ = A gy Aᵀ per tile (gy zero beyond Ho × Wo): the adjoint of output_transform.
template <typename Scalar>
void WinogradConv3x3<Scalar>::output_adjoint(const Scalar* gy, Index b, Index rows, Index ys, Scalar* Yhat,
                                             Scalar* plane) const {
  const Index pp = phase_size(), n = T_;
  std::fill(plane, plane + 4 * pp, Scalar(0));
  for (Index k = 0; k < b; ++k)
    for (Index o = 0; o < O_; ++o) {
      split(gy + (k * O_ + o) * Ho_ * Wo_, Ho_, Wo_, 0, 0, false, plane);
      const Scalar *g00 = plane, *g01 = plane + pp, *g10 = plane + 2 * pp, *g11 = plane + 3 * pp;
      Scalar* v = Yhat + o * rows + k * T_;
      NATGRAD_IVDEP
      for (Index t = 0; t < n; ++t) {
        const Scalar a0 = g00[t], a1 = g01[t], b0 = g10[t], b1 = g11[t];
        const Scalar q[4][2] = {{a0, a1}, {a0 + b0, a1 + b1}, {a0 - b0, a1 - b1}, {-b0, -b1}};  // A gy
        for (Index a = 0; a < 4; ++a) {
          v[(4 * a) * ys + t] = q[a][0];
          v[(4 * a + 1) * ys + t] = q[a][0] + q[a][1];
          v[(4 * a + 2) * ys + t] = q[a][0] - q[a][1];
          v[(4 * a + 3) * ys + t] = -q[a][1];
        }
      }
    }
}

// gx = Σ_t B X(t) Bᵀ, each tile added at its place, then cropped: the adjoint of input_transform. The 16
// entries of every tile go to 16 planes first (unit stride), which are then added into the polyphase planes
// one after another (tiles overlap); X's matrices are xs apart with leading dimension rows; gx is set.
template <typename Scalar>
void WinogradConv3x3<Scalar>::input_adjoint(const Scalar* X, Index b, Index rows, Index xs, Scalar* gx,
                                            Scalar* plane) const {
  const Index pp = phase_size(), n = T_;
  Scalar* E = plane + 8 * pp;  // 16 planes of T
  for (Index k = 0; k < b; ++k)
    for (Index c = 0; c < C_; ++c) {
      const Scalar* m = X + c * rows + k * T_;
      NATGRAD_IVDEP
      for (Index t = 0; t < n; ++t) {
        Scalar e[4][4];  // B X
        for (Index j = 0; j < 4; ++j) {
          const Scalar m0 = m[j * xs + t], m1 = m[(4 + j) * xs + t], m2 = m[(8 + j) * xs + t],
                       m3 = m[(12 + j) * xs + t];
          e[0][j] = m0;
          e[1][j] = m1 - m2 + m3;
          e[2][j] = m1 + m2 - m0;
          e[3][j] = -m3;
        }
        for (Index i = 0; i < 4; ++i) {  // (B X) Bᵀ
          E[(4 * i) * n + t] = e[i][0];
          E[(4 * i + 1) * n + t] = e[i][1] - e[i][2] + e[i][3];
          E[(4 * i + 2) * n + t] = e[i][1] + e[i][2] - e[i][0];
          E[(4 * i + 3) * n + t] = -e[i][3];
        }
      }
      std::fill(plane, plane + 8 * pp, Scalar(0));
      for (Index r = 0; r < 4; ++r)
        for (Index s = 0; s < 4; ++s) {
          Scalar* dst = plane + (4 * (s >> 1) + 2 * (r & 1) + (s & 1)) * pp + (r >> 1) * TW_;
          const Scalar* src = E + (4 * r + s) * n;
          NATGRAD_IVDEP
          for (Index t = 0; t < n; ++t) dst[t] += src[t];
        }
      // Wide column V of a phase is P⁰(V) (V < TW) plus P¹(V − 1) (V ≥ 1).
      Scalar* out = gx + (k * C_ + c) * H_ * W_;
      for (Index i = 0; i < H_; ++i) {
        const Index pi = i + ph_;
        const Scalar* e = plane + (2 * (pi & 1)) * pp + (pi >> 1) * TW_;
        for (Index j = 0; j < W_; ++j) {
          const Index pj = j + pw_, V = pj >> 1;
          const Scalar* f = e + (pj & 1) * pp;
          out[i * W_ + j] = (V < TW_ ? f[V] : Scalar(0)) + (V >= 1 ? f[4 * pp + V - 1] : Scalar(0));
        }
      }
    }
}

// gw_oc += Gᵀ Z_oc G, Z_ξ column-major C × O: the adjoint of transform_weights.
template <typename Scalar>
void WinogradConv3x3<Scalar>::weight_adjoint(const Scalar* Z, Scalar* gw) const {
  const Scalar h = Scalar(0.5);
  const Index xs = C_ * O_;
  for (Index o = 0; o < O_; ++o)
    for (Index c = 0; c < C_; ++c) {
      const Scalar* z = Z + c + o * C_;
      Scalar f[3][4];  // Gᵀ Z
      for (Index j = 0; j < 4; ++j) {
        const Scalar z0 = z[j * xs], z1 = z[(4 + j) * xs], z2 = z[(8 + j) * xs], z3 = z[(12 + j) * xs];
        f[0][j] = z0 + h * (z1 + z2);
        f[1][j] = h * (z1 - z2);
        f[2][j] = h * (z1 + z2) + z3;
      }
      Scalar* g = gw + (o * C_ + c) * 9;
      for (Index i = 0; i < 3; ++i) {  // (Gᵀ Z) G
        g[3 * i] += f[i][0] + h * (f[i][1] + f[i][2]);
        g[3 * i + 1] += h * (f[i][1] - f[i][2]);
        g[3 * i + 2] += h * (f[i][1] + f[i][2]) + f[i][3];
      }
    }
}

// M_ξ = V_ξ U_ξ for the 16 ξ, V_ξ rows × depth, U_ξ depth × O.
template <typename Scalar>
void WinogradConv3x3<Scalar>::products(const Layout& L, Index depth, Scalar* s) const {
  for (Index x = 0; x < kXi; ++x)
    gemm(L.rows, O_, depth, col_major<Scalar>(s + L.v + x * L.rows * depth, L.rows),
         col_major<Scalar>(s + L.u + x * depth * O_, depth), s + L.m + x * L.rows * O_, L.rows, false, s + L.pack);
}

template <typename Scalar>
void WinogradConv3x3<Scalar>::forward(const Scalar* w, const Scalar* bias, const Scalar* x, Index n, Scalar* y,
                                      Scalar* s) const {
  const Index nb = block(n);
  transform_weights(w, 0, C_, s + layout(nb, 1).u);
  for (Index n0 = 0; n0 < n; n0 += nb) {
    const Index b = std::min(nb, n - n0);
    const Layout L = layout(b, 1);
    input_transform(x + n0 * C_ * H_ * W_, b, 0, L.rows, L.rows * C_, s + L.v, s + L.plane);
    products(L, C_, s);
    output_transform(s + L.m, b, L.rows, L.rows * O_, bias, y + n0 * O_ * Ho_ * Wo_, s + L.plane);
  }
}

template <typename Scalar>
void WinogradConv3x3<Scalar>::jvp(const Scalar* w, const Scalar* dw, const Scalar* dbias, const Scalar* x,
                                  const Scalar* dx, Index n, Scalar* dy, Scalar* s) const {
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
    output_transform(s + L.m, b, L.rows, L.rows * O_, dbias, dy + n0 * O_ * Ho_ * Wo_, s + L.plane);
  }
}

template <typename Scalar>
void WinogradConv3x3<Scalar>::vjp(const Scalar* w, const Scalar* x, const Scalar* gy, Index n, Scalar* gx,
                                  Scalar* gw, Scalar* gbias, Scalar* s) const {
  const Index nb = block(n);
  const Layout L0 = layout(nb, 1);
  if (gx) transform_weights(w, 0, C_, s + L0.u);
  if (gw) std::fill(s + L0.z, s + L0.z + kXi * C_ * O_, Scalar(0));
  for (Index n0 = 0; n0 < n; n0 += nb) {
    const Index b = std::min(nb, n - n0);
    const Layout L = layout(b, 1);
    const Index vs = L.rows * C_, ys = L.rows * O_;
    output_adjoint(gy + n0 * O_ * Ho_ * Wo_, b, L.rows, ys, s + L.m, s + L.plane);
    if (gw) {  // Z_ξ += V_ξᵀ Ŷ_ξ
      input_transform(x + n0 * C_ * H_ * W_, b, 0, L.rows, vs, s + L.v, s + L.plane);
      for (Index q = 0; q < kXi; ++q)
        gemm(C_, O_, L.rows, row_major<Scalar>(s + L.v + q * vs, L.rows), col_major<Scalar>(s + L.m + q * ys, L.rows),
             s + L.z + q * C_ * O_, C_, true, s + L.pack);
    }
    if (gx) {  // X_ξ = Ŷ_ξ U_ξᵀ (into V's space), then the input transform's adjoint
      for (Index q = 0; q < kXi; ++q)
        gemm(L.rows, C_, O_, col_major<Scalar>(s + L.m + q * ys, L.rows), row_major<Scalar>(s + L.u + q * C_ * O_, C_),
             s + L.v + q * vs, L.rows, false, s + L.pack);
      input_adjoint(s + L.v, b, L.rows, vs, gx + n0 * C_ * H_ * W_, s + L.plane);
    }
  }
  if (gw) {
    weight_adjoint(s + L0.z, gw);
    if (gbias)
      for (Index k = 0; k < n; ++k)
        for (Index o = 0; o < O_; ++o) {
          const Scalar* g = gy + (k * O_ + o) * Ho_ * Wo_;
          Scalar sum = Scalar(0);
          for (Index p = 0; p < Ho_ * Wo_; ++p) sum += g[p];
          gbias[o] += sum;
        }
  }
}

template class WinogradConv3x3<float>;
template class WinogradConv3x3<double>;

}  // namespace detail
}  // namespace natgrad
