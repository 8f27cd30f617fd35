#include <natgrad/solvers/preconditioner.h>

#include <cmath>
#include <new>
#include <stdexcept>
#include <string>

#include "core/fail.h"
#include "core/format_number.h"

namespace natgrad {

const char* to_string(PreconditionerKind kind) {
  switch (kind) {
    case PreconditionerKind::none: return "none";
    case PreconditionerKind::diagonal: return "diagonal";
    case PreconditionerKind::kfac: return "kfac";
  }
  return "unknown";
}

PreconditionerKind preconditioner_from_string(const std::string& name) {
  if (name == "none") return PreconditionerKind::none;
  if (name == "diagonal") return PreconditionerKind::diagonal;
  if (name == "kfac") return PreconditionerKind::kfac;
  detail::fail("unknown preconditioner \"" + name + "\" (known: none, diagonal, kfac)");
}

template <typename Scalar>
DiagonalPreconditioner<Scalar>::DiagonalPreconditioner(const Vec<Scalar>& d, double damping, double alpha) {
  if (!(damping >= 0) || !std::isfinite(damping))
    detail::fail("diagonal preconditioner: damping must be finite and >= 0, got " + std::to_string(damping));
  if (!(alpha >= 0 && alpha <= 1))
    detail::fail("diagonal preconditioner: exponent must be in [0, 1], got " + std::to_string(alpha));
  try {
    inv_.resize(d.size());
  } catch (const std::bad_alloc&) {
    throw std::runtime_error("out of memory allocating the diagonal preconditioner (" +
                             detail::format_bytes(double(required_bytes(d.size()))) + ")");
  }
  for (Index i = 0; i < d.size(); ++i) {
    const double v = double(d[i]);
    if (!(v >= 0) || !std::isfinite(v))
      detail::fail("diagonal preconditioner: entry " + std::to_string(i) + " is " + std::to_string(v) +
                   " (must be finite and >= 0)");
    const double m = std::pow(v + damping, alpha);
    if (!(m > 0))
      detail::fail("diagonal preconditioner: entry " + std::to_string(i) +
                                  " of diag + damping is 0; add damping");
    inv_[i] = static_cast<Scalar>(1.0 / m);
  }
}

template <typename Scalar>
void DiagonalPreconditioner<Scalar>::apply(const Scalar* r, Scalar* z) const {
  VecMap<Scalar>(z, inv_.size()) = inv_.cwiseProduct(ConstVecMap<Scalar>(r, inv_.size()));
}

template class DiagonalPreconditioner<float>;
template class DiagonalPreconditioner<double>;

}  // namespace natgrad
