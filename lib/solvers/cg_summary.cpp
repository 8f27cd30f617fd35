#include <natgrad/solvers/conjugate_gradient.h>

#include <cstdio>
#include <sstream>

namespace natgrad {

const char* to_string(CgTermination t) {
  switch (t) {
    case CgTermination::converged: return "converged";
    case CgTermination::relative_progress: return "relative_progress";
    case CgTermination::max_iterations: return "max_iterations";
    case CgTermination::breakdown: return "breakdown";
    case CgTermination::user_stop: return "user_stop";
    case CgTermination::stagnation: return "stagnation";
  }
  return "unknown";
}

const char* to_string(CgBreakdown b) {
  switch (b) {
    case CgBreakdown::none: return "none";
    case CgBreakdown::rhs_not_finite: return "rhs_not_finite";
    case CgBreakdown::initial_residual_not_finite: return "initial_residual_not_finite";
    case CgBreakdown::curvature_nonpositive: return "curvature_nonpositive";
    case CgBreakdown::curvature_not_finite: return "curvature_not_finite";
    case CgBreakdown::rz_not_finite: return "rz_not_finite";
    case CgBreakdown::problem_not_finite: return "problem_not_finite";
  }
  return "unknown";
}

bool CgOptions::is_valid(std::string* why) const {
  auto bad = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  if (!(relative_tolerance > 0 && relative_tolerance < 1))
    return bad("relative_tolerance must be in (0, 1), got " + std::to_string(relative_tolerance));
  if (max_iterations < 1) return bad("max_iterations must be >= 1, got " + std::to_string(max_iterations));
  if (use_relative_progress && !(progress_epsilon > 0))
    return bad("progress_epsilon must be > 0, got " + std::to_string(progress_epsilon));
  return true;
}

std::string CgSummary::brief_report() const {
  char buf[256];
  std::snprintf(buf, sizeof buf, "CG %s: %lld iterations, %lld products, |r|/|b| = %.3e, %.3f s",
                to_string(termination), static_cast<long long>(iterations),
                static_cast<long long>(operator_applications), relative_residual, time_s);
  return buf;
}

std::string CgSummary::full_report() const {
  std::ostringstream os;
  os << "Conjugate gradient summary\n"
     << "  termination:          " << to_string(termination) << "\n"
     << "  message:              " << message << "\n"
     << "  iterations:           " << iterations << "\n"
     << "  operator products:    " << operator_applications << "\n"
     << "  preconditioner calls: " << preconditioner_applications << "\n"
     << "  |b|:                  " << rhs_norm << "\n"
     << "  final |b - Ax|/|b|:   " << relative_residual << " (true residual)\n"
     << "  recursive |r|/|b|:    " << recursive_relative_residual << "\n"
     << "  residual replacements: " << restarts << "\n"
     << "  breakdown:            " << to_string(breakdown) << "\n"
     << "  time (s):             " << time_s << "\n"
     << "  iteration   |r|/|b|        phi\n";
  for (std::size_t i = 0; i < residual_history.size(); ++i) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "  %9zu   %.6e  % .6e\n", i, residual_history[i],
                  i < quadratic_history.size() ? quadratic_history[i] : 0.0);
    os << buf;
  }
  return os.str();
}

}  // namespace natgrad
