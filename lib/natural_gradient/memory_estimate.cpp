#include <natgrad/core/threads.h>
#include <natgrad/curvature/fisher_operator.h>
#include <natgrad/curvature/kfac.h>
#include <natgrad/model/network.h>
#include <natgrad/natural_gradient/memory_estimate.h>
#include <natgrad/curvature/fisher_gram.h>
#include <natgrad/solvers/conjugate_gradient.h>
#include <natgrad/solvers/multi_shift_cg.h>
#include <natgrad/solvers/preconditioner.h>
#include <natgrad/solvers/top_eigenvalues.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "core/format_number.h"

namespace natgrad {

namespace {
template <typename Scalar>
MemoryEstimate estimate(const ModelSpec& spec, Index batch, Index curvature_batch, std::size_t basis_bytes,
                        const FisherOptions& fisher, Index top_k, Index ncv, int threads,
                        bool diagonal_preconditioner, LikelihoodKind likelihood) {
  const std::size_t s = sizeof(Scalar);
  const Network<Scalar> model(spec);  // shapes only
  const std::size_t P = static_cast<std::size_t>(model.num_params());
  const std::size_t C = static_cast<std::size_t>(model.output_size());
  const Index Nc = curvature_batch > 0 ? curvature_batch : batch;
  MemoryEstimate m;
  const bool separate = Nc < batch;  // a second operator on the whole batch computes the gradient
  // As the CLI runs a solve: θ (moved into the operator), g (moved out of it into the result), d, and CG's
  // workspace: r, p, Ap and best iterate, and z with a preconditioner. (A library caller that keeps its own θ
  // adds one.) (A spectrum is computed first and deflates CG, which then keeps z as with the diagonal
  // preconditioner.)
  m.parameters = 3 * P * s + CgWorkspace<Scalar>::required_bytes(model.num_params(),
                                                                 diagonal_preconditioner || top_k > 0);
  // What each operator allocates, from the plan its constructor makes (FisherOperator::required_bytes).
  FisherOptions options = fisher;
  options.num_threads = threads;
  const auto curvature = FisherOperator<Scalar>::required_bytes(model, Nc, likelihood, options);
  m.activations = curvature.forward;
  // Plus the run's small allocations that do not scale with P or N (the OpenMP team, the plan, per-chunk
  // vectors): about 70 KiB measured on a 60,000- and a 30,000-sample solve; 256 KiB allowed.
  m.workspaces = curvature.workspaces + 256 * 1024;
  m.cotangents = curvature.cotangents;
  // The Lanczos run of the spectrum (top_eigenvalues with ncv; 0: its default rule). (The condition number's
  // runs, ncv = 20 and k = 1, need less.)
  if (top_k > 0) {
    SpectrumOptions spectrum;
    spectrum.num_eigenvalues = top_k;
    spectrum.ncv = ncv;
    m.spectrum = spectrum_required_bytes(model.num_params(), spectrum, s, basis_bytes);
  }
  const std::size_t targets = likelihood == LikelihoodKind::categorical
                                  ? static_cast<std::size_t>(model.output_positions()) * 8
                                  : C * s;
  m.data = static_cast<std::size_t>(batch) * (static_cast<std::size_t>(model.input_size()) * s + targets);
  // The diagonal preconditioner's peak: the empirical diagonal while the operator builds it (its partial
  // sums and scratch, the diagonal included), or then the diagonal beside the inverse diagonal made from it.
  if (diagonal_preconditioner)
    m.preconditioner = std::max(FisherOperator<Scalar>::empirical_diagonal_required_bytes(model, Nc, options),
                                P * s + DiagonalPreconditioner<Scalar>::required_bytes(model.num_params()));
  const std::size_t cg_phase =
      m.parameters + m.activations + m.workspaces + m.cotangents + m.spectrum + m.preconditioner + m.data;
  if (separate) {  // both operators' θ, the full operator's g (then the result's); both forward passes
    const auto whole = FisherOperator<Scalar>::required_bytes(model, batch, likelihood, options);
    m.gradient_phase = 3 * P * s + whole.forward + curvature.forward + whole.workspaces +
                       curvature.workspaces + whole.cotangents + curvature.cotangents + m.data;
  }
  // The process itself: code and shared libraries (measured: 6 MiB for a one-process solve of a tiny model,
  // 17 MiB with OpenMPI linked in, 23 MiB for a rank under mpirun), and per thread its stack and allocator
  // arena (measured: 9 MiB more resident for the 36.8M-parameter MLP at 2 threads than at 1).
#ifdef NATGRAD_HAVE_MPI
  const std::size_t base = std::size_t(32) << 20;
#else
  const std::size_t base = std::size_t(10) << 20;
#endif
  m.runtime = base + static_cast<std::size_t>(resolve_threads(threads)) * (std::size_t(10) << 20);
  m.total = std::max(cg_phase, m.gradient_phase) + m.runtime;
  return m;
}
}  // namespace

MemoryEstimate estimate_solve_memory(const ModelSpec& spec, Index batch, Index curvature_batch, std::size_t s,
                                     const FisherOptions& fisher, Index top_k, int threads,
                                     bool diagonal_preconditioner, LikelihoodKind likelihood, int ranks,
                                     std::size_t basis_bytes, Index ncv) {
  MemoryEstimate m = estimate_solve_memory(spec, batch, curvature_batch, s, fisher, top_k, threads,
                                           diagonal_preconditioner, likelihood, basis_bytes, ncv);
  if (ranks <= 1) return m;
  // A rank's shares: the batch's and, when the curvature batch is smaller, the curvature batch's own (read
  // separately); and the sums' received blocks (Communicator::scratch_size, doubles).
  if (curvature_batch > 0 && curvature_batch < batch) {
    const std::size_t extra = m.data / static_cast<std::size_t>(batch) * static_cast<std::size_t>(curvature_batch);
    m.data += extra;
    if (m.gradient_phase) m.gradient_phase += extra;
  }
  m.communication = static_cast<std::size_t>(kSumSegment + ranks) * sizeof(double);
  const std::size_t cg_phase = m.parameters + m.activations + m.workspaces + m.cotangents + m.spectrum +
                               m.preconditioner + m.data + m.communication;
  if (m.gradient_phase) m.gradient_phase += m.communication;
  m.total = std::max(cg_phase, m.gradient_phase) + m.runtime;
  return m;
}

MemoryEstimate estimate_solve_memory(const ModelSpec& spec, Index batch, Index curvature_batch, std::size_t s,
                                     const FisherOptions& fisher, Index top_k, int threads,
                                     bool diagonal_preconditioner, LikelihoodKind likelihood,
                                     std::size_t basis_bytes, Index ncv) {
  return s == sizeof(float) ? estimate<float>(spec, batch, curvature_batch, basis_bytes, fisher, top_k, ncv,
                                              threads, diagonal_preconditioner, likelihood)
                            : estimate<double>(spec, batch, curvature_batch, basis_bytes, fisher, top_k, ncv,
                                               threads, diagonal_preconditioner, likelihood);
}

void MemoryEstimate::add_multi_shift(Index params, std::size_t scalar_bytes, Index dampings) {
  if (dampings < 2) return;
  // θ, g and the smallest damping's d stay as counted; multi-shift CG's own vectors
  // (multi_shift_required_bytes) replace CG's workspace without z (an upper bound when z was counted too).
  const std::size_t cg = scalar_bytes == sizeof(float) ? CgWorkspace<float>::required_bytes(params, false)
                                                       : CgWorkspace<double>::required_bytes(params, false);
  const std::size_t extra =
      multi_shift_required_bytes(params, static_cast<std::size_t>(dampings), scalar_bytes) - cg;
  parameters += extra;
  total += extra;
}

template <typename Scalar>
void MemoryEstimate::add_kfac(const Network<Scalar>& model, Index curvature_samples, const FisherOptions& fisher,
                              bool compared) {
  // K-FAC's peak (its factors, eigenvectors, inverses and diagonals, and its transient buffers), and CG's z,
  // which the estimate counts only with the diagonal preconditioner or deflation.
  const std::size_t extra =
      KfacApproximation<Scalar>::required_bytes(model, curvature_samples, fisher, KfacOptions(), compared) +
      static_cast<std::size_t>(model.num_params()) * sizeof(Scalar);
  preconditioner += extra;
  total += extra;
}
template void MemoryEstimate::add_kfac<float>(const Network<float>&, Index, const FisherOptions&, bool);
template void MemoryEstimate::add_kfac<double>(const Network<double>&, Index, const FisherOptions&, bool);

void MemoryEstimate::add_second_operator() {
  const std::size_t extra = activations + workspaces + cotangents;
  total += extra;
}

std::string format_bytes(double bytes) { return detail::format_bytes(bytes); }

template <typename Scalar>
void MemoryEstimate::add_gram(const Network<Scalar>& model, Index curvature_samples, const FisherOptions& fisher) {
  const std::size_t extra = FisherGram<Scalar>::required_bytes(model, curvature_samples, fisher).total();
  gram += extra;
  total += extra;
}
template void MemoryEstimate::add_gram<float>(const Network<float>&, Index, const FisherOptions&);
template void MemoryEstimate::add_gram<double>(const Network<double>&, Index, const FisherOptions&);

std::string MemoryEstimate::report() const {
  auto b = [](std::size_t v) { return format_bytes(double(v)); };
  std::string r = "parameter vectors " + b(parameters) + ", activations " + b(activations) + ", workspaces " +
                  b(workspaces) + ", stored cotangents, partial gradients and packed weights " +
                  b(cotangents) + ", Lanczos basis " + b(spectrum) + ", preconditioner " + b(preconditioner) +
                  ", batch " + b(data);
  if (communication) r += ", communication " + b(communication);
  if (gram) r += ", Gram " + b(gram);
  r += ", runtime " + b(runtime);
  if (gradient_phase) r += ", full-batch gradient phase " + b(gradient_phase);
  return r + "; total " + b(total);
}

std::size_t available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::size_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

}  // namespace natgrad
