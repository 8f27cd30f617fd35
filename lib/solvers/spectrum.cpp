#include <natgrad/solvers/spectrum.h>

namespace natgrad {

const char* to_string(ConditionMethod m) {
  switch (m) {
    case ConditionMethod::rank_bound: return "rank_bound";
    case ConditionMethod::lanczos: return "lanczos";
    case ConditionMethod::failed: return "failed";
  }
  return "unknown";
}

bool SpectrumOptions::is_valid(Index n, std::string* why) const {
  auto bad = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  if (num_eigenvalues < 1 || num_eigenvalues >= n)
    return bad("num_eigenvalues must be in [1, " + std::to_string(n - 1) + "] for an operator of size " +
               std::to_string(n) + ", got " + std::to_string(num_eigenvalues));
  if (ncv != 0 && (ncv <= num_eigenvalues || ncv > n))
    return bad("ncv must be in (" + std::to_string(num_eigenvalues) + ", " + std::to_string(n) + "], got " +
               std::to_string(ncv));
  if (max_restarts < 1) return bad("max_restarts must be >= 1");
  if (!(tolerance > 0)) return bad("tolerance must be > 0");
  return true;
}

}  // namespace natgrad
