/// \file spectrum.h
/// \brief All of the spectrum tools, one header each: the Fisher's spectrum without forming it: top-k eigenpairs (Spectra's Lanczos), the condition
/// number of F + λI, Hutchinson's trace estimate, and the spectral density by stochastic Lanczos quadrature.
///
/// Every function takes any operator of Spectra's concept (FisherOperator among them) and works on it as
/// given, so pass an operator with damping 0 to study F itself. Lanczos always runs in double precision;
/// a float operator is called through a converting adapter, so the eigenvalues are those of the float
/// operator to double-precision convergence.
///
/// \code
/// natgrad::SpectrumOptions opt;
/// opt.num_eigenvalues = 10;
/// natgrad::SpectrumResult r = natgrad::top_eigenvalues(F, opt);   // r.eigenvalues descending
/// natgrad::TraceEstimate t = natgrad::hutchinson_trace(F, 100, /*seed=*/0);
/// \endcode
#pragma once

#include <natgrad/solvers/condition_number.h>
#include <natgrad/solvers/hutchinson_trace.h>
#include <natgrad/solvers/slq_density.h>
#include <natgrad/solvers/top_eigenvalues.h>
