/// \file threads.h
/// \brief The one place that decides how many threads natgrad uses.
///
/// Every parallel region of the library — the Fisher-vector product, the forward pass, the gradient, the
/// conjugate-gradient vector kernels — asks num_threads() (or a per-operator count resolved through
/// resolve_threads()). Results never depend on it: every reduction runs in a fixed order.
///
/// \code
/// natgrad::set_num_threads(0);   // all cores
/// natgrad::set_num_threads(8);   // exactly 8 (more than the cores is allowed: oversubscription)
/// int t = natgrad::num_threads();
/// \endcode
#pragma once

namespace natgrad {

/// Sets the library-wide thread count: T ≥ 1 threads, or 0 for all cores (the processors OpenMP reports).
/// Throws std::invalid_argument for a negative count. Without OpenMP every count means 1.
void set_num_threads(int threads);

/// The library-wide thread count: what set_num_threads() chose, or OpenMP's default (OMP_NUM_THREADS, else
/// all cores) if it was never called. 1 without OpenMP.
int num_threads();

/// `requested` if it is positive, otherwise num_threads(): the count an object with its own thread option
/// (FisherOptions::num_threads, 0 = the library-wide count) uses.
int resolve_threads(int requested);

/// The processors available to this process (1 without OpenMP).
int available_cores();

}  // namespace natgrad
