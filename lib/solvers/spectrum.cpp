#include <natgrad/solvers/spectrum.h>

#include <cstdio>
#include <sstream>

namespace natgrad {

const char* to_string(SpectrumTermination t) {
  switch (t) {
    case SpectrumTermination::converged: return "converged";
    case SpectrumTermination::not_converged: return "not_converged";
    case SpectrumTermination::non_finite: return "non_finite";
    case SpectrumTermination::failed: return "failed";
    case SpectrumTermination::interrupted: return "interrupted";
  }
  return "unknown";
}

std::string SpectrumResult::brief_report() const {
  char buf[256];
  std::snprintf(buf, sizeof buf, "Lanczos %s: %lld eigenvalues, %lld products, %lld restarts, %.3f s",
                to_string(termination), static_cast<long long>(eigenvalues.size()),
                static_cast<long long>(matvecs), static_cast<long long>(restarts), time_s);
  return buf;
}

std::string SpectrumResult::full_report() const {
  std::ostringstream os;
  os << "Spectrum summary\n"
     << "  termination:  " << to_string(termination) << "\n"
     << "  message:      " << status << "\n"
     << "  products:     " << matvecs << "\n"
     << "  restarts:     " << restarts << "\n"
     << "  time (s):     " << time_s << "\n";
  for (Index i = 0; i < eigenvalues.size(); ++i) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "  lambda_%lld = %.10e\n", static_cast<long long>(i + 1), eigenvalues[i]);
    os << buf;
  }
  return os.str();
}

std::string ConditionEstimate::brief_report() const {
  char buf[256];
  std::snprintf(buf, sizeof buf, "condition number %.6e (lambda_max %.6e, lambda_min %.6e +- %.2e, %s)",
                condition_number, lambda_max, lambda_min, lambda_min_error, to_string(kind));
  return buf;
}

std::string ConditionEstimate::full_report() const {
  std::ostringstream os;
  os << "Condition estimate\n"
     << "  kind:             " << to_string(kind) << "\n"
     << "  method:           " << method << "\n"
     << "  lambda_max:       " << lambda_max << "\n"
     << "  lambda_min:       " << lambda_min << "\n"
     << "  lambda_min error: " << lambda_min_error << "\n"
     << "  condition number: " << condition_number << "\n"
     << "  products:         " << matvecs << "\n";
  return os.str();
}

const char* to_string(ConditionMethod m) {
  switch (m) {
    case ConditionMethod::rank_bound: return "rank_bound";
    case ConditionMethod::lanczos: return "lanczos";
    case ConditionMethod::failed: return "failed";
  }
  return "unknown";
}

std::size_t spectrum_required_bytes(Index n, const SpectrumOptions& options, std::size_t scalar_bytes,
                                    std::size_t basis_bytes) {
  const std::size_t N = static_cast<std::size_t>(n), k = static_cast<std::size_t>(options.num_eigenvalues);
  const std::size_t ncv = static_cast<std::size_t>(lanczos_ncv(n, options));
  return (ncv + k + 8) * N * basis_bytes + 4 * ncv * ncv * sizeof(double) +
         (basis_bytes != scalar_bytes ? 2 * N * scalar_bytes : 0) +
         (basis_bytes < sizeof(double) ? k * N * sizeof(double) : 0);
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
